"""Phone CTC: phone targets in the batches of a built corpus, and a loss that trains the
lower encoder through the phone head alone."""

import jax
import numpy as np
from conftest import REPO
from flax import nnx

from moe_asr import config_lib
from moe_asr.data import phonemes
from moe_asr.training import inputs, losses, state


def _config(data_dir, *overrides):
  return config_lib.load_config(
    REPO / "moe_asr" / "configs" / "tiny.py",
    [
      f"--config.data.data_dir={data_dir}",
      "--config.data.buckets=((3.0,8),)",
      "--config.model.phone_ctc.layers=(0,)",
      *overrides,
    ],
  )


def test_batches_carry_phone_targets_of_every_language(tiny_corpus, tmp_path):
  data_dir, _, _ = tiny_corpus
  cfg = _config(data_dir)
  data = inputs.load_run_data(cfg, tmp_path)
  assert data.phones is not None and data.phones.size <= cfg.model.phone_ctc.vocab_size
  pipe = inputs.make_pipeline(
    cfg, "test", data, train=False, process_index=0, process_count=1, overrides={"num_threads": 1}
  )
  seen = set()
  for batch in pipe:
    for r in np.flatnonzero(batch["example_mask"]):
      ex = pipe.source[int(batch["index"][r])]
      n = int(batch["phone_mask"][r].sum())
      assert n > 0, batch["id"][r]
      ids = batch["phones"][r, :n].tolist()
      assert phonemes.UNK_ID not in ids
      # The targets are the stored phonemes: one group of ids a word, boundaries between.
      words = [w for w in phonemes.split(ex["phonemes"]) if w]
      assert ids.count(phonemes.WORD_BOUNDARY_ID) == len(words) - 1
      assert data.phones.encode(ex["phonemes"]) == ids
      seen.add(batch["language"][r])
  assert len(seen) >= 6  # Every monolingual language of the tiny test split.


def test_phone_ctc_loss_trains_the_lower_encoder(tiny_corpus, tmp_path):
  data_dir, _, _ = tiny_corpus
  cfg = _config(data_dir, "--config.train.loss.phone_ctc=1.0")
  for name in losses.TERMS:  # The phone CTC term alone.
    if name != "phone_ctc":
      cfg.train.loss[name] = 0.0
  data = inputs.load_run_data(cfg, tmp_path)
  pipe = inputs.make_pipeline(
    cfg, "train", data, train=True, process_index=0, process_count=1, overrides={"num_threads": 1}
  )
  batch = {k: v for k, v in next(iter(pipe)).items() if k not in ("id", "text", "speaker")}
  model = state.make_model(
    cfg,
    vocab_size=data.tokenizer.vocab_size,
    num_intents=data.num_intents,
    num_slot_tags=data.num_slot_tags,
  )

  @nnx.jit
  def grads(model, batch):
    def loss_fn(model):
      out = model(batch)
      return losses.joint_loss(out, batch, cfg.train.loss)

    return nnx.grad(loss_fn, has_aux=True)(model)

  g, metrics = grads(model, batch)
  assert np.isfinite(float(metrics["phone_ctc"])) and float(metrics["phone_ctc"]) > 0
  norm = lambda tree: max(float(np.abs(x).max()) for x in jax.tree.leaves(tree))
  assert norm(g.phone_ctc_head) > 0 and norm(g.encoder.blocks[0]) > 0
  # Blocks above the tapped one get nothing from this loss.
  assert norm(g.encoder.blocks[1]) == 0.0 and norm(g.ctc_head) == 0.0
