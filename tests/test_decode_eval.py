"""Decoding from a workdir: `train-lm`, `eval --decode.*`, `tune-decoding`, calibration.

Runs the real console commands on a real tiny checkpoint (`tiny_workdir`), so the
search, the LM, the bias list and the calibration travel through the same code a
user runs. The tiny model is barely trained: these tests check behaviour and
contracts, not accuracy (decoding correctness is in test_ctc_beam / test_joint_beam).
"""

import json
import shutil

import ml_collections
import numpy as np
import pytest
from conftest import run_cli

from moe_asr import config_lib
from moe_asr.data import languages
from moe_asr.decoding import confidence, decode
from moe_asr.evaluation import decode_stats


@pytest.fixture(scope="module")
def workdir(tiny_workdir, tmp_path_factory):
  """A copy of the tiny run with a text LM (train-lm writes into the workdir)."""
  w = tmp_path_factory.mktemp("decode") / "run"
  shutil.copytree(tiny_workdir, w)
  proc = run_cli("train-lm", "--workdir", str(w), "--steps", "20")
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert "Text LM:" in proc.stdout and "perplexity" in proc.stdout
  meta = json.loads((w / "lm" / "lm.json").read_text())
  assert meta["sentences"] > 0 and meta["val_perplexity"] > 1.0
  return w


def _report(path):
  return json.loads((path / "report.json").read_text())


def test_beam_search_with_lm_and_corpus_bias_list(workdir, tmp_path):
  out = tmp_path / "beam"
  proc = run_cli(
    "eval",
    "--workdir",
    str(workdir),
    "--split",
    "test",
    "--decode.method=ctc_beam",
    "--decode.beam=4",
    "--decode.lm_weight=0.3",
    "--decode.lm_weights.en=0.5",
    "--decode.bias_file=corpus",
    "--out",
    str(out),
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  report = _report(out)
  d = report["decode"]
  assert d["method"] == "ctc_beam" and d["beam"] == 4 and d["lm_weight"] == 0.3
  assert d["lm_weights"] == {"en": 0.5}
  assert d["lm"].endswith("lm") and d["bias_phrases"] > 0
  split = report["splits"]["test"]
  assert split["n"] > 0 and split["latency_p95"] >= split["latency_p50"] > 0
  # B-WER and U-WER on the corpus's list: weighted by their words they make the WER.
  words = split["b_words"] + split["u_words"]
  assert words > 0 and split["u_wer"] is not None
  errors = (split["b_wer"] or 0.0) * split["b_words"] + split["u_wer"] * split["u_words"]
  assert errors / words == pytest.approx(split["wer"], abs=1e-9)
  assert "## Bias phrases" in (out / "report.md").read_text()
  hyps = (out / "hypotheses" / "test.jsonl").read_text().splitlines()
  assert len(hyps) == split["n"]
  # The tiny encoder's MoE blocks 2 and 3: expert shares per language, and their heatmap.
  load = split["expert_load"]
  assert load["layers"] == [2, 3] and sum(load["frames"].values()) > 0
  for rows in load["by_language"].values():
    np.testing.assert_allclose(np.sum(rows, -1), 1.0, atol=1e-6)
  assert (out / "expert_load_test.png").exists()


def test_joint_search_with_ilm_and_task_rescoring(workdir, tmp_path):
  out = tmp_path / "joint"
  proc = run_cli(
    "eval",
    "--workdir",
    str(workdir),
    "--split",
    "test",
    "--decode.method=joint",
    "--decode.beam=3",
    "--decode.lm_weight=0.2",
    "--decode.ilm_weight=0.1",
    "--decode.rescore=True",
    "--decode.rescore_weights.task=0.5",
    "--out",
    str(out),
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  d = _report(out)["decode"]
  assert d["method"] == "joint" and d["rescore"] is True and d["rescore_weights"]["task"] == 0.5


def test_fusion_without_an_lm_fails_with_the_command_to_run(tiny_workdir, tmp_path):
  proc = run_cli(
    "eval",
    "--workdir",
    str(tiny_workdir),
    "--decode.method=ctc_beam",
    "--decode.lm_weight=0.3",
    "--out",
    str(tmp_path / "x"),
  )
  assert proc.returncode != 0
  assert "moe-asr train-lm" in proc.stderr


def test_tune_decoding_stores_weights_and_calibration_that_eval_uses(workdir, tmp_path):
  proc = run_cli(
    "tune-decoding",
    "--workdir",
    str(workdir),
    "--lm-weights",
    "0",
    "0.5",
    "--max-batches",
    "2",
    "--decode.beam=4",
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  tuned = json.loads((workdir / "decoding.json").read_text())
  assert [p["lm_weight"] for p in tuned["search"]] == [0.0, 0.5]
  # The winner is the point with the lowest MER (ties: higher intent accuracy).
  best = min(tuned["search"], key=lambda p: (p["mer"], -p["intent_acc"]))
  assert tuned["decode"]["lm_weight"] == best["lm_weight"] and tuned["decode"]["beam"] == 4
  cal = confidence.Calibration.load(workdir / "calibration.json")
  assert cal.intent_temperature > 0 and cal.lid_temperature > 0

  out = tmp_path / "tuned"
  proc = run_cli("eval", "--workdir", str(workdir), "--split", "test", "--out", str(out))
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  report = _report(out)
  assert report["decode"]["method"] == "ctc_beam"
  assert report["decode"]["lm_weight"] == tuned["decode"]["lm_weight"]
  assert report["decode"]["calibration"] == cal.to_dict()
  split = report["splits"]["test"]
  assert "ece_intent_raw" in split and "ece_utterance_raw" in split


def test_language_weights_and_open_override_sections():
  cfg = ml_collections.ConfigDict({"decode": decode.default_config()})
  config_lib.apply_overrides(cfg, ["decode.lm_weight=0.2", "decode.lm_weights.cmn=0.6"])
  weights = decode.language_weights(cfg.decode)
  expected = np.full(len(weights), 0.2, np.float32)
  expected[languages.language_index("cmn")] = 0.6
  np.testing.assert_array_equal(weights, expected)
  assert decode.uses_lm(cfg.decode) is False  # Greedy never fuses.
  cfg.decode.method = "ctc_beam"
  assert decode.uses_lm(cfg.decode) is True
  with pytest.raises(KeyError):
    config_lib.apply_overrides(cfg, ["decode.no_such_key=1"])


def test_frame_lid_and_boundary_counts_by_hand():
  # 8 frames: reference en en en es es es - -, one switch at frame 3; the last 2 are padding.
  ref = np.array([[0, 0, 0, 1, 1, 1, -1, -1]])
  mask = np.array([[1, 1, 1, 1, 1, 1, 0, 0]], bool)
  # Predicted: en en en en en es es es: 4 of 6 known frames right (3, 4 wrong), a switch at 5,
  # 2 frames from the reference switch (found with tolerance 2, missed with 1).
  pred = np.array([[0, 0, 0, 0, 0, 1, 1, 1]])
  probs = np.eye(len(languages.LANGUAGE_CODES))[pred]
  counts = decode_stats.lid_counts(probs, ref, mask, tolerance=2)
  assert {k: int(v[0]) for k, v in counts.items()} == {
    "frame_lid_correct": 4,
    "frame_lid_total": 6,
    "boundary_hit": 1,
    "boundary_total": 1,
  }
  assert int(decode_stats.lid_counts(probs, ref, mask, tolerance=1)["boundary_hit"][0]) == 0
  # A switch at the last frame is not "near" one at the start (no wrap-around).
  ref2 = np.array([[0, 1, 1, 1, 1, 1, 1, 1]])
  pred2 = np.array([[0, 0, 0, 0, 0, 0, 0, 1]])
  probs2 = np.eye(len(languages.LANGUAGE_CODES))[pred2]
  all_valid = np.ones((1, 8), bool)
  counts2 = decode_stats.lid_counts(probs2, ref2, all_valid, tolerance=2)
  assert int(counts2["boundary_total"][0]) == 1 and int(counts2["boundary_hit"][0]) == 0


def test_expert_language_load_by_hand():
  # One utterance, 4 frames (the last is padding), 1 layer, 2 experts; reference en en es -.
  token_load = np.array([[[[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.3, 0.7]]]])
  frame_lang = np.array([[0, 0, 1, 1]])
  mask = np.array([[1, 1, 1, 0]], bool)
  load = np.asarray(decode_stats.expert_language_load(token_load, frame_lang, mask, 3))
  assert load.shape == (1, 1, 3, 2)
  np.testing.assert_allclose(load[0, 0], [[1.5, 0.5], [0.0, 1.0], [0.0, 0.0]], atol=1e-6)
