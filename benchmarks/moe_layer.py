"""Routed MoE layer against a dense FFN with the same active parameters.

    python benchmarks/moe_layer.py --tokens 4096 --d-model 256 --d-ff 1024 \
        --experts 8 --top-k 2 [--dtype bfloat16] [--backward]

Times, in one run and on the same tokens: the MoE layer (learned router,
dropless sparse dispatch), its dense einsum reference path (all experts on all
tokens), and a dense gated FFN of hidden width `top_k * d_ff` (the same active
parameters and matmul FLOPs as the routed layer). Each is jitted, warmed up,
then timed over several repeats; the median is reported with the ratio to the
dense FFN and the fraction of dropped token-assignments. With `--backward` the
timed function is the gradient of a scalar of the output w.r.t. the parameters.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from moe_asr.models import moe


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
  args = p.parse_args(argv)

  dtype = jnp.dtype(args.dtype).type
  batch = 8 if args.tokens % 8 == 0 else 1
  length = args.tokens // batch
  x = jax.random.normal(jax.random.key(0), (batch, length, args.d_model), jnp.float32)
  mask = jnp.ones((batch, length), bool)

  layer = moe.MoeFeedForward(
    args.d_model,
    args.d_ff,
    args.experts,
    router="learned",
    top_k=args.top_k,
    block_size=args.block_size,
    grouped_matmul=args.grouped_matmul,
    dtype=dtype,
    rngs=nnx.Rngs(0),
  )
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
  main()
