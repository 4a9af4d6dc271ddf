"""The train state: model, optimizer and counters as one NNX module.

Training splits it into a graph definition (static), the RNG state (reseeded
from the step inside every step, so never checkpointed) and everything else
(parameters, optimizer moments, counters), which is what gets sharded,
donated and checkpointed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from moe_asr.models import model as model_lib

_LOG = logging.getLogger(__name__)


class Counter(nnx.Variable):
  """An integer the step updates (not a parameter, not optimizer state)."""


class TrainState(nnx.Module):
  """What a training step reads and writes."""

  def __init__(self, model: model_lib.MoeAsr, tx: optax.GradientTransformation):
    self.model = model
    self.optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    self.step = Counter(jnp.zeros((), jnp.int32))  # Steps taken, skipped ones included.
    self.nonfinite = Counter(jnp.zeros((), jnp.int32))  # Steps skipped (non-finite).
    self.nonfinite_run = Counter(jnp.zeros((), jnp.int32))  # ... in a row, now.


def path_name(path: Sequence) -> str:
  """'encoder/blocks/3/ffn2/kernel' from a jax key path (the `.value` suffix dropped)."""
  parts = []
  for k in path:
    k = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
    if str(k) in (".value", "value"):
      continue
    parts.append(str(k))
  return "/".join(parts)


def _decays(path: str, leaf) -> bool:
  # Weight decay on matrices (kernels, embeddings, experts), not on biases,
  # norm scales or other vectors.
  return getattr(leaf, "ndim", 0) >= 2


def learning_rate_schedule(cfg: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up to `learning_rate`, cosine decay to `end_lr_ratio` of it."""
  t = cfg.train
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=t.learning_rate,
    warmup_steps=max(1, t.warmup_steps),
    decay_steps=max(t.steps, t.warmup_steps + 1),
    end_value=t.learning_rate * t.end_lr_ratio,
  )


def param_label(path: str, cfg: ml_collections.ConfigDict) -> str:
  """The optimizer group of a parameter: "frozen" or "lr=<multiplier>"."""
  t = cfg.train
  if t.trainable and not re.fullmatch(t.trainable, path):
    return "frozen"
  for pattern, mult in t.lr_multipliers:
    if re.fullmatch(pattern, path):
      return "frozen" if float(mult) == 0.0 else f"lr={float(mult)}"
  return "lr=1.0"


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with warm-up + cosine, clipping, per-group multipliers and freezing."""
  t = cfg.train
  schedule = learning_rate_schedule(cfg)
  groups = {"lr=1.0", "frozen"} | {f"lr={float(m)}" for _, m in t.lr_multipliers if float(m) != 0.0}

  def adamw(mult: float) -> optax.GradientTransformation:
    return optax.adamw(
      lambda step: schedule(step) * mult,
      b1=t.b1,
      b2=t.b2,
      weight_decay=t.weight_decay,
      mask=lambda params: jax.tree_util.tree_map_with_path(
        lambda p, x: _decays(path_name(p), x), params
      ),
    )

  transforms = {g: optax.set_to_zero() if g == "frozen" else adamw(float(g[3:])) for g in groups}

  def labels(params):
    return jax.tree_util.tree_map_with_path(lambda p, _: param_label(path_name(p), cfg), params)

  chain = [optax.clip_by_global_norm(t.clip_norm)] if t.clip_norm > 0 else []
  chain.append(optax.multi_transform(transforms, labels))
  from moe_asr.training import transfer  # A transfer trains only parts of some parameters.

  mask = transfer.optimizer_mask(cfg)
  return optax.chain(*chain, *([mask] if mask is not None else []))


def make_model(
  cfg: ml_collections.ConfigDict,
  *,
  vocab_size: int,
  num_intents: int,
  num_slot_tags: int,
  bos_id: int = 2,
  eos_id: int = 3,
) -> model_lib.MoeAsr:
  """The model of a run config (RNG streams seeded from `config.seed`), with the LoRA or
  adapters of a transfer (`config.transfer`)."""
  model = model_lib.MoeAsr(
    cfg.model,
    vocab_size=vocab_size,
    num_intents=num_intents,
    num_slot_tags=num_slot_tags,
    bos_id=bos_id,
    eos_id=eos_id,
    rngs=nnx.Rngs(cfg.seed, specaug=cfg.seed + 1, condition=cfg.seed + 2, dropout=cfg.seed + 3),
  )
  from moe_asr.training import transfer

  transfer.add_modules(model, cfg)
  return model


def make_train_state(cfg: ml_collections.ConfigDict, **model_kwargs) -> TrainState:
  return TrainState(make_model(cfg, **model_kwargs), make_optimizer(cfg))


def trainable_report(state: TrainState, cfg: ml_collections.ConfigDict) -> dict[str, int]:
  """Parameter counts per optimizer group (logged once at start)."""
  counts: dict[str, int] = {}
  params = nnx.state(state.model, nnx.Param)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    label = param_label(path_name(path), cfg)
    counts[label] = counts.get(label, 0) + int(leaf.size)
  _LOG.info("Parameters per optimizer group: %s", counts)
  return counts
