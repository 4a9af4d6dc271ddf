"""Self-training: pseudo-labels from a trained run, their filtering, and training rounds.

moe-asr pseudo-label --workdir W --split unlabeled --out DIR [--target-cer 0.15]
moe-asr self-train --workdir TEACHER --out ROOT --rounds 2 --steps 200

`pseudo_label` decodes a split with the run's decoding settings (`W/decoding.json`) and
calibration (`W/calibration.json`) where present (`transcribe.transcribe_files`), and writes:

- `DIR/audio/{split}/*.wav`: the split's audio (16 kHz int16),
- `DIR/labels/{split_name}.jsonl`: every decoded utterance: the model's text, language (the
  audio's LID) and its confidence, words with their language and calibrated confidence,
  intent and its confidence, slots, the utterance confidence, the duration and the filter's
  verdict (`kept`, `reason`),
- `DIR/manifest/{split_name}.jsonl`: the kept utterances as a `local_manifest` folder, built
  into the TFDS dataset `local_manifest/NAME` (default NAME `pseudo_{split_name}`, in
  `DIR/tfds`; `split_name` is the split with "_" for characters other than letters, digits
  and "_", so that a split expression such as `train[25%:]+unlabeled` works), so
  that training reads it like any dataset; its metadata holds `pseudo_label`: the
  provenance (workdir, checkpoint step, decode settings, calibration, filter) and the
  per-utterance and per-word confidences by id,
- `DIR/filter.json` (and `filter_curve.png` with a target): the filter's choices and counts,
- with `noise_snr`, `DIR/audio/{split_name}_noisy/`: noisy copies of the kept utterances'
  audio, which the dataset holds instead (the student hears noise the teacher did not).

The references of the decoded split are never read into any of these: the labels are the
model's. With `target_cer`, a labelled split (`validation`) is decoded too, and its
references give the curve of kept fraction against the CER and intent accuracy of what is
kept (`threshold_curve`); the threshold is the lowest confidence whose kept set meets the
target (`choose_threshold`).

The filter (`filter_items`), in order: consistency checks (the hypothesis is empty; no word
is written in the script of the language the audio's LID gives; characters per second of
audio outside `[min_cps, max_cps]`), then the confidence threshold, then per-language quotas
(each LID language keeps at least `min_language_fraction` of its consistent items, the most
confident first, so that no language drops out), and an optional cap on the kept fraction
(`max_keep_fraction`: the most confident first), which rounds use as a curriculum.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import re
import shutil
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_LOG = logging.getLogger(__name__)

# Scripts of the words of each language (`languages.Language.script`); a code-switched
# utterance may add Latin words to any of them.
_SCRIPT_PREFIX = {
  "LATIN": "Latin",
  "DEVANAGARI": "Devanagari",
  "CJK": "Han",
  "CYRILLIC": "Cyrillic",
}
DEFAULT_MIN_CPS = 1.0  # Characters (no spaces) per second of audio below this: implausible.
DEFAULT_MAX_CPS = 30.0


# ---------------------------------------------------------------------------
# Consistency checks.
# ---------------------------------------------------------------------------


def char_script(ch: str) -> str | None:
  """The script of a letter ("Latin", "Devanagari", "Han", "Cyrillic"), None for others."""
  try:
    name = unicodedata.name(ch)
  except ValueError:
    return None
  for prefix, script in _SCRIPT_PREFIX.items():
    if name.startswith(prefix):
      return script
  return None


def word_script(word: str) -> str | None:
  """The script most of a word's letters are written in (None: no letter of a known one)."""
  counts: dict[str, int] = {}
  for ch in word:
    script = char_script(ch)
    if script is not None:
      counts[script] = counts.get(script, 0) + 1
  return max(counts, key=counts.get) if counts else None


def inconsistency(
  text: str,
  language: str,
  duration_s: float,
  *,
  min_cps: float = DEFAULT_MIN_CPS,
  max_cps: float = DEFAULT_MAX_CPS,
  check_script: bool = True,
) -> str | None:
  """Why a pseudo-label is implausible, or None.

  "empty": no words. "script": the audio's language (LID) is written in a script none of
  the words is in (the words are another language than the audio). "chars_per_second": the
  transcript's characters (spaces excluded) per second of audio are outside
  [min_cps, max_cps].
  """
  from moe_asr.data import languages

  words = text.split()
  if not words:
    return "empty"
  lang = languages.LANGUAGES.get(language)
  if check_script and lang is not None and lang.script not in {word_script(w) for w in words}:
    return "script"
  chars = sum(len(w) for w in words)
  cps = chars / max(duration_s, 1e-6)
  if not min_cps <= cps <= max_cps:
    return "chars_per_second"
  return None


# ---------------------------------------------------------------------------
# The threshold on validation.
# ---------------------------------------------------------------------------


def threshold_curve(
  confidence: Sequence[float],
  char_errors: Sequence[int],
  ref_chars: Sequence[int],
  intent_correct: Sequence[float] | None = None,
) -> list[dict]:
  """Kept fraction against the quality of what is kept, for every confidence threshold.

  Args:
    confidence: per-utterance (calibrated) confidence.
    char_errors, ref_chars: per-utterance character edits and reference characters.
    intent_correct: per-utterance 1.0 / 0.0 (nan where there is no intent label), or None.

  Returns:
    One point per distinct confidence, highest first: {"threshold", "kept", "kept_fraction",
    "kept_cer", "dropped_cer", "kept_intent_acc"} for keeping the utterances with
    confidence >= threshold (CERs pooled: errors / reference characters; None where
    undefined).
  """
  conf = np.asarray(confidence, np.float64)
  errors = np.asarray(char_errors, np.float64)
  chars = np.asarray(ref_chars, np.float64)
  n = len(conf)
  if not (len(errors) == len(chars) == n):
    raise ValueError("confidence, char_errors and ref_chars must have one value per utterance")
  intent = np.full(n, np.nan) if intent_correct is None else np.asarray(intent_correct, np.float64)
  order = np.argsort(-conf, kind="stable")
  conf, errors, chars, intent = conf[order], errors[order], chars[order], intent[order]
  cum_err, cum_chars = np.cumsum(errors), np.cumsum(chars)
  known = ~np.isnan(intent)
  cum_known, cum_right = np.cumsum(known), np.cumsum(np.where(known, intent, 0.0))
  total_err, total_chars = cum_err[-1] if n else 0.0, cum_chars[-1] if n else 0.0
  points = []
  for i in range(n):
    if i + 1 < n and conf[i + 1] == conf[i]:
      continue  # Ties are kept or dropped together.
    kept_chars, drop_chars = cum_chars[i], total_chars - cum_chars[i]
    points.append(
      {
        "threshold": float(conf[i]),
        "kept": i + 1,
        "kept_fraction": (i + 1) / n,
        "kept_cer": float(cum_err[i] / kept_chars) if kept_chars else None,
        "dropped_cer": float((total_err - cum_err[i]) / drop_chars) if drop_chars else None,
        "kept_intent_acc": float(cum_right[i] / cum_known[i]) if cum_known[i] else None,
      }
    )
  return points


def choose_threshold(curve: Sequence[Mapping], target_cer: float) -> float:
  """The lowest threshold of a `threshold_curve` whose kept set has CER <= `target_cer`.

  That keeps the most utterances that meet the target; inf (keep nothing) when no
  threshold does.
  """
  ok = [p for p in curve if p["kept_cer"] is not None and p["kept_cer"] <= target_cer + 1e-12]
  return min(p["threshold"] for p in ok) if ok else math.inf


def plot_curve(curve: Sequence[Mapping], threshold: float, path: str | pathlib.Path) -> None:
  """Kept fraction against kept CER (and intent accuracy), the chosen point marked."""
  from matplotlib.figure import Figure

  from moe_asr.evaluation import plots

  fig = Figure(figsize=(5, 3.5))
  ax = fig.add_subplot()
  frac = [p["kept_fraction"] for p in curve]
  ax.plot(frac, [p["kept_cer"] for p in curve], marker=".", label="kept CER")
  acc = [p["kept_intent_acc"] for p in curve]
  if any(a is not None for a in acc):
    ax.plot(frac, [np.nan if a is None else a for a in acc], marker=".", label="kept intent acc")
  chosen = [p for p in curve if p["threshold"] == threshold]
  if chosen:
    ax.axvline(chosen[0]["kept_fraction"], color="gray", linestyle="--", label="threshold")
  ax.set_xlabel("kept fraction (most confident first)")
  ax.set_xlim(0, 1.02)
  ax.legend()
  plots.save_figure(fig, path)


# ---------------------------------------------------------------------------
# The filter.
# ---------------------------------------------------------------------------


class NothingKeptError(ValueError):
  """No pseudo-label passed the filter (the counts say why)."""


@dataclasses.dataclass
class FilterConfig:
  """How pseudo-labels are filtered (see the module docstring).

  Attributes:
    threshold: keep utterances with confidence >= this (a `choose_threshold` result).
    min_language_fraction: each LID language keeps at least this fraction of its
      consistent utterances, the most confident first.
    max_keep_fraction: keep at most this fraction of all utterances, the most confident
      first (1.0: no cap); the quotas still hold.
    min_cps, max_cps: plausible characters per second of audio.
    check_script: reject a hypothesis none of whose words is in the script of the audio's
      language.
  """

  threshold: float = 0.0
  min_language_fraction: float = 0.0
  max_keep_fraction: float = 1.0
  min_cps: float = DEFAULT_MIN_CPS
  max_cps: float = DEFAULT_MAX_CPS
  check_script: bool = True

  def __post_init__(self):
    if not 0.0 <= self.min_language_fraction <= 1.0:
      raise ValueError(f"min_language_fraction must be in [0, 1], got {self.min_language_fraction}")
    if not 0.0 < self.max_keep_fraction <= 1.0:
      raise ValueError(f"max_keep_fraction must be in (0, 1], got {self.max_keep_fraction}")


def filter_items(items: Sequence[dict], cfg: FilterConfig) -> tuple[list[bool], dict]:
  """Which pseudo-labelled items to keep, and the counts of why the others were left out.

  Args:
    items: dicts with "text", "language" (the audio's LID), "duration_s" and "confidence".
    cfg: the filter.

  Returns:
    (keep flags, summary). The summary counts `skipped` by consistency reason, `below_threshold`,
    `over_cap`, `quota_added` and `kept` per language; each item gets `reason` (None if
    kept: "script", "empty", "chars_per_second", "below_threshold" or "over_cap").
  """
  n = len(items)
  reasons: list[str | None] = [None] * n
  skipped: dict[str, int] = {}
  for i, item in enumerate(items):
    why = inconsistency(
      item["text"],
      item["language"],
      float(item["duration_s"]),
      min_cps=cfg.min_cps,
      max_cps=cfg.max_cps,
      check_script=cfg.check_script,
    )
    if why is not None:
      reasons[i] = why
      skipped[why] = skipped.get(why, 0) + 1
  conf = np.array([float(item["confidence"]) for item in items], np.float64)
  consistent = [i for i in range(n) if reasons[i] is None]
  by_conf = sorted(consistent, key=lambda i: (-conf[i], i))
  keep = {i for i in consistent if conf[i] >= cfg.threshold}
  below = len(consistent) - len(keep)
  cap = int(math.floor(cfg.max_keep_fraction * n + 1e-9))
  over_cap = 0
  if len(keep) > cap:
    ranked = [i for i in by_conf if i in keep]
    over_cap = len(ranked) - cap
    keep = set(ranked[:cap])
  quota_added = {}
  if cfg.min_language_fraction > 0:
    by_lang: dict[str, list[int]] = {}
    for i in by_conf:
      by_lang.setdefault(items[i]["language"], []).append(i)
    for lang, members in by_lang.items():
      need = math.ceil(cfg.min_language_fraction * len(members) - 1e-9)
      have = sum(i in keep for i in members)
      for i in members:
        if have >= need:
          break
        if i not in keep:
          keep.add(i)
          have += 1
          quota_added[lang] = quota_added.get(lang, 0) + 1
  flags = [i in keep for i in range(n)]
  for i in consistent:
    if not flags[i]:
      reasons[i] = "below_threshold" if conf[i] < cfg.threshold else "over_cap"
  for item, reason in zip(items, reasons, strict=True):
    item["kept"], item["reason"] = reason is None, reason
  kept_per_language: dict[str, int] = {}
  for i in sorted(keep):
    lang = items[i]["language"]
    kept_per_language[lang] = kept_per_language.get(lang, 0) + 1
  summary = {
    "items": n,
    "kept": len(keep),
    "skipped": skipped,
    "below_threshold": below,
    "over_cap": over_cap,
    "quota_added": quota_added,
    "kept_per_language": kept_per_language,
    "config": dataclasses.asdict(cfg),
  }
  return flags, summary


# ---------------------------------------------------------------------------
# Decoding a split into pseudo-labels.
# ---------------------------------------------------------------------------


def export_audio(source, directory: pathlib.Path) -> list[dict]:
  """Writes every example of a data source as `directory/{index:06d}.wav`.

  Returns one {"id", "path", "speaker", "duration_s"} per example, in source order: what
  the pseudo-labels keep of the source (its labels are not read).
  """
  import soundfile

  from moe_asr.data import pipeline as pipeline_lib
  from moe_asr.data import schema

  directory.mkdir(parents=True, exist_ok=True)
  out = []
  for k in range(len(source)):
    ex = source[k]
    audio = np.asarray(ex["audio"], np.int16)
    path = directory / f"{k:06d}.wav"
    soundfile.write(path, audio, schema.SAMPLE_RATE, subtype="PCM_16")
    out.append(
      {
        "id": pipeline_lib.as_str(ex.get("id", "")) or f"{k:06d}",
        "path": str(path),
        "speaker": pipeline_lib.as_str(ex.get("speaker", "")),
        "duration_s": len(audio) / schema.SAMPLE_RATE,
      }
    )
  return out


def references(source) -> dict[str, dict]:
  """{id: {"text", "intent"}} of a labelled split: only for scoring the filter."""
  from moe_asr.data import pipeline as pipeline_lib

  refs = {}
  for k in range(len(source)):
    ex = source[k]
    refs[pipeline_lib.as_str(ex.get("id", "")) or f"{k:06d}"] = {
      "text": pipeline_lib.as_str(ex.get("text", "")),
      "intent": pipeline_lib.as_str(ex.get("intent", "")),
    }
  return refs


def item_from_record(meta: Mapping, rec: Mapping) -> dict:
  """A pseudo-label from an exported example (`export_audio`) and its transcribe record."""
  if "error" in rec or not rec.get("speech", True):
    text, language, words = "", rec.get("language") or "", []
  else:
    text, language, words = rec["text"], rec["language"], rec.get("words") or []
  return {
    **meta,
    "text": text,
    "language": language or "",
    "language_confidence": rec.get("language_confidence"),
    "words": [
      {"word": w["word"], "language": w["language"], "confidence": w["confidence"]} for w in words
    ],
    "intent": rec.get("intent") or "",
    "intent_confidence": rec.get("intent_confidence"),
    "slots": [[s["type"], s["value"]] for s in rec.get("slots") or []],
    "confidence": float(rec["confidence"]) if rec.get("confidence") is not None else 0.0,
    "deferred": bool(rec.get("deferred", False)),
  }


def manifest_line(item: Mapping) -> dict:
  """The `local_manifest` line of a kept pseudo-label (the model's labels only)."""
  from moe_asr.data import text as text_lib

  text = text_lib.normalize(item["text"])
  path = item.get("student_path") or item["path"]
  line: dict[str, Any] = {"path": path, "text": text, "id": item["id"]}
  if item.get("speaker"):
    line["speaker"] = item["speaker"]
  words = [w["word"] for w in item["words"]]
  if words == text.split() and all(w["language"] for w in item["words"]):
    line["words_lang"] = [w["language"] for w in item["words"]]
  else:
    line["language"] = item["language"]
  if item.get("intent"):
    line["intent"] = item["intent"]
  # A slot whose value is not a span of the transcript is dropped, not the utterance.
  slots = [[t, v] for t, v in item["slots"] if v and f" {v} " in f" {text} "]
  if slots:
    line["slots"] = slots
  return line


def write_dataset(
  items: Sequence[dict],
  out: pathlib.Path,
  *,
  split: str,
  name: str,
  data_dir: pathlib.Path,
  provenance: Mapping,
):
  """Builds the kept items into `local_manifest/{name}` (split `split`) in `data_dir`.

  Returns the prepared builder. Its metadata's `pseudo_label` holds the provenance and, by
  id, the utterance, intent and language confidences and the words' confidences.
  """
  from moe_asr.data.builders import local_manifest

  manifest_dir = out / "manifest"
  if manifest_dir.exists():
    shutil.rmtree(manifest_dir)
  manifest_dir.mkdir(parents=True)
  with open(manifest_dir / f"{split}.jsonl", "w", encoding="utf-8") as f:
    for item in items:
      f.write(json.dumps(manifest_line(item), ensure_ascii=False) + "\n")
  builder = local_manifest.build_local_manifest(
    manifest_dir, data_dir, name=name, on_error="skip", allow_outside=True, overwrite=True
  )
  metadata = builder.info.metadata
  metadata["pseudo_label"] = {
    "provenance": dict(provenance),
    "utterances": {
      item["id"]: {
        "confidence": item["confidence"],
        "intent_confidence": item["intent_confidence"],
        "language_confidence": item["language_confidence"],
        "words": [[w["word"], w["confidence"]] for w in item["words"]],
      }
      for item in items
    },
  }
  metadata.save_metadata(builder.data_dir)
  return builder


def noisy_copies(
  items: Sequence[dict], directory: pathlib.Path, snr_range: tuple[float, float], seed: int = 0
) -> None:
  """Writes a noisy copy of each item's audio for the student (`item["student_path"]`).

  White, pink or brown noise at an SNR drawn uniformly from `snr_range` (dB), seeded by
  `seed` and the item's position: the student trains on audio the teacher did not decode,
  with the teacher's labels from the clean audio (noisy-student training's input noise).
  Silent audio is copied as it is.
  """
  import soundfile

  from moe_asr.data import schema
  from moe_asr.data.synth import augment

  low, high = (float(x) for x in snr_range)
  if not low <= high:
    raise ValueError(f"noise SNR range must be (low, high) with low <= high, got {snr_range}")
  directory.mkdir(parents=True, exist_ok=True)
  for k, item in enumerate(items):
    audio, _ = soundfile.read(item["path"], dtype="float32")
    rng = np.random.default_rng([seed, k])
    snr = float(rng.uniform(low, high))
    if np.any(audio):
      noise = augment.make_noise(str(rng.choice(["white", "pink", "brown"])), len(audio), rng)
      audio = augment.add_noise(audio, noise, snr)
    path = directory / pathlib.Path(item["path"]).name
    soundfile.write(path, augment.peak_limited_int16(audio), schema.SAMPLE_RATE, subtype="PCM_16")
    item["student_path"], item["student_snr_db"] = str(path), snr


def checkpoint_step(workdir: str | pathlib.Path, step: int | None = None) -> int | None:
  """The checkpoint step a decode of `workdir` uses (the newest, or `step`)."""
  from moe_asr.training import checkpoint as checkpoint_lib

  if step is not None:
    return int(step)
  with checkpoint_lib.Checkpointer(
    pathlib.Path(workdir).absolute() / "checkpoints", async_save=False
  ) as ckpt:
    latest = ckpt.latest_step()
  return None if latest is None else int(latest)


def _target_threshold(
  val: list[dict], sources: dict, split: str, target_cer: float, summary: dict, out
) -> float:
  """The confidence threshold whose kept pseudo-labels of `val` reach `target_cer`.

  `val` are the pseudo-labels of the labelled `split` (read from `sources[split]`); the
  curve goes into `summary` and is plotted to `out/filter_curve.png`.
  """
  from moe_asr.evaluation import metrics as metrics_lib

  refs = references(sources[split])
  counts = [metrics_lib.edit_counts(refs[v["id"]]["text"], v["text"], "char") for v in val]
  intent = [
    (float(v["intent"] == refs[v["id"]]["intent"]) if refs[v["id"]]["intent"] else math.nan)
    for v in val
  ]
  curve = threshold_curve(
    [v["confidence"] for v in val],
    [c.errors for c in counts],
    [c.ref_len for c in counts],
    intent,
  )
  threshold = choose_threshold(curve, target_cer)
  at = [p for p in curve if p["threshold"] == threshold]
  summary.update(
    target_cer=target_cer,
    calibration_split=split,
    threshold=threshold,
    curve=curve,
    validation=at[0] if at else None,
  )
  plot_curve(curve, threshold, pathlib.Path(out) / "filter_curve.png")
  return threshold


def pseudo_label(
  workdir: str | pathlib.Path,
  out: str | pathlib.Path,
  *,
  split: str = "unlabeled",
  data: str | None = None,
  data_dir: str | None = None,
  name: str | None = None,
  split_name: str | None = None,
  tfds_dir: str | pathlib.Path | None = None,
  target_cer: float | None = None,
  calibration_split: str = "validation",
  filter_cfg: FilterConfig | None = None,
  overrides: Sequence[str] = (),
  step: int | None = None,
  noise_snr: tuple[float, float] | None = None,
) -> dict:
  """Decodes `split` with `workdir`'s model into a filtered pseudo-label dataset.

  Args:
    workdir: the teacher run.
    out: the output folder (see the module docstring).
    split: the split to label; a TFDS split expression works (`train[25%:]+unlabeled`).
    data, data_dir: the dataset to read `split` (and `calibration_split`) from (default:
      the run's `config.data.name` and `data_dir`).
    name: the dataset's name, `local_manifest/{name}` (default `pseudo_{split_name}`).
    split_name: its split (default: `split` with every character other than a letter, digit
      or "_" replaced by "_").
    tfds_dir: the TFDS data dir it is built in (default `out/tfds`).
    target_cer: choose the confidence threshold on `calibration_split` for this pooled
      CER of the kept pseudo-labels (None: `filter_cfg.threshold` as given).
    calibration_split: a labelled split for the threshold.
    filter_cfg: the filter (default `FilterConfig()`).
    overrides: `config.a.b=value` overrides of the run's config (decode settings, ...).
    step: the checkpoint step (default: the newest).
    noise_snr: (low, high) dB: the dataset's audio is a noisy copy of what the teacher
      decoded (`noisy_copies`); None: the clean audio.

  Returns:
    The summary written to `out/filter.json`: "dataset", "data_dir", "split", "split_name",
    "examples", "provenance",
    "filter" (counts), and with a target "target_cer", "threshold", "curve", and "validation"
    (the kept and dropped CER at the threshold).
  """
  from moe_asr import transcribe
  from moe_asr.data import pipeline as pipeline_lib
  from moe_asr.evaluation import score

  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  overrides = [o.removeprefix("--").removeprefix("config.") for o in overrides]
  cfg = score.workdir_config(workdir, overrides, step=step)
  data = data or cfg.data.name
  data_dir = data_dir or cfg.data.data_dir
  filter_cfg = dataclasses.replace(filter_cfg) if filter_cfg else FilterConfig()
  split_name = split_name or re.sub(r"[^A-Za-z0-9_]", "_", split)
  name = name or f"pseudo_{split_name}"
  tfds_dir = pathlib.Path(tfds_dir) if tfds_dir else out / "tfds"

  sources = {split: pipeline_lib.data_source(data, split, data_dir=data_dir)}
  if target_cer is not None:
    sources[calibration_split] = pipeline_lib.data_source(
      data, calibration_split, data_dir=data_dir
    )
  exported = {
    s: export_audio(src, out / "audio" / re.sub(r"[^A-Za-z0-9_]", "_", s))
    for s, src in sources.items()
  }
  paths = [e["path"] for s in exported for e in exported[s]]
  records = transcribe.transcribe_files(workdir, paths, overrides=overrides, step=step)
  by_path = {rec["file"]: rec for rec in records}
  items = {s: [item_from_record(e, by_path[e["path"]]) for e in exported[s]] for s in exported}

  calibration = score.load_calibration(workdir)
  provenance = {
    "workdir": str(pathlib.Path(workdir).absolute()),
    "checkpoint_step": checkpoint_step(workdir, step),
    "decode": {k: v for k, v in cfg.decode.to_dict().items()},
    "calibration": None if calibration is None else calibration.to_dict(),
    "source": {"data": data, "data_dir": str(data_dir), "split": split},
  }
  summary: dict[str, Any] = {"split": split, "split_name": split_name, "provenance": provenance}
  if target_cer is not None:
    filter_cfg.threshold = _target_threshold(
      items[calibration_split], sources, calibration_split, target_cer, summary, out
    )
  flags, counts = filter_items(items[split], filter_cfg)
  summary["filter"] = counts
  provenance["filter"] = dataclasses.asdict(filter_cfg)
  kept = [item for item, keep in zip(items[split], flags, strict=True) if keep]
  if noise_snr is not None:
    noisy_copies(kept, out / "audio" / f"{split_name}_noisy", noise_snr)
    provenance["student_noise_snr_db"] = list(noise_snr)
  labels_dir = out / "labels"
  labels_dir.mkdir(exist_ok=True)
  with open(labels_dir / f"{split_name}.jsonl", "w", encoding="utf-8") as f:
    for item in items[split]:
      f.write(json.dumps(item, ensure_ascii=False) + "\n")
  if not kept:
    raise NothingKeptError(
      f"No pseudo-label of {split} passed the filter: of {counts['items']}, inconsistent "
      f"{counts['skipped']}, below the threshold {counts['below_threshold']} (threshold "
      f"{filter_cfg.threshold}); a looser --target-cer or a language quota keeps more, "
      "an empty hypothesis is never kept"
    )
  builder = write_dataset(
    kept, out, split=split_name, name=name, data_dir=tfds_dir, provenance=provenance
  )
  summary.update(
    dataset=f"local_manifest/{name}",
    data_dir=str(tfds_dir.absolute()),
    examples=int(builder.info.splits[split_name].num_examples),
  )
  (out / "filter.json").write_text(json.dumps(json_safe(summary), indent=1))
  return summary


def json_safe(x):
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, Mapping):
    return {k: json_safe(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [json_safe(v) for v in x]
  return x


# ---------------------------------------------------------------------------
# Rounds: teacher -> pseudo-labels -> student (-> the next round's teacher).
# ---------------------------------------------------------------------------


def student_config(
  teacher: str | pathlib.Path,
  pseudo: Mapping,
  *,
  steps: int,
  pseudo_weight: float,
  init_from_teacher: bool = True,
  overrides: Sequence[str] = (),
):
  """The config of a student trained on the teacher's data mixed with its pseudo-labels.

  The teacher's training config (its model, buckets and supervised data), with
  `data.mixture` = the teacher's train split at weight 1 - `pseudo_weight` and the
  pseudo-label dataset (`pseudo_label`'s summary) at `pseudo_weight`, `train.steps`, and
  the teacher's parameters as the start (`init_from`) unless `init_from_teacher` is False.
  A student started from the teacher keeps the teacher's tokenizer (`data.tokenizer`): one
  trained anew on the mixture's text would spell with other ids than its parameters.
  """
  from moe_asr import config_lib
  from moe_asr.evaluation import score

  if not 0.0 < pseudo_weight < 1.0:
    raise ValueError(f"pseudo_weight must be in (0, 1), got {pseudo_weight}")
  teacher = pathlib.Path(teacher).absolute()
  cfg = score.workdir_config(teacher)
  cfg.data.mixture = (
    (cfg.data.name, cfg.data.train_split, 1.0 - pseudo_weight, str(cfg.data.data_dir)),
    (pseudo["dataset"], pseudo["split_name"], pseudo_weight, pseudo["data_dir"]),
  )
  cfg.train.steps = int(steps)
  cfg.resume = ""
  cfg.init_from = str(teacher / "checkpoints") if init_from_teacher else ""
  if init_from_teacher and (teacher / "tokenizer.model").exists():
    cfg.data.tokenizer = str(teacher / "tokenizer.model")
  config_lib.apply_overrides(cfg, [o.removeprefix("--").removeprefix("config.") for o in overrides])
  return cfg


def self_train(
  teacher: str | pathlib.Path,
  root: str | pathlib.Path,
  *,
  rounds: int = 1,
  steps: int = 200,
  split: str = "unlabeled",
  target_cer: float | None = None,
  keep_fractions: Sequence[float] = (1.0,),
  filter_cfg: FilterConfig | None = None,
  pseudo_weight: float = 0.5,
  init_from_teacher: bool = True,
  overrides: Sequence[str] = (),
  noise_snr: tuple[float, float] | None = None,
) -> dict:
  """Rounds of self-training from a trained teacher run.

  Round r (1-based) labels `split` with the current teacher (`pseudo_label` into
  `root/round{r}/pseudo`, threshold chosen on validation for `target_cer` when given),
  keeping at most `keep_fractions[r - 1]` of it (the last entry for later rounds), the most
  confident first: a curriculum over rounds, most confident first. A student
  (`student_config`) trains in `root/round{r}/student` on the teacher's data mixed with
  the kept pseudo-labels, and is the next round's teacher. The teacher's text LM (`W/lm`)
  is copied to the student, so tuned decode settings that fuse it stay usable; its
  calibration is not (it belongs to the teacher's model), so a student's confidences are
  raw until `moe-asr tune-decoding` fits its own. With `noise_snr` the student trains on
  noisy copies of the audio the teacher labelled clean (`noisy_copies`), on top of the
  SpecAugment of training.

  Returns:
    {"rounds": [{"round", "teacher", "student", "pseudo": pseudo_label summary (without the
    curve), "train": the student's final training summary}]}, also written to
    `root/selftrain.json`.
  """
  from moe_asr.training import text_lm, train

  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  if rounds < 1:
    raise ValueError(f"rounds must be >= 1, got {rounds}")
  if not keep_fractions:
    raise ValueError("keep_fractions needs at least one fraction")
  base = filter_cfg or FilterConfig()
  teacher = pathlib.Path(teacher).absolute()
  results = []
  for r in range(1, rounds + 1):
    keep = float(keep_fractions[min(r - 1, len(keep_fractions) - 1)])
    pseudo = pseudo_label(
      teacher,
      root / f"round{r}" / "pseudo",
      split=split,
      name=f"pseudo_round{r}",
      target_cer=target_cer,
      filter_cfg=dataclasses.replace(base, max_keep_fraction=keep),
      noise_snr=noise_snr,
    )
    student = (root / f"round{r}" / "student").absolute()
    cfg = student_config(
      teacher,
      pseudo,
      steps=steps,
      pseudo_weight=pseudo_weight,
      init_from_teacher=init_from_teacher,
      overrides=overrides,
    )
    lm = text_lm.lm_dir(teacher)
    if lm.is_dir() and not text_lm.lm_dir(student).exists():
      shutil.copytree(lm, text_lm.lm_dir(student))
    summary = train.train_and_evaluate(cfg, student)
    results.append(
      {
        "round": r,
        "teacher": str(teacher),
        "student": str(student),
        "keep_fraction": keep,
        "pseudo": {k: v for k, v in pseudo.items() if k != "curve"},
        "train": {k: v for k, v in summary.items() if isinstance(v, int | float | str)},
      }
    )
    _LOG.info(
      "Self-training round %d: kept %d of %d pseudo-labels; student %s: %s",
      r,
      pseudo["filter"]["kept"],
      pseudo["filter"]["items"],
      student,
      {k: v for k, v in results[-1]["train"].items() if k.startswith("val/")},
    )
    teacher = student
  out = {"rounds": results}
  (root / "selftrain.json").write_text(json.dumps(json_safe(out), indent=1))
  return out
