"""Tiny: tests and quick CPU checks.

moe-asr model-info --config tiny
"""

from moe_asr.configs import base


def get_config():
  c = base.get_config(model="tiny", corpus="tiny")
  # Tiny runs last tens of steps: a 200-step warm-up would keep them near lr 0.
  c.train.warmup_steps = 20
  return c
