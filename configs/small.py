"""Small: one accelerator.

moe-asr model-info --config configs/small.py
"""

from configs import base


def get_config():
  return base.get_config(model="small", corpus="demo")
