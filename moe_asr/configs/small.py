"""Small: one accelerator.

moe-asr model-info --config small
"""

from moe_asr.configs import base


def get_config():
  return base.get_config(model="small", corpus="demo")
