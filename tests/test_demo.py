"""`moe-asr demo` end to end on the tiny corpus: build (found) -> train -> score -> table."""

import json
import os

import pytest
from conftest import REPO, run_cli

pytestmark = pytest.mark.slow


def test_demo_trains_scores_and_prints_the_table(tiny_corpus, tmp_path):
  data_dir, _, _ = tiny_corpus
  workdir = tmp_path / "demo"
  proc = run_cli(  # The workdir relative to the working directory, as in the README.
    "demo",
    "--workdir",
    os.path.relpath(workdir, REPO),
    "--data-dir",
    str(data_dir),
    "--config",
    "tiny",
    "--config.train.steps=3",
    "--config.train.log_every=1",
    "--config.data.buckets=((3.0,8),)",
    "--config.compilation_cache=''",
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads((workdir / "eval" / "report.json").read_text())
  splits = ("test", "test_cs", "test_noisy", "test_bias")
  assert set(report["splits"]) == set(splits)
  for name in splits:
    split = report["splits"][name]
    assert split["n"] > 0
    for key in ("wer", "cer", "mer", "lid_acc", "intent_acc", "slot_f1", "rtf", "by_language"):
      assert key in split, (name, key)
    assert 0.0 <= split["lid_acc"] <= 1.0
  assert report["model"]["params_total"] >= report["model"]["params_active"] > 0
  # The printed table has a row per test split, and the wall-time line.
  for name in splits:
    assert any(line.split()[:1] == [name] for line in proc.stdout.splitlines()), proc.stdout
  assert "Wall time" in proc.stdout
  assert (workdir / "eval" / "report.md").exists()
  assert (workdir / "checkpoints" / "3" / "state").is_dir()
  steps = [
    json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
  ]
  assert steps[:3] == [1, 2, 3]


def test_the_demo_names_the_search_its_table_was_decoded_with():
  from moe_asr import config_lib
  from moe_asr.demo import describe_decoding

  demo = config_lib.load_config("demo").decode.to_dict()
  assert describe_decoding(demo) == (
    "joint CTC/attention (beam 4, CTC weight 0.7, LM weight 0.0, bias list none)"
  )
  assert describe_decoding({"method": "greedy", "beam": 8}) == "greedy CTC"
  fused = {**demo, "method": "ctc_beam", "beam": 8, "lm_weight": 0.3, "bias_file": "corpus"}
  assert describe_decoding(fused) == "ctc_beam (beam 8, LM weight 0.3, bias list corpus)"
  fused = {**demo, "lm_weight": 0.3, "ilm_weight": 0.1, "rescore": True}
  assert describe_decoding(fused) == (
    "joint CTC/attention (beam 4, CTC weight 0.7, LM weight 0.3, internal-LM weight 0.1, "
    "bias list none, n-best rescored)"
  )
