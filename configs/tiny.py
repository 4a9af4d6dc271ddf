"""Tiny: tests and quick CPU checks.

moe-asr model-info --config configs/tiny.py
"""

from configs import base


def get_config():
  return base.get_config(model="tiny", corpus="tiny")
