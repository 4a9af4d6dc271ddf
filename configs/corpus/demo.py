"""The demo corpus: a few hours of speech, built in minutes on a 2-core CPU.

moe-asr corpus build --config configs/corpus/demo.py --data-dir data
"""

from configs.corpus import base


def get_config():
  c = base.get_config()
  c.name = "demo"
  c.splits = dict(
    train=6000,
    validation=300,
    test=600,
    test_cs=400,
    test_noisy=400,
    test_bias=200,
    unlabeled=600,
    heldout_train=600,
    heldout_test=200,
  )
  return c
