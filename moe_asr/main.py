"""`python -m moe_asr.main --config=tiny --workdir=W [--config.train.steps=200]`.

Intentionally short (Flax-examples style): parse flags, call the library.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
  from moe_asr import commandline, config_lib
  from moe_asr.training import distributed, train

  rest, overrides = commandline.split_overrides(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(prog="python -m moe_asr.main", description=__doc__)
  parser.add_argument("--config", required=True, help=commandline.preset_help("experiment"))
  parser.add_argument("--workdir", required=True, help="where checkpoints and metrics go")
  args = parser.parse_args(rest)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  cfg = config_lib.load_config(args.config, overrides)  # Touches no device: before joining.
  distributed.initialize(timeouts=cfg.get("distributed"))
  train.train_and_evaluate(cfg, args.workdir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
