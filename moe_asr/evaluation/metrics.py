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
from typing import Any

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
  "frame_lid_acc",
  "boundary_acc",
)
_COUNT_METRICS = {
  "frame_lid_acc": ("frame_lid_correct", "frame_lid_total"),
  "boundary_acc": ("boundary_hit", "boundary_total"),
}
_MODE_OF = {"wer": "word", "cer": "char", "mer": "mixed"}


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

  def __post_init__(self):
    for name in ("id", "ref_text", "hyp_text"):
      if not isinstance(getattr(self, name), str):
        raise TypeError(
          f"Utterance {self.id!r}: {name} must be a str, got {type(getattr(self, name)).__name__}"
        )
    # Decoders hand over lists (from JSON or numpy); tuples keep records hashable and comparable.
    self.ref_slots = _as_slots(self.ref_slots, self.id, "ref_slots")
    self.hyp_slots = _as_slots(self.hyp_slots, self.id, "hyp_slots")

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
    counts = [edit_counts(r.ref_text, r.hyp_text, mode) for r in records]
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
  if metric == "slot_f1":
    counts = [
      _slot_counts(r.ref_slots, r.hyp_slots) if _has_task_labels(r) else (0, 0, 0) for r in records
    ]
    return (
      np.array([2 * tp for tp, _, _ in counts], np.float64),
      np.array([nr + nh for _, nr, nh in counts], np.float64),
    )
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
    {"n", "wer", "cer", "mer", "lid_acc", "intent_acc", "slot_f1", "frame_lid_acc",
    "boundary_acc", "ece_intent", "hours"};
    fractions, None where there is no data. LID accuracy is over records with both a reference
    and a predicted language, intent accuracy and ECE over records with a reference intent,
    slot F1 over records with an intent or slot annotation, frame LID accuracy over frames
    with a reference language, boundary accuracy over reference language switches (found
    when the frame LID switches within 80 ms). Where records carry them, also
    "ece_intent_raw" (before calibration), "ece_utterance" / "ece_utterance_raw" (transcript
    confidence against an exact match), and "deferred" (fraction below the defer threshold)
    with "intent_acc_kept" (intent accuracy on the rest).
  """
  out: dict[str, Any] = {"n": len(records)}
  for metric in RATIO_METRICS:
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
  metric: str,
  *,
  num_samples: int = 1000,
  seed: int = 0,
  alpha: float = 0.05,
) -> tuple[float, float]:
  """Percentile bootstrap confidence interval of a corpus-level metric.

  Utterances are resampled with replacement and the metric recomputed as a ratio of sums
  over the resample; resamples without any scored utterance are dropped.

  Args:
    records: decoded utterances.
    metric: one of `RATIO_METRICS`.
    num_samples: number of bootstrap resamples.
    seed: numpy seed (the interval is a deterministic function of it).
    alpha: 1 - coverage (0.05 for a 95% interval).

  Returns:
    (lo, hi); (nan, nan) when the metric has no data.
  """
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}")
  num, den = _ratio_arrays(records, metric)
  if not len(records) or not den.sum():
    return math.nan, math.nan
  rng = np.random.default_rng(seed)
  n = len(records)
  # Resample in chunks of about 4M indices so memory stays bounded for large test sets.
  chunk = max(1, (1 << 22) // n)
  num_sum, den_sum = np.empty(num_samples), np.empty(num_samples)
  for start in range(0, num_samples, chunk):
    stop = min(start + chunk, num_samples)
    idx = rng.integers(0, n, size=(stop - start, n))
    num_sum[start:stop], den_sum[start:stop] = num[idx].sum(axis=1), den[idx].sum(axis=1)
  keep = den_sum > 0
  values = num_sum[keep] / den_sum[keep]
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
