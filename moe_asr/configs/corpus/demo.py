"""The demo corpus: about eight hours of speech (six to train on), built in about four minutes
on a 2-core CPU.

moe-asr corpus build --config demo --data-dir data
"""

from moe_asr.configs.corpus import base


def get_config():
  c = base.get_config()
  c.name = "demo"
  # 12000 train utterances: the demo passes over them about 2.5 times and generalises better
  # than from 6000 (docs/results/demo.md).
  c.splits = dict(
    train=12000,
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
