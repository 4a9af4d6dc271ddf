"""Checkpoint averaging: the mean of a run's last N saved parameters (`--average-last N`).

As ESPnet's `average_checkpoints` and icefall's `--avg`: the model parameters of the last N
saved steps (up to a chosen step) are averaged element-wise, in float64, and cast back to
each parameter's dtype; integer leaves (counters) keep the newest step's value. The
optimizer state is not averaged (eval and transcribe do not read it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import jax
import numpy as np

from moe_asr import runtime
from moe_asr.training import state as state_lib

_LOG = logging.getLogger(__name__)


def steps_to_average(saved: Sequence[int], n: int, up_to: int | None = None) -> list[int]:
  """The last `n` of the saved steps at or before `up_to` (default: the newest), oldest first.

  Raises:
    ValueError: n < 1, or fewer than n such steps are saved.
  """
  if n < 1:
    raise ValueError(f"--average-last must be >= 1, got {n}")
  candidates = sorted(s for s in saved if up_to is None or s <= up_to)
  if len(candidates) < n:
    raise ValueError(
      f"--average-last {n}: only {len(candidates)} saved steps "
      f"{'up to ' + str(up_to) + ' ' if up_to is not None else ''}({candidates}); "
      f"keep more (train.keep_checkpoints) or average fewer"
    )
  return candidates[-n:]


def average_params(param_sets: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """{name: mean array} of flat parameter dicts (the same names and shapes in each).

  Floating arrays are averaged in float64 and cast back; others keep the last set's value.
  """
  if not param_sets:
    raise ValueError("nothing to average")
  names = set(param_sets[0])
  for params in param_sets[1:]:
    if set(params) != names:
      raise ValueError(f"checkpoints differ in their parameters: {sorted(names ^ set(params))}")
  out = {}
  for name in param_sets[0]:
    arrays = [np.asarray(p[name]) for p in param_sets]
    if any(a.shape != arrays[0].shape for a in arrays):
      raise ValueError(f"{name}: shapes differ between checkpoints: {[a.shape for a in arrays]}")
    if np.issubdtype(arrays[-1].dtype, np.floating) or arrays[-1].dtype.name == "bfloat16":
      mean = np.mean([a.astype(np.float64) for a in arrays], axis=0)
      out[name] = mean.astype(arrays[-1].dtype)
    else:
      out[name] = arrays[-1]
  return out


def average_last(run: runtime.Run, n: int, step: int | None = None) -> list[int]:
  """Replaces `run.state`'s model parameters by the mean of the last `n` saved steps.

  Args:
    run: a run built by `runtime.build_run` (its checkpointer names the saved steps).
    n: how many saved steps to average (1: the newest alone, read back as saved).
    step: average the last n steps up to this one (default: the newest saved).

  Returns:
    The averaged steps, oldest first.
  """
  steps = steps_to_average(run.checkpointer.all_steps(), n, step)
  directory = str(run.checkpointer.directory)
  mean = average_params([runtime.saved_params(directory, s) for s in steps])
  placed = 0

  def put(path, leaf):
    nonlocal placed
    name = state_lib.path_name(path)
    if name not in mean:
      raise ValueError(f"{name} is not in the checkpoints of steps {steps}")
    value = mean[name]
    if tuple(value.shape) != tuple(leaf.shape):
      raise ValueError(f"{name}: checkpoint shape {value.shape}, model shape {leaf.shape}")
    placed += 1
    return jax.device_put(value.astype(leaf.dtype), leaf.sharding)

  state = run.state
  state["model"] = jax.tree_util.tree_map_with_path(put, state["model"])
  run.state = state
  _LOG.info("Averaged %d parameter arrays of steps %s", placed, steps)
  return steps
