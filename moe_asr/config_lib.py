"""Loading experiment configs (python files with `get_config`) and applying overrides.

Configs follow the Flax-examples / big_vision convention: a python file whose
`get_config(arg=None)` returns an `ml_collections.ConfigDict`. Overrides use the
`--config.a.b=value` syntax of `ml_collections.config_flags`; values are parsed
as Python literals and must keep the type of the field they replace (a bool is not an
int). Settings with a range (`RANGES`) are checked in one place, `validate`: after a
config file is loaded and for every override.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import math
import numbers
import pathlib
import sys
from collections.abc import Callable, Sequence

import ml_collections


class ConfigError(ValueError):
  """A config file or override names an unknown key or gives a bad value."""

  def __str__(self) -> str:  # A KeyError subclass would quote its message.
    return str(self.args[0]) if self.args else ""


class UnknownConfigKeyError(ConfigError, KeyError):
  """An override names a key or section the config does not have."""


class ConfigTypeError(ConfigError, TypeError):
  """An override's value has another type than the setting it replaces."""


def load_config(
  path: str | pathlib.Path, overrides: Sequence[str] = (), *, kind: str = "experiment"
) -> ml_collections.ConfigDict:
  """Loads `path[:arg]` (a file or a preset name) and applies `key.sub=value` overrides.

  Args:
    path: a python config file or a preset name (`tiny`, `corpus/tiny`; `presets()` lists
      them), optionally followed by `:arg` passed to `get_config`.
    overrides: strings `a.b=value` (a leading `--config.` or `config.` is accepted).
    kind: "experiment" or "corpus": where a bare preset name is looked up first.

  Returns:
    The locked config.
  """
  file, arg = resolve_config(path, kind=kind)
  # A config file of the user's own may import shared pieces as `configs.x.y` from a
  # `configs/` folder of theirs: make the folder above it importable. The packaged presets
  # import `moe_asr.configs.x` and need nothing.
  packaged = config_dir().resolve()
  if packaged not in file.resolve().parents:
    for parent in file.resolve().parents:
      if parent.name == "configs" and str(parent.parent) not in sys.path:
        sys.path.insert(0, str(parent.parent))
        break
  name = f"_moe_asr_config_{file.stem}"
  loader = importlib.machinery.SourceFileLoader(name, str(file))  # Any file name.
  spec = importlib.util.spec_from_file_location(name, file, loader=loader)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{file} defines no get_config()")
  cfg = module.get_config(arg) if arg is not None else module.get_config()
  cfg = ml_collections.ConfigDict(cfg)
  if "train" in cfg and "distributed" not in cfg:  # An experiment config: its timeouts.
    from moe_asr.training import distributed

    cfg.distributed = distributed.default_config()
  apply_overrides(cfg, overrides)
  validate(cfg)
  cfg.lock()
  return cfg


# --- Ranges -------------------------------------------------------------------


def _at_least(low: float, *, integer: bool = False) -> Callable[[object], str | None]:
  def check(value):
    if integer and not _is_int(value):
      return "an integer"
    if not _is_number(value) or not value >= low:
      return f"{'an integer' if integer else 'a number'} >= {low}"
    return None

  return check


def _between(low: float, high: float, *, open_low=False, open_high=False) -> Callable:
  def check(value):
    if not _is_number(value) or not math.isfinite(value):
      return f"a number in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    below = value <= low if open_low else value < low
    above = value >= high if open_high else value > high
    if below or above:
      return f"a number in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    return None

  return check


def _one_of(*choices: str) -> Callable[[object], str | None]:
  return lambda value: None if value in choices else f"one of {', '.join(map(repr, choices))}"


def _buckets(value) -> str | None:
  what = "((max_seconds > 0, batch_size >= 1), ...), longest last"
  try:
    pairs = [(float(sec), n) for sec, n in value]
  except (TypeError, ValueError):
    return what
  if not pairs or any(sec <= 0 or not _is_int(n) or n < 1 for sec, n in pairs):
    return what
  if [sec for sec, _ in pairs] != sorted(sec for sec, _ in pairs):
    return what
  return None


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


_COUNT = _at_least(0, integer=True)
_POSITIVE_COUNT = _at_least(1, integer=True)
_POSITIVE = _between(0, math.inf, open_low=True, open_high=True)
_FRACTION = _between(0, 1)

# Settings that have a range: dotted key -> check(value) -> None, or what the value must be.
RANGES: dict[str, Callable[[object], str | None]] = {
  "seed": _COUNT,
  "data.buckets": _buckets,
  "data.vocab_size": _COUNT,
  "data.character_coverage": _between(0, 1, open_low=True),
  "data.tokens_per_second": _POSITIVE,
  "data.words_per_second": _POSITIVE,
  "data.long_policy": _one_of("skip", "cut"),
  "data.num_threads": _COUNT,
  "data.prefetch": _COUNT,
  "data.curriculum.steps": _COUNT,
  "data.curriculum.start_fraction": _between(0, 1, open_low=True),
  "train.steps": _POSITIVE_COUNT,
  "train.learning_rate": _POSITIVE,
  "train.warmup_steps": _COUNT,
  "train.end_lr_ratio": _FRACTION,
  "train.b1": _between(0, 1, open_high=True),
  "train.b2": _between(0, 1, open_high=True),
  "train.weight_decay": _at_least(0),
  "train.clip_norm": _at_least(0),
  "train.oracle_mix": _FRACTION,
  "train.oracle_mix_steps": _COUNT,
  "train.nonfinite": _one_of("skip", "stop"),
  "train.max_nonfinite": _POSITIVE_COUNT,
  "train.log_every": _POSITIVE_COUNT,
  "train.eval_every": _COUNT,
  "train.eval_max_batches": _COUNT,
  "train.checkpoint_every": _COUNT,
  "train.keep_checkpoints": _POSITIVE_COUNT,
  "train.preemption_sync_every": _POSITIVE_COUNT,
  "eval.bootstrap_samples": _COUNT,
  "eval.long_policy": _one_of("window", "bucket"),
  "eval.max_batches": _COUNT,
  "decode.method": _one_of("greedy", "ctc_beam", "joint"),
  "decode.beam": _POSITIVE_COUNT,
  "decode.nbest": _COUNT,
  "decode.max_len": _COUNT,
  "decode.token_topk": _COUNT,
  "lm_train.steps": _POSITIVE_COUNT,
  "lm_train.batch_size": _POSITIVE_COUNT,
  "transfer.adapter_gate": _one_of("language", "none"),
  "transfer.lid_margin": _at_least(0),
  "transfer.vocab_gate": _one_of("language", "none"),
  "transfer.lid_prior": _one_of("mix", "none"),
  "distributed.initialization_timeout_s": _POSITIVE_COUNT,
  "distributed.heartbeat_timeout_s": _POSITIVE_COUNT,
  "distributed.shutdown_timeout_s": _POSITIVE_COUNT,
  "distributed.peer_timeout_s": _COUNT,
}


def _lookup(cfg: ml_collections.ConfigDict, key: str):
  node = cfg
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict | dict) or part not in node:
      return _MISSING
    node = node[part]
  return node


_MISSING = object()


def validate(cfg: ml_collections.ConfigDict, keys: Sequence[str] | None = None) -> None:
  """Checks the settings that have a range (`RANGES`); settings a config lacks are skipped.

  Args:
    cfg: the config.
    keys: only these dotted keys (default: every key of `RANGES`).

  Raises:
    ConfigError: naming the first setting out of its range, its value and the range.
  """
  for key in RANGES if keys is None else keys:
    check = RANGES.get(key)
    value = _lookup(cfg, key)
    if check is None or value is _MISSING:
      continue
    expected = check(value)
    if expected is not None:
      raise ConfigError(f"config.{key}={value!r} is out of range: it must be {expected}")


# Sections whose keys are free (e.g. `decode.lm_weights.en=0.3`): overrides may add keys.
OPEN_SECTIONS = ("lm_weights",)


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Applies `a.b=value` overrides in place, each type- and range-checked.

  Raises:
    UnknownConfigKeyError (a KeyError): the key or a section on its path does not exist.
    ConfigTypeError (a TypeError): the value's type differs from the setting's.
    ConfigError (a ValueError): malformed, or out of the setting's range (`RANGES`).
  """
  for item in overrides:
    item = item.removeprefix("--").removeprefix("config.")
    if "=" not in item:
      raise ConfigError(f"Override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    parent = cfg
    *path, leaf = key.split(".")
    for depth, part in enumerate(path):
      if not isinstance(parent, ml_collections.ConfigDict) or part not in parent:
        where = ".".join(path[:depth]) or "the config"
        known = sorted(parent.keys()) if isinstance(parent, ml_collections.ConfigDict) else []
        raise UnknownConfigKeyError(
          f"Unknown config section {'.'.join(path[: depth + 1])!r} in override {key}={raw}; "
          f"{where} has {', '.join(known) if known else 'no sections'}"
        )
      parent = parent[part]
    if not isinstance(parent, ml_collections.ConfigDict):
      raise UnknownConfigKeyError(
        f"Unknown config key {key!r}: {'.'.join(path)} is a setting, not a section"
      )
    if leaf not in parent and not (path and path[-1] in OPEN_SECTIONS):
      raise UnknownConfigKeyError(f"Unknown config key {key!r}")
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
    # A bool is an int to Python, not to a setting: `train.steps=True` is refused.
    bool_mismatch = isinstance(value, bool) != isinstance(old, bool)
    if old is not None and (not isinstance(value, type(old)) or bool_mismatch):
      raise ConfigTypeError(
        f"Override {key}={raw!r}: expected {type(old).__name__}, got {type(value).__name__}"
      )
    parent[leaf] = value
    validate(cfg, [key])


KINDS = ("experiment", "corpus")


def config_dir() -> pathlib.Path:
  """The presets shipped inside the package (`moe_asr/configs/`)."""
  return pathlib.Path(__file__).resolve().parent / "configs"


def presets(kind: str = "experiment") -> list[str]:
  """The preset names of a kind: `tiny`, `demo`, ... or `tiny`, `demo` for corpus configs."""
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  folder = config_dir() / ("corpus" if kind == "corpus" else "")
  return sorted(p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "base", "common"))


def resolve_config(
  spec: str | pathlib.Path, *, kind: str = "experiment"
) -> tuple[pathlib.Path, str | None]:
  """The config file and `get_config` argument that `spec` names.

  `spec` is a path to a python file, or a preset name: `tiny` is `moe_asr/configs/tiny.py`
  for an experiment and `moe_asr/configs/corpus/tiny.py` for a corpus; `corpus/tiny` and
  `models/tiny` name the file under the packaged folder whatever the kind. A `:arg` suffix
  is passed to `get_config`. An existing file wins over a preset of the same name.

  Raises:
    FileNotFoundError: neither a file nor a preset, with the presets of the kind.
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  spec = str(spec)
  candidates = [(spec, None)]
  if ":" in spec:
    head, arg = spec.rsplit(":", 1)
    candidates.append((head, arg))
  for name, arg in candidates:
    file = pathlib.Path(name)
    if file.is_file():
      return file, arg
  for name, arg in candidates:
    if name.endswith(".py") or "\\" in name or name.startswith((".", "/", "~")):
      continue  # A path, not a preset name.
    folders = [config_dir() / "corpus", config_dir()] if kind == "corpus" else [config_dir()]
    for folder in folders:
      file = folder / f"{name}.py"
      if file.is_file():
        return file, arg
  names = presets(kind)
  if kind == "experiment":
    names += [f"corpus/{n}" for n in presets("corpus")]
  raise FileNotFoundError(
    f"Config file not found: {spec} (not a file, nor a {kind} preset: {', '.join(names)})"
  )
