"""`train_memory(config, mesh="data=8,expert=8")`: the memory per device of a train step.

It sizes a pod before renting it: it lowers and compiles (never runs) the train step on that
many devices (fake CPU devices here: `fake_cpu_devices`), and reads the memory per device from
the state's shardings (parameters, optimizer state) and from XLA's memory analysis of the
compiled step (arguments, outputs, temporaries: the activations kept for the backward pass
and the work buffers).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import jax
import ml_collections
from flax import nnx

from moe_asr.data import schema


def parse_mesh(spec: str, axes) -> tuple[int, ...]:
  """Mesh sizes in `axes` order from "data=8,expert=8" (axes not named are 1)."""
  sizes = dict.fromkeys(axes, 1)
  for part in filter(None, (p.strip() for p in spec.split(","))):
    name, _, size = part.partition("=")
    if name not in sizes or not size.isdigit() or int(size) < 1:
      raise ValueError(f"mesh {spec!r}: expected axis=size,... with axes {tuple(axes)}")
    sizes[name] = int(size)
  return tuple(sizes[a] for a in axes)


def fake_cpu_devices(count: int) -> None:
  """Asks XLA:CPU for `count` devices; effective only before JAX's backends start."""
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def _per_device_bytes(leaf, sharding) -> int:
  if not hasattr(leaf, "shape") or not hasattr(sharding, "shard_shape"):
    return 0
  return int(math.prod(sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize


def train_memory(
  cfg: ml_collections.ConfigDict,
  mesh: str,
  *,
  vocab_size: int = 2000,
  num_intents: int = 24,
  num_slot_tags: int = 39,
  bucket: int | None = None,
) -> dict[str, Any]:
  """Memory per device of the train step of `cfg` on `mesh`, from its compiled program.

  Nothing is allocated or run: the train state is abstract (`nnx.eval_shape`), the step is
  lowered and compiled with the run's shardings, and the numbers are XLA's.

  Args:
    cfg: an experiment config.
    mesh: mesh sizes by axis name, "data=8,expert=8" (other axes 1).
    vocab_size, num_intents, num_slot_tags: output sizes.
    bucket: index of `config.data.buckets` for the batch shape; default the one with the
      most audio per batch. Its batch size is rounded up to a multiple of the batch axes.

  Returns:
    {"mesh", "devices", "batch": [rows, samples], "compile_s", "total": {params, optimizer},
     "per_device": {params, optimizer, other_state, arguments, outputs, aliased, temporaries,
     peak}} in bytes; `peak` = arguments + outputs - aliased + temporaries.
  """
  from moe_asr import runtime
  from moe_asr.data import features as features_lib
  from moe_asr.data import pipeline as pipeline_lib
  from moe_asr.models import partitioning
  from moe_asr.training import sharding, train
  from moe_asr.training import state as state_lib

  shape = parse_mesh(mesh, tuple(cfg.mesh.axes))
  count = math.prod(shape)
  devices = jax.devices()
  if len(devices) < count:
    devices = jax.devices("cpu")
  if len(devices) < count:
    raise ValueError(
      f"mesh {mesh} needs {count} devices, {len(devices)} here; on a CPU set "
      f"XLA_FLAGS=--xla_force_host_platform_device_count={count} before JAX starts"
    )
  mesh_cfg = dict(axes=tuple(cfg.mesh.axes), shape=shape, rules=cfg.mesh.rules)
  mesh_obj = sharding.make_mesh(mesh_cfg, devices[:count])
  rules = sharding.rules(mesh_cfg)
  sizes = dict(vocab_size=vocab_size, num_intents=num_intents, num_slot_tags=num_slot_tags)

  abstract_ts = nnx.eval_shape(lambda: state_lib.make_train_state(cfg, **sizes))
  graphdef, abstract_rng, abstract_state = nnx.split(abstract_ts, nnx.RngState, ...)
  state_sh = sharding.state_shardings(abstract_state, mesh_obj, rules)
  replicated = jax.sharding.NamedSharding(mesh_obj, jax.sharding.PartitionSpec())
  rng_sh = jax.tree.map(lambda _: replicated, abstract_rng)

  pcfg = pipeline_lib.PipelineConfig.from_config(cfg.data)
  buckets = pipeline_lib.make_buckets(
    pcfg, features_lib.FeatureConfig.from_config(cfg.model.features)
  )
  if bucket is None:
    bucket = max(range(len(buckets)), key=lambda i: buckets[i].max_samples * buckets[i].batch_size)
  chosen = buckets[bucket]
  multiple = sharding.batch_size_multiple(mesh_obj)
  rows = -(-chosen.batch_size // multiple) * multiple
  batch = pipeline_lib.device_arrays(pipeline_lib.empty_batch(chosen, rows, pcfg.max_lang_runs))
  batch_sh = sharding.batch_shardings(mesh_obj, batch)

  step = jax.jit(
    train.make_train_step(cfg, graphdef),
    in_shardings=(state_sh, rng_sh, batch_sh),
    out_shardings=(state_sh, replicated),
    donate_argnums=(0,),
  )
  start = time.perf_counter()
  with mesh_obj, partitioning.axis_rules(rules, mesh_obj):
    lowered = step.lower(
      runtime.abstract_state(abstract_state, state_sh),
      runtime.abstract_state(abstract_rng, rng_sh),
      runtime.abstract_state(batch, batch_sh),
    )
  memory = lowered.compile().memory_analysis()
  compile_s = time.perf_counter() - start

  per_device = {"params": 0, "optimizer": 0, "other_state": 0}
  total = {"params": 0, "optimizer": 0}
  leaves = jax.tree_util.tree_leaves_with_path(abstract_state)
  for (path, leaf), sh in zip(leaves, jax.tree.leaves(state_sh), strict=True):
    top = str(getattr(path[0], "key", path[0]))
    part = {"model": "params", "optimizer": "optimizer"}.get(top, "other_state")
    per_device[part] += _per_device_bytes(leaf, sh)
    if part in total:
      total[part] += int(math.prod(leaf.shape)) * leaf.dtype.itemsize
  xla = {
    "arguments": "argument_size_in_bytes",
    "outputs": "output_size_in_bytes",
    "aliased": "alias_size_in_bytes",
    "temporaries": "temp_size_in_bytes",
  }
  for name, attr in xla.items():
    per_device[name] = int(getattr(memory, attr, 0) or 0)
  per_device["peak"] = (
    per_device["arguments"]
    + per_device["outputs"]
    - per_device["aliased"]
    + per_device["temporaries"]
  )
  return {
    "mesh": mesh,
    "devices": count,
    "batch": [rows, chosen.max_samples],
    "compile_s": compile_s,
    "total": total,
    "per_device": per_device,
  }


def format_memory(mem: dict[str, Any]) -> str:
  """A table of `train_memory`."""
  gib = 2.0**-30
  d = mem["per_device"]
  rows, samples = mem["batch"]
  lines = [
    f"train step memory per device on mesh {mem['mesh']} ({mem['devices']} devices; "
    f"batch {rows} x {samples / schema.SAMPLE_RATE:g} s; XLA memory analysis of the compiled step, "
    f"compiled in {mem['compile_s']:.0f} s)",
    f"  parameters        {d['params'] * gib:9.3f} GiB  (of {mem['total']['params'] * gib:.3f})",
    f"  optimizer state   {d['optimizer'] * gib:9.3f} GiB  "
    f"(of {mem['total']['optimizer'] * gib:.3f})",
    f"  step arguments    {d['arguments'] * gib:9.3f} GiB  (state, batch, RNG)",
    f"  temporaries       {d['temporaries'] * gib:9.3f} GiB  (activations, gradients, buffers)",
    f"  outputs (aliased) {d['outputs'] * gib:9.3f} GiB  ({d['aliased'] * gib:.3f} donated)",
    f"  peak estimate     {d['peak'] * gib:9.3f} GiB  (arguments + outputs - aliased + temps)",
  ]
  return "\n".join(lines)
