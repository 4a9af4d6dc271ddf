"""The evaluation report: per-split metrics with breakdowns and CIs, written as JSON, markdown, PNG.

`W/eval/report.json` follows the contract in docs/design.md §7:
`{"model": {"params_total", "params_active", ...}, "decode": {...}, "splits": {name: {"n",
"wer", ..., "rtf", "by_language": {...}, ...}}}`, error rates as fractions and None (JSON
null) wherever a metric has no data. Every file is written to a temporary name in the same
directory and renamed into place, so an interrupted run leaves either the old file or the new
one, never half of one.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from moe_asr.evaluation import metrics as metrics_lib
from moe_asr.evaluation import plots as plots_lib
from moe_asr.evaluation.metrics import Utterance

# Metrics that get a bootstrap interval in a split report.
CI_METRICS = (
  "wer",
  "cer",
  "mer",
  "intent_acc",
  "lid_acc",
  "slot_f1",
  "slu_f1",
  "span_f1_word",
  "span_f1_char",
  "tf_intent_acc",
  "tf_slot_f1",
)
_RESERVED = ("model", "decode", "splits")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


def split_report(
  records: Sequence[Utterance],
  *,
  rtf: float | None = None,
  with_ci: bool = True,
  bootstrap_samples: int = 1000,
  bias_phrases: Sequence[str] = (),
) -> dict[str, Any]:
  """Metrics of one evaluation split, overall and broken down.

  Args:
    records: the split's decoded utterances.
    rtf: real-time factor of decoding (decode seconds / audio seconds), if measured.
    with_ci: add 95% bootstrap intervals under "ci".
    bootstrap_samples: resamples of each interval (`config.eval.bootstrap_samples`).
    bias_phrases: normalised phrases of a biasing list: adds the word error rate inside
      their occurrences and outside them ("b_wer", "u_wer"; WeNet's B-WER and U-WER, see
      `metrics.biased_edit_counts`) and the reference words of each ("b_words", "u_words").

  Returns:
    `summarize(records)` plus "rtf", "by_language", "by_pair" (when any utterance switches
    language), "by_speaker", "by_snr" (when any utterance is noisy) and "ci" ({metric:
    [lo, hi] or None}).
  """
  out = metrics_lib.summarize(records)
  out["rtf"] = None if rtf is None or not math.isfinite(rtf) else float(rtf)
  out["by_language"] = metrics_lib.breakdown(records, "language")
  if any(r.pair for r in records):
    out["by_pair"] = metrics_lib.breakdown(records, "pair")
  out["by_speaker"] = metrics_lib.breakdown(records, "speaker")
  if any(math.isfinite(r.snr_db) for r in records):
    out["by_snr"] = metrics_lib.breakdown(records, lambda r: metrics_lib.snr_bucket(r.snr_db))
  if bias_phrases:
    scored = [r for r in records if r.ref_text]
    rates = metrics_lib.biased_error_rates(
      [r.ref_text for r in scored], [r.hyp_text for r in scored], bias_phrases
    )
    for rate in ("b_wer", "u_wer"):
      out[rate] = None if math.isnan(rates[rate]) else float(rates[rate])
    out["b_words"], out["u_words"] = int(rates["b_units"]), int(rates["u_units"])
  if with_ci:
    out["ci"] = {}
    for metric in CI_METRICS:
      lo, hi = metrics_lib.bootstrap_ci(records, metric, num_samples=bootstrap_samples)
      out["ci"][metric] = None if math.isnan(lo) else [lo, hi]
  return out


def expert_load_report(
  load: np.ndarray, layers: Sequence[int], languages: Sequence[str]
) -> dict[str, Any]:
  """The expert-by-language utilisation of a split, for `split_report(...)["expert_load"]`.

  Args:
    load: [layers, languages, experts] routing weight summed over each reference
      language's frames (`evaluate_split`'s info["expert_load"]).
    layers: the encoder blocks the first axis stands for.
    languages: codes of the language axis.

  Returns:
    {"layers": [...], "frames": {language: frames}, "by_language": {language:
    [[share of each expert] per layer]}, "entropy_bits": {language: [H(E | L = language)
    per layer]}, "entropy_max_bits": log2(experts), "language_entropy_bits": H(L),
    "mutual_information_bits": [I(L; E) per layer], "mutual_information_normalized":
    [I(L; E) / H(L) per layer] (None with one language)}, over the languages that have
    frames; each share list sums to 1. Entropies and mutual information are in bits, of
    the joint distribution in which every frame counts by its routing mass (see
    `metrics.expert_load_entropy` and `metrics.language_expert_mutual_information`); the
    language is the frame's reference language.
  """
  load = np.asarray(load, np.float64)
  if load.ndim != 3 or load.shape[:2] != (len(layers), len(languages)):
    raise ValueError(
      f"load must be [{len(layers)} layers, {len(languages)} languages, experts], "
      f"got shape {load.shape}"
    )
  frames = load[0].sum(-1)  # Each frame's weights sum to 1 in every layer.
  present = [i for i in range(len(languages)) if frames[i] > 0]
  kept = load[:, present]  # [layers, present languages, experts]
  entropy = metrics_lib.expert_load_entropy(kept)  # [layers, present languages]
  mi = np.atleast_1d(metrics_lib.language_expert_mutual_information(kept))
  mi_norm = np.atleast_1d(metrics_lib.language_expert_mutual_information(kept, normalize=True))
  p_lang = frames[present] / frames[present].sum() if present else np.zeros(0)
  finite = lambda x: float(x) if math.isfinite(x) else None
  return {
    "layers": [int(x) for x in layers],
    "frames": {languages[i]: int(round(frames[i])) for i in present},
    "by_language": {
      languages[i]: (load[:, i] / load[:, i].sum(-1, keepdims=True)).tolist() for i in present
    },
    "entropy_bits": {languages[i]: entropy[:, k].tolist() for k, i in enumerate(present)},
    "entropy_max_bits": math.log2(load.shape[-1]) if load.shape[-1] else 0.0,
    "language_entropy_bits": -sum(float(p * math.log2(p)) for p in p_lang if p > 0) + 0.0,
    "mutual_information_bits": [finite(x) for x in mi],
    "mutual_information_normalized": [finite(x) for x in mi_norm],
  }


def _jsonable(obj: Any, where: str) -> Any:
  """A copy of `obj` that `json.dumps(allow_nan=False)` accepts (non-finite floats -> None)."""
  if obj is None or isinstance(obj, str):
    return obj
  if isinstance(obj, bool | np.bool_):
    return bool(obj)
  if isinstance(obj, int | np.integer):
    return int(obj)
  if isinstance(obj, float | np.floating):
    return float(obj) if math.isfinite(obj) else None
  if isinstance(obj, np.ndarray):
    return _jsonable(obj.tolist(), where)
  if isinstance(obj, pathlib.PurePath):
    return str(obj)
  if isinstance(obj, Mapping):
    return {str(k): _jsonable(v, f"{where}.{k}") for k, v in obj.items()}
  if isinstance(obj, list | tuple):
    return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
  raise TypeError(f"Report value at {where} is a {type(obj).__name__}, which JSON cannot hold")


def build_report(
  *,
  model: dict[str, Any],
  decode: dict[str, Any],
  splits: dict[str, dict[str, Any]],
  extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """Assembles the report of docs/design.md §7.

  Args:
    model: model facts; must hold "params_total" and "params_active".
    decode: the decoding configuration used.
    splits: {split name: `split_report(...)`}.
    extra: further top-level entries (e.g. the checkpoint step); must not reuse a reserved key.

  Returns:
    {"model": ..., "decode": ..., "splits": ..., **extra}, JSON-safe.
  """
  missing = [k for k in ("params_total", "params_active") if k not in model]
  if missing:
    raise ValueError(f"model is missing {', '.join(missing)}")
  clash = sorted(set(extra or {}) & set(_RESERVED))
  if clash:
    raise ValueError(f"extra reuses reserved report keys: {', '.join(clash)}")
  for name in splits:
    if not _SAFE_NAME.match(name):
      raise ValueError(f"Split name {name!r} must be letters, digits or _.+- (it names files)")
  report = {"model": model, "decode": decode, "splits": splits, **(extra or {})}
  return _jsonable(report, "report")


# --- text renderings ----------------------------------------------------------------


def _count(value: Any) -> str:
  return f"{value:,}" if isinstance(value, int) else str(value)


def _pct(value: float | None) -> str:
  return "-" if value is None else f"{100 * value:.1f}"


def _pct_task(summary: Mapping[str, Any], key: str) -> str | None:
  """ "n/a" for a task-head score the split does not measure (no labels, or no heads)."""
  if key in metrics_lib.TASK_METRICS and summary.get(key) is None:
    return "n/a"
  return None


def _pct_ci(summary: Mapping[str, Any], key: str) -> str:
  text = _pct_task(summary, key) or _pct(summary.get(key))
  interval = (summary.get("ci") or {}).get(key)
  if text != "-" and interval:
    text += f" ({_pct(interval[0])}–{_pct(interval[1])})"
  return text


_MD_COLUMNS = (
  ("WER", "wer"),
  ("CER", "cer"),
  ("MER", "mer"),
  ("LID acc", "lid_acc"),
  ("intent acc", "intent_acc"),
  ("slot F1", "slot_f1"),
  ("SLU-F1", "slu_f1"),
  ("TF intent", "tf_intent_acc"),
  ("TF slot F1", "tf_slot_f1"),
  ("ECE", "ece_intent"),
)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return lines


def _md_breakdown(title: str, groups: Mapping[str, Mapping[str, Any]]) -> list[str]:
  header = [title, "n", *(name for name, _ in _MD_COLUMNS)]
  rows = [
    [group, str(s["n"]), *(_pct_task(s, key) or _pct(s.get(key)) for _, key in _MD_COLUMNS)]
    for group, s in groups.items()
  ]
  return _md_table(header, rows)


def _md_expert_load(load: Mapping[str, Any]) -> list[str]:
  languages = list(load["entropy_bits"])
  header = ["block", *languages, "I (bits)", "I / H(language)"]
  num = lambda x: "-" if x is None else f"{x:.3f}"
  rows = [
    [
      str(layer),
      *(num(load["entropy_bits"][lang][i]) for lang in languages),
      num(load["mutual_information_bits"][i]),
      num(load["mutual_information_normalized"][i]),
    ]
    for i, layer in enumerate(load["layers"])
  ]
  intro = (
    "Entropy of each language's routing over the experts, in bits (uniform: "
    f"{load['entropy_max_bits']:.3f}; 0: a single expert), and the mutual information I of "
    f"language and expert, in bits and over H(language) = {load['language_entropy_bits']:.3f}."
  )
  return [intro, "", *_md_table(header, rows)]


def format_markdown(report: Mapping[str, Any]) -> str:
  """report.md: a summary table over splits (%, 95% CI in brackets), then breakdowns.

  SLU-F1 is SLURP's (`metrics.slu_f1`). Splits with an expert load that has routing
  entropies (`expert_load_report`) get a table of them per encoder MoE block.
  """
  lines = ["# Evaluation report", ""]
  model = report.get("model", {})
  if "params_total" in model:
    total, active = (_count(model.get(k)) for k in ("params_total", "params_active"))
    lines.append(f"Parameters: {total} total, {active} active per token.")
  decode = report.get("decode")
  if decode:
    lines.append("Decoding: " + ", ".join(f"{k}={v}" for k, v in decode.items()) + ".")
  lines += ["", "Error rates and accuracies in %, 95% bootstrap interval in brackets.", ""]
  header = ["split", "n", *(name for name, _ in _MD_COLUMNS), "RTF"]
  rows = []
  for name, s in report["splits"].items():
    rtf = "-" if s.get("rtf") is None else f"{s['rtf']:.3f}"
    rows.append([name, str(s["n"]), *(_pct_ci(s, key) for _, key in _MD_COLUMNS), rtf])
  lines += _md_table(header, rows)
  biased = {name: s for name, s in report["splits"].items() if "b_wer" in s}
  if biased:
    lines += ["", "## Bias phrases", ""]
    lines.append(
      "WER inside the bias list's phrase occurrences (B-WER) and outside them (U-WER), "
      "with the reference words of each."
    )
    lines.append("")
    lines += _md_table(
      ["split", "B-WER", "biased words", "U-WER", "other words"],
      [
        [name, _pct(s["b_wer"]), str(s["b_words"]), _pct(s["u_wer"]), str(s["u_words"])]
        for name, s in biased.items()
      ],
    )
  sections = (("by_language", "language"), ("by_pair", "pair"), ("by_snr", "noise"))
  for name, s in report["splits"].items():
    for field, title in sections:
      if s.get(field):
        lines += ["", f"## {name} by {title}", ""]
        lines += _md_breakdown(title, s[field])
    load = s.get("expert_load") or {}
    if load.get("entropy_bits") and "mutual_information_bits" in load:
      lines += ["", f"## {name} expert load by language", ""]
      lines += _md_expert_load(load)
  return "\n".join(lines) + "\n"


_TABLE_COLUMNS = (
  ("CER", "cer"),
  ("WER", "wer"),
  ("MER", "mer"),
  ("LID", "lid_acc"),
  ("intent", "intent_acc"),
  ("slot F1", "slot_f1"),
  ("SLU-F1", "slu_f1"),
  ("TF intent", "tf_intent_acc"),
  ("TF slot F1", "tf_slot_f1"),
)


def format_table(report: Mapping[str, Any]) -> str:
  """The terminal summary: one row per split, metrics in % with one decimal, "-" for None
  ("n/a" for a task-head score of a split without task labels, or of a model without heads).

  Args:
    report: a `build_report` result.

  Returns:
    Aligned plain-text table (no trailing newline).
  """
  header = ["split", "n", *(name for name, _ in _TABLE_COLUMNS)]
  rows = [
    [name, str(s["n"]), *(_pct_task(s, key) or _pct(s.get(key)) for _, key in _TABLE_COLUMNS)]
    for name, s in report["splits"].items()
  ]
  widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
  # The split name reads left-aligned, numbers right-aligned so decimals line up.
  fmt = lambda row: "  ".join(
    cell.ljust(w) if i == 0 else cell.rjust(w)
    for i, (cell, w) in enumerate(zip(row, widths, strict=True))
  )
  return "\n".join(fmt(row) for row in [header, *rows])


# --- files --------------------------------------------------------------------------


def write_atomic(path: str | os.PathLike, data: str | bytes) -> pathlib.Path:
  """Writes `data` to `path` through a temporary file in the same directory and a rename."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  # A unique name opened exclusively (not mkstemp, whose 0600 mode would outlive the rename).
  tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
  try:
    with open(tmp, "xb") as f:
      f.write(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path


def write_report(
  report: dict[str, Any],
  out_dir: str | os.PathLike,
  *,
  records: Mapping[str, Sequence[Utterance]] | None = None,
  plots: bool = True,
  metrics_path: str | os.PathLike | None = None,
) -> dict[str, pathlib.Path]:
  """Writes report.json, report.md, hypotheses/<split>.jsonl and the plots.

  Args:
    report: a `build_report` result.
    out_dir: directory to write into (created if needed), normally `W/eval`.
    records: {split: utterances}; writes the hypotheses and the reliability diagrams.
    plots: write PNG plots (per-language CER bars; reliability and accuracy-vs-coverage
      per split with intent confidences; expert-by-language load per split that has
      it; training curves when `metrics_path` is given).
    metrics_path: the run's metrics.jsonl, for the training-curve plot.

  Returns:
    {name relative to out_dir: path} of every file written.
  """
  out_dir = pathlib.Path(out_dir)
  report = _jsonable(report, "report")
  written: dict[str, pathlib.Path] = {}

  def put(name: str, data: str | bytes) -> None:
    written[name] = write_atomic(out_dir / name, data)

  put("report.json", json.dumps(report, indent=2, allow_nan=False, ensure_ascii=False) + "\n")
  put("report.md", format_markdown(report))
  for split, recs in (records or {}).items():
    if not _SAFE_NAME.match(split):
      raise ValueError(f"Split name {split!r} must be letters, digits or _.+- (it names files)")
    lines = [json.dumps(r.to_json(), allow_nan=False, ensure_ascii=False) for r in recs]
    put(f"hypotheses/{split}.jsonl", "".join(line + "\n" for line in lines))
  if not plots:
    return written
  splits = report["splits"]
  if any(s.get("by_language") for s in splits.values()):
    name = "per_language_cer.png"
    plots_lib.per_language_bars(report, out_dir / name, metric="cer")
    written[name] = out_dir / name
  for split, recs in (records or {}).items():
    if any(r.ref_intent and math.isfinite(r.intent_confidence) for r in recs):
      name = f"reliability_{split}.png"
      plots_lib.reliability_diagram(recs, out_dir / name)
      written[name] = out_dir / name
    if any(r.ref_intent and math.isfinite(r.confidence) for r in recs):
      name = f"coverage_{split}.png"
      plots_lib.coverage_accuracy(recs, out_dir / name)
      written[name] = out_dir / name
  for split, s in splits.items():
    load = s.get("expert_load")
    if load and load.get("by_language"):
      name = f"expert_load_{split}.png"
      rows = [
        (lang, i, layer) for i, layer in enumerate(load["layers"]) for lang in load["by_language"]
      ]
      plots_lib.expert_utilisation(
        np.asarray([load["by_language"][lang][i] for lang, i, _ in rows]),
        [f"{lang} (block {layer})" for lang, _, layer in rows],
        out_dir / name,
        title=f"{split}: encoder expert load by language",
      )
      written[name] = out_dir / name
  if metrics_path is not None and pathlib.Path(metrics_path).exists():
    name = "training_curves.png"
    plots_lib.training_curves(metrics_path, out_dir / name)
    written[name] = out_dir / name
  return written
