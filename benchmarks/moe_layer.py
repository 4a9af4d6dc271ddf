"""Routed MoE layer against a dense FFN with the same active parameters.

    python benchmarks/moe_layer.py --tokens 4096 --d-model 256 --d-ff 1024 \
        --experts 8 --top-k 2 [--dtype bfloat16] [--backward]

    python benchmarks/moe_layer.py --mesh expert=8 [--backward]   # expert-parallel

Times, in one run and on the same tokens: the MoE layer (learned router,
dropless sparse dispatch), its dense einsum reference path (all experts on all
tokens), and a dense gated FFN of hidden width `top_k * d_ff` (the same active
parameters and matmul FLOPs as the routed layer). Each is jitted, warmed up,
then timed over several repeats; the median is reported with the ratio to the
dense FFN and the fraction of dropped token-assignments. With `--backward` the
timed function is the gradient of a scalar of the output w.r.t. the parameters.

With `--mesh` (mesh axes data, fsdp, expert, tensor; e.g. `expert=8` or `data=2,expert=4`;
on a CPU the devices are faked, `--xla_force_host_platform_device_count`) the layer runs on
that mesh, its parameters split by their logical axes and the tokens by the batch axes, and
the run compares the expert-parallel dispatch (all-to-all of tokens) with the gathered path
(`expert_parallel="off"`: XLA gathers the expert weights onto every device). For each it
reports the step time, the bytes each device receives in collectives (from the compiled
HLO: the result sizes of all-to-all, all-gather, all-reduce, reduce-scatter and
collective-permute), and XLA's memory analysis per device (arguments, temporaries) with the
expert weights' bytes per device.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from moe_asr.models import moe, partitioning
from moe_asr.training import sharding

MESH_AXES = ("data", "fsdp", "expert", "tensor")
_COLLECTIVES = ("all-to-all", "all-gather", "all-reduce", "reduce-scatter", "collective-permute")
_COLLECTIVE_RE = re.compile(r"= (.*?) (" + "|".join(_COLLECTIVES) + r")(?:-start)?\(")
_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1}


def parse_mesh(spec: str) -> dict[str, int]:
  """{"data": 2, "fsdp": 1, "expert": 4, "tensor": 1} from "data=2,expert=4"."""
  sizes = dict.fromkeys(MESH_AXES, 1)
  for part in filter(None, spec.split(",")):
    name, _, size = part.partition("=")
    if name not in sizes or not size.isdigit():
      raise ValueError(f"--mesh {spec!r}: expected axis=size with axes {MESH_AXES}")
    sizes[name] = int(size)
  return sizes


def ensure_devices(count: int) -> None:
  """On a CPU, fake `count` devices (before the backend starts; a no-op if set already)."""
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def collective_bytes(hlo: str) -> dict[str, int]:
  """Bytes of each collective's results in an HLO module (per device), by op name."""
  out = dict.fromkeys(_COLLECTIVES, 0)
  for line in hlo.splitlines():
    match = _COLLECTIVE_RE.search(line)
    if not match:
      continue
    for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", match.group(1)):
      size = math.prod(int(d) for d in dims.split(",") if d)
      out[match.group(2)] += size * _DTYPE_BYTES.get(dtype, 4)
  return out


class DenseFfn(nnx.Module):
  """Gated FFN (SwiGLU) of width d_hidden: the dense baseline."""

  def __init__(self, d_model: int, d_hidden: int, *, dtype, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    self.w_gate = nnx.Param(init(rngs.params(), (d_model, d_hidden)))
    self.w_up = nnx.Param(init(rngs.params(), (d_model, d_hidden)))
    self.w_down = nnx.Param(init(rngs.params(), (d_hidden, d_model)))
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    prec = jnp.float32 if self.dtype != jnp.float32 else None

    def mm(a, w):
      return jnp.matmul(
        a.astype(self.dtype), w[...].astype(self.dtype), preferred_element_type=prec
      )

    # XLA:CPU multiplies [tokens, d] far faster than [batch, length, d] (about 2x
    # forward, 3x backward measured), so the baseline flattens as the MoE layer does.
    x2 = x.reshape(-1, x.shape[-1])  # [tokens, d_model]
    h = jax.nn.silu(mm(x2, self.w_gate)) * mm(x2, self.w_up)
    return mm(h, self.w_down).astype(self.dtype).reshape(x.shape)


def _time_interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
  """Wall seconds of each `fn()` per repeat (blocked until ready).

  The functions run in turn within each repeat, so load from other processes
  on the machine affects them alike and per-repeat ratios stay meaningful.
  """
  for fn in fns.values():
    for _ in range(warmup):
      jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return times


def _layer(args, dtype, **settings) -> moe.MoeFeedForward:
  """The benchmarked layer: `args`' sizes, a learned top-k router, `settings` on top."""
  return moe.MoeFeedForward(
    args.d_model,
    args.d_ff,
    moe.MoeSettings(
      num_experts=args.experts,
      router="learned",
      top_k=args.top_k,
      block_size=args.block_size,
      grouped_matmul=args.grouped_matmul,
      **settings,
    ),
    dtype=dtype,
    rngs=nnx.Rngs(0),
  )


def run_mesh(args, dtype) -> dict[str, float]:
  """The expert-parallel layer against the gathered path on `args.mesh`; prints a table."""
  sizes = parse_mesh(args.mesh)
  count = math.prod(sizes.values())
  if jax.device_count() < count:
    raise SystemExit(f"--mesh {args.mesh} needs {count} devices; {jax.device_count()} here")
  mesh = jax.make_mesh(
    tuple(sizes[a] for a in MESH_AXES),
    MESH_AXES,
    axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
    devices=jax.devices()[:count],
  )
  rules = partitioning.DEFAULT_RULES
  shards = math.prod(sizes[a] for a in sharding.BATCH_AXES)
  batch = max(8, shards)
  if args.tokens % batch:
    raise SystemExit(f"--tokens {args.tokens} is not a multiple of the batch {batch}")
  length = args.tokens // batch
  batch_sharding = jax.sharding.NamedSharding(mesh, sharding.batch_spec(mesh))
  x = jax.random.normal(jax.random.key(0), (batch, length, args.d_model), jnp.float32)
  x = jax.device_put(x, batch_sharding)
  mask = jax.device_put(jnp.ones((batch, length), bool), batch_sharding)

  results, fns, rows = {}, {}, []
  for mode, label in (("on", "expert-parallel (all-to-all)"), ("off", "gathered weights")):
    layer = _layer(args, dtype, expert_parallel=mode, capacity_factor=args.capacity_factor)
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
    params = jax.device_put(params, sharding.state_shardings(params, mesh, rules))
    expert_bytes = sum(
      params[w].get_value().addressable_shards[0].data.nbytes for w in ("w_gate", "w_up", "w_down")
    )

    def forward(p, x, graphdef=graphdef, rest=rest):
      with partitioning.axis_rules(rules, mesh):
        y, aux = nnx.merge(graphdef, p, rest)(x, mask)
      return y, aux.dropped_fraction

    if args.backward:

      def fn(p, x, forward=forward):
        return jax.grad(lambda p: jnp.mean(forward(p, x)[0].astype(jnp.float32) ** 2))(p)
    else:
      fn = forward
    compiled = jax.jit(fn).lower(params, x).compile()
    moved = collective_bytes(compiled.as_text())
    memory = compiled.memory_analysis()
    fns[mode] = functools.partial(compiled, params, x)
    key = "ep" if mode == "on" else "gathered"
    if not args.backward:
      results[f"{key}_dropped_fraction"] = float(compiled(params, x)[1])
    results[f"{key}_collective_bytes"] = sum(moved.values())
    results[f"{key}_all_to_all_bytes"] = moved["all-to-all"]
    results[f"{key}_all_gather_bytes"] = moved["all-gather"]
    results[f"{key}_expert_param_bytes"] = expert_bytes
    results[f"{key}_argument_bytes"] = getattr(memory, "argument_size_in_bytes", 0)
    results[f"{key}_temp_bytes"] = getattr(memory, "temp_size_in_bytes", 0)
    rows.append((key, label, moved))
  times = _time_interleaved(fns, args.repeats)
  results["ep_s"] = statistics.median(times["on"])
  results["gathered_s"] = statistics.median(times["off"])
  results["ep_over_gathered"] = statistics.median(
    a / b for a, b in zip(times["on"], times["off"], strict=True)
  )

  mode = "forward+backward" if args.backward else "forward"
  mib = 2.0**-20
  print(
    f"mesh {args.mesh} ({count} devices, {jax.default_backend()}) tokens={args.tokens} "
    f"(batch {batch} x {length}) d_model={args.d_model} d_ff={args.d_ff} "
    f"experts={args.experts} top_k={args.top_k} dtype={args.dtype} {mode} "
    f"capacity_factor={args.capacity_factor}"
  )
  print(
    f"{'':30s} {'median ms':>9s} {'a2a MiB':>8s} {'gather MiB':>10s} {'all MiB':>8s} "
    f"{'experts MiB':>11s} {'args MiB':>8s} {'temp MiB':>8s}   (per device)"
  )
  for key, label, moved in rows:
    print(
      f"{label:30s} {results[f'{key}_s'] * 1e3:9.2f} {moved['all-to-all'] * mib:8.2f} "
      f"{moved['all-gather'] * mib:10.2f} {results[f'{key}_collective_bytes'] * mib:8.2f} "
      f"{results[f'{key}_expert_param_bytes'] * mib:11.2f} "
      f"{results[f'{key}_argument_bytes'] * mib:8.2f} {results[f'{key}_temp_bytes'] * mib:8.2f}"
    )
  print(f"expert-parallel / gathered step time: {results['ep_over_gathered']:.2f}x (median ratio)")
  if "ep_dropped_fraction" in results:
    print(
      f"dropped token-assignments: expert-parallel {results['ep_dropped_fraction']:.4f} "
      f"(capacity per token shard), gathered {results['gathered_dropped_fraction']:.4f}"
    )
  return results


def main(argv: list[str] | None = None) -> dict[str, float]:
  """Runs the benchmark and prints one line per measurement.

  Args:
    argv: command-line arguments (default: sys.argv).

  Returns:
    The measured numbers (seconds, ratios, dropped fraction).
  """
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tokens", type=int, default=4096, help="batch * length (batch of 8)")
  p.add_argument("--d-model", type=int, default=256)
  p.add_argument("--d-ff", type=int, default=1024, help="hidden width of each expert")
  p.add_argument("--experts", type=int, default=8)
  p.add_argument("--top-k", type=int, default=2)
  p.add_argument("--block-size", type=int, default=256, help="rows per grouped-matmul block")
  p.add_argument(
    "--grouped-matmul",
    choices=("auto", *moe.GROUPED_MATMULS),
    default="auto",
    help="blocks (loops over row blocks) | ragged (jax.lax.ragged_dot) | auto (ragged on GPUs)",
  )
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--repeats", type=int, default=30)
  p.add_argument("--backward", action="store_true", help="time forward + gradient")
  p.add_argument("--skip-dense-ref", action="store_true", help="skip the einsum reference")
  p.add_argument(
    "--capacity-factor", type=float, default=None, help="expert capacity (default: dropless)"
  )
  p.add_argument(
    "--mesh",
    default=None,
    help="e.g. expert=8 or data=2,expert=4: expert-parallel against gathered weights",
  )
  args = p.parse_args(argv)

  dtype = jnp.dtype(args.dtype).type
  if args.mesh:
    return run_mesh(args, dtype)
  batch = 8 if args.tokens % 8 == 0 else 1
  length = args.tokens // batch
  x = jax.random.normal(jax.random.key(0), (batch, length, args.d_model), jnp.float32)
  mask = jnp.ones((batch, length), bool)

  layer = _layer(args, dtype)
  dense_ffn = DenseFfn(args.d_model, args.top_k * args.d_ff, dtype=dtype, rngs=nnx.Rngs(1))

  def moe_out(model, x, dense):
    y, aux = model(x, mask, dense=dense)
    return y, aux

  def make(fn_out, model):
    # Differentiate parameters only; other state (dropout RNG) rides along.
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def run(p, x):
      return fn_out(nnx.merge(graphdef, p, rest), x)

    if not args.backward:
      return jax.jit(run), params

    def loss(p, x):
      out = run(p, x)
      y = out[0] if isinstance(out, tuple) else out
      return jnp.mean(y.astype(jnp.float32) ** 2)

    return jax.jit(jax.grad(loss)), params

  sparse_fn, moe_params = make(lambda m, x: moe_out(m, x, False), layer)
  ref_fn, _ = make(lambda m, x: moe_out(m, x, True), layer)
  dense_fn, dense_params = make(lambda m, x: m(x), dense_ffn)

  results = {}
  _, aux = nnx.jit(lambda m, x: moe_out(m, x, False))(layer, x)
  results["dropped_fraction"] = float(aux.dropped_fraction)
  fns = {
    "dense_ffn_s": lambda: dense_fn(dense_params, x),
    "moe_sparse_s": lambda: sparse_fn(moe_params, x),
  }
  times = _time_interleaved(fns, args.repeats)
  if not args.skip_dense_ref:
    # Timed on its own: interleaved, its large intermediates slow the next call
    # of the dense FFN (measured 44 -> 70 ms) and would flatter the ratio.
    ref_times = _time_interleaved({"ref": lambda: ref_fn(moe_params, x)}, max(3, args.repeats // 4))
    times["moe_dense_ref_s"] = ref_times["ref"]
  base = times["dense_ffn_s"]
  labels = {
    "dense_ffn_s": f"dense FFN (hidden {args.top_k * args.d_ff})",
    "moe_sparse_s": "MoE sparse dispatch",
    "moe_dense_ref_s": "MoE dense einsum reference",
  }
  mode = "forward+backward" if args.backward else "forward"
  print(
    f"tokens={args.tokens} d_model={args.d_model} d_ff={args.d_ff} experts={args.experts} "
    f"top_k={args.top_k} dtype={args.dtype} grouped_matmul={layer.grouped_matmul} "
    f"block<={args.block_size} {mode} "
    f"backend={jax.default_backend()} devices={jax.device_count()}"
  )
  print(f"{'':28s} {'median ms':>10s} {'min ms':>8s} {'ratio':>6s} {'min ratio':>9s}")
  for name, t in times.items():
    results[name] = statistics.median(t)
    # Median of per-repeat ratios: robust to the machine's load changing mid-run;
    # the ratio of minima estimates the unloaded machine.
    if len(t) == len(base):
      ratio = statistics.median(a / b for a, b in zip(t, base, strict=True))
    else:
      ratio = statistics.median(t) / statistics.median(base)
    min_ratio = min(t) / min(base)
    if name != "dense_ffn_s":
      results[name.replace("_s", "_over_dense")] = ratio
    print(
      f"{labels[name]:28s} {results[name] * 1e3:10.2f} {min(t) * 1e3:8.2f} "
      f"{ratio:5.2f}x {min_ratio:8.2f}x"
    )
  print(f"dropped token-assignments: {results['dropped_fraction']:.4f}")
  return results


if __name__ == "__main__":
  if "--mesh" in " ".join(sys.argv):
    # Before the backend starts: a CPU run fakes the devices the mesh needs.
    arg = sys.argv[sys.argv.index("--mesh") + 1] if "--mesh" in sys.argv else ""
    arg = arg or next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--mesh="))
    ensure_devices(math.prod(parse_mesh(arg).values()))
  main()
