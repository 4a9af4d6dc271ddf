"""Reading, resampling and validating audio files for the common schema.

Every real-audio source (local manifests, catalog sets, `moe-asr transcribe`)
goes through `load_audio`, so that a file is decoded, mixed to mono, resampled
and checked the same way everywhere: int16 mono at 16 kHz, or an `AudioError`
that names the file and says what is wrong with it.
"""

from __future__ import annotations

import math
import os
from typing import BinaryIO

import numpy as np
import scipy.signal
import soundfile as sf

from moe_asr.data import schema

# Full scale of int16 PCM; soundfile maps integer PCM to [-1, 1) with this
# factor, so 16-bit files round-trip exactly through `to_int16`.
_INT16_SCALE = 32768.0


class AudioError(ValueError):
  """An audio file that cannot be used; names the offending file and the reason."""

  def __init__(self, path: str | os.PathLike | None, reason: str):
    self.path = "<in-memory audio>" if path is None else os.fspath(path)
    self.reason = reason
    super().__init__(f"{self.path}: {reason}")


def to_int16(x: np.ndarray) -> np.ndarray:
  """Converts a waveform to int16 PCM.

  Floating-point input is taken to be on the [-1, 1] scale (soundfile's and
  TFDS's float convention) and is scaled by 32768, rounded and clipped.
  Integer input is taken to already be on the 16-bit PCM scale (TFDS decodes
  16-bit files into int64 without rescaling) and is only clipped.

  Args:
    x: waveform of any shape, float or integer.

  Returns:
    int16 array of the same shape.
  """
  x = np.asarray(x)
  if x.dtype == np.int16:
    return x
  if np.issubdtype(x.dtype, np.integer):
    return np.clip(x, -32768, 32767).astype(np.int16)
  if not np.issubdtype(x.dtype, np.floating):
    raise TypeError(f"Audio must be an integer or float array, got dtype {x.dtype}.")
  return np.clip(np.rint(x * _INT16_SCALE), -32768, 32767).astype(np.int16)


def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
  """Resamples a waveform with a polyphase filter (`scipy.signal.resample_poly`).

  The output has `ceil(len(x) * target_sr / orig_sr)` samples along the last
  axis and the same amplitude scale as the input (integer input is not
  rescaled to [-1, 1]).

  Args:
    x: waveform [..., samples].
    orig_sr: sample rate of `x` in Hz.
    target_sr: wanted sample rate in Hz.

  Returns:
    float32 waveform [..., new_samples].
  """
  if orig_sr <= 0 or target_sr <= 0:
    raise ValueError(f"Sample rates must be positive, got {orig_sr} -> {target_sr}.")
  x = np.asarray(x, np.float32)
  if orig_sr == target_sr or x.shape[-1] == 0:
    return x
  g = math.gcd(int(orig_sr), int(target_sr))
  up, down = int(target_sr) // g, int(orig_sr) // g
  return scipy.signal.resample_poly(x, up, down, axis=-1).astype(np.float32)


def load_audio(
  path: str | os.PathLike | BinaryIO,
  *,
  target_sr: int = schema.SAMPLE_RATE,
  max_seconds: float | None = None,
  reject_silent: bool = False,
) -> np.ndarray:
  """Reads an audio file as int16 mono at `target_sr`.

  Reads anything libsndfile reads (wav, flac, ogg, mp3 with libsndfile >= 1.1,
  ...), at any sample rate and channel count: channels are averaged to mono,
  the rate is converted with `resample`.

  Args:
    path: file path, or a binary file-like object (e.g. encoded bytes in a
      `BytesIO`).
    target_sr: output sample rate in Hz.
    max_seconds: if given, files longer than this are rejected (checked from
      the header, before decoding).
    reject_silent: if True, audio whose samples are all zero is rejected.

  Returns:
    int16 waveform [samples].

  Raises:
    AudioError: naming `path`, for a file that cannot be read or decoded, has
      no samples, holds NaN or infinite samples, is longer than
      `max_seconds`, or (with `reject_silent`) is all zeros.
  """
  name = path if isinstance(path, (str, os.PathLike)) else getattr(path, "name", None)
  try:
    info = sf.info(path)
    if not isinstance(path, (str, os.PathLike)):
      path.seek(0)
    if info.frames == 0:
      raise AudioError(name, "the file has zero samples")
    if max_seconds is not None and info.frames > max_seconds * info.samplerate:
      raise AudioError(
        name,
        f"{info.frames / info.samplerate:.2f} s is longer than max_seconds={max_seconds}",
      )
    data, sr = sf.read(path, dtype="float64", always_2d=True)  # [samples, channels]
  except AudioError:
    raise
  except (sf.LibsndfileError, RuntimeError, OSError, TypeError, EOFError) as e:
    raise AudioError(name, f"cannot be read as audio ({e})") from e
  if data.shape[0] == 0:
    raise AudioError(name, "the file has zero samples")
  if not np.all(np.isfinite(data)):
    raise AudioError(name, "the audio holds NaN or infinite samples")
  mono = data.mean(axis=1)
  if reject_silent and not np.any(mono):
    raise AudioError(name, "the audio is silent (all samples are zero)")
  return to_int16(resample(mono, sr, target_sr))
