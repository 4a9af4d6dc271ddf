"""FLEURS on a pod: the `large` model on six FLEURS languages (those of the embedded corpus).

Prepare the data once, then train and evaluate (TPU pod, through launch/tpu_pod.sh):

  for l in en_us de_de fr_fr es_419 hi_in cmn_hans_cn; do
    tfds build xtreme_s --config fleurs.$l --data_dir gs://B/tfds; done
  launch/tpu_pod.sh NAME ZONE train --config fleurs_large --workdir gs://B/fleurs_large \
    --config.data.data_dir=gs://B/tfds
  moe-asr eval --workdir gs://B/fleurs_large --config.data.name=xtreme_s/fleurs.hi_in
  # Code-switched evaluation on the embedded corpus (`moe-asr corpus build --config demo`):
  moe-asr eval --workdir gs://B/fleurs_large --config.data.name=moe_asr_synth/demo \
    --config.data.data_dir=DATA --config.eval.splits="('test_cs',)"

`moe-asr model-info --config fleurs_large --mesh data=8,expert=8` sizes memory per device.
"""

from moe_asr.configs import base

LANGUAGES = ("en_us", "de_de", "fr_fr", "es_419", "hi_in", "cmn_hans_cn")


def get_config():
  c = base.get_config(model="large", corpus="demo")
  d = c.data
  d.name = "xtreme_s/fleurs.en_us"  # Validated during training; every language by `eval`.
  # Equal weights: FLEURS has about the same hours of read speech in each language.
  d.mixture = tuple((f"xtreme_s/fleurs.{lang}", "train", 1.0) for lang in LANGUAGES)
  d.vocab_size = 4000  # One SentencePiece model over all six languages' transcripts.
  d.character_coverage = 0.9995  # Rare Han characters fall back to bytes.
  # FLEURS utterances last 3 to 30 s; global batches divisible by 64 devices.
  d.buckets = ((10.0, 512), (16.0, 256), (24.0, 192), (32.0, 128))
  d.tokens_per_second = 8.0  # 256 label tokens (decoder.max_len) in the 32-s bucket.
  d.long_policy = "cut"
  c.mesh.shape = (-1, 1, 8, 1)  # Experts split over 8 devices (all-to-all dispatch).
  t = c.train
  t.steps = 100_000
  t.learning_rate = 1e-3
  t.warmup_steps = 10_000
  t.log_every = 100
  t.eval_every = 5_000
  t.checkpoint_every = 2_000
  # FLEURS has no intents or slots: the task heads get no data and no loss.
  t.loss.task = 0.0
  c.eval.splits = ("test",)
  return c
