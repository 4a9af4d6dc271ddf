"""Reading phone and browser recordings (m4a, webm, mp3) through PyAV, by content not name."""

from __future__ import annotations

import io
import shutil

import av
import numpy as np
import pytest
import soundfile as sf

from moe_asr.data import audio_io
from moe_asr.data.synth import tts

RATE = 16000
VOICE = tts.Voice("f2", rate=170, pitch=50)
# (container format, codec, suffix, codec sample rate, bit rate)
FORMATS = {
  "m4a": ("mp4", "aac", "m4a", 16000, 96000),
  "webm": ("webm", "libopus", "webm", 48000, 64000),
  "mp3": ("mp3", "libmp3lame", "mp3", 16000, 64000),
}


def write_with_pyav(path, wave: np.ndarray, kind: str, *, channels: int = 1) -> None:
  """Encodes float mono [-1, 1] audio at 16 kHz into `path` as `kind` (a FORMATS key)."""
  fmt, codec, _, rate, bit_rate = FORMATS[kind]
  layout = "mono" if channels == 1 else "stereo"
  with av.open(str(path), "w", format=fmt) as container:
    stream = container.add_stream(codec, rate=rate)
    stream.layout = layout
    stream.bit_rate = bit_rate
    planes = np.repeat(np.asarray(wave, np.float32)[None], channels, axis=0)
    frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=layout)
    frame.sample_rate = RATE
    resampler = av.AudioResampler(format=stream.codec_context.format.name, layout=layout, rate=rate)
    for chunk in resampler.resample(frame) + resampler.resample(None):
      container.mux(stream.encode(chunk))
    container.mux(stream.encode(None))


def aligned_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 4000) -> float:
  """Highest normalised correlation of `a` and `b` over lags up to `max_lag` samples."""
  a = a.astype(np.float64)
  b = b.astype(np.float64)
  best = 0.0
  for lag in range(0, max_lag + 1, 1):
    for x, y in ((a[lag:], b), (a, b[lag:])):
      n = min(len(x), len(y)) - 1000
      c = np.dot(x[:n], y[:n]) / (np.linalg.norm(x[:n]) * np.linalg.norm(y[:n]) + 1e-9)
      best = max(best, c)
  return best


@pytest.fixture(scope="module")
def speech():
  return tts.synthesize("set an alarm for seven in the morning", "en", VOICE)


@pytest.mark.parametrize("kind", ["m4a", "webm"])  # libsndfile reads mp3 itself.
def test_compressed_recordings_read_like_the_wav(speech, kind, tmp_path):
  path = tmp_path / f"speech.{FORMATS[kind][2]}"
  write_with_pyav(path, speech, kind)
  wave = audio_io.load_audio(path)
  reference = audio_io.to_int16(speech)
  assert wave.dtype == np.int16
  # Codec delay and padding add at most 0.15 s (AAC priming, Opus pre-skip, MP3 frames).
  assert 0 <= len(wave) - len(reference) <= 0.15 * RATE, (len(wave), len(reference))
  assert aligned_correlation(wave, reference, max_lag=3000) > 0.9


def test_container_read_by_content_not_name(speech, tmp_path):
  m4a = tmp_path / "phone.m4a"
  write_with_pyav(m4a, speech, "m4a")
  wav_named = tmp_path / "phone.wav"  # An MP4 named .wav, as some apps save them.
  shutil.copy(m4a, wav_named)
  assert audio_io.container_format(wav_named) == "MP4/M4A"
  np.testing.assert_array_equal(audio_io.load_audio(wav_named), audio_io.load_audio(m4a))
  webm = tmp_path / "browser.webm"
  write_with_pyav(webm, speech, "webm", channels=2)
  named = tmp_path / "browser.wav"
  shutil.copy(webm, named)
  data = io.BytesIO(named.read_bytes())  # File objects are read by content too.
  assert audio_io.container_format(data) == "WebM/Matroska" and data.tell() == 0
  np.testing.assert_array_equal(audio_io.load_audio(data), audio_io.load_audio(webm))
  # A real WAV stays with libsndfile.
  wav = tmp_path / "real.wav"
  sf.write(wav, speech, RATE, subtype="PCM_16")
  assert audio_io.container_format(wav) is None


def test_pyav_errors_name_the_file_and_limits_apply(speech, tmp_path):
  m4a = tmp_path / "long.m4a"
  write_with_pyav(m4a, speech, "m4a")
  seconds = len(speech) / RATE
  with pytest.raises(audio_io.AudioError, match="longer than max_seconds"):
    audio_io.load_audio(m4a, max_seconds=seconds / 2)
  truncated = tmp_path / "truncated.wav"  # An MP4 header and nothing after it.
  truncated.write_bytes(m4a.read_bytes()[:40])
  with pytest.raises(audio_io.AudioError, match="truncated.wav"):
    audio_io.load_audio(truncated)


def test_anti_phase_stereo_and_low_level_audio_are_silent(speech, tmp_path):
  anti = tmp_path / "anti.wav"
  sf.write(anti, np.stack([speech, -speech], 1), RATE, subtype="PCM_16")
  assert audio_io.silence_reason(audio_io.load_audio(anti)) is not None
  with pytest.raises(audio_io.AudioError, match="anti.wav: the audio is silent"):
    audio_io.load_audio(anti, reject_silent=True)
  # -90 dBFS of noise is silent; quiet speech at -40 dBFS peak is not.
  noise = np.random.default_rng(0).normal(0, 10 ** (-90 / 20), RATE)
  assert "dBFS" in audio_io.silence_reason(noise)
  quiet = speech / np.abs(speech).max() * 10 ** (-40 / 20)
  assert audio_io.silence_reason(quiet) is None
  assert audio_io.silence_reason(audio_io.to_int16(quiet)) is None
  assert audio_io.silence_reason(np.zeros(10, np.int16)) == "all samples are zero"
