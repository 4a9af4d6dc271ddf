"""A tiny corpus for tests: builds in well under a minute.

moe-asr corpus build --config tiny --data-dir DATA
"""

from moe_asr.configs.corpus import base


def get_config():
  c = base.get_config()
  c.name = "tiny"
  c.splits = dict(
    train=96,
    validation=16,
    test=24,
    test_cs=16,
    test_noisy=16,
    test_bias=8,
    unlabeled=8,
    heldout_train=8,
    heldout_test=8,
  )
  c.voices.num_train_speakers = 24
  c.voices.num_test_speakers = 8
  c.bias_entities_per_language = 1
  c.tokenizer_vocab_size = 600
  return c
