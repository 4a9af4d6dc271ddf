"""The demo (`moe-asr demo`): trains on the embedded demo corpus on a 2-core CPU.

moe-asr demo --workdir runs/demo
moe-asr train --config configs/demo.py --workdir runs/demo   # the training part alone
"""

from configs import base


def get_config():
  c = base.get_config(model="demo", corpus="demo")
  # Two static shapes: each costs a compile (about a minute on 2 cores), and 90% of
  # the demo corpus is under 3 s.
  c.data.buckets = ((2.4, 24), (7.5, 8))
  c.data.tokens_per_second = 12.0
  c.data.eval_splits = ("validation",)
  t = c.train
  t.steps = 700
  # Adam at 1e-3 and above drives the encoder output to a constant within a few
  # steps (it stops depending on the audio; LID stays at chance); 5e-4 learns.
  t.learning_rate = 5e-4
  t.warmup_steps = 100
  t.oracle_mix_steps = 300
  t.log_every = 25
  t.eval_every = 0  # Validation once, at the end.
  t.checkpoint_every = 250
  c.eval.splits = ("test", "test_cs", "test_noisy", "test_bias")
  return c
