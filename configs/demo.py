"""The demo (`moe-asr demo`): trains on the embedded demo corpus on a 2-core CPU.

moe-asr demo --workdir runs/demo
moe-asr train --config configs/demo.py --workdir runs/demo   # the training part alone
"""

from configs import base


def get_config():
  c = base.get_config(model="demo", corpus="demo")
  # Two static shapes of about the same cost (each compiles once, about a minute on 2
  # cores); together they hold 98% of the demo corpus (the rest, over 4 s, is skipped in
  # training and scored in evaluation).
  c.data.buckets = ((2.4, 24), (4.0, 12))
  c.data.tokens_per_second = 12.0
  c.data.eval_splits = ("validation",)
  t = c.train
  t.steps = 800
  t.learning_rate = 1e-3
  t.warmup_steps = 50
  # Output projections of the blocks (fan-in up to 576) at a quarter of the rate: with
  # Adam each of their weights moves by about lr, so their outputs move by about
  # lr * fan_in, and early on, in the direction shared by all frames (the blocks'
  # within-utterance spread then collapses; measured over 20 steps at 1.5e-3, block 2
  # kept 0.73 of it with this and 0.43 without).
  t.lr_multipliers = (("encoder/blocks/.*/(down|linear_out|pointwise2)/.*", 0.25),)
  t.oracle_mix_steps = 300
  t.log_every = 25
  t.eval_every = 0  # Validation once, at the end.
  t.checkpoint_every = 250
  c.eval.splits = ("test", "test_cs", "test_noisy", "test_bias")
  return c
