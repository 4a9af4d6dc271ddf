"""The demo (`moe-asr demo`): trains on the embedded demo corpus on a 2-core CPU.

moe-asr demo --workdir runs/demo
moe-asr train --config demo --workdir runs/demo   # the training part alone

What each setting was measured against: docs/results/demo.md.
"""

from moe_asr.configs import base


def get_config():
  c = base.get_config(model="demo", corpus="demo")
  # Two static shapes of about the same cost holding 98% of the corpus; half-size batches
  # give twice the updates for the same audio, which learns faster this early.
  c.data.buckets = ((2.4, 12), (4.0, 6))
  # Characters, not word pieces: each letter is seen thousands of times an epoch.
  c.data.vocab_size = 1190
  c.data.character_coverage = 1.0
  c.data.tokens_per_second = 20.0
  # 25 Hz CTC frames: 50 Hz helps French and German but costs Mandarin, Hindi and test_cs.
  c.model.ctc_upsample = 1
  c.data.eval_splits = ("validation",)
  # 32 channels in the subsampling convolutions: at 144 they were half of the step.
  c.model.encoder.subsampling_channels = 32
  # Self-conditioned intermediate CTC on block 2 (the LID block).
  c.model.inter_ctc.layers = (2,)
  c.model.inter_ctc.self_condition = True
  # Phone CTC on the same block: one phone inventory for every language, learnt fast.
  c.model.phone_ctc.layers = (2,)
  # The word tagger also embeds whole words by hash: entities are learnt from their first sight.
  c.model.task.word_hash_buckets = 8192
  # The utterance LID reads the top block (better LID, same step cost).
  c.model.encoder.utt_lid_layer = -1
  # Short and clean utterances first (length and SNR), then the full mix: the first 20%.
  c.data.curriculum.steps = 460
  c.data.curriculum.by = "length+snr"
  c.data.curriculum.start_fraction = 0.3
  t = c.train
  # As many steps as fit 20 minutes of a 2-core CPU with compiling and scoring (2.5 a second).
  t.steps = 2300
  # A peak of 3e-3 for the recogniser: 1e-3 left CER on the table in this short schedule.
  t.learning_rate = 3e-3
  t.warmup_steps = 50
  # CTC-heavy: the CTC output (greedy or prefix beam) is what transcribes in this budget.
  t.loss.ctc = 1.0
  t.loss.att = 0.3
  t.loss.inter_ctc = 0.3
  t.loss.phone_ctc = 0.3
  # The intent loss also on the greedy CTC hypothesis, once hypotheses are worth reading.
  t.loss.task_hyp = 0.3
  t.loss.task_hyp_warmup = (1150, 380)
  # Output projections of the blocks at a quarter of the rate: with Adam their outputs move
  # by about lr * fan_in, early on in the direction shared by all frames. The attention
  # decoder and the task heads at a third (1e-3): at 3e-3 they lose intent accuracy.
  t.lr_multipliers = (
    ("encoder/blocks/.*/(down|linear_out|pointwise2)/.*", 0.25),
    ("(decoder|task_heads)/.*", 0.333),
  )
  t.oracle_mix_steps = 850
  t.log_every = 25
  t.eval_every = 0  # Validation once, at the end.
  t.checkpoint_every = 1000
  c.eval.splits = ("test", "test_cs", "test_noisy", "test_bias")
  # The joint CTC/attention search: 1 to 5 points of WER off greedy CTC on every test split.
  c.decode.method = "joint"
  # Beam 8 adds little to 4 at 1.7 times its time; 4 keeps the demo within 20 minutes.
  c.decode.beam = 4
  # Joint search leans on the CTC: the attention decoder trains at a third of its weight.
  c.decode.ctc_weight = 0.7
  return c
