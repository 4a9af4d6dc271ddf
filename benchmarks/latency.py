"""What one file through `moe-asr transcribe` costs: warm latency, first-call compile, cold start.

    python benchmarks/latency.py --workdir W [--repeats 30] [--settings greedy beam beam+lm]

For a clip of about --seconds (the first utterance of --split at least that long, cut to it,
written as a 16 kHz WAV), per decoding setting (greedy; CTC beam --beam; beam + the text LM
at --lm-weight, which needs W/lm):

  step p50 / p95   the compiled decode step (`score.make_decoder`, what `transcribe` runs)
                   on a batch of one: feature extraction, encoder, search, task heads,
                   device -> host, after one warm-up call; --repeats calls
  first call       the first call of that step: tracing and compiling (with the
                   persistent compilation cache off, so it is the real compile)
  file p50 / p95   `transcribe.transcribe_files` on the clip in a warm process: reading
                   and checking the file, restoring the checkpoint, building the step (a
                   hit in the persistent compilation cache) and decoding it in the
                   bucket's batch (padded to the bucket's batch size); --file-repeats calls
  process cold     `moe-asr transcribe` as a new process with an empty compilation cache
  process warm     the same with the cache that run filled (`config.compilation_cache`,
                   which the project sets to ~/.cache/moe_asr/xla; here a fresh folder
                   under the output so the first run is really cold)

Everything runs on the JAX backend of this machine (a CPU here); the table is printed and
written to `W/bench/latency.json` (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import wave

import numpy as np

SETTINGS = {
  "greedy": {"method": "greedy", "lm_weight": 0.0},
  "beam": {"method": "ctc_beam", "lm_weight": 0.0},
  "beam+lm": {"method": "ctc_beam"},
}


def write_clip(workdir: str, split: str, seconds: float, path: pathlib.Path) -> float:
  """Writes the first utterance of `split` at least `seconds` long, cut to it; its length."""
  from moe_asr.data import schema
  from moe_asr.evaluation import score
  from moe_asr.training import inputs

  cfg = score.workdir_config(workdir)
  data = inputs.load_run_data(cfg, workdir)
  pipe = inputs.make_pipeline(cfg, split, data, train=False, process_index=0, process_count=1)
  rate = schema.SAMPLE_RATE
  need = int(seconds * rate)
  best = None
  for i in range(len(pipe.source)):
    audio = np.asarray(pipe.source[i]["audio"])
    if len(audio) >= need:
      best = audio[:need]
      break
    if best is None or len(audio) > len(best):
      best = audio
  with wave.open(str(path), "wb") as f:
    f.setnchannels(1)
    f.setsampwidth(2)
    f.setframerate(rate)
    f.writeframes(best.astype(np.int16).tobytes())
  return len(best) / rate


def percentiles(times: list[float]) -> dict:
  """p50 / p95 / mean in milliseconds."""
  ms = np.asarray(times) * 1000
  return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)), "n": len(ms)}


def step_latency(workdir: str, clip: pathlib.Path, decode: dict, repeats: int) -> dict:
  """First-call and warm latency of the compiled decode step on a batch of one."""
  import dataclasses

  import jax

  from moe_asr import runtime, transcribe
  from moe_asr.data import audio_io, features, pipeline
  from moe_asr.evaluation import score
  from moe_asr.models import partitioning
  from moe_asr.training import sharding

  overrides = [f"decode.{k}={v!r}" for k, v in decode.items()]
  cfg = score.workdir_config(workdir, overrides)
  cfg.compilation_cache = ""  # The first call compiles for real.
  run = runtime.build_run(cfg, workdir, for_training=False)
  buckets = pipeline.make_buckets(
    pipeline.PipelineConfig.from_config(cfg.data),
    features.FeatureConfig.from_config(cfg.model.features),
  )
  wave_ = audio_io.load_audio(str(clip))
  bucket = next(b for b in buckets if len(wave_) <= b.max_samples)
  bucket = dataclasses.replace(bucket, batch_size=1)
  host = transcribe.host_batch(bucket, [0], {0: wave_})
  times = []
  with run.mesh, partitioning.axis_rules(run.rules, run.mesh):
    steps, _ = score.make_decoder(run, workdir)

    def call():
      start = time.perf_counter()
      batch = sharding.put_batch(host, run.batch_shardings(host))
      out = jax.device_get(steps(batch)(run.state, run.rng_state, batch))
      assert out["example_mask"][0]
      return time.perf_counter() - start

    first = call()
    call()
    times = [call() for _ in range(repeats)]
  run.checkpointer.close()
  samples = bucket.max_samples
  return {"first_call_s": first, "step_ms": percentiles(times), "bucket_samples": samples}


def file_latency(workdir: str, clip: pathlib.Path, decode: dict, repeats: int, cache: str):
  """`transcribe_files` on the clip, `repeats` times after one warm-up, in this process."""
  from moe_asr import transcribe

  overrides = [f"compilation_cache={cache!r}"]
  kw = dict(method=decode["method"], lm_weight=decode.get("lm_weight"))
  transcribe.transcribe_files(workdir, [clip], overrides=overrides, **kw)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    records = transcribe.transcribe_files(workdir, [clip], overrides=overrides, **kw)
    times.append(time.perf_counter() - start)
    assert "error" not in records[0], records[0]
  return percentiles(times)


def process_seconds(workdir: str, clip: pathlib.Path, decode: dict, cache: str) -> float:
  """Wall time of `moe-asr transcribe` on the clip as a new process."""
  cmd = [
    sys.executable,
    "-m",
    "moe_asr.cli",
    "transcribe",
    "--workdir",
    workdir,
    str(clip),
    f"--config.compilation_cache={cache!r}",
  ]
  cmd += [f"--config.decode.{k}={v!r}" for k, v in decode.items()]
  start = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  if proc.returncode != 0:
    raise RuntimeError(f"moe-asr transcribe failed:\n{proc.stderr[-3000:]}")
  return seconds


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--split", default="test")
  parser.add_argument("--seconds", type=float, default=3.0)
  parser.add_argument("--beam", type=int, default=8)
  parser.add_argument("--lm-weight", type=float, default=0.3)
  parser.add_argument("--repeats", type=int, default=30, help="decode-step calls per setting")
  parser.add_argument("--file-repeats", type=int, default=5, help="transcribe_files calls")
  parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
  parser.add_argument("--no-process", action="store_true", help="skip the cold/warm process runs")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)

  workdir = str(args.workdir)
  out_path = pathlib.Path(args.out or pathlib.Path(workdir) / "bench" / "latency.json")
  out_path.parent.mkdir(parents=True, exist_ok=True)
  results: dict = {"cpus": os.cpu_count(), "settings": {}}
  with tempfile.TemporaryDirectory() as tmp:
    clip = pathlib.Path(tmp) / "clip.wav"
    results["clip_s"] = write_clip(workdir, args.split, args.seconds, clip)
    for name in args.settings:
      decode = dict(SETTINGS[name], beam=args.beam)
      decode.setdefault("lm_weight", args.lm_weight)
      row = step_latency(workdir, clip, decode, args.repeats)
      cache = str(pathlib.Path(tmp) / f"xla-{name}")
      if not args.no_process:
        row["process_cold_s"] = process_seconds(workdir, clip, decode, cache)
        row["process_warm_s"] = process_seconds(workdir, clip, decode, cache)
      row["file_ms"] = file_latency(workdir, clip, decode, args.file_repeats, cache)
      results["settings"][name] = dict(row, decode=decode)
      print(name, json.dumps(row), flush=True)
  lines = [
    f"{results['clip_s']:.2f} s clip, batch 1, {results['cpus']} CPUs",
    f"{'setting':10s} {'step p50':>9s} {'step p95':>9s} {'1st call':>9s} {'file p50':>9s} "
    f"{'file p95':>9s} {'cold proc':>10s} {'warm proc':>10s}",
  ]
  for name, r in results["settings"].items():
    cold, warm = r.get("process_cold_s"), r.get("process_warm_s")
    lines.append(
      f"{name:10s} {r['step_ms']['p50']:7.1f}ms {r['step_ms']['p95']:7.1f}ms "
      f"{r['first_call_s']:8.1f}s {r['file_ms']['p50']:7.0f}ms {r['file_ms']['p95']:7.0f}ms "
      + (f"{cold:9.1f}s {warm:9.1f}s" if cold is not None else "")
    )
  results["table"] = "\n".join(lines)
  print(results["table"])
  out_path.write_text(json.dumps(results, indent=1))
  print(f"Wrote {out_path}")
  return results


if __name__ == "__main__":
  main()
