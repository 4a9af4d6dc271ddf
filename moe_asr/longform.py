"""Long recordings: windows cut at pauses, and one record stitched from their transcripts.

A recording longer than the model's longest length bucket is decoded as windows that fit
the compiled shapes. `plan_windows` cuts it where the voice-activity detector
(`moe_asr.data.vad`) finds a pause, so that no word is cut; where a stretch of speech has
no pause before the window is full it cuts at the window's end and starts the next window
`overlap` earlier, so a word cut at one edge is whole in the other window. Stretches with no
speech at all (leading and trailing silence, long pauses) are not decoded.

`stitch` joins the windows' records (`transcribe.record_from_row` of each window, its times
relative to the window) into one: times move to the recording's timeline, the words that
two overlapping windows both heard are kept once (each window keeps the words that start
before the middle of the overlap; a word repeated across that seam is dropped, and without
times the longest run of words ending one window and starting the next), and the languages
of consecutive words make language segments across the windows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from moe_asr.data import languages as langs_lib


@dataclasses.dataclass(frozen=True)
class Window:
  """Samples [start, end) of a recording, decoded as one utterance."""

  start: int
  end: int
  cut: str  # How the window ends: "pause", "hard" (the next one overlaps) or "end".

  @property
  def samples(self) -> int:
    return self.end - self.start


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
  """[start, end) frame runs where `mask` is False."""
  padded = np.concatenate([[True], np.asarray(mask, bool), [True]])
  edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
  return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def plan_windows(
  speech: np.ndarray,
  num_samples: int,
  max_samples: int,
  *,
  frame_samples: int,
  min_pause: int = 3200,
  split_pause: int = 8000,
  pad: int = 3200,
  overlap: int = 16000,
) -> list[Window]:
  """Windows of at most `max_samples` that cover every speech frame of a recording.

  Args:
    speech: bool [frames] speech per VAD frame; frame f covers samples
      [f * frame_samples, (f + 1) * frame_samples).
    num_samples: length of the recording.
    max_samples: longest window (the longest bucket's samples).
    frame_samples: samples per VAD frame.
    min_pause: shortest non-speech run (samples) a window may end in.
    split_pause: a non-speech run at least this long ends a window even where more speech
      would fit: the model was trained on single utterances, so a window holds one where
      the pauses show where they end.
    pad: non-speech kept around the speech at a window's edges (at most half a pause).
    overlap: samples a window shares with the previous one after a hard cut; at most a
      quarter of `max_samples`.

  Returns:
    The windows in order; [] when no frame is speech.
  """
  if max_samples <= 0 or frame_samples <= 0:
    raise ValueError("max_samples and frame_samples must be positive")
  speech = np.asarray(speech, bool)
  overlap = min(overlap, max_samples // 4)
  pad = min(pad, max_samples // 8)
  if not speech.any():
    return []
  # Non-speech runs in samples, clipped to the recording.
  pauses = [
    (a * frame_samples, min(b * frame_samples, num_samples))
    for a, b in _runs(speech)
    if min(b * frame_samples, num_samples) > a * frame_samples
  ]
  frames = np.flatnonzero(speech)
  speech_end = min(int(frames[-1] + 1) * frame_samples, num_samples)

  def next_speech(at: int) -> int:
    """First speech sample at or after `at` (or `num_samples`)."""
    f = np.searchsorted(frames, at // frame_samples)
    if f < len(frames) and frames[f] * frame_samples < at:
      return at  # `at` lies inside a speech frame.
    return int(frames[f]) * frame_samples if f < len(frames) else num_samples

  windows: list[Window] = []
  cursor = 0
  while True:
    first = next_speech(cursor)
    if first >= speech_end:
      break
    # Start a little before the speech, but not back into the previous window's pause.
    start = max(cursor, first - pad)
    limit = start + max_samples
    # Pauses long enough to cut in, whose start (plus a little) still fits the window.
    candidates = [
      (a, b)
      for a, b in pauses
      if b - a >= min_pause and start < a and a + min(pad, (b - a) // 2) <= limit
    ]
    # A long pause ends an utterance: the window ends at the first one, full or not.
    ends = [(a, b) for a, b in candidates if b - a >= split_pause and a < speech_end]
    if ends:
      a, b = ends[0]
      windows.append(Window(start, a + min(pad, (b - a) // 2), "pause"))
      cursor = (a + b) // 2
      continue
    if speech_end <= limit:  # The rest of the speech fits.
      windows.append(Window(start, min(num_samples, speech_end + pad, limit), "end"))
      break
    late = [(a, b) for a, b in candidates if a >= start + max_samples // 2]
    pool = late or candidates
    if pool:
      a, b = max(pool, key=lambda p: (min(p[1], limit) - p[0], p[0]))  # Longest, then latest.
      windows.append(Window(start, a + min(pad, (b - a) // 2), "pause"))
      cursor = (a + b) // 2
    else:
      windows.append(Window(start, limit, "hard"))
      cursor = limit - overlap
  return windows


def _seconds(samples: int, sample_rate: int) -> float:
  return round(samples / sample_rate, 3)


def _shift(word: dict, offset: float, end_cap: float) -> dict:
  word = dict(word)
  for key in ("start", "end"):
    if word[key] is not None:
      word[key] = round(min(word[key] + offset, end_cap), 3)
  return word


def _word_overlap(previous: Sequence[dict], current: Sequence[dict], most: int = 8) -> int:
  """Longest k <= most such that the last k words of `previous` are the first k of `current`."""
  a = [w["word"] for w in previous]
  b = [w["word"] for w in current]
  for k in range(min(most, len(a), len(b)), 0, -1):
    if a[-k:] == b[:k]:
      return k
  return 0


def stitch(
  windows: Sequence[Window],
  records: Sequence[dict],
  *,
  name: str,
  duration_s: float,
  sample_rate: int,
  lid_probs: Sequence[np.ndarray],
) -> dict:
  """One transcript record for a recording decoded as `windows`.

  Args:
    windows: the windows, in order (from `plan_windows`).
    records: the windows' records (`transcribe.record_from_row`), times relative to each window.
    name: the file name of the record.
    duration_s: the recording's duration.
    sample_rate: samples per second of the windows' bounds.
    lid_probs: float [languages] each window's utterance language probabilities.

  Returns:
    The record of `transcribe`'s module docstring with times in the recording's timeline,
    "speech": True, "segments" (one per window: start, end, text, language,
    language_confidence, intent, intent_confidence, slots, confidence) and
    "language_segments" (runs of consecutive words of one language: language, start, end,
    words). The utterance language is the one most probable over the windows weighted by
    their length, the confidence the windows' mean weighted by length; `deferred` is true
    when any window is; the intent is per segment (null at the top), the slots are the
    segments' slots in order.
  """
  if len(windows) != len(records) or len(records) != len(lid_probs):
    raise ValueError("windows, records and lid_probs must have the same length")
  kept: list[list[dict]] = []
  for k, (window, rec) in enumerate(zip(windows, records, strict=True)):
    offset = window.start / sample_rate
    words = [_shift(w, offset, duration_s) for w in rec["words"]]
    if k > 0:
      previous = windows[k - 1]
      if previous.end > window.start:  # Overlapping windows: split the overlap at its middle.
        seam = (window.start + previous.end) / 2 / sample_rate
        timed = all(w["start"] is not None for w in kept[-1] + words)
        if timed:
          kept[-1] = [w for w in kept[-1] if w["start"] < seam]
          words = [w for w in words if w["start"] >= seam]
          # A word heard by both windows, its start seen on either side of the seam.
          if kept[-1] and words and kept[-1][-1]["word"] == words[0]["word"]:
            words = words[1:]
        else:
          words = words[_word_overlap(kept[-1], words) :]
    kept.append(words)

  weights = np.asarray([max(w.samples, 1) for w in windows], np.float64)
  weights /= weights.sum()
  mean_lid = np.sum([p * wt for p, wt in zip(lid_probs, weights, strict=True)], axis=0)
  lid = int(np.argmax(mean_lid))
  words = [w for ws in kept for w in ws]
  segments = []
  for window, rec, ws in zip(windows, records, kept, strict=True):
    segments.append(
      {
        "start": _seconds(window.start, sample_rate),
        "end": _seconds(window.end, sample_rate),
        "text": " ".join(w["word"] for w in ws),
        "language": rec["language"],
        "language_confidence": rec["language_confidence"],
        "intent": rec["intent"],
        "intent_confidence": rec["intent_confidence"],
        "slots": rec["slots"],
        "confidence": rec["confidence"],
      }
    )
  language_segments: list[dict] = []
  for w in words:
    last = language_segments[-1] if language_segments else None
    if last is not None and last["language"] == w["language"]:
      last["end"] = w["end"] if w["end"] is not None else last["end"]
      last["words"] += 1
    else:
      language_segments.append(
        {"language": w["language"], "start": w["start"], "end": w["end"], "words": 1}
      )
  return {
    "file": name,
    "text": " ".join(w["word"] for w in words),
    "language": langs_lib.LANGUAGE_CODES[lid],
    "language_confidence": float(mean_lid[lid]),
    "words": words,
    "intent": None,
    "intent_confidence": None,
    "slots": [s for rec in records for s in rec["slots"]],
    "confidence": float(np.dot(weights, [rec["confidence"] for rec in records])),
    "deferred": any(rec["deferred"] for rec in records),
    "duration_s": round(duration_s, 3),
    "speech": True,
    "segments": segments,
    "language_segments": language_segments,
  }


def file_windows(wave: np.ndarray, mask: np.ndarray, max_samples: int):
  """The windows a file is decoded in: the whole file when it fits, else `plan_windows`."""
  from moe_asr.data import schema, vad

  if len(wave) <= max_samples:
    return [Window(0, len(wave), "end")], False
  rate = schema.SAMPLE_RATE
  windows = plan_windows(
    mask,
    len(wave),
    max_samples,
    frame_samples=vad.FRAME_SAMPLES,
    min_pause=int(0.2 * rate),
    pad=int(0.2 * rate),
    overlap=int(1.0 * rate),
  )
  return windows, True
