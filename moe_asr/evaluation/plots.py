"""PNG plots of the evaluation report and of training.

Figures are built with `matplotlib.figure.Figure` and the Agg canvas, never pyplot: no
global figure state, no display needed, safe in threads and on headless machines. Each PNG
is rendered in memory and renamed into place, so a killed run leaves no half-written image.
"""

from __future__ import annotations

import io
import json
import math
import os
import pathlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from moe_asr.evaluation import metrics as metrics_lib

_DPI = 120


def save_figure(fig: Figure, path: str | os.PathLike) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
  # A unique name opened exclusively (not mkstemp, whose 0600 mode would outlive the rename).
  tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
  try:
    with open(tmp, "xb") as f:
      f.write(buf.getvalue())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def _no_data(ax, what: str) -> None:
  ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes)
  ax.set_xticks([])
  ax.set_yticks([])


def per_language_bars(
  report: Mapping[str, Any], path: str | os.PathLike, metric: str = "cer"
) -> None:
  """Grouped bars of `metric` (in %) per language, one bar per split.

  Args:
    report: a `build_report` result (reads splits[*]["by_language"]).
    path: PNG to write.
    metric: a key of the per-language summaries ("cer", "wer", "intent_acc", ...).
  """
  splits = {name: s.get("by_language") or {} for name, s in report["splits"].items()}
  languages = sorted({lang for groups in splits.values() for lang in groups})
  fig = Figure(figsize=(max(5.0, 0.9 * len(languages) + 2), 3.5))
  ax = fig.subplots()
  if not languages:
    _no_data(ax, "per-language results")
  else:
    names = [n for n, groups in splits.items() if groups]
    width = 0.8 / len(names)
    x = np.arange(len(languages))
    for i, name in enumerate(names):
      values = [splits[name].get(lang, {}).get(metric) for lang in languages]
      # Missing values get no bar (nan), not a misleading zero.
      heights = [math.nan if v is None else 100 * v for v in values]
      ax.bar(x + (i - (len(names) - 1) / 2) * width, heights, width, label=name)
    ax.set_xticks(x, languages)
    ax.set_ylabel(f"{metric} (%)")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
  ax.set_title(f"{metric} per language")
  save_figure(fig, path)


def reliability_diagram(
  records: Sequence[metrics_lib.Utterance], path: str | os.PathLike, num_bins: int = 15
) -> None:
  """Intent accuracy against intent confidence per bin, with the ECE in the title.

  Args:
    records: utterances; those with a reference intent and a finite intent confidence count.
    path: PNG to write.
    num_bins: equal-width confidence bins.
  """
  scored = [r for r in records if r.ref_intent and math.isfinite(r.intent_confidence)]
  conf = [r.intent_confidence for r in scored]
  correct = [r.hyp_intent == r.ref_intent for r in scored]
  fig = Figure(figsize=(4.5, 5.0))
  ax, ax_count = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
  if not scored:
    _no_data(ax, "intent confidences")
    ax.set_title("intent reliability")
    save_figure(fig, path)
    return
  rel = metrics_lib.reliability(conf, correct, num_bins)
  ece = metrics_lib.expected_calibration_error(conf, correct, num_bins)
  edges = np.asarray(rel["edges"])
  centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
  acc = [math.nan if a is None else a for a in rel["accuracy"]]
  ax.bar(centers, acc, width, edgecolor="black", linewidth=0.5, label="accuracy")
  ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_ylabel("accuracy")
  ax.legend(fontsize="small", loc="upper left")
  ax.set_title(f"intent reliability (ECE {100 * ece:.1f}%, n={len(scored)})")
  ax_count.bar(centers, rel["count"], width, color="gray")
  ax_count.set_xlabel("confidence")
  ax_count.set_ylabel("count")
  save_figure(fig, path)


def coverage_accuracy(records: Sequence[metrics_lib.Utterance], path: str | os.PathLike) -> None:
  """Intent accuracy of the kept utterances against coverage, deferring the least confident.

  Utterances are ranked by transcript confidence (calibrated where a calibration was
  applied); keeping the top fraction gives one point. Deferred utterances (below the
  threshold) are marked where the threshold falls.

  Args:
    records: utterances with a reference intent and a finite confidence count.
    path: PNG to write.
  """
  scored = [r for r in records if r.ref_intent and math.isfinite(r.confidence)]
  fig = Figure(figsize=(4.5, 3.6))
  ax = fig.subplots()
  ax.set_title("defer: accuracy vs coverage")
  if not scored:
    _no_data(ax, "confidences")
    save_figure(fig, path)
    return
  order = np.argsort([-r.confidence for r in scored], kind="stable")
  correct = np.array([scored[i].hyp_intent == scored[i].ref_intent for i in order], float)
  kept = np.arange(1, len(scored) + 1)
  ax.plot(kept / len(scored), np.cumsum(correct) / kept, label="intent accuracy of kept")
  deferred = sum(r.deferred for r in scored)
  if deferred:
    ax.axvline(1 - deferred / len(scored), color="gray", linestyle="--", label="defer threshold")
  ax.set_xlabel("coverage (fraction kept)")
  ax.set_ylabel("accuracy")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.02)
  ax.legend(fontsize="small", loc="lower left")
  save_figure(fig, path)


def expert_utilisation(
  load: np.ndarray, languages: Sequence[str], path: str | os.PathLike, title: str = ""
) -> None:
  """Heatmap of expert load per language.

  Args:
    load: [languages, experts] load (e.g. the fraction of a language's tokens each expert got).
    languages: row labels, one per row of `load`.
    path: PNG to write.
    title: figure title.
  """
  load = np.asarray(load, np.float64)
  if load.ndim != 2 or load.shape[0] != len(languages):
    raise ValueError(
      f"load must be [languages, experts] with {len(languages)} rows, got shape {load.shape}"
    )
  num_langs, num_experts = load.shape
  fig = Figure(figsize=(max(4.0, 0.5 * num_experts + 2), max(2.5, 0.45 * num_langs + 1.5)))
  ax = fig.subplots()
  image = ax.imshow(load, aspect="auto", cmap="viridis")
  fig.colorbar(image, ax=ax, label="load")
  ax.set_xticks(range(num_experts), [str(e) for e in range(num_experts)])
  ax.set_yticks(range(num_langs), list(languages))
  ax.set_xlabel("expert")
  ax.set_ylabel("language")
  if num_langs * num_experts <= 256:  # Numbers stay legible only on small grids.
    threshold = (np.nanmax(load) + np.nanmin(load)) / 2 if load.size else 0.0
    for (i, j), value in np.ndenumerate(load):
      color = "black" if value > threshold else "white"
      ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
  ax.set_title(title or "expert load by language")
  save_figure(fig, path)


def training_curves(
  metrics_jsonl_path: str | os.PathLike,
  path: str | os.PathLike,
  keys: Sequence[str] = ("train/loss", "val/cer"),
) -> None:
  """Plots each of `keys` present in a run's metrics.jsonl against the step.

  Args:
    metrics_jsonl_path: `W/metrics.jsonl`, one JSON object with "step" per line.
    path: PNG to write.
    keys: metrics to plot, one panel each (keys that never occur are left out).
  """
  series: dict[str, tuple[list[int], list[float]]] = {k: ([], []) for k in keys}
  with open(metrics_jsonl_path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{metrics_jsonl_path}:{line_no}: not a JSON object ({e})") from None
      if not isinstance(row, dict) or "step" not in row:
        raise ValueError(f"{metrics_jsonl_path}:{line_no}: expected an object with a 'step'")
      for key in keys:
        value = row.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
          series[key][0].append(int(row["step"]))
          series[key][1].append(float(value))
  present = [k for k in keys if series[k][0]]
  fig = Figure(figsize=(4.5 * max(1, len(present)), 3.2))
  axes = fig.subplots(1, max(1, len(present)), squeeze=False)[0]
  if not present:
    _no_data(axes[0], f"values of {', '.join(keys)}")
  for ax, key in zip(axes, present, strict=False):
    steps, values = series[key]
    ax.plot(steps, values, marker="." if len(steps) < 50 else None)
    ax.set_xlabel("step")
    ax.set_title(key)
    ax.grid(alpha=0.3)
  save_figure(fig, path)
