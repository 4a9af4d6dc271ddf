"""Long recordings cut at pauses and stitched; silence and too-short clips; memory use."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from moe_asr import longform, transcribe
from moe_asr.data import audio_io, vad
from moe_asr.data import languages as langs_lib
from moe_asr.data.synth import tts

RATE = 16000
FRAME = vad.FRAME_SAMPLES
VOICE = tts.Voice("m3", rate=170, pitch=50)
# Short commands (under 2.2 s each with this voice), spoken in this order.
SENTENCES = (
  "turn on the light",
  "what time is it",
  "call my mother",
  "play some music",
  "open the window",
  "set an alarm for seven",
  "stop the timer",
  "how is the weather",
  "close the door",
  "read my messages",
)


def _speech(runs: list[tuple[float, float]], seconds: float) -> np.ndarray:
  """A VAD mask with speech in the given (start, end) second ranges."""
  mask = np.zeros(int(np.ceil(seconds * RATE / FRAME)), bool)
  for a, b in runs:
    mask[int(a * RATE) // FRAME : int(np.ceil(b * RATE / FRAME))] = True
  return mask


def _covered(windows, a: int, b: int) -> bool:
  return any(w.start <= a and b <= w.end for w in windows)


# ---------------------------------------------------------------------------
# Planning windows.
# ---------------------------------------------------------------------------


def test_plan_windows_cuts_in_pauses_and_skips_silence():
  # Speech 1-3 s, 3.5-5.5 s, 6.5-8 s, 9-10.5 s in a 12 s recording; windows of at most 4 s.
  runs = [(1.0, 3.0), (3.5, 5.5), (6.5, 8.0), (9.0, 10.5)]
  mask = _speech(runs, 12.0)
  windows = longform.plan_windows(
    mask, 12 * RATE, 4 * RATE, frame_samples=FRAME, min_pause=3200, pad=3200, overlap=RATE
  )
  assert windows, windows
  assert all(w.samples <= 4 * RATE for w in windows)
  assert all(a.end <= b.start for a, b in zip(windows, windows[1:], strict=False))  # No overlap.
  assert [w.cut for w in windows[:-1]] == ["pause"] * (len(windows) - 1)
  for a, b in runs:  # Every run of speech whole in one window.
    assert _covered(windows, int(a * RATE), int(b * RATE)), (a, b, windows)
  # Leading and trailing silence (0-1 s, 10.5-12 s) are not decoded beyond the 0.2 s pad.
  assert windows[0].start >= int(0.8 * RATE) - FRAME
  assert windows[-1].end <= int(10.7 * RATE) + FRAME
  # A cut lies in a pause, at most 0.2 s after the speech before it.
  speech_samples = np.repeat(mask, FRAME)
  for w in windows[:-1]:
    assert not speech_samples[w.end - 1], w

  assert longform.plan_windows(np.zeros(40, bool), 40 * FRAME, 4 * RATE, frame_samples=FRAME) == []


def test_plan_windows_without_pauses_overlap():
  # 10 s of speech without a pause: hard cuts at 4 s, the next window 1 s earlier.
  mask = _speech([(0.0, 10.0)], 10.0)
  windows = longform.plan_windows(mask, 10 * RATE, 4 * RATE, frame_samples=FRAME, overlap=RATE)
  assert [w.cut for w in windows] == ["hard", "hard", "end"]
  assert [(w.start, w.end) for w in windows] == [(0, 64000), (48000, 112000), (96000, 160000)]


def test_plan_windows_prefers_the_longest_late_pause():
  # Pauses at 1.5-1.75 s (early), 2.6-2.85 s and 3.0-3.6 s (late, longest): the cut goes in
  # the longest pause of the window's second half.
  runs = [(0.0, 1.5), (1.75, 2.6), (2.85, 3.0), (3.6, 6.0)]
  mask = _speech(runs, 6.0)
  windows = longform.plan_windows(mask, 6 * RATE, 4 * RATE, frame_samples=FRAME, min_pause=3200)
  assert windows[0].cut == "pause"
  assert int(3.0 * RATE) <= windows[0].end <= int(3.6 * RATE)
  assert windows[1].start >= windows[0].end and windows[1].end == 6 * RATE


# ---------------------------------------------------------------------------
# Stitching windows' records.
# ---------------------------------------------------------------------------


def _word(word: str, start, end, language: str = "en") -> dict:
  return {"word": word, "language": language, "start": start, "end": end, "confidence": 0.9}


def _record(words: list[dict], *, language="en", intent="play_music", confidence=0.8) -> dict:
  return {
    "file": "x.wav",
    "text": " ".join(w["word"] for w in words),
    "language": language,
    "language_confidence": 0.9,
    "words": words,
    "intent": intent,
    "intent_confidence": 0.7,
    "slots": [{"type": "song", "value": words[-1]["word"]}] if words else [],
    "confidence": confidence,
    "deferred": False,
    "duration_s": 4.0,
  }


def _lid(language: str, p: float) -> np.ndarray:
  n = len(langs_lib.LANGUAGE_CODES)
  probs = np.full(n, (1.0 - p) / (n - 1))
  probs[langs_lib.language_index(language)] = p
  return probs


def test_stitch_maps_times_dedups_the_overlap_and_joins_languages():
  w = longform.Window
  # Window 0: 0-4 s (hard cut); window 1: 3-7 s (pause cut); window 2: 8-9.5 s.
  windows = [w(0, 64000, "hard"), w(48000, 112000, "pause"), w(128000, 152000, "end")]
  rec0 = _record(
    [_word("one", 0.2, 1.0), _word("two", 1.0, 2.8), _word("three", 2.8, 3.4)],
    confidence=0.6,
  )
  # The overlap (3-4 s) is heard twice: "three" at 3.0 s (window time 0.0) and "four" at
  # 3.6 s. The seam is at 3.5 s: "three" stays with window 0; window 1 keeps "four" on.
  rec1 = _record(
    [
      _word("three", 0.0, 0.6),
      _word("four", 0.6, 1.5),
      _word("vier", 1.5, 2.0, "de"),
      _word("fünf", 2.0, 2.5, "de"),
    ],
    language="de",
    confidence=1.0,
  )
  rec2 = _record([_word("six", 0.1, 0.7, "de"), _word("sieben", 0.7, 1.5, "de")], language="de")
  lids = [_lid("en", 0.9), _lid("de", 0.7), _lid("de", 0.9)]
  out = longform.stitch(
    windows, [rec0, rec1, rec2], name="long.wav", duration_s=9.6, sample_rate=RATE, lid_probs=lids
  )
  words = [x["word"] for x in out["words"]]
  assert words == ["one", "two", "three", "four", "vier", "fünf", "six", "sieben"]
  assert out["text"] == " ".join(words)
  starts = [x["start"] for x in out["words"]]
  assert starts == pytest.approx([0.2, 1.0, 2.8, 3.6, 4.5, 5.0, 8.1, 8.7])
  assert out["words"][-1]["end"] == pytest.approx(9.5)
  assert [s["text"] for s in out["segments"]] == ["one two three", "four vier fünf", "six sieben"]
  assert [(s["start"], s["end"]) for s in out["segments"]] == [(0.0, 4.0), (3.0, 7.0), (8.0, 9.5)]
  assert out["language_segments"] == [
    {"language": "en", "start": 0.2, "end": 4.5, "words": 4},
    {"language": "de", "start": 4.5, "end": 9.5, "words": 4},
  ]
  # Language: the windows' probabilities weighted by their length (4, 4 and 1.5 s).
  weights = np.array([4.0, 4.0, 1.5]) / 9.5
  mean = sum(p * wt for p, wt in zip(lids, weights, strict=True))
  assert out["language"] == "de" and out["language_confidence"] == pytest.approx(mean.max())
  assert out["confidence"] == pytest.approx(float(np.dot(weights, [0.6, 1.0, 0.8])))
  assert out["speech"] is True and out["intent"] is None and out["duration_s"] == 9.6
  assert [s["intent"] for s in out["segments"]] == ["play_music"] * 3


def test_stitch_dedups_a_word_heard_either_side_of_the_seam_and_without_times():
  w = longform.Window
  windows = [w(0, 64000, "hard"), w(48000, 112000, "end")]
  # "three" starts at 3.45 s in window 0 and at 3.55 s in window 1: once.
  rec0 = _record([_word("two", 2.0, 3.45), _word("three", 3.45, 3.9)])
  rec1 = _record([_word("three", 0.55, 1.0), _word("four", 1.0, 2.0)])
  lids = [_lid("en", 0.9)] * 2
  kwargs = dict(name="x", duration_s=7.0, sample_rate=RATE, lid_probs=lids)
  out = longform.stitch(windows, [rec0, rec1], **kwargs)
  assert [x["word"] for x in out["words"]] == ["two", "three", "four"]
  # Searches without times: the longest run of words ending one window and starting the next.
  blind = [_word(x, None, None) for x in ("a", "b", "c", "d")]
  rec0 = _record(blind[:3])  # a b c
  rec1 = _record(blind[1:])  # b c d
  out = longform.stitch(windows, [rec0, rec1], **kwargs)
  assert [x["word"] for x in out["words"]] == ["a", "b", "c", "d"]
  assert all(x["start"] is None for x in out["words"])


# ---------------------------------------------------------------------------
# The voice-activity detector on espeak speech with pauses.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
  """About 60 s of the SENTENCES, three times over, with pauses of 0.5 to 1.5 s.

  Returns (wav path, waveform int16, [(start, end) sample of each sentence's sound], texts).
  """
  rng = np.random.default_rng(0)
  synthesized = {s: tts.synthesize(s, "en", VOICE, pad_ms=0) for s in SENTENCES}
  pieces, spans, texts, offset = [], [], [], 0
  for _ in range(3):
    for s in SENTENCES:
      pause = np.zeros(int(rng.integers(int(0.5 * RATE), int(1.5 * RATE))), np.float32)
      pieces += [pause, synthesized[s]]
      spans.append((offset + len(pause), offset + len(pause) + len(synthesized[s])))
      texts.append(s)
      offset += len(pause) + len(synthesized[s])
  pieces.append(np.zeros(RATE // 2, np.float32))
  wave = audio_io.to_int16(np.concatenate(pieces))
  path = tmp_path_factory.mktemp("long") / "sentences.wav"
  sf.write(path, wave, RATE, subtype="PCM_16")
  return path, wave, spans, texts


def test_vad_windows_hold_whole_sentences(spoken):
  _, wave, spans, _ = spoken
  assert 50 * RATE <= len(wave) <= 70 * RATE
  assert max(b - a for a, b in spans) <= 2.2 * RATE
  mask = vad.speech_mask(wave)
  windows = longform.plan_windows(mask, len(wave), 3 * RATE, frame_samples=FRAME)
  assert all(w.samples <= 3 * RATE for w in windows)
  assert all(w.cut != "hard" for w in windows)  # Every cut found a pause.
  for a, b in spans:
    assert _covered(windows, a, b), (a / RATE, b / RATE)
  # Each window ends in a pause: none cuts into a sentence's sound.
  for w in windows:
    assert not any(a < w.end < b or a < w.start < b for a, b in spans), w
  # Long pauses are not decoded (the sound is 46 % of the file; 67 % is decoded).
  assert sum(w.samples for w in windows) <= 0.8 * len(wave)


# ---------------------------------------------------------------------------
# Through `transcribe_files` with the tiny trained run (one 3 s bucket).
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_long_file_transcribes_in_windows_in_the_files_timeline(tiny_workdir, spoken):
  path, wave, spans, _ = spoken
  duration = len(wave) / RATE
  (rec,) = transcribe.transcribe_files(tiny_workdir, [path], method="greedy")
  assert "error" not in rec, rec
  assert rec["speech"] is True and rec["duration_s"] == pytest.approx(duration, abs=2e-3)
  segments = rec["segments"]
  assert len(segments) >= 10  # At least one window per three sentences.
  assert all(s["end"] - s["start"] <= 3.0 + 1e-9 for s in segments)
  assert all(a["end"] <= b["start"] for a, b in zip(segments, segments[1:], strict=False))
  for a, b in spans:  # Every sentence inside one segment, in the file's timeline.
    assert any(s["start"] <= a / RATE and b / RATE <= s["end"] + 1e-3 for s in segments)
  for s in segments:
    assert s["language"] in langs_lib.LANGUAGE_CODES and 0.0 <= s["confidence"] <= 1.0
  # Words, in order, each inside its own segment of the file's timeline.
  starts = [w["start"] for w in rec["words"]]
  assert starts == sorted(starts)
  for w in rec["words"]:
    assert any(s["start"] - 1e-3 <= w["start"] <= w["end"] <= s["end"] + 1e-3 for s in segments)
  assert rec["text"] == " ".join(s["text"] for s in segments if s["text"])
  assert rec["language"] in langs_lib.LANGUAGE_CODES and rec["intent"] is None


@pytest.mark.slow
def test_long_file_memory_is_bounded(tiny_workdir, spoken, tmp_path):
  """Python-side memory (numpy included) grows with the file only as far as reading it needs.

  Reading holds the float32 mono mix and the int16 result (6 bytes a sample); after it only
  the int16 waveform (2 bytes), the windows of a batch and the decoded words are held. A
  30-second and a 5-minute file are transcribed; the peak may grow by at most 7 bytes per
  extra sample: a second float copy while reading, or anything kept per window that grows
  past the read's peak, fails it (whole-file float temporaries while reading gave 8.6).
  """
  _, wave, _, _ = spoken
  short = wave[: 30 * RATE]
  long = np.tile(short, 10)
  files = {}
  for name, w in (("warm", short[: 10 * RATE]), ("short", short), ("long", long)):
    files[name] = tmp_path / f"{name}.wav"
    sf.write(files[name], w, RATE, subtype="PCM_16")
  transcribe.transcribe_files(tiny_workdir, [files["warm"]], method="greedy")  # Compiles.
  peaks, segments = {}, {}
  tracemalloc.start()
  try:
    for name in ("short", "long"):
      tracemalloc.reset_peak()
      base = tracemalloc.get_traced_memory()[0]
      (rec,) = transcribe.transcribe_files(tiny_workdir, [files[name]], method="greedy")
      peaks[name] = tracemalloc.get_traced_memory()[1] - base
      assert rec["speech"] is True, rec.get("error")
      segments[name] = len(rec["segments"])
  finally:
    tracemalloc.stop()
  assert segments["short"] >= 10 and segments["long"] >= 10 * segments["short"] - 10, segments
  extra = len(long) - len(short)
  assert peaks["long"] - peaks["short"] <= 7 * extra, peaks


# ---------------------------------------------------------------------------
# Silence and too-short input.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quiet_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("quiet")
  speech = tts.synthesize("turn on the light", "en", VOICE)
  files = {}
  files["zeros"] = d / "zeros.wav"
  sf.write(files["zeros"], np.zeros(2 * RATE, np.int16), RATE, subtype="PCM_16")
  files["anti_phase"] = d / "anti_phase.wav"  # Speech on the left, inverted on the right.
  sf.write(files["anti_phase"], np.stack([speech, -speech], 1), RATE, subtype="FLOAT")
  files["whisper"] = d / "dither.wav"  # +-1 LSB noise: -90 dBFS.
  noise = np.random.default_rng(0).integers(-1, 2, 2 * RATE).astype(np.int16)
  sf.write(files["whisper"], noise, RATE, subtype="PCM_16")
  files["10ms"] = d / "click.wav"  # 10 ms of loud speech.
  sf.write(files["10ms"], speech[RATE // 4 : RATE // 4 + 160], RATE, subtype="FLOAT")
  files["speech"] = d / "speech.wav"
  sf.write(files["speech"], speech, RATE, subtype="FLOAT")
  return {k: str(v) for k, v in files.items()}


@pytest.mark.slow
def test_silence_and_short_clips_have_no_speech(tiny_workdir, quiet_files):
  order = ["zeros", "anti_phase", "whisper", "10ms", "speech"]
  records = transcribe.transcribe_files(
    tiny_workdir, [quiet_files[k] for k in order], method="greedy"
  )
  for name, rec in zip(order[:-1], records, strict=False):
    assert rec["file"] == quiet_files[name]
    assert rec["speech"] is False and rec["text"] == "" and rec["words"] == [], rec
    assert rec["intent"] is None and rec["language"] is None and rec["confidence"] is None
  assert "silent" in records[0]["reason"] and "silent" in records[1]["reason"]
  assert "dBFS" in records[2]["reason"]
  assert "shorter than the minimum duration" in records[3]["reason"]
  assert records[3]["duration_s"] == pytest.approx(0.01)
  assert records[4]["speech"] is True and isinstance(records[4]["intent"], str)

  # By flag, no speech is an error naming the file; a lower minimum duration lets 10 ms in.
  records = transcribe.transcribe_files(
    tiny_workdir,
    [quiet_files["zeros"], quiet_files["10ms"]],
    no_speech_error=True,
    min_duration=0.0,
  )
  assert set(records[0]) == {"file", "error"} and quiet_files["zeros"] in records[0]["error"]
  assert "no speech" in records[0]["error"]
  assert records[1].get("speech") is not False or "voice-activity" in records[1]["reason"]


@pytest.mark.slow
def test_phone_and_browser_formats_transcribe_like_the_wav(tiny_workdir, tmp_path):
  """m4a and webm made with PyAV go through the same decoding as the WAV.

  The tiny run's 4-step model turns small changes of the audio into different text, so
  same-text is asserted where the samples are the same: lossless ALAC in an m4a, and a
  webm under a .wav name against the webm. AAC and Opus are decoded as speech of the same
  duration (their samples are compared with the WAV's in tests/test_audio_io.py).
  """
  import av
  from test_audio_io import write_with_pyav

  speech = audio_io.to_int16(tts.synthesize("play some music", "en", VOICE))
  files = {"wav": tmp_path / "speech.wav", "alac": tmp_path / "lossless.m4a"}
  sf.write(files["wav"], speech, RATE, subtype="PCM_16")
  with av.open(str(files["alac"]), "w", format="ipod") as container:
    stream = container.add_stream("alac", rate=RATE)
    stream.layout = "mono"
    frame = av.AudioFrame.from_ndarray(speech[None], format="s16p", layout="mono")
    frame.sample_rate = RATE
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
  files["m4a"] = tmp_path / "phone.m4a"
  write_with_pyav(files["m4a"], speech / 32768.0, "m4a")
  files["webm"] = tmp_path / "browser.webm"
  write_with_pyav(files["webm"], speech / 32768.0, "webm")
  files["webm_as_wav"] = tmp_path / "browser.wav"  # WebM content under a .wav name.
  files["webm_as_wav"].write_bytes(files["webm"].read_bytes())
  records = transcribe.transcribe_files(tiny_workdir, list(files.values()), method="greedy")
  by_kind = dict(zip(files, records, strict=True))
  for kind, rec in by_kind.items():
    assert "error" not in rec and rec["speech"] is True, (kind, rec)
    assert rec["duration_s"] == pytest.approx(len(speech) / RATE, abs=0.15), kind
  for kind, like in (("alac", "wav"), ("webm_as_wav", "webm")):
    same = {k: v for k, v in by_kind[kind].items() if k != "file"}
    assert same == {k: v for k, v in by_kind[like].items() if k != "file"}, (kind, like)


def test_speech_check_reasons():
  assert "minimum duration" in transcribe.speech_check(np.ones(100, np.int16), min_duration=0.1)[0]
  reason, mask = transcribe.speech_check(np.zeros(RATE, np.int16), min_duration=0.1)
  assert reason.startswith("silent") and mask is None
  tone = (3000 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)).astype(np.int16)
  assert "no speech" in transcribe.speech_check(tone, min_duration=0.1)[0]  # Loud, not speech.
  speech = audio_io.to_int16(tts.synthesize("call my mother", "en", VOICE))
  reason, mask = transcribe.speech_check(speech, min_duration=0.1)
  assert reason is None and mask.mean() > 0.5


def test_vad_runs_after_tensorflow_is_loaded():
  """The detector's bundled ONNX Runtime aborted the process once TensorFlow was loaded."""
  import subprocess
  import sys

  code = (
    "import numpy as np, tensorflow\n"
    "from moe_asr.data import vad\n"
    "from moe_asr.data.synth import tts\n"
    "wave = tts.synthesize('call my mother', 'en', tts.Voice('m3', rate=170, pitch=50))\n"
    "print(' '.join(f'{p:.6f}' for p in vad.speech_probabilities(wave)))\n"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  probs = np.array(proc.stdout.split(), np.float64)
  expected = vad.speech_probabilities(tts.synthesize("call my mother", "en", VOICE))
  np.testing.assert_allclose(probs, expected, atol=2e-6)
