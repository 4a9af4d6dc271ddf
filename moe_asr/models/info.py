"""Parameter counts, total and active per token, from an abstract model.

`model_info(config)` builds the model under `nnx.eval_shape` (no parameter is
allocated, so the TPU-scale preset is measured on a laptop) and counts, per
component, every parameter and the ones a token actually uses: a routed-expert
block uses `top_k` of its `num_experts` experts (one with the hard language
router, all with the soft one), plus its router and shared expert.

The memory a training step needs per device is `training.memory.train_memory`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections
from flax import nnx

from moe_asr.models import lm as lm_lib
from moe_asr.models import model as model_lib
from moe_asr.models.moe import MoeFeedForward

_EXPERT_WEIGHTS = ("w_gate", "w_up", "w_down")


def _size(x: Any) -> int:
  return int(math.prod(x.shape)) if hasattr(x, "shape") else 0


def _active_fraction(moe: MoeFeedForward) -> float:
  if moe.router == "language":
    return 1.0 if moe.language_soft else 1.0 / moe.num_experts
  return moe.top_k / moe.num_experts


def count_params(module: nnx.Module) -> dict[str, dict[str, int]]:
  """{component: {"total": n, "active": n}} for the direct children of `module`."""
  out: dict[str, dict[str, int]] = {}
  for name, child in vars(module).items():
    if not isinstance(child, nnx.Module | nnx.Variable):
      continue
    state = nnx.state(child, nnx.Param) if isinstance(child, nnx.Module) else child
    total = sum(_size(x) for x in jax.tree.leaves(state))
    inactive = 0
    if isinstance(child, nnx.Module):
      for _, sub in nnx.iter_graph(child):
        if isinstance(sub, MoeFeedForward):
          experts = sum(_size(getattr(sub, w)) for w in _EXPERT_WEIGHTS if hasattr(sub, w))
          inactive += round(experts * (1.0 - _active_fraction(sub)))
    out[name] = {"total": total, "active": total - inactive}
  return out


def model_info(
  cfg: ml_collections.ConfigDict,
  *,
  vocab_size: int = 2000,
  num_intents: int = 24,
  num_slot_tags: int = 39,
) -> dict[str, Any]:
  """Sizes of `config.model` (and its text LM), computed abstractly.

  Args:
    cfg: an experiment config (with `model`).
    vocab_size, num_intents, num_slot_tags: output sizes (those of the corpus).

  Returns:
    {"components": {name: {"total", "active"}}, "params_total", "params_active",
     "lm": {"total", "active"}}.
  """
  model = nnx.eval_shape(
    lambda: model_lib.MoeAsr(
      cfg.model,
      vocab_size=vocab_size,
      num_intents=num_intents,
      num_slot_tags=num_slot_tags,
      rngs=nnx.Rngs(0),
    )
  )
  components = count_params(model)
  lm = nnx.eval_shape(
    lambda: lm_lib.TransformerLM.from_config(
      model_lib.module_config(cfg.model.lm, dtype=cfg.model.dtype, vocab_size=vocab_size),
      rngs=nnx.Rngs(0),
    )
  )
  lm_total = sum(_size(x) for x in jax.tree.leaves(nnx.state(lm, nnx.Param)))
  return {
    "components": components,
    "params_total": sum(c["total"] for c in components.values()),
    "params_active": sum(c["active"] for c in components.values()),
    "lm": {"total": lm_total, "active": lm_total},
  }


def format_info(info: dict[str, Any], title: str = "") -> str:
  """A table of `model_info`."""
  rows = [(name, c["total"], c["active"]) for name, c in info["components"].items()]
  rows.append(("total (ASR + task heads)", info["params_total"], info["params_active"]))
  rows.append(("text LM (separate)", info["lm"]["total"], info["lm"]["active"]))
  width = max(len(r[0]) for r in rows)
  lines = [title] if title else []
  lines.append(f"{'component'.ljust(width)}  {'params':>14}  {'active/token':>14}")
  for name, total, active in rows:
    lines.append(f"{name.ljust(width)}  {total:>14,}  {active:>14,}")
  return "\n".join(lines)
