"""Large: a TPU pod (launch/tpu_pod.sh).

moe-asr model-info --config configs/large.py
"""

from configs import base


def get_config():
  return base.get_config(model="large", corpus="demo")
