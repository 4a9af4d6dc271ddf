"""The demo: trains on the demo corpus on a 2-core CPU.

moe-asr model-info --config configs/demo.py
"""

from configs import base


def get_config():
  return base.get_config(model="demo", corpus="demo")
