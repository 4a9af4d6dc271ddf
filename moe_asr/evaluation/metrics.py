"""Corpus metrics computed from decoded utterances: error rates, task scores, calibration.

Everything here starts from `Utterance` records, one per decoded utterance, so a
report can be recomputed from saved hypotheses without the model. Conventions:

- Error rates are corpus-level (sum of edits / sum of reference units), the
  number speech papers report; the mean of per-utterance rates would weight a
  two-word command as much as a long sentence.
- WER counts whitespace words, CER characters without spaces, and MER (the
  code-switching metric) each CJK character plus every other whitespace run,
  so a Mandarin-English mix is scored by character on the Mandarin side and by
  word on the other.
- Slot F1 counts exact (type, value) matches; SLU-F1 (SLURP's, see `slu_f1`) gives a
  hypothesis slot of the right type partial credit by the edit distance of its value.
- A metric without data is `None` in the output of `summarize` (JSON null), never nan.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jiwer
import numpy as np

from moe_asr.data import text as text_lib

Slots = tuple[tuple[str, str], ...]

UNIT_MODES = ("word", "char", "mixed")
# Metrics that are a ratio of per-utterance sums, hence bootstrappable by resampling utterances.
RATIO_METRICS = (
  "wer",
  "cer",
  "mer",
  "lid_acc",
  "intent_acc",
  "slot_f1",
  "slu_f1",
  "span_f1_word",
  "span_f1_char",
  "tf_intent_acc",
  "tf_slot_f1",
  "frame_lid_acc",
  "boundary_acc",
)
_COUNT_METRICS = {
  "frame_lid_acc": ("frame_lid_correct", "frame_lid_total"),
  "boundary_acc": ("boundary_hit", "boundary_total"),
}
_MODE_OF = {"wer": "word", "cer": "char", "mer": "mixed"}
# Scores of the task heads: "n/a" (None) where no record has a prediction of them.
TASK_METRICS = (
  "intent_acc",
  "slot_f1",
  "slu_f1",
  "span_f1_word",
  "span_f1_char",
  "tf_intent_acc",
  "tf_slot_f1",
)
SPAN_DISTANCES = ("word", "char")
# Span F1 metrics and the value distances whose (TP, FP, FN) they sum.
_SPAN_METRICS = {"span_f1_word": ("word",), "span_f1_char": ("char",), "slu_f1": SPAN_DISTANCES}


def _as_slots(value: Any, utt_id: str, name: str) -> Slots:
  try:
    slots = tuple((str(t), str(v)) for t, v in value)
  except (TypeError, ValueError):
    raise ValueError(
      f"Utterance {utt_id!r}: {name} must be a sequence of (type, value) pairs, got {value!r}"
    ) from None
  return slots


@dataclasses.dataclass
class Utterance:
  """One decoded utterance with its references (see the module docstring)."""

  id: str
  ref_text: str
  hyp_text: str
  language: str = ""  # Reference dominant language code.
  hyp_language: str = ""  # Predicted utterance language ("" = no prediction).
  pair: str = ""  # Code-switch pair, sorted codes joined by "-" ("en-es"); "" if monolingual.
  speaker: str = ""
  snr_db: float = math.inf  # inf = clean.
  ref_intent: str = ""  # "" = no label.
  hyp_intent: str = ""
  intent_confidence: float = math.nan  # Probability of hyp_intent (nan = none).
  ref_slots: Slots = ()  # (slot type, value text).
  hyp_slots: Slots = ()
  confidence: float = math.nan  # Transcript confidence (calibrated where a calibration exists).
  duration_s: float = 0.0  # Audio seconds.
  intent_confidence_raw: float = math.nan  # Before calibration (nan = no calibration applied).
  confidence_raw: float = math.nan  # Transcript confidence before calibration.
  deferred: bool = False  # Confidence below the defer threshold: handed to a person.
  frame_lid_correct: int = 0  # Encoder frames whose predicted language is the reference one.
  frame_lid_total: int = 0  # Encoder frames with a reference language.
  boundary_hit: int = 0  # Reference language switches the frame LID also switches near.
  boundary_total: int = 0  # Reference language switches.
  # The task heads on the reference transcript (teacher forcing); None = not run.
  tf_intent: str = ""
  tf_slots: Slots | None = None

  def __post_init__(self):
    for name in ("id", "ref_text", "hyp_text"):
      if not isinstance(getattr(self, name), str):
        raise TypeError(
          f"Utterance {self.id!r}: {name} must be a str, got {type(getattr(self, name)).__name__}"
        )
    # Decoders hand over lists (from JSON or numpy); tuples keep records hashable and comparable.
    self.ref_slots = _as_slots(self.ref_slots, self.id, "ref_slots")
    self.hyp_slots = _as_slots(self.hyp_slots, self.id, "hyp_slots")
    if self.tf_slots is not None:
      self.tf_slots = _as_slots(self.tf_slots, self.id, "tf_slots")

  def to_json(self) -> dict[str, Any]:
    """A JSON-safe dict (non-finite floats become None, slots lists of [type, value])."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if isinstance(value, float) and not math.isfinite(value):
        value = None
      elif isinstance(value, tuple):
        value = [list(slot) for slot in value]
      out[field.name] = value
    return out

  @classmethod
  def from_json(cls, obj: dict[str, Any]) -> Utterance:
    """Inverse of `to_json` (None restores the field's non-finite default).

    Args:
      obj: a dict as written by `to_json`.

    Returns:
      The record.
    """
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(obj) - set(names))
    if unknown:
      raise ValueError(f"Utterance {obj.get('id')!r}: unknown fields {unknown}")
    kwargs = {}
    for name, value in obj.items():
      if value is None and isinstance(names[name].default, float):
        value = names[name].default
      kwargs[name] = value
    return cls(**kwargs)


# --- error rates --------------------------------------------------------------


def units(text: str, mode: str) -> list[str]:
  """Scoring units of a normalised transcript.

  Args:
    text: normalised transcript.
    mode: "word" (whitespace words), "char" (characters without spaces) or "mixed" (each
      CJK character is a unit, every other whitespace-separated run is a unit).

  Returns:
    The units in order.
  """
  if mode == "word":
    return text.split()
  if mode == "char":
    return [ch for ch in text if not ch.isspace()]
  if mode == "mixed":
    out = []
    for word in text.split():
      # A word mixing scripts ("wifi密码") splits at the CJK characters; the runs between
      # them stay whole.
      for cjk, run in itertools.groupby(word, text_lib.is_cjk):
        if cjk:
          out.extend(run)
        else:
          out.append("".join(run))
    return out
  raise ValueError(f"Unknown unit mode {mode!r}; expected one of {', '.join(UNIT_MODES)}")


@dataclasses.dataclass(frozen=True)
class EditCounts:
  """Levenshtein edits of a hypothesis against a reference, in units."""

  sub: int
  dele: int
  ins: int
  ref_len: int

  @property
  def errors(self) -> int:
    return self.sub + self.dele + self.ins


# Reports score the same (ref, hyp) pairs several times (overall, per group, bootstrap); the
# records are immutable strings, so caching the alignment is safe.
@functools.lru_cache(maxsize=1 << 16)
def edit_counts(ref: str, hyp: str, mode: str) -> EditCounts:
  """Substitutions, deletions and insertions of `hyp` against `ref` (aligned with jiwer).

  Args:
    ref: normalised reference.
    hyp: normalised hypothesis.
    mode: unit mode, see `units`.

  Returns:
    The counts; an empty reference has ref_len 0 and every hypothesis unit is an insertion.
  """
  ref_units, hyp_units = units(ref, mode), units(hyp, mode)
  out = jiwer.process_words(" ".join(ref_units), " ".join(hyp_units))
  return EditCounts(out.substitutions, out.deletions, out.insertions, len(ref_units))


def error_rate(counts: Iterable[EditCounts]) -> float:
  """Corpus-level error rate: sum of errors / sum of reference lengths (nan if that is 0)."""
  errors = ref_len = 0
  for c in counts:
    errors += c.errors
    ref_len += c.ref_len
  return errors / ref_len if ref_len else math.nan


def phrase_unit_mask(unit_list: Sequence[str], phrases: Sequence[Sequence[str]]) -> list[bool]:
  """Which units lie inside an occurrence of one of `phrases` (whole units, any overlap)."""
  inside = [False] * len(unit_list)
  by_first: dict[str, list[Sequence[str]]] = {}
  for phrase in phrases:
    if phrase:
      by_first.setdefault(phrase[0], []).append(phrase)
  for i, unit in enumerate(unit_list):
    for phrase in by_first.get(unit, ()):
      if list(unit_list[i : i + len(phrase)]) == list(phrase):
        inside[i : i + len(phrase)] = [True] * len(phrase)
  return inside


def biased_edit_counts(
  ref: str, hyp: str, phrases: Sequence[str], mode: str = "word"
) -> tuple[EditCounts, EditCounts]:
  """(biased, unbiased) edits of `hyp`: the counts of B-WER and U-WER.

  As WeNet and Le et al. (2021) report contextual biasing: a reference unit is biased when
  it lies inside an occurrence of a bias phrase in the reference; its substitution or
  deletion counts towards B-WER, otherwise U-WER; an inserted hypothesis unit counts
  towards B-WER when it lies inside a phrase occurrence in the hypothesis. Each rate is
  divided by its own reference units (biased or not), so B-WER + U-WER weighted by their
  reference lengths is the WER.

  Args:
    ref: normalised reference.
    hyp: normalised hypothesis.
    phrases: normalised bias phrases.
    mode: unit mode, see `units` (phrases are split the same way).

  Returns:
    (biased, unbiased) `EditCounts`.
  """
  ref_units, hyp_units = units(ref, mode), units(hyp, mode)
  phrase_units = [units(p, mode) for p in phrases]
  ref_biased = phrase_unit_mask(ref_units, phrase_units)
  hyp_biased = phrase_unit_mask(hyp_units, phrase_units)
  counts = {True: [0, 0, 0], False: [0, 0, 0]}  # sub, del, ins
  if not ref_units or not hyp_units:
    for b in ref_biased:
      counts[b][1] += 1
    for b in hyp_biased:
      counts[b][2] += 1
  else:
    out = jiwer.process_words(" ".join(ref_units), " ".join(hyp_units))
    for chunk in out.alignments[0]:
      if chunk.type in ("substitute", "delete"):
        for i in range(chunk.ref_start_idx, chunk.ref_end_idx):
          counts[ref_biased[i]][0 if chunk.type == "substitute" else 1] += 1
      elif chunk.type == "insert":
        for j in range(chunk.hyp_start_idx, chunk.hyp_end_idx):
          counts[hyp_biased[j]][2] += 1
  num_biased = sum(ref_biased)
  return (
    EditCounts(*counts[True], ref_len=num_biased),
    EditCounts(*counts[False], ref_len=len(ref_units) - num_biased),
  )


def biased_error_rates(
  refs: Sequence[str], hyps: Sequence[str], phrases: Sequence[str], mode: str = "word"
) -> dict[str, float | int]:
  """Corpus B-WER and U-WER (see `biased_edit_counts`) and the reference units of each.

  Returns:
    {"b_wer", "u_wer": error rates (nan without such units), "b_units", "u_units"}.
  """
  pairs = [biased_edit_counts(r, h, phrases, mode) for r, h in zip(refs, hyps, strict=True)]
  return {
    "b_wer": error_rate(b for b, _ in pairs),
    "u_wer": error_rate(u for _, u in pairs),
    "b_units": sum(b.ref_len for b, _ in pairs),
    "u_units": sum(u.ref_len for _, u in pairs),
  }


# --- task metrics ---------------------------------------------------------------


def _slot_multiset(slots: Slots) -> Counter:
  return Counter((" ".join(t.split()), " ".join(v.split())) for t, v in slots)


def _slot_counts(ref: Slots, hyp: Slots) -> tuple[int, int, int]:
  """(true positives, reference slots, hypothesis slots) of one utterance."""
  ref_set, hyp_set = _slot_multiset(ref), _slot_multiset(hyp)
  return sum((ref_set & hyp_set).values()), len(ref), len(hyp)


def slot_f1(pairs: Iterable[tuple[Slots, Slots]]) -> float:
  """Micro F1 over (type, value) multisets, exact match after whitespace normalisation.

  Args:
    pairs: (reference slots, hypothesis slots) per utterance.

  Returns:
    2 TP / (reference slots + hypothesis slots); nan when there are neither.
  """
  tp = num_ref = num_hyp = 0
  for ref, hyp in pairs:
    t, r, h = _slot_counts(ref, hyp)
    tp, num_ref, num_hyp = tp + t, num_ref + r, num_hyp + h
  return 2 * tp / (num_ref + num_hyp) if num_ref + num_hyp else math.nan


class SpanScores(NamedTuple):
  """Micro precision, recall and F1 of slot spans (nan where undefined)."""

  precision: float
  recall: float
  f1: float


def _levenshtein(a: str, b: str) -> int:
  if len(a) < len(b):
    a, b = b, a
  prev = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    cur = [i]
    for j, cb in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
    prev = cur
  return prev[-1]


@functools.lru_cache(maxsize=1 << 16)
def value_distance(ref: str, hyp: str, distance: str) -> float:
  """SLURP's normalised distance between a reference and a hypothesis slot value.

  Args:
    ref: reference value.
    hyp: hypothesis value.
    distance: "word": the word error rate of `hyp` against `ref`, (S + D + I) / reference
      words (above 1 when the hypothesis inserts words; an empty reference divides by 1, as
      `jiwer.wer` does); "char": the Levenshtein distance over characters, spaces included,
      divided by the length of the longer string (in [0, 1]; 0 for two empty strings).

  Returns:
    The distance; 0 exactly when the values are equal (after whitespace normalisation).
  """
  ref, hyp = " ".join(ref.split()), " ".join(hyp.split())
  if distance == "word":
    c = edit_counts(ref, hyp, "word")
    return c.errors / max(c.ref_len, 1)
  if distance == "char":
    longest = max(len(ref), len(hyp))
    return _levenshtein(ref, hyp) / longest if longest else 0.0
  raise ValueError(f"Unknown distance {distance!r}; expected one of {', '.join(SPAN_DISTANCES)}")


@functools.lru_cache(maxsize=1 << 16)
def span_distance_counts(ref: Slots, hyp: Slots, distance: str) -> tuple[float, float, float]:
  """(TP, FP, FN) of one utterance under SLURP's distance-smoothed span matching.

  As SLURP's `SpanDistanceFMeasure`: hypothesis slots are taken in order; one whose type is
  among the still unmatched reference slots is matched to the one of that type with the
  lowest `value_distance` d (the first on a tie), which is then used up, and counts TP += 1,
  FP += d, FN += d; one whose type is not there counts FP += 1. Every reference slot left
  unmatched counts FN += 1. Types and values are whitespace-normalised first.

  Args:
    ref: reference (type, value) slots.
    hyp: hypothesis (type, value) slots.
    distance: "word" or "char" (see `value_distance`).

  Returns:
    (true positives, false positives, false negatives); a slot of the wrong type earns
    nothing, one of the right type with a wrong value still its TP, at the price of d.
  """
  if distance not in SPAN_DISTANCES:
    raise ValueError(f"Unknown distance {distance!r}; expected one of {', '.join(SPAN_DISTANCES)}")
  norm = lambda slots: [(" ".join(t.split()), " ".join(v.split())) for t, v in slots]
  gold = norm(ref)
  tp = fp = fn = 0.0
  for kind, value in norm(hyp):
    candidates = [j for j, (t, _) in enumerate(gold) if t == kind]
    if not candidates:
      fp += 1.0
      continue
    dists = [value_distance(gold[j][1], value, distance) for j in candidates]
    best = int(np.argmin(dists))  # The first of the lowest.
    tp, fp, fn = tp + 1.0, fp + dists[best], fn + dists[best]
    gold.pop(candidates[best])
  return tp, fp, fn + len(gold)


def _span_scores(tp: float, fp: float, fn: float) -> SpanScores:
  nan = math.nan
  return SpanScores(
    tp / (tp + fp) if tp + fp else nan,
    tp / (tp + fn) if tp + fn else nan,
    2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan,
  )


def _span_sums(pairs: Iterable[tuple[Slots, Slots]], distances: Sequence[str]) -> SpanScores:
  tp = fp = fn = 0.0
  for ref, hyp in pairs:
    ref, hyp = _as_slots(ref, "", "reference slots"), _as_slots(hyp, "", "hypothesis slots")
    for distance in distances:
      t, p, n = span_distance_counts(ref, hyp, distance)
      tp, fp, fn = tp + t, fp + p, fn + n
  return _span_scores(tp, fp, fn)


def span_distance_f1(pairs: Iterable[tuple[Slots, Slots]], distance: str) -> SpanScores:
  """SLURP's word- or character-level span F1 (micro-averaged, see `span_distance_counts`).

  With TP, FP, FN summed over utterances: precision TP / (TP + FP), recall TP / (TP + FN),
  F1 2 TP / (2 TP + FP + FN) (their harmonic mean).

  Args:
    pairs: (reference slots, hypothesis slots) per utterance.
    distance: "word" or "char".

  Returns:
    The scores; nan where a denominator is 0 (F1 is nan only with no slot on either side;
    SLURP's script reports 0 there).
  """
  return _span_sums(pairs, (distance,))


def slu_f1(pairs: Iterable[tuple[Slots, Slots]]) -> SpanScores:
  """SLU-F1 of SLURP (Bastianelli et al., 2020): word- and char-level span F1 combined.

  The word-level and character-level counts of `span_distance_counts` are added, as SLURP's
  `SLUF1` adds the two confusion matrices: with TP = TP_word + TP_char (the two are equal),
  FP = FP_word + FP_char, FN = FN_word + FN_char summed over utterances,

    SLU-F1 = 2 TP / (2 TP + FP + FN)
           = 2 T / (2 T + U_hyp + U_ref + 2 sum over matches of (d_word + d_char) / 2),

  where T is the number of type matches and U_hyp / U_ref the unmatched hypothesis /
  reference slots (all three the same for the two distances): an exact match scores as in
  slot F1, and a matched slot with a wrong value costs the mean of its word and character
  distances as a false positive and again as a false negative (the two distances pair the
  same slots unless an utterance repeats a slot type).

  Args:
    pairs: (reference slots, hypothesis slots) per utterance.

  Returns:
    Precision, recall and F1; nan where a denominator is 0 (F1 with no slot on either side;
    SLURP's script reports 0 there).
  """
  return _span_sums(pairs, SPAN_DISTANCES)


# --- expert routing ---------------------------------------------------------------


def _entropy_bits(p: np.ndarray) -> np.ndarray:
  """Entropy in bits over the last axis of distributions (0 log 0 = 0)."""
  terms = np.zeros_like(p)
  positive = p > 0
  terms[positive] = p[positive] * np.log2(p[positive])
  return np.maximum(-terms.sum(-1), 0.0)


def _check_load(load_by_language) -> np.ndarray:
  load = np.asarray(load_by_language, np.float64)
  if load.ndim < 2:
    raise ValueError(f"load must be [..., languages, experts], got shape {load.shape}")
  if not np.all(np.isfinite(load) & (load >= 0)):
    raise ValueError("load must be finite and non-negative")
  return load


def expert_load_entropy(load_by_language) -> np.ndarray:
  """Entropy in bits of each language's distribution over experts.

  H(E | L = l) = -sum_e p(e | l) log2 p(e | l), with p(e | l) a row of the load normalised
  to sum to 1: 0 when a language goes to a single expert, log2(experts) when it spreads
  evenly over all of them.

  Args:
    load_by_language: [..., languages, experts] non-negative routing mass (or shares).

  Returns:
    [..., languages] entropies; nan for a language with no load.
  """
  load = _check_load(load_by_language)
  total = load.sum(-1, keepdims=True)
  p = np.divide(load, total, out=np.zeros_like(load), where=total > 0)
  return np.where(total[..., 0] > 0, _entropy_bits(p), math.nan)


def language_expert_mutual_information(
  load_by_language, language_weights=None, *, normalize: bool = False
):
  """Mutual information I(L; E) in bits between language and routed expert.

  The joint distribution is p(l, e) = p(l) p(e | l): p(e | l) is language l's row of the load
  normalised to sum to 1, p(l) its row total over the grand total (every frame counts by its
  routing mass) or, with `language_weights`, those weights normalised. Then

    I(L; E) = sum_{l, e} p(l, e) log2(p(l, e) / (p(l) p(e))) = H(E) - sum_l p(l) H(E | L = l),

  0 when every language is routed alike and H(L) when each language has experts of its own;
  `normalize` divides by H(L) = -sum_l p(l) log2 p(l), giving a fraction in [0, 1].

  Args:
    load_by_language: [..., languages, experts] non-negative routing mass.
    language_weights: [languages] non-negative p(l) (need not sum to 1), or None.
    normalize: return I(L; E) / H(L) (nan when H(L) is 0: one language).

  Returns:
    A float for a [languages, experts] load, else an array over the leading axes; nan
    when there is no load (or all weights are 0).
  """
  load = _check_load(load_by_language)
  total = load.sum(-1)  # [..., L]
  cond = np.divide(load, total[..., None], out=np.zeros_like(load), where=total[..., None] > 0)
  if language_weights is None:
    weights = total
  else:
    weights = np.asarray(language_weights, np.float64)
    if weights.shape != load.shape[-2:-1]:
      raise ValueError(
        f"language_weights must be [{load.shape[-2]} languages], got shape {weights.shape}"
      )
    if not np.all(np.isfinite(weights) & (weights >= 0)):
      raise ValueError("language_weights must be finite and non-negative")
    if np.any((weights > 0) & (total == 0)):
      raise ValueError("a language with a positive weight has no load")
    weights = np.broadcast_to(weights, total.shape)
  weight_sum = weights.sum(-1, keepdims=True)
  p_lang = np.divide(weights, weight_sum, out=np.zeros_like(weights), where=weight_sum > 0)
  joint = p_lang[..., None] * cond
  mi = _entropy_bits(joint.sum(-2)) - (p_lang * _entropy_bits(cond)).sum(-1)
  mi = np.maximum(mi, 0.0)  # Round-off.
  if normalize:
    h_lang = _entropy_bits(p_lang)
    mi = np.divide(mi, h_lang, out=np.full_like(mi, math.nan), where=h_lang > 0)
  mi = np.where(weight_sum[..., 0] > 0, mi, math.nan)
  return float(mi) if mi.ndim == 0 else mi


# --- calibration ------------------------------------------------------------------


def _check_calibration_inputs(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
  conf = np.asarray(confidence, np.float64).reshape(-1)
  corr = np.asarray(correct, np.float64).reshape(-1)
  if conf.shape != corr.shape:
    raise ValueError(f"confidence has {conf.size} values but correct has {corr.size}")
  bad = np.flatnonzero(~((conf >= 0.0) & (conf <= 1.0)))
  if bad.size:
    raise ValueError(
      f"confidence must lie in [0, 1]; item {bad[0]} is {conf[bad[0]]} ({bad.size} bad in all)"
    )
  return conf, corr


def _bin_index(conf: np.ndarray, num_bins: int) -> np.ndarray:
  # Equal-width bins [k/B, (k+1)/B), the last one closed so that confidence 1.0 is binned.
  return np.minimum((conf * num_bins).astype(np.int64), num_bins - 1)


def reliability(confidence, correct, num_bins: int = 15) -> dict[str, list]:
  """Per-bin accuracy and mean confidence over equal-width confidence bins.

  Args:
    confidence: [n] probabilities in [0, 1].
    correct: [n] booleans (or 0/1).
    num_bins: number of bins over [0, 1].

  Returns:
    {"edges": B + 1 floats, "accuracy": B, "confidence": B (None for empty bins),
    "count": B ints}.
  """
  conf, corr = _check_calibration_inputs(confidence, correct)
  idx = _bin_index(conf, num_bins)
  count = np.bincount(idx, minlength=num_bins)
  acc_sum = np.bincount(idx, weights=corr, minlength=num_bins)
  conf_sum = np.bincount(idx, weights=conf, minlength=num_bins)
  return {
    "edges": np.linspace(0.0, 1.0, num_bins + 1).tolist(),
    "accuracy": [float(a / n) if n else None for a, n in zip(acc_sum, count, strict=True)],
    "confidence": [float(c / n) if n else None for c, n in zip(conf_sum, count, strict=True)],
    "count": count.tolist(),
  }


def expected_calibration_error(confidence, correct, num_bins: int = 15) -> float:
  """Equal-width ECE: sum over bins of (bin size / n) * |accuracy - mean confidence|.

  Args:
    confidence: [n] probabilities in [0, 1].
    correct: [n] booleans (or 0/1).
    num_bins: number of bins over [0, 1].

  Returns:
    The ECE as a fraction; nan for no data.
  """
  conf, corr = _check_calibration_inputs(confidence, correct)
  if conf.size == 0:
    return math.nan
  idx = _bin_index(conf, num_bins)
  gap = np.bincount(idx, weights=corr - conf, minlength=num_bins)  # n_b * (acc_b - conf_b)
  return float(np.abs(gap).sum() / conf.size)


# --- summaries ----------------------------------------------------------------------


def _none_if_nan(x: float) -> float | None:
  return None if math.isnan(x) else float(x)


def _has_task_labels(r: Utterance) -> bool:
  # Slot F1 is scored on utterances annotated for the task; unlabelled data (e.g. read
  # speech) would otherwise count every predicted slot as a false positive.
  return bool(r.ref_intent or r.ref_slots)


def _intent_calibration(records: Sequence[Utterance]) -> tuple[np.ndarray, np.ndarray]:
  scored = [r for r in records if r.ref_intent and math.isfinite(r.intent_confidence)]
  conf = np.array([r.intent_confidence for r in scored], np.float64)
  correct = np.array([r.hyp_intent == r.ref_intent for r in scored], np.float64)
  return conf, correct


def _ratio_arrays(records: Sequence[Utterance], metric: str) -> tuple[np.ndarray, np.ndarray]:
  """Per-record numerator and denominator whose sums give the corpus-level `metric`."""
  if metric in _MODE_OF:
    mode = _MODE_OF[metric]
    # Utterances without a reference transcript (task labels only) have no error rate: they
    # count 0 of 0, so every record keeps its entry (the bootstrap resamples records).
    empty = EditCounts(0, 0, 0, 0)
    counts = [
      edit_counts(r.ref_text, r.hyp_text, mode) if r.ref_text.strip() else empty for r in records
    ]
    return (
      np.array([c.errors for c in counts], np.float64),
      np.array([c.ref_len for c in counts], np.float64),
    )
  if metric == "lid_acc":
    scored = [bool(r.language and r.hyp_language) for r in records]
    hits = [s and r.language == r.hyp_language for s, r in zip(scored, records, strict=True)]
    return np.array(hits, np.float64), np.array(scored, np.float64)
  if metric == "intent_acc":
    return (
      np.array([bool(r.ref_intent) and r.hyp_intent == r.ref_intent for r in records], np.float64),
      np.array([bool(r.ref_intent) for r in records], np.float64),
    )
  if metric == "tf_intent_acc":
    scored = [bool(r.ref_intent) and r.tf_slots is not None for r in records]
    hits = [s and r.tf_intent == r.ref_intent for s, r in zip(scored, records, strict=True)]
    return np.array(hits, np.float64), np.array(scored, np.float64)
  if metric in ("slot_f1", "tf_slot_f1"):
    teacher = metric == "tf_slot_f1"
    counts = [
      _slot_counts(r.ref_slots, r.tf_slots if teacher else r.hyp_slots)
      if _has_task_labels(r) and not (teacher and r.tf_slots is None)
      else (0, 0, 0)
      for r in records
    ]
    return (
      np.array([2 * tp for tp, _, _ in counts], np.float64),
      np.array([nr + nh for _, nr, nh in counts], np.float64),
    )
  if metric in _SPAN_METRICS:
    counts = np.zeros((len(records), 3))
    for i, r in enumerate(records):
      if _has_task_labels(r):
        for distance in _SPAN_METRICS[metric]:
          counts[i] += span_distance_counts(r.ref_slots, r.hyp_slots, distance)
    tp, fp, fn = counts.T
    return 2 * tp, 2 * tp + fp + fn
  if metric in _COUNT_METRICS:
    hit, total = _COUNT_METRICS[metric]
    return (
      np.array([getattr(r, hit) for r in records], np.float64),
      np.array([getattr(r, total) for r in records], np.float64),
    )
  raise ValueError(f"Unknown ratio metric {metric!r}; expected one of {', '.join(RATIO_METRICS)}")


def _transcript_calibration(records: Sequence[Utterance], raw: bool):
  conf = np.array([r.confidence_raw if raw else r.confidence for r in records], np.float64)
  correct = np.array(
    [text_lib.normalize(r.ref_text) == text_lib.normalize(r.hyp_text) for r in records],
    np.float64,
  )
  keep = np.isfinite(conf)
  return conf[keep], correct[keep]


def summarize(records: Sequence[Utterance]) -> dict[str, Any]:
  """Corpus-level metrics of a set of utterances.

  Args:
    records: decoded utterances.

  Returns:
    {"n", "wer", "cer", "mer", "lid_acc", "intent_acc", "slot_f1", "slu_f1", "span_f1_word",
    "span_f1_char", "tf_intent_acc", "tf_slot_f1", "frame_lid_acc", "boundary_acc",
    "ece_intent", "hours"};
    fractions, None where there is no data. LID accuracy is over records with both a reference
    and a predicted language, intent accuracy and ECE over records with a reference intent,
    slot F1, SLU-F1 (`slu_f1`) and its word- and character-level span F1 (`span_distance_f1`)
    over records with an intent or slot annotation (None when none of them has a reference
    or hypothesis slot), the same intent accuracy and slot F1 of the heads on the reference
    transcript (`tf_*`, teacher forcing) over records that carry them, frame LID accuracy
    over frames
    with a reference language, boundary accuracy over reference language switches (found
    when the frame LID switches within 80 ms). Where records carry them, also
    "ece_intent_raw" (before calibration), "ece_utterance" / "ece_utterance_raw" (transcript
    confidence against an exact match), and "deferred" (fraction below the defer threshold)
    with "intent_acc_kept" (intent accuracy on the rest).
  """
  out: dict[str, Any] = {"n": len(records)}
  # A model without task heads predicts no intent: its task scores are not measured (None),
  # not 0.
  heads = any(r.hyp_intent or r.tf_intent or r.hyp_slots for r in records)
  for metric in RATIO_METRICS:
    if not heads and metric in TASK_METRICS:
      out[metric] = None
      continue
    num, den = _ratio_arrays(records, metric)
    total = den.sum()
    out[metric] = float(num.sum() / total) if total else None
  conf, correct = _intent_calibration(records)
  out["ece_intent"] = _none_if_nan(expected_calibration_error(conf, correct))
  if any(math.isfinite(r.intent_confidence_raw) for r in records):
    raw = [dataclasses.replace(r, intent_confidence=r.intent_confidence_raw) for r in records]
    out["ece_intent_raw"] = _none_if_nan(expected_calibration_error(*_intent_calibration(raw)))
  for key, raw in (("ece_utterance", False), ("ece_utterance_raw", True)):
    conf, correct = _transcript_calibration(records, raw)
    if len(conf):
      out[key] = _none_if_nan(expected_calibration_error(conf, correct))
  if any(r.deferred for r in records):
    kept = [r for r in records if not r.deferred]
    out["deferred"] = 1.0 - len(kept) / len(records)
    num, den = _ratio_arrays(kept, "intent_acc")
    out["intent_acc_kept"] = float(num.sum() / den.sum()) if den.sum() else None
  out["hours"] = sum(r.duration_s for r in records) / 3600.0
  return out


def _natural_key(key: str) -> tuple:
  # "5dB" before "10dB", numbers before names ("clean" last).
  match = re.match(r"-?\d+(\.\d+)?", key)
  return (0, float(match.group()), key) if match else (1, 0.0, key)


def breakdown(
  records: Sequence[Utterance], key: str | Callable[[Utterance], str]
) -> dict[str, dict[str, Any]]:
  """`summarize` per group of records.

  Args:
    records: decoded utterances.
    key: an `Utterance` field name, or a function of a record giving its group.

  Returns:
    {group: summary}, groups in natural order; records whose group is "" are left out.
  """
  if isinstance(key, str):
    field = key
    if field not in {f.name for f in dataclasses.fields(Utterance)}:
      raise ValueError(f"Unknown Utterance field {field!r} for a breakdown")
    key = lambda r: getattr(r, field)
  groups: dict[str, list[Utterance]] = {}
  for r in records:
    group = str(key(r))
    if group:
      groups.setdefault(group, []).append(r)
  return {g: summarize(groups[g]) for g in sorted(groups, key=_natural_key)}


def bootstrap_ci(
  records: Sequence[Utterance],
  metric: str | Callable[[Sequence[Utterance]], tuple[np.ndarray, np.ndarray]],
  *,
  num_samples: int = 1000,
  seed: int = 0,
  alpha: float = 0.05,
  baseline: Sequence[Utterance] | None = None,
) -> tuple[float, float]:
  """Percentile bootstrap confidence interval of a corpus-level metric, or of a difference.

  Utterances are resampled with replacement and the metric recomputed as a ratio of sums
  over the resample; resamples without any scored utterance are dropped.

  With `baseline` (another system's records of the same utterances, matched by `id`), the
  interval is of metric(records) - metric(baseline), both recomputed on the same resample of
  utterances: the paired bootstrap (Koehn 2004; Bisani and Ney 2004).

  Args:
    records: decoded utterances.
    metric: one of `RATIO_METRICS`, or a function of records giving per-record numerators
      and denominators (numpy arrays, one entry a record) whose sums give the metric.
    num_samples: number of bootstrap resamples.
    seed: numpy seed (the interval is a deterministic function of it).
    alpha: 1 - coverage (0.05 for a 95% interval).
    baseline: the other system's records for a paired interval of the difference; every
      utterance id of `records` must be among them (extra ones are ignored).

  Returns:
    (lo, hi); (nan, nan) when the metric has no data.
  """
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}")
  arrays = _ratio_arrays if isinstance(metric, str) else lambda recs, _: metric(recs)
  if baseline is not None:
    by_id = {r.id: r for r in baseline}
    missing = [r.id for r in records if r.id not in by_id]
    if missing:
      raise ValueError(
        f"paired bootstrap: {len(missing)} utterances have no baseline record, e.g. {missing[0]!r}"
      )
    if len({r.id for r in records}) != len(records):
      raise ValueError("paired bootstrap: utterance ids repeat")
    baseline = [by_id[r.id] for r in records]
  num, den = arrays(records, metric)
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  if len(num) != len(records):
    raise ValueError(f"metric arrays have {len(num)} entries for {len(records)} records")
  pairs = [(num, den)]
  if baseline is not None:
    base_num, base_den = arrays(baseline, metric)
    pairs.append((np.asarray(base_num, np.float64), np.asarray(base_den, np.float64)))
  if not len(records) or any(not d.sum() for _, d in pairs):
    return math.nan, math.nan
  rng = np.random.default_rng(seed)
  n = len(records)
  # Resample in chunks of about 4M indices so memory stays bounded for large test sets.
  chunk = max(1, (1 << 22) // n)
  sums = np.empty((len(pairs), 2, num_samples))
  for start in range(0, num_samples, chunk):
    stop = min(start + chunk, num_samples)
    idx = rng.integers(0, n, size=(stop - start, n))
    for k, (nu, de) in enumerate(pairs):
      sums[k, 0, start:stop], sums[k, 1, start:stop] = nu[idx].sum(axis=1), de[idx].sum(axis=1)
  keep = np.all(sums[:, 1] > 0, axis=0)
  values = sums[0, 0, keep] / sums[0, 1, keep]
  if baseline is not None:
    values = values - sums[1, 0, keep] / sums[1, 1, keep]
  if not values.size:
    return math.nan, math.nan
  lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
  return float(lo), float(hi)


def snr_bucket(snr_db: float) -> str:
  """Noise-level group of an utterance: "clean" for inf, else the rounded SNR ("5dB")."""
  if math.isnan(snr_db):
    raise ValueError("snr_db is nan; use math.inf for clean audio")
  if math.isinf(snr_db):
    if snr_db < 0:
      raise ValueError("snr_db is -inf; use math.inf for clean audio")
    return "clean"
  return f"{round(snr_db)}dB"
