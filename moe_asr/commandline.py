"""What every command line of the package shares (`moe-asr`, `python -m moe_asr.main`).

`split_overrides` separates `--config.a.b=v` overrides from the flags, `preset_help` names
the packaged presets in a `--config` help and `configure_logging` sets up the log lines.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from moe_asr import config_lib


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.a.b=v` overrides (and the `--decode.x=v` shorthand) from the rest."""
  rest, overrides = [], []
  for arg in argv:
    if arg.startswith("--decode."):
      arg = "--config." + arg.removeprefix("--")
    (overrides if arg.startswith("--config.") else rest).append(arg)
  return rest, overrides


def preset_help(kind: str, what: str = "an experiment config file") -> str:
  """Help for a `--config` flag: the packaged presets of `kind`, or `what`."""
  return f"a preset ({', '.join(config_lib.presets(kind))}) or {what}"


def configure_logging(verbose: bool = False) -> None:
  """INFO from moe_asr's loggers; from every logger with `verbose`, else its warnings."""
  # force: absl (imported by TensorFlow and clu) may already have configured the root logger.
  logging.basicConfig(
    level=logging.INFO if verbose else logging.WARNING,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    force=True,
  )
  logging.getLogger("moe_asr").setLevel(logging.INFO)
