"""Large: a TPU pod (launch/tpu_pod.sh).

moe-asr model-info --config large
"""

from moe_asr.configs import base


def get_config():
  return base.get_config(model="large", corpus="demo")
