"""Tests for moe_asr.evaluation.metrics against hand-computed values.

Counts are exact integers; rates are ratios of small integers compared at 1e-12 (float
round-off of one division); bootstrap intervals are checked for their defining properties.
"""

import json
import math

import numpy as np
import pytest

from moe_asr.evaluation import metrics
from moe_asr.evaluation.metrics import EditCounts, Utterance

TOL = 1e-12


# --- units and edit counts --------------------------------------------------------


def test_units_per_mode():
  text = "打 开 wifi密码 please"
  assert metrics.units(text, "word") == ["打", "开", "wifi密码", "please"]
  assert metrics.units(text, "char") == list("打开wifi密码please")
  # CJK characters one by one, the Latin run inside "wifi密码" kept whole.
  assert metrics.units(text, "mixed") == ["打", "开", "wifi", "密", "码", "please"]
  assert metrics.units("", "mixed") == []


def test_units_rejects_unknown_mode():
  with pytest.raises(ValueError, match="'words'"):
    metrics.units("a b", "words")


def test_word_edit_counts():
  c = metrics.edit_counts("a b c d", "a x c", "word")
  assert c == EditCounts(sub=1, dele=1, ins=0, ref_len=4)
  assert c.errors == 2
  assert metrics.error_rate([c]) == pytest.approx(0.5, abs=TOL)
  c = metrics.edit_counts("a b", "a b c d", "word")
  assert (c.sub, c.dele, c.ins, c.ref_len) == (0, 0, 2, 2)


def test_char_mode_ignores_spaces():
  # Re-spacing is free in CER but costs a substitution and a deletion in WER.
  assert metrics.edit_counts("ab cd", "abcd", "char").errors == 0
  assert metrics.edit_counts("ab cd", "abcd", "word") == EditCounts(1, 1, 0, 2)
  # "turnoffthefan" (13 chars) -> "turnofthefan": one deletion.
  c = metrics.edit_counts("turn off the fan", "turn of the fan", "char")
  assert c == EditCounts(0, 1, 0, 13)


def test_mixed_error_rate_on_code_switched_text():
  c = metrics.edit_counts("打 开 灯 please", "打 开 please", "mixed")
  assert c == EditCounts(0, 1, 0, 4)
  # Unspaced Mandarin: words would see "打开" vs "打 开" as a substitution plus an insertion
  # (2/3); MER scores characters, so it is correct.
  assert metrics.edit_counts("打开 灯 please", "打 开 灯 please", "word") == EditCounts(1, 0, 1, 3)
  assert metrics.edit_counts("打开 灯 please", "打 开 灯 please", "mixed").errors == 0
  # A misspelt English word is one error of 4 units in MER, one of 9 characters in CER.
  assert metrics.edit_counts("打 开 灯 please", "打 开 灯 pleas", "mixed") == EditCounts(1, 0, 0, 4)
  assert metrics.edit_counts("打 开 灯 please", "打 开 灯 pleas", "char") == EditCounts(0, 1, 0, 9)


def test_empty_reference_and_hypothesis():
  assert metrics.edit_counts("", "a b", "word") == EditCounts(0, 0, 2, 0)
  assert metrics.edit_counts("a b c", "", "word") == EditCounts(0, 3, 0, 3)
  assert metrics.edit_counts("", "", "char") == EditCounts(0, 0, 0, 0)
  assert math.isnan(metrics.error_rate([EditCounts(0, 0, 2, 0)]))
  assert math.isnan(metrics.error_rate([]))


def test_error_rate_is_corpus_level_not_mean_of_utterances():
  short = metrics.edit_counts("a", "b", "word")  # 1 error / 1 word
  long = metrics.edit_counts("a b c d e f g h i", "a b c d e f g h i", "word")  # 0 / 9
  assert metrics.error_rate([short, long]) == pytest.approx(1 / 10, abs=TOL)  # not 0.5
  records = [Utterance("s", "a", "b"), Utterance("l", "a b c d e f g h i", "a b c d e f g h i")]
  assert metrics.summarize(records)["wer"] == pytest.approx(0.1, abs=TOL)


# --- slots ----------------------------------------------------------------------------


def test_slot_f1_hand_computed():
  ref = (("device", "light"), ("room", "kitchen"))
  hyp = (("device", "light"), ("room", "bedroom"))
  assert metrics.slot_f1([(ref, hyp)]) == pytest.approx(2 * 1 / 4, abs=TOL)
  # Duplicates are a multiset: one of two "two"s found -> P 1, R 1/2, F1 2/3.
  two = ("number", "two")
  assert metrics.slot_f1([((two, two), (two,))]) == pytest.approx(2 / 3, abs=TOL)
  # Three predictions of one reference slot: P 1/3, R 1 -> F1 1/2.
  assert metrics.slot_f1([((two,), (two, two, two))]) == pytest.approx(0.5, abs=TOL)
  # Whitespace is normalised before matching.
  assert metrics.slot_f1([((("song", "shape of you"),), (("song", " shape  of you "),))]) == 1.0


def test_slot_f1_is_micro_averaged_and_handles_empty():
  a = ((("device", "light"),), (("device", "light"),))  # tp 1, ref 1, hyp 1
  b = ((("d", "x"), ("d", "y"), ("d", "z")), ())  # tp 0, ref 3, hyp 0
  assert metrics.slot_f1([a, b]) == pytest.approx(2 * 1 / (4 + 1), abs=TOL)  # macro would be 0.5
  assert math.isnan(metrics.slot_f1([]))
  assert math.isnan(metrics.slot_f1([((), ())]))
  assert metrics.slot_f1([((), (("device", "fan"),))]) == 0.0


# --- SLU-F1 (SLURP) ---------------------------------------------------------------------


def _scores(ref, hyp):
  """(SLU-F1, word-level, char-level) span scores of one utterance."""
  pairs = [(ref, hyp)]
  return (
    metrics.slu_f1(pairs),
    metrics.span_distance_f1(pairs, "word"),
    metrics.span_distance_f1(pairs, "char"),
  )


def test_value_distances_by_hand():
  # "kitchen" -> "kitchan": 1 of 1 word wrong; 1 character edit over 7.
  assert metrics.value_distance("kitchen", "kitchan", "word") == 1.0
  assert metrics.value_distance("kitchen", "kitchan", "char") == pytest.approx(1 / 7, abs=TOL)
  # "shape of you" -> "shape of me": 1 of 3 words; "you" -> "me" is 2 substitutions and a
  # deletion over the 12 characters of the longer value (spaces count).
  assert metrics.value_distance("shape of you", "shape of me", "word") == pytest.approx(1 / 3)
  assert metrics.value_distance("shape of you", "shape of me", "char") == pytest.approx(3 / 12)
  # Word distance is a WER: inserted words take it above 1 (2 insertions / 1 word).
  assert metrics.value_distance("light", "light on off", "word") == 2.0
  assert metrics.value_distance("light", "light on off", "char") == pytest.approx(7 / 12)
  # Empty values: 0 when both are empty; an empty reference divides by 1 word.
  assert metrics.value_distance("", "", "char") == metrics.value_distance("", "", "word") == 0.0
  assert metrics.value_distance("", "on off", "word") == 2.0
  assert metrics.value_distance(" shape  of you", "shape of you ", "char") == 0.0
  with pytest.raises(ValueError, match="'chars'"):
    metrics.value_distance("a", "b", "chars")


def test_slu_f1_exact_match_is_one():
  ref = (("device", "light"), ("room", "kitchen"))
  for scores in _scores(ref, ref[::-1]):
    assert scores == (1.0, 1.0, 1.0)


def test_slu_f1_one_wrong_character():
  # d_word = 1 (the only word is wrong), d_char = 1/7.
  # Word: TP 1, FP 1, FN 1 -> P = R = F1 = 1/2.
  # Char: TP 1, FP 1/7, FN 1/7 -> P = R = 1 / (8/7) = 7/8, F1 = 2 / (2 + 2/7) = 7/8.
  # SLU: TP 2, FP = FN = 8/7 -> P = R = F1 = 2 / (2 + 8/7) = 7/11.
  slu, word, char = _scores((("room", "kitchen"),), (("room", "kitchan"),))
  assert word == pytest.approx((1 / 2, 1 / 2, 1 / 2), abs=TOL)
  assert char == pytest.approx((7 / 8, 7 / 8, 7 / 8), abs=TOL)
  assert slu == pytest.approx((7 / 11, 7 / 11, 7 / 11), abs=TOL)
  assert metrics.slot_f1([((("room", "kitchen"),), (("room", "kitchan"),))]) == 0.0


def test_slu_f1_one_wrong_word():
  # d_word = 1/3, d_char = 3/12 = 1/4.
  # Word: F1 = 2 / (2 + 2/3) = 3/4.  Char: F1 = 2 / (2 + 1/2) = 4/5.
  # SLU: TP 2, FP = FN = 1/3 + 1/4 = 7/12 -> F1 = 4 / (4 + 7/6) = 24/31.
  slu, word, char = _scores((("song", "shape of you"),), (("song", "shape of me"),))
  assert word.f1 == pytest.approx(3 / 4, abs=TOL)
  assert char.f1 == pytest.approx(4 / 5, abs=TOL)
  assert slu == pytest.approx((24 / 31, 24 / 31, 24 / 31), abs=TOL)


def test_slu_f1_wrong_type_earns_nothing():
  # Right value, wrong type: FP 1 and FN 1 in both variants, TP 0.
  for scores in _scores((("room", "kitchen"),), (("place", "kitchen"),)):
    assert scores == (0.0, 0.0, 0.0)


def test_slu_f1_missing_slot_lowers_recall():
  # One exact match, one reference slot unmatched: TP 1, FP 0, FN 1 per variant.
  # P = 1, R = 1/2, F1 = 2 / (2 + 1) = 2/3 (SLU: TP 2, FN 2, the same ratios).
  ref = (("device", "light"), ("room", "kitchen"))
  for scores in _scores(ref, (("device", "light"),)):
    assert scores == pytest.approx((1.0, 1 / 2, 2 / 3), abs=TOL)
  # No hypothesis at all: recall 0, precision undefined, F1 0.
  slu = metrics.slu_f1([(ref, ())])
  assert math.isnan(slu.precision) and (slu.recall, slu.f1) == (0.0, 0.0)


def test_slu_f1_extra_slot_lowers_precision():
  # One exact match, one hypothesis slot of a type the reference lacks: TP 1, FP 1, FN 0.
  # P = 1/2, R = 1, F1 = 2/3.
  ref = (("device", "light"),)
  for scores in _scores(ref, (("device", "light"), ("room", "kitchen"))):
    assert scores == pytest.approx((1 / 2, 1.0, 2 / 3), abs=TOL)
  # A second slot of the matched type finds that reference slot used up: also FP 1.
  assert metrics.slu_f1([(ref, (("device", "light"), ("device", "fan")))]).f1 == pytest.approx(
    2 / 3, abs=TOL
  )


def test_slu_f1_matching_follows_slurp():
  # A hypothesis slot takes the reference slot of its type at the lowest distance.
  ref = (("time", "five pm"), ("time", "six pm"))
  assert metrics.span_distance_counts(ref, (("time", "six pm"),), "char") == (1.0, 0.0, 1.0)
  # Hypothesis slots are matched greedily, in order: "bedroom" takes the only "room"
  # (d_word = 1; d_char = 7/7, no letter in place) and the exact "kitchen" after it finds
  # none left. Per variant TP 1, FP 1 + 1, FN 1 -> F1 2 / (2 + 3) = 2/5.
  hyp = (("room", "bedroom"), ("room", "kitchen"))
  assert metrics.span_distance_counts((("room", "kitchen"),), hyp, "word") == (1.0, 2.0, 1.0)
  assert metrics.slu_f1([((("room", "kitchen"),), hyp)]).f1 == pytest.approx(2 / 5, abs=TOL)
  with pytest.raises(ValueError, match="'wer'"):
    metrics.span_distance_counts(ref, ref, "wer")


def test_slu_f1_without_slots_is_undefined():
  # No slot on either side anywhere: every score is nan (SLURP's script would print 0), and
  # the summary reports None, as for slot F1.
  for pairs in ([], [((), ()), ((), ())]):
    for scores in (metrics.slu_f1(pairs), metrics.span_distance_f1(pairs, "char")):
      assert all(math.isnan(x) for x in scores)
  s = metrics.summarize([Utterance("a", "x", "x", ref_intent="on", hyp_intent="on")])
  assert s["slu_f1"] is None and s["span_f1_word"] is None and s["span_f1_char"] is None


def test_slu_f1_is_micro_averaged_over_utterances():
  # Utterance 1 as in `test_slu_f1_one_wrong_character` (SLU: TP 2, FP = FN = 8/7); utterance
  # 2 misses two reference slots (TP 0, FN 2 + 2). Sum: 2 TP / (2 TP + FP + FN)
  # = 4 / (4 + 16/7 + 4) = 28/72 = 7/18.
  pairs = [
    ((("room", "kitchen"),), (("room", "kitchan"),)),
    ((("device", "fan"), ("room", "hall")), ()),
  ]
  assert metrics.slu_f1(pairs).f1 == pytest.approx(7 / 18, abs=TOL)
  records = [
    Utterance(str(i), "x", "x", ref_slots=ref, hyp_slots=hyp) for i, (ref, hyp) in enumerate(pairs)
  ]
  # Unlabelled utterances (no intent, no reference slots) do not count their predictions.
  records.append(Utterance("u", "x", "x", hyp_slots=(("room", "hall"),)))
  s = metrics.summarize(records)
  assert s["slu_f1"] == pytest.approx(7 / 18, abs=TOL)
  # Word: 2 / (2 + 1 + 1 + 2) = 1/3; char: 2 / (2 + 2/7 + 2) = 7/15.
  assert s["span_f1_word"] == pytest.approx(1 / 3, abs=TOL)
  assert s["span_f1_char"] == pytest.approx(7 / 15, abs=TOL)
  lo, hi = metrics.bootstrap_ci(records * 20, "slu_f1")
  assert lo <= 7 / 18 <= hi


# --- expert routing -------------------------------------------------------------------


def test_expert_load_entropy_by_hand():
  # One language per expert: each row is a single expert, 0 bits.
  np.testing.assert_allclose(metrics.expert_load_entropy(3 * np.eye(4)), np.zeros(4), atol=TOL)
  # Uniform over 4 experts: log2(4) = 2 bits, whatever the mass.
  np.testing.assert_allclose(metrics.expert_load_entropy(np.full((4, 4), 7.0)), 2.0, atol=TOL)
  # [3, 1] -> (3/4, 1/4): 3/4 log2(4/3) + 1/4 log2(4) = 2 - 3/4 log2(3); an empty row is nan.
  got = metrics.expert_load_entropy([[[3.0, 1.0], [0.0, 0.0]]])
  assert got.shape == (1, 2)
  assert got[0, 0] == pytest.approx(2 - 0.75 * math.log2(3), abs=TOL) and math.isnan(got[0, 1])
  with pytest.raises(ValueError, match="non-negative"):
    metrics.expert_load_entropy([[1.0, -1.0]])


def test_language_expert_mutual_information_by_hand():
  mi = metrics.language_expert_mutual_information
  # Four languages each on an expert of its own, equal mass: p(l, e) = 1/4 on the diagonal,
  # I = sum 1/4 log2((1/4) / (1/4 * 1/4)) = log2(4) = 2 bits = H(L), normalised 1.
  assert mi(5 * np.eye(4)) == pytest.approx(2.0, abs=TOL)
  assert mi(5 * np.eye(4), normalize=True) == pytest.approx(1.0, abs=TOL)
  # Uniform loads: p(l, e) = p(l) p(e), I = 0.
  assert mi(np.ones((4, 4))) == pytest.approx(0.0, abs=TOL)
  assert mi(np.ones((4, 4)), normalize=True) == pytest.approx(0.0, abs=TOL)
  # [[3, 1], [1, 3]]: H(E) = 1, H(E | L) = 2 - 3/4 log2(3), I = 3/4 log2(3) - 1.
  assert mi([[3.0, 1.0], [1.0, 3.0]]) == pytest.approx(0.75 * math.log2(3) - 1, abs=TOL)
  # Unequal mass: by default p(l) is each row's share of the mass (3/4, 1/4), so a one-to-one
  # map carries I = H(L) = 2 - 3/4 log2(3) bits; weights give the same from row shares.
  h = 2 - 0.75 * math.log2(3)
  assert mi([[3.0, 0.0], [0.0, 1.0]]) == pytest.approx(h, abs=TOL)
  assert mi([[1.0, 0.0], [0.0, 1.0]], [3, 1]) == pytest.approx(h, abs=TOL)
  assert mi([[1.0, 0.0], [0.0, 1.0]], [3, 1], normalize=True) == pytest.approx(1.0, abs=TOL)
  # Per layer over leading axes; one language has H(L) = 0, so the normalised form is nan.
  np.testing.assert_allclose(mi(np.stack([np.eye(2), np.ones((2, 2))])), [1.0, 0.0], atol=TOL)
  assert math.isnan(mi([[1.0, 2.0]], normalize=True)) and mi([[1.0, 2.0]]) == 0.0
  assert math.isnan(mi(np.zeros((2, 2))))
  with pytest.raises(ValueError, match=r"\[2 languages\]"):
    mi(np.eye(2), [1.0, 1.0, 1.0])
  with pytest.raises(ValueError, match="no load"):
    mi([[1.0, 0.0], [0.0, 0.0]], [1.0, 1.0])


# --- calibration ------------------------------------------------------------------------


def test_ece_two_bins_by_hand():
  conf, correct = [0.2, 0.4, 0.6, 0.9], [0, 1, 1, 1]
  # Bin [0, .5): acc 0.5, conf 0.3 -> weight 1/2 * 0.2; bin [.5, 1]: acc 1, conf 0.75 -> 1/2 * 0.25.
  assert metrics.expected_calibration_error(conf, correct, num_bins=2) == pytest.approx(
    0.225, abs=TOL
  )
  rel = metrics.reliability(conf, correct, num_bins=2)
  assert rel["edges"] == [0.0, 0.5, 1.0]
  assert rel["count"] == [2, 2]
  assert rel["accuracy"] == pytest.approx([0.5, 1.0], abs=TOL)
  assert rel["confidence"] == pytest.approx([0.3, 0.75], abs=TOL)


def test_reliability_edges_and_empty_bins():
  # 0.0 falls in the first bin and 1.0 in the last (closed) one; the middle bin is empty.
  rel = metrics.reliability([0.0, 1.0, 0.1], [False, True, True], num_bins=3)
  assert rel["count"] == [2, 0, 1]
  assert rel["accuracy"][1] is None and rel["confidence"][1] is None
  assert rel["accuracy"][0] == 0.5 and rel["accuracy"][2] == 1.0
  # Perfectly calibrated within its bin: accuracy 1/2 at confidence 1/2.
  assert metrics.expected_calibration_error([0.5, 0.5], [1, 0]) == 0.0
  assert math.isnan(metrics.expected_calibration_error([], []))


def test_calibration_rejects_bad_input():
  with pytest.raises(ValueError, match="item 1 is 1.5"):
    metrics.expected_calibration_error([0.5, 1.5], [1, 1])
  with pytest.raises(ValueError, match="3 values but correct has 2"):
    metrics.reliability([0.1, 0.2, 0.3], [1, 0])


# --- summaries --------------------------------------------------------------------------


def _labelled_records():
  return [
    Utterance(
      "a",
      "x y",
      "x y",
      language="en",
      hyp_language="en",
      ref_intent="on",
      hyp_intent="on",
      intent_confidence=0.9,
      ref_slots=(("d", "x"),),
      hyp_slots=(("d", "x"),),
      duration_s=1800,
    ),  # fmt: skip
    Utterance(
      "b",
      "x y",
      "x z",
      language="es",
      hyp_language="en",
      ref_intent="off",
      hyp_intent="on",
      intent_confidence=0.6,
      ref_slots=(("d", "y"),),
      duration_s=3600,
    ),  # fmt: skip
    # No intent/slot labels and no LID prediction: its predicted slot must not count.
    Utterance("c", "x", "x", language="en", hyp_slots=(("d", "q"),), duration_s=1800),
  ]


def test_summarize_hand_computed():
  s = metrics.summarize(_labelled_records())
  assert s["n"] == 3
  assert s["wer"] == pytest.approx(1 / 5, abs=TOL)
  assert s["cer"] == pytest.approx(1 / 5, abs=TOL)
  assert s["lid_acc"] == pytest.approx(1 / 2, abs=TOL)
  assert s["intent_acc"] == pytest.approx(1 / 2, abs=TOL)
  assert s["slot_f1"] == pytest.approx(2 * 1 / (2 + 1), abs=TOL)
  # "a" matches exactly, "b" misses its slot, "c" is unlabelled: TP 1, FN 1 per variant.
  assert s["slu_f1"] == s["span_f1_word"] == s["span_f1_char"] == pytest.approx(2 / 3, abs=TOL)
  # 15 bins: 0.9 (correct) and 0.6 (wrong) in separate bins -> (0.1 + 0.6) / 2.
  assert s["ece_intent"] == pytest.approx(0.35, abs=TOL)
  assert s["hours"] == pytest.approx(2.0, abs=TOL)


def test_summarize_missing_metrics_are_none():
  s = metrics.summarize([Utterance("a", "", "")])
  assert s["n"] == 1 and s["hours"] == 0.0
  for key in ("wer", "cer", "mer", "lid_acc", "intent_acc", "slot_f1", "slu_f1", "ece_intent"):
    assert s[key] is None, key
  empty = metrics.summarize([])
  assert empty["n"] == 0 and empty["wer"] is None
  json.dumps(s, allow_nan=False)


def test_breakdown_groups_skip_empty_and_sort_naturally():
  records = _labelled_records() + [Utterance("d", "x", "y")]  # language "" is left out
  by_lang = metrics.breakdown(records, "language")
  assert list(by_lang) == ["en", "es"]
  assert by_lang["en"]["n"] == 2 and by_lang["en"]["wer"] == pytest.approx(0.0, abs=TOL)
  assert by_lang["es"]["wer"] == pytest.approx(0.5, abs=TOL)
  noisy = [Utterance(str(i), "a", "a", snr_db=s) for i, s in enumerate([10, math.inf, 0, 5.2])]
  by_snr = metrics.breakdown(noisy, lambda r: metrics.snr_bucket(r.snr_db))
  assert list(by_snr) == ["0dB", "5dB", "10dB", "clean"]
  with pytest.raises(ValueError, match="'lang'"):
    metrics.breakdown(records, "lang")


def test_snr_bucket():
  assert metrics.snr_bucket(math.inf) == "clean"
  assert metrics.snr_bucket(4.6) == "5dB"
  assert metrics.snr_bucket(0.0) == "0dB"
  assert metrics.snr_bucket(20.0) == "20dB"
  assert metrics.snr_bucket(-5.0) == "-5dB"
  with pytest.raises(ValueError, match="nan"):
    metrics.snr_bucket(math.nan)


# --- bootstrap ---------------------------------------------------------------------------


def _varied_records(n, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    words = ["w"] * int(rng.integers(2, 8))
    hyp = ["w" if rng.random() > 0.3 else "v" for _ in words]
    intent = str(rng.integers(0, 3))
    out.append(
      Utterance(f"u{i}", " ".join(words), " ".join(hyp), ref_intent="0", hyp_intent=intent)
    )
  return out


def test_bootstrap_contains_estimate_and_is_deterministic():
  records = _varied_records(200)
  for metric in ("wer", "intent_acc"):
    value = metrics.summarize(records)[metric]
    lo, hi = metrics.bootstrap_ci(records, metric, seed=3)
    assert lo < value < hi, metric
    assert metrics.bootstrap_ci(records, metric, seed=3) == (lo, hi)
    assert metrics.bootstrap_ci(records, metric, seed=4) != (lo, hi)


def test_bootstrap_narrows_with_more_data():
  records = _varied_records(100)
  lo, hi = metrics.bootstrap_ci(records, "wer")
  lo4, hi4 = metrics.bootstrap_ci(records * 4, "wer")
  # Width scales as 1/sqrt(n): expect about half; 0.7 leaves room for sampling noise.
  assert hi4 - lo4 < 0.7 * (hi - lo)


def test_bootstrap_degenerate_and_missing():
  records = [
    Utterance(f"u{i}", "a b c", "a x c", ref_intent="on", hyp_intent="on") for i in range(50)
  ]
  lo, hi = metrics.bootstrap_ci(records, "wer")
  assert lo == hi == metrics.summarize(records)["wer"] == 1 / 3
  assert metrics.bootstrap_ci(records, "intent_acc") == (1.0, 1.0)
  assert all(math.isnan(x) for x in metrics.bootstrap_ci(records, "lid_acc"))
  assert all(math.isnan(x) for x in metrics.bootstrap_ci([], "wer"))
  with pytest.raises(ValueError, match="'ece'"):
    metrics.bootstrap_ci(records, "ece")


# --- records ------------------------------------------------------------------------------


def test_utterance_validates_and_round_trips_json():
  u = Utterance("u1", "a", "b", ref_slots=[["device", "fan"]], confidence=0.5)
  assert u.ref_slots == (("device", "fan"),)
  obj = json.loads(json.dumps(u.to_json(), allow_nan=False))
  assert obj["snr_db"] is None and obj["intent_confidence"] is None
  back = Utterance.from_json(obj)
  assert back.snr_db == math.inf and math.isnan(back.intent_confidence)
  assert (back.id, back.ref_slots, back.confidence) == ("u1", (("device", "fan"),), 0.5)
  with pytest.raises(ValueError, match="'u2'.*ref_slots"):
    Utterance("u2", "a", "b", ref_slots=["device"])
  with pytest.raises(TypeError, match="'u3'.*hyp_text"):
    Utterance("u3", "a", None)
  with pytest.raises(ValueError, match="unknown fields"):
    Utterance.from_json({"id": "u4", "ref_text": "", "hyp_text": "", "lang": "en"})


def test_teacher_forced_task_metrics():
  # Three labelled utterances: the heads on the reference get 2 of 3 intents; of their 3
  # reference slots they find 2, plus 1 wrong one: slot F1 = 2 * 2 / (3 + 3) = 2/3. The
  # fourth has no teacher-forced reading and counts nowhere.
  slots = (("date", "today"), ("place", "paris"))
  records = [
    Utterance("a", "x", "x", ref_intent="weather", tf_intent="weather", ref_slots=slots,
              tf_slots=slots),
    Utterance("b", "x", "x", ref_intent="alarm", tf_intent="weather",
              ref_slots=(("time", "seven"),), tf_slots=(("time", "eight"),)),
    Utterance("c", "x", "x", ref_intent="alarm", tf_intent="alarm", tf_slots=()),
    Utterance("d", "x", "x", ref_intent="alarm", ref_slots=slots),
  ]  # fmt: skip
  s = metrics.summarize(records)
  assert s["tf_intent_acc"] == pytest.approx(2 / 3)
  assert s["tf_slot_f1"] == pytest.approx(2 / 3)
  assert metrics.summarize(records[3:])["tf_slot_f1"] is None
  back = Utterance.from_json(records[1].to_json())
  assert back == records[1] and Utterance.from_json(records[3].to_json()).tf_slots is None
