"""`moe-asr demo`: the main job, from nothing to a scored model.

Builds the embedded demo corpus if it is missing, trains the `demo` preset
(`moe_asr/configs/demo.py`), scores every test split and prints a table. Re-running it
resumes: a finished training is not repeated.
"""

from __future__ import annotations

import logging
import pathlib
import time
from collections.abc import Sequence

from moe_asr import config_lib

DEMO_CONFIG = "demo"
TEST_SPLITS = ("test", "test_cs", "test_noisy", "test_bias")

_LOG = logging.getLogger(__name__)


def run_demo(
  workdir: str | pathlib.Path,
  *,
  data_dir: str | pathlib.Path = "data",
  config: str | pathlib.Path | None = None,
  overrides: Sequence[str] = (),
) -> dict:
  """Builds the corpus if needed, trains, evaluates; returns the report."""
  from moe_asr.data.builders import synth
  from moe_asr.evaluation import report as report_lib
  from moe_asr.evaluation import score
  from moe_asr.training import distributed, train

  distributed.initialize()
  start = time.time()
  workdir = pathlib.Path(workdir)
  config = config or DEMO_CONFIG
  cfg = config_lib.load_config(config, [f"data.data_dir={str(data_dir)!r}", *overrides])
  corpus = cfg.data.name.split("/", 1)[1]
  builder = synth.builder_from_config_file(f"corpus/{corpus}", data_dir)
  if not builder.is_prepared():
    print(f"Building the {corpus} corpus into {data_dir} (once) ...", flush=True)
    synth.prepare(builder)
  build_s = time.time() - start
  print(f"Training {config} in {workdir} for {cfg.train.steps} steps ...", flush=True)
  summary = train.train_and_evaluate(cfg, workdir)
  train_s = time.time() - start - build_s
  print("Scoring the test splits ...", flush=True)
  report = score.evaluate_workdir(workdir, splits=TEST_SPLITS, cfg=cfg)
  total_s = time.time() - start
  _LOG.info("demo summary: %s", summary)
  print(report_lib.format_table(report))
  print(
    f"Decoding: {describe_decoding(report.get('decode') or {})}; the task heads read the best "
    "hypothesis (TF: the reference transcript)."
  )
  print(
    f"\nWall time {total_s / 60:.1f} min (corpus {build_s / 60:.1f}, training "
    f"{train_s / 60:.1f}, scoring {(total_s - build_s - train_s) / 60:.1f}); "
    f"{summary.get('train/steps_per_second', float('nan')):.2f} steps/s at the end.\n"
    f"Report: {workdir / 'eval' / 'report.md'}"
  )
  return report


def describe_decoding(decoding: dict) -> str:
  """One line naming the search a report's table was decoded with and its weights."""
  method = decoding.get("method", "?")
  if method == "greedy":
    return "greedy CTC"
  joint = method == "joint"
  parts = [f"beam {decoding.get('beam')}"]
  if joint:
    parts.append(f"CTC weight {decoding.get('ctc_weight')}")
  parts.append(f"LM weight {decoding.get('lm_weight', 0)}")
  if joint and decoding.get("ilm_weight"):
    parts.append(f"internal-LM weight {decoding.get('ilm_weight')}")
  parts.append(f"bias list {decoding.get('bias_file') or 'none'}")
  if decoding.get("rescore"):
    parts.append("n-best rescored")
  return f"{'joint CTC/attention' if joint else method} ({', '.join(parts)})"
