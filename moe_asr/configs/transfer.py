"""Transfer through `moe-asr train`: the same as `moe-asr transfer` (see moe_asr/training/transfer.py).

moe-asr train --config transfer --workdir W2 --config.transfer.source=W \
  --config.transfer.language=ru --config.transfer.method=expert --config.train.steps=300

The model, data and training settings come from the source run's config; other
`--config.*` overrides apply on top of them.
"""

from moe_asr.configs import base
from moe_asr.training import transfer


def get_config():
  c = base.get_config()
  c.transfer = transfer.config_section()
  return c
