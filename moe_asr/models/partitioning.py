"""Logical axis names for parameters and activations (t5x / MaxText style).

Every parameter carries logical axis names (`("embed", "mlp")`), never mesh
axes, so one model shards on 1 CPU, 8 fake devices or a TPU pod by changing
only the config's mesh and rules. Training maps names to mesh axes with
`logical_to_mesh_specs(state, rules)`; activations get `constrain(x, axes)` at
layer boundaries, which is a no-op unless `axis_rules(rules, mesh)` is active.

The `expert` axis also splits the batch: outside the routed experts a device of the expert
axis is one more data-parallel device, and in an expert-parallel MoE layer
(`moe.MoeFeedForward`) each device sends its own tokens to the devices that hold their
experts (all-to-all). `active_mesh()` and `mesh_axes(name)` tell a layer the mesh and the
mesh axes of a logical name while `axis_rules` is active.

Logical axes used by the models:
  batch       examples                      length      time frames / tokens
  embed       model width                   mlp         feed-forward hidden width
  heads       attention heads               kv          per-head width
  vocab       output vocabulary             expert      routed experts
  lang        languages (stacked heads)     conv        convolution kernel taps
  classes     task-head classes             norm        normalisation scales
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

# Logical -> mesh axis rules for DESIGN's mesh ('data', 'fsdp', 'expert', 'tensor').
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ("batch", ("data", "fsdp", "expert")),
  ("length", None),
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("kv", None),
  ("vocab", "tensor"),
  ("expert", "expert"),
  ("lang", None),
  ("conv", None),
  ("classes", None),
  ("norm", None),
)

_context = threading.local()


def with_axes(init: nnx.Initializer, axes: Sequence[str | None]) -> nnx.Initializer:
  """An initializer whose parameter carries logical axis names (not mesh axes)."""
  return nnx.with_partitioning(init, tuple(axes), eager_sharding=False)


def dense(
  in_features: int,
  out_features: int,
  axes: tuple[str | None, str | None],
  *,
  rngs: nnx.Rngs,
  dtype=None,
  param_dtype=jnp.float32,
  use_bias: bool = True,
  kernel_init: nnx.Initializer | None = None,
) -> nnx.Linear:
  """`nnx.Linear` with logically named kernel [in, out] and bias [out].

  With a low-precision `dtype` (bfloat16) inputs and kernel are cast to it and
  the matmul accumulates in float32 (`preferred_element_type`).
  """
  kernel_init = kernel_init or nnx.initializers.lecun_normal()
  return nnx.Linear(
    in_features,
    out_features,
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=param_dtype,
    kernel_init=with_axes(kernel_init, axes),
    bias_init=with_axes(nnx.initializers.zeros_init(), (axes[1],)),
    preferred_element_type=jnp.float32 if dtype not in (None, jnp.float32) else None,
    rngs=rngs,
  )


def param(
  rngs: nnx.Rngs,
  init: nnx.Initializer,
  shape: Sequence[int],
  axes: Sequence[str | None],
  dtype=jnp.float32,
) -> nnx.Param:
  """A parameter of `shape` with logical axis names."""
  if len(axes) != len(shape):
    raise ValueError(f"{len(axes)} axis names {tuple(axes)} for shape {tuple(shape)}")
  return nnx.Param(
    init(rngs.params(), tuple(shape), dtype), out_sharding=tuple(axes), eager_sharding=False
  )


@contextlib.contextmanager
def axis_rules(rules: Sequence[tuple[str, object]], mesh: jax.sharding.Mesh) -> Iterator[None]:
  """Activates activation constraints for code traced inside the block."""
  previous = getattr(_context, "value", None)
  _context.value = (tuple(tuple(r) for r in rules), mesh)
  try:
    yield
  finally:
    _context.value = previous


def active_mesh() -> jax.sharding.Mesh | None:
  """The mesh of the active `axis_rules` block (None outside one)."""
  active = getattr(_context, "value", None)
  return None if active is None else active[1]


def mesh_axes(name: str) -> tuple[str, ...]:
  """The mesh axes the logical axis `name` maps to under the active rules (() outside).

  Axes the active mesh does not have are left out.
  """
  active = getattr(_context, "value", None)
  if active is None:
    return ()
  rules, mesh = active
  (target,) = nn.logical_to_mesh_axes((name,), rules)
  names = (target,) if isinstance(target, str) else tuple(target or ())
  return tuple(a for a in names if a in mesh.axis_names)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """`with_sharding_constraint` by logical names; identity outside `axis_rules`."""
  active = getattr(_context, "value", None)
  if active is None:
    return x
  rules, mesh = active
  spec = nn.logical_to_mesh_axes(tuple(axes), rules)
  return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))


def logical_to_mesh_specs(tree, rules: Sequence[tuple[str, object]]):
  """Mesh `PartitionSpec`s of an NNX state (or abstract state) under `rules`."""
  logical = nnx.get_partition_spec(tree)
  return jax.tree.map(
    lambda s: (
      nn.logical_to_mesh_axes(tuple(s), rules) if isinstance(s, jax.sharding.PartitionSpec) else s
    ),
    logical,
    is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec),
  )
