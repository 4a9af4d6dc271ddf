"""Ensembles of trained runs for `moe-asr eval` and `transcribe` (`--ensemble W2 W3 ...`).

The members' CTC log-posteriors are averaged with one weight a member before the search,
and every member's task heads read the common hypothesis, their intent and slot
posteriors averaged with the same weights (`decode.make_decode_fn`). The members must share
the tokenizer and the CTC frame rate; their architectures may differ otherwise.

Weights: "equal", "validation" (each member's weight proportional to 1 / its last
validation CER in `W/metrics.jsonl`, the figure every run logs at its end), or explicit
numbers, one a member.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence

from moe_asr import runtime
from moe_asr.training import checkpoint as checkpoint_lib

WEIGHT_MODES = ("equal", "validation")


def combine(runs: Sequence[runtime.Run]) -> runtime.Run:
  """One run whose graphdef, state, RNG state and shardings are tuples over `runs`.

  The first run gives the config, data side, mesh and checkpointer.

  Raises:
    TokenizerMismatchError: a member was trained with another tokenizer than the first.
  """
  first = runs[0]
  for i, run in enumerate(runs[1:], 1):
    a, b = first.tokenizer_id or {}, run.tokenizer_id or {}
    if a.get("sha256") != b.get("sha256"):
      raise checkpoint_lib.tokenizer_mismatch(f"ensemble member {i}", b, a)
  if len(runs) == 1:
    return first
  return dataclasses.replace(
    first,
    graphdef=tuple(r.graphdef for r in runs),
    state=tuple(r.state for r in runs),
    rng_state=tuple(r.rng_state for r in runs),
    state_shardings=tuple(r.state_shardings for r in runs),
  )


def last_validation_cer(workdir: str | pathlib.Path) -> float | None:
  """The last `val/cer` a run logged in `W/metrics.jsonl`, or None."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return None
  cer = None
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(record.get("val/cer"), int | float):
      cer = float(record["val/cer"])
  return cer


def member_weights(workdirs: Sequence[str | pathlib.Path], spec: str | Sequence[float]) -> list:
  """Weights of the members (summing to 1) from "equal", "validation" or numbers.

  Raises:
    ValueError: a wrong count or negative numbers, or a member without a validation CER.
  """
  n = len(workdirs)
  if isinstance(spec, str) and spec not in WEIGHT_MODES:
    spec = [float(x) for x in spec.split(",")]
  if spec == "equal":
    raw = [1.0] * n
  elif spec == "validation":
    raw = []
    for w in workdirs:
      cer = last_validation_cer(w)
      if cer is None:
        raise ValueError(
          f"{w} logged no validation CER (metrics.jsonl); use --ensemble-weights equal"
        )
      raw.append(1.0 / max(cer, 1e-3))
  else:
    raw = [float(x) for x in spec]
    if len(raw) != n or any(x < 0 for x in raw) or not sum(raw) > 0:
      raise ValueError(f"ensemble weights {spec}: need {n} numbers >= 0, not all 0")
  total = sum(raw)
  return [x / total for x in raw]
