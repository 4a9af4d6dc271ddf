"""Tests for the evaluation report (report.json / report.md / hypotheses / plots).

Numbers are hand-computed from four constructed utterances (see `_records`); rates compare
at 1e-12.
"""

import dataclasses
import json
import math

import numpy as np
import pytest

from moe_asr.evaluation import plots, report
from moe_asr.evaluation.metrics import Utterance

TOL = 1e-12
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUMMARY_KEYS = {
  "n",
  "wer",
  "cer",
  "mer",
  "lid_acc",
  "intent_acc",
  "slot_f1",
  "slu_f1",
  "span_f1_word",
  "span_f1_char",
  "ece_intent",
}


def _records():
  return [
    Utterance(
      "u1", "turn on the light", "turn on the light", language="en", hyp_language="en",
      speaker="v1", ref_intent="on", hyp_intent="on", intent_confidence=0.9,
      ref_slots=(("device", "light"),), hyp_slots=(("device", "light"),), duration_s=2.0,
    ),
    Utterance(
      "u2", "turn off the fan", "turn of the fan", language="en", hyp_language="es",
      speaker="v2", snr_db=5.0, ref_intent="off", hyp_intent="off", intent_confidence=0.6,
      ref_slots=(("device", "fan"),), hyp_slots=(("device", "fan"),), duration_s=2.0,
    ),
    Utterance(
      "u3", "打 开 灯", "打 开", language="cmn", hyp_language="cmn", speaker="v1",
      ref_intent="on", hyp_intent="off", intent_confidence=0.8, ref_slots=(("device", "灯"),),
      duration_s=1.0,
    ),
    Utterance(
      "u4", "pon shape of you", "pon shape of you", language="es", hyp_language="es",
      pair="en-es", speaker="v3", duration_s=1.0,
    ),
  ]  # fmt: skip


def test_split_report_numbers_and_sections():
  s = report.split_report(_records(), rtf=0.25)
  # Words: 1 sub (u2) + 1 del (u3) of 4 + 4 + 3 + 4; characters: 1 + 1 of 14 + 13 + 3 + 13.
  assert s["wer"] == pytest.approx(2 / 15, abs=TOL)
  assert s["cer"] == pytest.approx(2 / 43, abs=TOL)
  assert s["mer"] == pytest.approx(2 / 15, abs=TOL)
  assert s["lid_acc"] == pytest.approx(3 / 4, abs=TOL)
  assert s["intent_acc"] == pytest.approx(2 / 3, abs=TOL)
  assert s["slot_f1"] == pytest.approx(2 * 2 / (3 + 2), abs=TOL)
  # Two exact slots and one missed: TP 2, FN 1 per variant, so SLU-F1 = slot F1 here.
  assert s["slu_f1"] == pytest.approx(2 * 4 / (8 + 2), abs=TOL)
  assert s["by_language"]["cmn"]["slu_f1"] == 0.0 and s["by_language"]["es"]["slu_f1"] is None
  assert s["rtf"] == 0.25 and s["n"] == 4
  assert list(s["by_language"]) == ["cmn", "en", "es"]
  assert s["by_language"]["en"]["wer"] == pytest.approx(1 / 8, abs=TOL)
  assert list(s["by_pair"]) == ["en-es"] and s["by_pair"]["en-es"]["n"] == 1
  assert list(s["by_speaker"]) == ["v1", "v2", "v3"] and s["by_speaker"]["v1"]["n"] == 2
  assert list(s["by_snr"]) == ["5dB", "clean"] and s["by_snr"]["clean"]["n"] == 3
  for metric in ("wer", "cer", "mer", "intent_acc", "lid_acc", "slot_f1", "slu_f1"):
    lo, hi = s["ci"][metric]
    assert lo <= s[metric] <= hi, metric


def test_split_report_draws_the_configured_bootstrap_resamples():
  # One resample gives one value: both ends of its interval are that value (a resample of
  # the 4 utterances), while 1000 resamples spread the WER interval.
  lo, hi = report.split_report(_records(), bootstrap_samples=1)["ci"]["wer"]
  assert lo == pytest.approx(hi, abs=1e-12)
  lo, hi = report.split_report(_records(), bootstrap_samples=1000)["ci"]["wer"]
  assert hi - lo > 0.05


def test_split_report_scores_bias_phrases_inside_and_outside():
  # "turn off" (u2, "off" substituted) and "shape of you" (u4, right): 1 error in 5 biased
  # words; the other 10 words hold u3's deleted word. B-WER 1/5, U-WER 1/10, and weighted
  # by their words they make the WER, 2/15.
  s = report.split_report(_records(), bias_phrases=["turn off", "shape of you"])
  assert s["b_wer"] == pytest.approx(1 / 5, abs=TOL) and s["b_words"] == 5
  assert s["u_wer"] == pytest.approx(1 / 10, abs=TOL) and s["u_words"] == 10
  assert "b_wer" not in report.split_report(_records())
  # A list none of whose phrases occurs: no biased words, B-WER undefined.
  s = report.split_report(_records(), bias_phrases=["open the door"])
  assert s["b_wer"] is None and s["b_words"] == 0 and s["u_wer"] == pytest.approx(2 / 15)
  md = report.format_markdown(
    report.build_report(
      model={"params_total": 1, "params_active": 1}, decode={}, splits={"test": s}
    )
  )
  assert "## Bias phrases" in md and "| test | - | 0 | 13.3 | 15 |" in md


def test_split_report_omits_empty_sections():
  clean = [Utterance("a", "x", "x", language="en"), Utterance("b", "x y", "x", language="en")]
  s = report.split_report(clean, with_ci=True)
  assert "by_pair" not in s and "by_snr" not in s and s["rtf"] is None
  assert s["ci"]["intent_acc"] is None and s["ci"]["slot_f1"] is None
  assert s["ci"]["slu_f1"] is None and s["slu_f1"] is None
  assert "ci" not in report.split_report(clean, with_ci=False)


def _report(with_ci=True):
  splits = {"test": report.split_report(_records(), rtf=0.125, with_ci=with_ci)}
  return report.build_report(
    model={"params_total": 1234567, "params_active": 456789},
    decode={"method": "greedy", "lm_weight": math.nan},
    splits=splits,
    extra={"step": np.int64(200)},
  )


def test_build_report_schema_and_validation():
  r = _report()
  assert set(r) == {"model", "decode", "splits", "step"}
  assert r["step"] == 200 and type(r["step"]) is int
  assert r["decode"]["lm_weight"] is None  # nan is not JSON
  test = r["splits"]["test"]
  assert set(test) >= SUMMARY_KEYS | {"rtf", "by_language"}
  for summary in test["by_language"].values():
    assert set(summary) >= SUMMARY_KEYS
  with pytest.raises(ValueError, match="params_active"):
    report.build_report(model={"params_total": 1}, decode={}, splits={})
  with pytest.raises(ValueError, match="splits"):
    report.build_report(model={"params_total": 1, "params_active": 1}, decode={}, splits={},
                        extra={"splits": 1})  # fmt: skip
  with pytest.raises(ValueError, match="'a/b'"):
    report.build_report(model={"params_total": 1, "params_active": 1}, decode={},
                        splits={"a/b": {}})  # fmt: skip


def _reject_constant(name):
  raise AssertionError(f"report.json holds {name}")


def test_write_report_files(tmp_path):
  r = _report()
  metrics_path = tmp_path / "metrics.jsonl"
  metrics_path.write_text(
    "\n".join(json.dumps({"step": s, "train/loss": 5.0 / s, "val/cer": 0.5}) for s in (1, 2, 3))
  )
  out = tmp_path / "eval"
  paths = report.write_report(r, out, records={"test": _records()}, metrics_path=metrics_path)
  assert set(paths) == {
    "report.json",
    "report.md",
    "hypotheses/test.jsonl",
    "per_language_cer.png",
    "reliability_test.png",
    "training_curves.png",
  }
  loaded = json.loads((out / "report.json").read_text(), parse_constant=_reject_constant)
  assert loaded == r
  assert loaded["splits"]["test"]["wer"] == pytest.approx(2 / 15, abs=TOL)

  md = (out / "report.md").read_text()
  lo, hi = r["splits"]["test"]["ci"]["wer"]
  assert f"13.3 ({100 * lo:.1f}–{100 * hi:.1f})" in md  # WER 2/15 with its interval
  assert "| test | 4 |" in md and "0.125" in md  # n and RTF
  assert "66.7" in md and "80.0" in md and "75.0" in md  # intent, slot F1, LID
  assert "1,234,567 total" in md
  assert "| slot F1 | SLU-F1 | TF intent | TF slot F1 | ECE |" in md
  assert "## test by language" in md and "| cmn | 1 |" in md
  assert "## test by pair" in md and "## test by noise" in md

  lines = (out / "hypotheses/test.jsonl").read_text().splitlines()
  back = [Utterance.from_json(json.loads(line)) for line in lines]
  assert [u.id for u in back] == ["u1", "u2", "u3", "u4"]
  assert back[2].ref_slots == (("device", "灯"),) and back[0].snr_db == math.inf

  for name, path in paths.items():
    assert path == out / name and path.exists()
    if name.endswith(".png"):
      data = path.read_bytes()
      assert len(data) > 1000 and data.startswith(PNG_MAGIC), name
  assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_write_report_without_plots_and_failed_write_keeps_old(tmp_path):
  paths = report.write_report(_report(with_ci=False), tmp_path, plots=False)
  assert set(paths) == {"report.json", "report.md"}
  before = (tmp_path / "report.json").read_text()
  assert "–" not in (tmp_path / "report.md").read_text()  # no CI brackets without intervals
  bad = _report()
  bad["decode"]["beam"] = object()
  with pytest.raises(TypeError, match=r"report\.decode\.beam"):
    report.write_report(bad, tmp_path)
  assert (tmp_path / "report.json").read_text() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]


def test_format_table_exact():
  r = {
    "splits": {
      "test": {"n": 4, "cer": 2 / 43, "wer": 2 / 15, "mer": 2 / 15, "lid_acc": 0.75,
               "intent_acc": 2 / 3, "slot_f1": 0.8, "slu_f1": 0.85, "tf_intent_acc": 1.0,
               "tf_slot_f1": 0.9},
      "test_noisy": {"n": 120, "cer": 0.5, "wer": 1.0, "mer": None, "lid_acc": None,
                     "intent_acc": None, "slot_f1": None},
    }
  }  # fmt: skip
  expected = (
    "split         n   CER    WER   MER   LID  intent  slot F1  SLU-F1  TF intent  TF slot F1\n"
    "test          4   4.7   13.3  13.3  75.0    66.7     80.0    85.0      100.0        90.0\n"
    "test_noisy  120  50.0  100.0     -     -     n/a      n/a     n/a        n/a         n/a"
  )
  # Task-head scores a split does not measure read "n/a", other missing ones "-".
  assert report.format_table(r) == expected


# --- plots ------------------------------------------------------------------------------


def test_expert_utilisation_and_shape_check(tmp_path):
  load = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.4, 0.4]])
  plots.expert_utilisation(load, ["en", "cmn"], tmp_path / "experts.png", title="decoder")
  assert (tmp_path / "experts.png").read_bytes().startswith(PNG_MAGIC)
  with pytest.raises(ValueError, match=r"3 rows, got shape \(2, 4\)"):
    plots.expert_utilisation(load, ["en", "es", "cmn"], tmp_path / "bad.png")


def test_expert_load_report_shares_and_heatmap(tmp_path):
  # 2 layers, 3 languages (the second has no frames), 2 experts; summed routing weights.
  load = np.array([[[3.0, 1.0], [0.0, 0.0], [0.5, 1.5]], [[2.0, 2.0], [0.0, 0.0], [2.0, 0.0]]])
  got = report.expert_load_report(load, (4, 5), ("en", "es", "cmn"))
  entropy = got.pop("entropy_bits")
  mi, mi_norm = got.pop("mutual_information_bits"), got.pop("mutual_information_normalized")
  h_lang = got.pop("language_entropy_bits")
  assert got == {
    "layers": [4, 5],
    "frames": {"en": 4, "cmn": 2},
    "by_language": {"en": [[0.75, 0.25], [0.5, 0.5]], "cmn": [[0.25, 0.75], [1.0, 0.0]]},
    "entropy_max_bits": 1.0,
  }
  # H(3/4, 1/4) = 2 - 3/4 log2(3); (1/2, 1/2) is 1 bit, (1, 0) 0 bits.
  h = 2 - 0.75 * math.log2(3)
  assert list(entropy) == ["en", "cmn"]
  assert entropy["en"] == pytest.approx([h, 1.0], abs=TOL)
  assert entropy["cmn"] == pytest.approx([h, 0.0], abs=TOL)
  # Frames en 4, cmn 2: H(L) = H(2/3, 1/3) = log2(3) - 2/3.
  assert h_lang == pytest.approx(math.log2(3) - 2 / 3, abs=TOL)
  # Block 4: p(l, e) = [[3, 1], [0.5, 1.5]] / 6, p(e) = (7/12, 5/12): I = H(E) - H(E | L)
  # = H(7/12, 5/12) - h. Block 5: [[2, 2], [2, 0]] / 6, p(e) = (2/3, 1/3): I = H(2/3, 1/3)
  # - 2/3 * 1 - 1/3 * 0 = log2(3) - 4/3.
  h_e = -(7 / 12) * math.log2(7 / 12) - (5 / 12) * math.log2(5 / 12)
  assert mi == pytest.approx([h_e - h, math.log2(3) - 4 / 3], abs=TOL)
  assert mi_norm == pytest.approx([x / h_lang for x in mi], abs=TOL)
  got.update(
    entropy_bits=entropy,
    language_entropy_bits=h_lang,
    mutual_information_bits=mi,
    mutual_information_normalized=mi_norm,
  )
  with pytest.raises(ValueError, match=r"\[2 layers, 2 languages, experts\]"):
    report.expert_load_report(load, (4, 5), ("en", "es"))
  r = _report()
  r["splits"]["test"]["expert_load"] = got
  paths = report.write_report(r, tmp_path)
  assert paths["expert_load_test.png"].read_bytes().startswith(PNG_MAGIC)
  saved = json.loads((tmp_path / "report.json").read_text())["splits"]["test"]["expert_load"]
  assert saved["mutual_information_bits"] == pytest.approx(mi, abs=TOL)
  md = (tmp_path / "report.md").read_text()
  assert "## test expert load by language" in md
  assert "| block | en | cmn | I (bits) | I / H(language) |" in md
  row = f"| 5 | 1.000 | 0.000 | {mi[1]:.3f} | {mi_norm[1]:.3f} |"
  assert row in md, md


def test_expert_load_report_one_language():
  # A single language: I = H(L) = 0, and I / H(L) is undefined (None in the report).
  got = report.expert_load_report(np.array([[[1.0, 1.0], [0.0, 0.0]]]), (3,), ("en", "es"))
  assert got["language_entropy_bits"] == 0.0 and got["mutual_information_bits"] == [0.0]
  assert got["mutual_information_normalized"] == [None]
  assert got["entropy_bits"] == {"en": [1.0]}
  md = report.format_markdown({"splits": {"test": {"n": 1, "expert_load": got}}})
  assert "| 3 | 1.000 | 0.000 | - |" in md


def test_plots_without_data_still_write(tmp_path):
  plots.per_language_bars({"splits": {"test": {"by_language": {}}}}, tmp_path / "bars.png")
  plots.reliability_diagram([Utterance("a", "x", "x")], tmp_path / "rel.png")
  (tmp_path / "m.jsonl").write_text('{"step": 1, "other": 2}\n')
  plots.training_curves(tmp_path / "m.jsonl", tmp_path / "curves.png")
  for name in ("bars.png", "rel.png", "curves.png"):
    assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC), name


def test_training_curves_names_bad_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/loss": \n')
  with pytest.raises(ValueError, match=r"metrics\.jsonl:2"):
    plots.training_curves(path, tmp_path / "curves.png")
  path.write_text('{"train/loss": 2.0}\n')
  with pytest.raises(ValueError, match=r"metrics\.jsonl:1.*'step'"):
    plots.training_curves(path, tmp_path / "curves.png")


def test_coverage_plot_is_written_for_confidences(tmp_path):
  recs = [
    dataclasses.replace(r, confidence=c, deferred=c < 0.5)
    for r, c in zip(_records(), (0.9, 0.4, 0.8, 0.7), strict=True)
  ]
  paths = report.write_report(_report(), tmp_path, records={"test": recs})
  png = paths["coverage_test.png"]
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
