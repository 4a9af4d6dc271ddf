"""Loading experiment configs (python files with `get_config`) and applying overrides.

Configs follow the Flax-examples / big_vision convention: a python file whose
`get_config(arg=None)` returns an `ml_collections.ConfigDict`. Overrides use the
`--config.a.b=value` syntax of `ml_collections.config_flags`; values are parsed
as Python literals and must keep the type of the field they replace.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import sys
from collections.abc import Sequence

import ml_collections


def load_config(
  path: str | pathlib.Path, overrides: Sequence[str] = ()
) -> ml_collections.ConfigDict:
  """Loads `path[:arg]` and applies `key.sub=value` overrides.

  Args:
    path: a python config file, optionally followed by `:arg` passed to `get_config`.
    overrides: strings `a.b=value` (a leading `--config.` or `config.` is accepted).

  Returns:
    The locked config.
  """
  path = str(path)
  arg = None
  if ":" in path and not pathlib.Path(path).exists():
    path, arg = path.rsplit(":", 1)
  file = pathlib.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"Config file not found: {file}")
  # Configs import shared pieces as `configs.x.y`: make the folder above
  # `configs/` importable when the file lives under one.
  for parent in file.resolve().parents:
    if parent.name == "configs" and str(parent.parent) not in sys.path:
      sys.path.insert(0, str(parent.parent))
      break
  spec = importlib.util.spec_from_file_location(f"_moe_asr_config_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{file} defines no get_config()")
  cfg = module.get_config(arg) if arg is not None else module.get_config()
  cfg = ml_collections.ConfigDict(cfg)
  apply_overrides(cfg, overrides)
  cfg.lock()
  return cfg


# Sections whose keys are free (e.g. `decode.lm_weights.en=0.3`): overrides may add keys.
OPEN_SECTIONS = ("lm_weights",)


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Applies `a.b=value` overrides in place; unknown keys raise KeyError."""
  for item in overrides:
    item = item.removeprefix("--").removeprefix("config.")
    if "=" not in item:
      raise ValueError(f"Override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    parent = cfg
    *path, leaf = key.split(".")
    for part in path:
      parent = parent[part]
    if leaf not in parent and not (path and path[-1] in OPEN_SECTIONS):
      raise KeyError(f"Unknown config key {key!r}")
    old = parent.get(leaf)
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw  # A bare string.
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if isinstance(old, tuple) and isinstance(value, list):
      value = tuple(value)
    if isinstance(old, list) and isinstance(value, tuple):  # A config restored from JSON.
      value = list(value)
    if old is not None and not isinstance(value, type(old)):
      raise TypeError(
        f"Override {key}={raw!r}: expected {type(old).__name__}, got {type(value).__name__}"
      )
    parent[leaf] = value


def config_dir() -> pathlib.Path:
  """The repository's `configs/` folder (an editable install keeps it beside the package)."""
  return pathlib.Path(__file__).resolve().parents[1] / "configs"
