"""Training-step throughput and MFU of a config, float32 against bfloat16, in one run.

    python benchmarks/train_step.py --config configs/demo.py [--seconds 2.4 --batch 24] \
        [--repeats 10] [--dtypes float32,bfloat16] [--set model.decoder.num_layers=0 ...]

For each compute dtype it builds the real train state and the jitted, donated
train step (`moe_asr.training.train.make_train_step`) on one synthetic batch of
the given bucket shape, compiles it ahead of time, then times `--repeats`
steps (median). It reports steps/s, seconds of audio per second (x real time),
the step's FLOPs from XLA's cost analysis, and MFU against a matmul peak
measured here on the same machine (a 2048^3 matmul in the same dtype), plus
the bfloat16 / float32 speed ratio. No dataset is needed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_asr import config_lib
from moe_asr.data import features
from moe_asr.training import sharding, train

VOCAB, INTENTS, SLOT_TAGS = 1500, 24, 39


def matmul_peak(dtype, n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of an n^3 matmul in `dtype` (float32 accumulation)."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
  f(a, a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a, a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n**3 / statistics.median(times)


def synthetic_batch(batch: int, seconds: float, max_tokens: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  samples = int(seconds * 16000)
  lengths = rng.integers(samples // 2, samples + 1, batch)
  audio_mask = np.arange(samples)[None] < lengths[:, None]
  tokens_len = np.minimum(max_tokens, (lengths / 16000 * 8).astype(int))
  token_mask = np.arange(max_tokens)[None] < tokens_len[:, None]
  frames = int(features.num_frames(samples))
  return {
    "audio": (rng.normal(0, 3000, (batch, samples)) * audio_mask).astype(np.int16),
    "audio_mask": audio_mask,
    "example_mask": np.ones(batch, bool),
    "tokens": np.where(token_mask, rng.integers(4, VOCAB, (batch, max_tokens)), 0).astype(np.int32),
    "token_mask": token_mask,
    "token_lang": np.where(token_mask, 0, -1).astype(np.int32),
    "slot_tags": np.where(token_mask, 0, -1).astype(np.int32),
    "frame_lang": np.zeros((batch, frames), np.int32),
    "lang_runs": np.full((batch, 8), -1, np.int32),
    "language": np.zeros(batch, np.int32),
    "intent": rng.integers(0, INTENTS, batch).astype(np.int32),
  }


def measure(cfg, batch: dict, repeats: int) -> dict:
  mesh = sharding.make_mesh(cfg.mesh)
  kwargs = dict(vocab_size=VOCAB, num_intents=INTENTS, num_slot_tags=SLOT_TAGS)
  graphdef, state, rng_state, state_sh = train.init_state(
    cfg, mesh, sharding.rules(cfg.mesh), **kwargs
  )
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rng_sh = jax.tree.map(lambda _: rep, rng_state)
  batch_sh = sharding.batch_shardings(mesh, batch)
  with mesh:
    device_batch = sharding.put_batch(batch, batch_sh)
    step = jax.jit(
      train.make_train_step(cfg, graphdef),
      in_shardings=(state_sh, rng_sh, batch_sh),
      out_shardings=(state_sh, rep),
      donate_argnums=(0,),
    )
    start = time.perf_counter()
    compiled = step.lower(state, rng_state, device_batch).compile()
    compile_s = time.perf_counter() - start
    # Printed at once: on a GPU the compile (with autotuning) can take minutes.
    print(f"  {cfg.model.dtype}: compiled in {compile_s:.0f} s", flush=True)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float((cost or {}).get("flops", float("nan")))
    for _ in range(2):
      state, metrics = compiled(state, rng_state, device_batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      state, metrics = compiled(state, rng_state, device_batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t0)
  seconds = statistics.median(times)
  return {"step_s": seconds, "compile_s": compile_s, "flops": flops}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--seconds", type=float, default=2.4, help="bucket length")
  parser.add_argument("--batch", type=int, default=24, help="global batch size")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="config override, as --config.KEY=VALUE of moe-asr train (repeatable)",
  )
  args = parser.parse_args()
  max_tokens = int(np.ceil(args.seconds * 12 + 2) / 8 + 1) * 8
  batch = synthetic_batch(args.batch, args.seconds, max_tokens)
  audio_s = float(batch["audio_mask"].sum()) / 16000
  results = {}
  for dtype in args.dtypes.split(","):
    cfg = config_lib.load_config(
      args.config, [*args.set, f"model.dtype='{dtype}'", "compilation_cache=''"]
    )
    r = measure(cfg, batch, args.repeats)
    peak = matmul_peak(jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
    r.update(peak=peak, mfu=r["flops"] / r["step_s"] / peak)
    results[dtype] = r
    print(
      f"{dtype:9s} step {r['step_s'] * 1e3:8.1f} ms  {1 / r['step_s']:6.2f} steps/s  "
      f"{audio_s / r['step_s']:6.1f}x real time  {r['flops'] / r['step_s'] / 1e9:7.1f} GFLOP/s  "
      f"matmul peak {peak / 1e9:7.1f} GFLOP/s  MFU {r['mfu'] * 100:5.1f}%  "
      f"(compile {r['compile_s']:.0f} s)",
      flush=True,
    )
  if {"float32", "bfloat16"} <= results.keys():
    ratio = results["float32"]["step_s"] / results["bfloat16"]["step_s"]
    print(f"bfloat16 / float32 step speed: {ratio:.2f}x")


if __name__ == "__main__":
  main()
