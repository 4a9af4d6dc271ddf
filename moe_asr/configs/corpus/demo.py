"""The demo corpus: about eight hours of speech (six to train on), built in about four minutes
on a 2-core CPU.

moe-asr corpus build --config demo --data-dir data
"""

from moe_asr.configs.corpus import base


def get_config():
  c = base.get_config()
  c.name = "demo"
  # 12000 train utterances: the `demo` experiment passes over them about 2.5 times. Measured with
  # moe-asr demo (3000 steps) against 6000 (5 passes, training intent 1.0): test CER 0.253
  # against 0.280, intent 0.720 against 0.688, LID 0.958 against 0.945; test_cs MER 0.490
  # against 0.501; building takes about 1.5 minutes longer.
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
