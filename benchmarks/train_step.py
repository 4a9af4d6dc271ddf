"""Training-step throughput and MFU of a config, float32 against bfloat16, in one run.

    python benchmarks/train_step.py --config demo [--seconds 2.4 --batch 24] \
        [--repeats 10] [--dtypes float32,bfloat16] [--set model.decoder.num_layers=0 ...] \
        [--no-breakdown] [--profile-steps 3] [--trace-dir DIR] [--json out.json]

For each compute dtype it builds the real train state and the jitted, donated
train step (`moe_asr.training.train.make_train_step`) on one synthetic batch of
the given bucket shape, compiles it ahead of time, then times `--repeats`
steps (median). It reports steps/s, seconds of audio per second (x real time),
the step's FLOPs from XLA's cost analysis, and MFU against a matmul peak
measured here on the same machine (a 2048^3 matmul in the same dtype), plus
the bfloat16 / float32 speed ratio. No dataset is needed.

The breakdown (on unless --no-breakdown; a few seconds on top of the compile) traces
`--profile-steps` more steps with `jax.profiler` and splits their wall time between
the parts of the model (`PARTS`), forward and backward together, from the named
scopes of the model code and, where there is none, the Python function that traced
each op (`step_profile.py` says how). The traced steps run a little slower than the
untimed ones (the profiler records some 15 000 thunks a step on the demo config).
Input wait is not measured: the batch is synthetic and already on the device.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_asr import config_lib, runtime
from moe_asr.data import features
from moe_asr.training import sharding, train

if __package__:
  from . import step_profile
else:  # Run as a script: this directory is on sys.path.
  import step_profile

VOCAB, INTENTS, SLOT_TAGS = 1500, 24, 39

# The rows of the breakdown: (key, label).
PARTS = (
  ("features", "feature extraction (log-mel)"),
  ("subsampling", "subsampling convolutions"),
  ("attention", "self-attention"),
  ("conv", "convolution module"),
  ("ffn", "feed-forward (dense FFN)"),
  ("moe", "MoE (router, dispatch, grouped matmuls)"),
  ("lid", "LID heads + conditioning"),
  ("ctc", "CTC heads + CTC losses"),
  ("decoder", "attention decoder"),
  ("task", "task heads / bridge"),
  ("losses", "other losses"),
  ("optimizer", "optimizer update"),
  ("encoder_glue", "encoder glue (block out-norms, masks, positions)"),
  ("other", "other (RNG, grad norm, counters, outputs)"),
  ("unattributed", "ops without metadata (XLA copies)"),
  ("gaps", "gaps between ops (runtime, no op running)"),
  ("host", "host around the step (dispatch, arguments)"),
)
# Named scopes of the model code -> part; the innermost one that is here decides.
SCOPES = {
  "subsampling": "subsampling",
  "self_attention": "attention",
  "conv_module": "conv",
  "ffn": "ffn",
  "moe": "moe",
  "moe_router": "moe",
  "moe_dispatch": "moe",
  "moe_grouped_matmul": "moe",
  "lid_head": "lid",
  "lid_conditioner": "lid",
  "inter_ctc": "ctc",
  "ctc_loss": "ctc",
  "attention_decoder": "decoder",
  "att_loss": "losses",
  "losses": "losses",
  "optimizer_update": "optimizer",
}
# Ops outside those scopes: the innermost traced frame that matches one of these
# (file name, function name prefix) decides; frames that match none (shared layers) are
# skipped for their caller.
FRAMES = (
  ("features.py", "", "features"),
  ("model.py", "MoeAsr._ctc_logits", "ctc"),
  ("model.py", "MoeAsr._inter_ctc", "ctc"),
  ("model.py", "MoeAsr._tap", "ctc"),  # Intermediate (and phone) CTC taps.
  ("task_heads.py", "", "task"),
  ("greedy.py", "", "task"),  # The greedy CTC hypothesis that the task_hyp pass reads.
  ("lid.py", "", "lid"),
  ("conformer.py", "ConformerEncoder._choose_lang_probs", "lid"),
  ("moe.py", "", "moe"),
  ("decoder.py", "", "decoder"),
  ("model.py", "MoeAsr.decode_tokens", "decoder"),
  ("conformer.py", "", "encoder_glue"),
  ("model.py", "MoeAsr.encode", "encoder_glue"),
  ("losses.py", "", "losses"),
  ("state.py", "", "optimizer"),
  ("train.py", "", "other"),
  ("model.py", "", "other"),
)
MOE_DETAIL = {
  "moe_router": "router",
  "moe_dispatch": "dispatch + combine",
  "moe_grouped_matmul": "grouped matmul loops",
}


def classify_train_op(op: step_profile.Op | None) -> tuple[str, str]:
  """(part, detail) of one HLO instruction of the train step."""
  if op is None:
    return "unattributed", "not in the HLO text"
  scopes = op.scopes
  part = step_profile.innermost(scopes, SCOPES)
  if part is None:
    for path, function in op.frames:
      name = os.path.basename(path)
      rule = next((r for r in FRAMES if r[0] == name and function.startswith(r[1])), None)
      if rule is not None:
        part = rule[2]
        break
  if part is None:
    return ("unattributed", op.opcode) if not op.frames else ("other", op.frames[0][1])
  if part == "moe":
    where = "decoder" if "attention_decoder" in scopes else "encoder"
    inner = [s for s in scopes if s in MOE_DETAIL]
    if inner:
      what = MOE_DETAIL[inner[-1]]
    elif any(function == "MoeFeedForward._ffn" for _, function in op.frames):
      what = "shared expert"
    else:
      what = "norm, masks, reshapes"
    return part, f"{where}: {what}"
  if part == "ctc":
    return part, "losses" if "ctc_loss" in scopes else "heads (+ self-conditioning)"
  return part, ""


def breakdown_rows(profile: dict) -> list[dict]:
  """The breakdown's rows, per step: part, ms, % of the traced step, fwd, bwd, thread ms."""
  step = profile["step_ms"]
  parts = dict(profile["parts"])
  parts["gaps"] = {"ms": max(profile["span_ms"] - profile["covered_ms"], 0.0)}
  parts["host"] = {"ms": max(step - profile["span_ms"], 0.0)}
  rows = []
  for key, label in PARTS:
    p = parts.pop(key, {"ms": 0.0})
    rows.append({"part": key, "label": label, "pct": 100 * p["ms"] / step, **p})
  for key, p in parts.items():  # A part not in PARTS (none today).
    rows.append({"part": key, "label": key, "pct": 100 * p["ms"] / step, **p})
  return rows


def print_breakdown(dtype: str, profile: dict, untraced_ms: float) -> None:
  step = profile["step_ms"]
  print(
    f"{dtype} breakdown: {profile['steps']} traced steps, {step:.1f} ms a step traced "
    f"({untraced_ms:.1f} untraced), {profile['thunks']} thunks a step; thread time "
    f"{profile['busy_ms']:.1f} ms against {profile['covered_ms']:.1f} ms with some op running "
    f"({profile['busy_ms'] / max(profile['covered_ms'], 1e-9):.2f} ops at once)"
  )
  print(
    f"  {'part':50s} {'ms/step':>8s} {'% step':>7s} {'fwd ms':>7s} {'bwd ms':>7s} "
    f"{'thread':>7s} {'thunks':>7s}"
  )

  def line(label: str, r: dict) -> str:
    out = f"  {label:50s} {r['ms']:8.1f} {100 * r['ms'] / step:6.1f}%"
    if "fwd_ms" in r:
      out += f" {r['fwd_ms']:7.1f} {r['bwd_ms']:7.1f} {r['busy_ms']:7.1f} {r['thunks']:7d}"
    return out

  total = 0.0
  for r in breakdown_rows(profile):
    total += r["ms"]
    print(line(r["label"], r))
    if r["part"] in ("moe", "ctc"):
      for key, d in sorted(profile["details"].items()):
        if key.startswith(r["part"] + "/") and d["ms"] >= 0.05:
          print(line("  " + key.partition("/")[2], d))
  print(f"  {'input wait':50s} {'not measured (synthetic batch, already on the device)':>8s}")
  print(f"  {'total':50s} {total:8.1f} {100 * total / step:6.1f}%", flush=True)


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


def measure(
  cfg, batch: dict, repeats: int, profile_steps: int = 0, trace_dir: str | None = None
) -> dict:
  mesh = sharding.make_mesh(cfg.mesh)
  kwargs = dict(vocab_size=VOCAB, num_intents=INTENTS, num_slot_tags=SLOT_TAGS)
  graphdef, state, rng_state, state_sh = runtime.init_state(
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
    profile = None
    if profile_steps > 0:

      def run_step():
        nonlocal state, metrics
        state, metrics = compiled(state, rng_state, device_batch)
        jax.block_until_ready(metrics)

      profile = step_profile.profile(
        compiled, run_step, classify_train_op, steps=profile_steps, log_dir=trace_dir
      )
  seconds = statistics.median(times)
  return {"step_s": seconds, "compile_s": compile_s, "flops": flops, "profile": profile}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="demo", help="a preset or a config file")
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
  parser.add_argument(
    "--breakdown",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="trace a few more steps and print where the step's time goes (default on)",
  )
  parser.add_argument("--profile-steps", type=int, default=3, help="steps traced for it")
  parser.add_argument("--trace-dir", default=None, help="keep the profiler trace here")
  parser.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
  args = parser.parse_args()
  max_tokens = int(np.ceil(args.seconds * 12 + 2) / 8 + 1) * 8
  batch = synthetic_batch(args.batch, args.seconds, max_tokens)
  audio_s = float(batch["audio_mask"].sum()) / 16000
  results = {}
  for dtype in args.dtypes.split(","):
    cfg = config_lib.load_config(
      args.config, [*args.set, f"model.dtype='{dtype}'", "compilation_cache=''"]
    )
    trace_dir = args.trace_dir and os.path.join(args.trace_dir, dtype)
    profile_steps = args.profile_steps if args.breakdown else 0
    r = measure(cfg, batch, args.repeats, profile_steps, trace_dir)
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
    if r["profile"] is not None:
      print_breakdown(dtype, r["profile"], r["step_s"] * 1e3)
      r["breakdown"] = breakdown_rows(r["profile"])
  if {"float32", "bfloat16"} <= results.keys():
    ratio = results["float32"]["step_s"] / results["bfloat16"]["step_s"]
    print(f"bfloat16 / float32 step speed: {ratio:.2f}x")
  if args.json:
    out = {
      "config": args.config,
      "set": args.set,
      "batch": args.batch,
      "seconds": args.seconds,
      "audio_s": audio_s,
      "device": str(jax.devices()[0].device_kind),
      "input_wait": None,  # Not measured: a synthetic batch, already on the device.
      "results": results,
    }
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
