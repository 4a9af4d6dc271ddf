"""Device mesh, logical axis rules and the shardings of state and batches.

The config names mesh axes and their sizes (`config.mesh.axes`,
`config.mesh.shape`, one `-1` filled with the remaining devices) and the
logical-to-mesh rules (`config.mesh.rules`); parameters carry logical axis
names (`moe_asr.models.partitioning`). The same code then runs on 1 CPU, 8
fake devices, 2 local processes or a TPU pod.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from moe_asr.models import partitioning

# The batch dimension of every array of a batch is split over these mesh axes (as the
# "batch" logical axis of `partitioning.DEFAULT_RULES`): the expert axis is data-parallel
# outside the routed experts, whose layers exchange tokens over it (all-to-all).
BATCH_AXES = ("data", "fsdp", "expert")


def mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Resolves one `-1` in `shape` so that the sizes multiply to `num_devices`."""
  shape = [int(s) for s in shape]
  if shape.count(-1) > 1:
    raise ValueError(f"At most one mesh size may be -1, got {tuple(shape)}")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(
        f"Mesh shape {tuple(shape)}: {num_devices} devices are not divisible by {known}"
      )
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(
      f"Mesh shape {tuple(shape)} needs {math.prod(shape)} devices, have {num_devices}"
    )
  return tuple(shape)


def make_mesh(mesh_cfg: Mapping, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The device mesh of `config.mesh` over all (global) devices."""
  devices = list(jax.devices() if devices is None else devices)
  axes = tuple(mesh_cfg["axes"])
  shape = mesh_shape(mesh_cfg["shape"], len(devices))
  if len(axes) != len(shape):
    raise ValueError(f"Mesh axes {axes} and shape {shape} differ in length")
  # Auto axes: shardings follow from the in/out shardings and logical constraints.
  axis_types = (jax.sharding.AxisType.Auto,) * len(axes)
  if len(devices) == len(jax.devices()):
    # Topology-aware device order (ICI rings on TPU; process-major elsewhere).
    return jax.make_mesh(shape, axes, axis_types=axis_types, devices=devices)
  return Mesh(np.asarray(devices).reshape(shape), axes, axis_types=axis_types)


def rules(mesh_cfg: Mapping) -> tuple[tuple[str, object], ...]:
  """The logical axis rules of `config.mesh` as hashable tuples."""
  return tuple(
    (name, tuple(target) if isinstance(target, list) else target)
    for name, target in mesh_cfg["rules"]
  )


def batch_spec(mesh: Mesh) -> PartitionSpec:
  """PartitionSpec of a batch's leading dimension over the batch mesh axes."""
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  return PartitionSpec(axes if len(axes) > 1 else (axes[0] if axes else None))


def batch_shardings(mesh: Mesh, batch: Mapping[str, np.ndarray]) -> dict[str, NamedSharding]:
  """A sharding per batch array: rows split over the batch axes, the rest replicated."""
  spec = batch_spec(mesh)
  return {k: NamedSharding(mesh, spec) for k in batch}


def batch_size_multiple(mesh: Mesh) -> int:
  """Global batch sizes must be multiples of this (the batch mesh axes' size)."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names)


def state_shardings(abstract_state, mesh: Mesh, axis_rules) -> object:
  """NamedShardings of an (abstract) NNX state from its logical axis names.

  Leaves without logical names (optimizer counters, the step) are replicated.
  """
  specs = partitioning.logical_to_mesh_specs(abstract_state, axis_rules)

  def to_sharding(spec, leaf):
    if isinstance(leaf, optax.MaskedNode):
      return leaf  # A parameter's slot in an optimizer group it is not in: no array.
    shape = getattr(leaf, "shape", ())
    # Placeholders that keep a parameter's names without its shape (the optimizer
    # state of a group a parameter is not in) are replicated.
    if not isinstance(spec, PartitionSpec) or len(spec) > len(shape):
      spec = PartitionSpec()
    # A dimension smaller than its mesh axes cannot be split: replicate it.
    fixed = []
    for i, axis in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
      names = (axis,) if isinstance(axis, str) else tuple(axis or ())
      size = math.prod(mesh.shape[n] for n in names)
      fixed.append(axis if names and shape[i] % size == 0 else None)
    return NamedSharding(mesh, PartitionSpec(*fixed))

  return jax.tree.map(to_sharding, specs, abstract_state, is_leaf=lambda x: x is None)


def put_batch(batch: Mapping[str, np.ndarray], shardings: Mapping[str, NamedSharding]):
  """Global arrays from this process's rows of a batch (multi-host aware).

  Each process holds `global_batch / process_count` consecutive rows (the
  pipeline's per-process shard); `jax.make_array_from_process_local_data`
  assembles the global array without a host round-trip through process 0.
  """
  return {
    k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v)) for k, v in batch.items()
  }
