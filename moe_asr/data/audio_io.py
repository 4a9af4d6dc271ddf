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


# Files libsndfile cannot open but FFmpeg (through PyAV) can: recognised by their first
# bytes, whatever the name says.
_CONTAINER_MAGIC = (
  (4, b"ftyp", "MP4/M4A"),  # ISO base media (mp4, m4a, 3gp, mov).
  (0, b"\x1a\x45\xdf\xa3", "WebM/Matroska"),  # EBML header.
  (0, b"#!AMR", "AMR"),
)
# Quieter than this (RMS of the mono mix, dB relative to full scale) is silence: about 1.5
# int16 steps, below any microphone's noise floor, so only digital silence, a mix that
# cancels, or dither-level noise falls under it.
SILENCE_DBFS = -80.0
_BLOCK = 1 << 18  # Frames read per block (the file is mixed to mono as it is read).


def silence_reason(wave: np.ndarray, level_dbfs: float = SILENCE_DBFS) -> str | None:
  """Why a mono waveform is silent, or None if it is not.

  Args:
    wave: mono waveform, int16 PCM scale or float on the [-1, 1] scale.
    level_dbfs: an RMS below this is silence.

  Returns:
    "all samples are zero", "RMS ... dBFS, below ...", or None.
  """
  wave = np.asarray(wave)
  if not np.any(wave):
    return "all samples are zero"
  scale = _INT16_SCALE if np.issubdtype(wave.dtype, np.integer) else 1.0
  flat = wave.reshape(-1)
  energy = 0.0
  for i in range(0, flat.size, _BLOCK):  # In blocks: no full-length float64 temporary.
    block = flat[i : i + _BLOCK].astype(np.float64)
    energy += float(np.dot(block, block))
  rms = math.sqrt(energy / flat.size) / scale
  db = 20.0 * math.log10(max(rms, 1e-12))
  if db < level_dbfs:
    return f"RMS {db:.1f} dBFS, below {level_dbfs:.0f} dBFS"
  return None


def container_format(path: str | os.PathLike | BinaryIO) -> str | None:
  """The container of a file that needs FFmpeg, from its first bytes; None otherwise."""
  if isinstance(path, (str, os.PathLike)):
    try:
      with open(path, "rb") as f:
        head = f.read(16)
    except OSError:
      return None
  else:
    position = path.tell()
    head = path.read(16)
    path.seek(position)
  for offset, magic, name in _CONTAINER_MAGIC:
    if head[offset : offset + len(magic)] == magic:
      return name
  return None


def _read_soundfile(path, name, max_seconds: float | None) -> tuple[np.ndarray, int]:
  """float32 mono [samples] and the rate, read by libsndfile block by block."""
  with sf.SoundFile(path) as f:
    if f.frames == 0:
      raise AudioError(name, "the file has zero samples")
    if max_seconds is not None and f.frames > max_seconds * f.samplerate:
      raise AudioError(
        name, f"{f.frames / f.samplerate:.2f} s is longer than max_seconds={max_seconds}"
      )
    mono = np.empty(f.frames, np.float32)
    done = 0
    while done < f.frames:
      block = f.read(min(_BLOCK, f.frames - done), dtype="float64", always_2d=True)
      if not len(block):
        break
      if not np.all(np.isfinite(block)):
        raise AudioError(name, "the audio holds NaN or infinite samples")
      mono[done : done + len(block)] = block.mean(axis=1)
      done += len(block)
    rest = f.read(dtype="float64", always_2d=True)  # Beyond a header's frame count.
    if len(rest):
      if not np.all(np.isfinite(rest)):
        raise AudioError(name, "the audio holds NaN or infinite samples")
      return np.concatenate([mono[:done], rest.mean(axis=1).astype(np.float32)]), f.samplerate
    return mono[:done], f.samplerate


def _read_av(path, name, max_seconds: float | None) -> tuple[np.ndarray, int]:
  """float32 mono [samples] and the rate of the first audio stream, decoded by FFmpeg."""
  import av

  with av.open(path if isinstance(path, (str, os.PathLike)) else path, "r") as container:
    if not container.streams.audio:
      raise AudioError(name, "the file has no audio stream")
    stream = container.streams.audio[0]
    sr = int(stream.codec_context.sample_rate or stream.rate or 0)
    if sr <= 0:
      raise AudioError(name, "the audio stream has no sample rate")
    if max_seconds is not None and stream.duration is not None and stream.time_base:
      seconds = float(stream.duration * stream.time_base)
      if seconds > max_seconds + 0.1:
        raise AudioError(name, f"{seconds:.2f} s is longer than max_seconds={max_seconds}")
    # Planar float at the stream's own rate and layout; the channels are averaged here like
    # libsndfile's, and the rate is converted by `resample` like every other file's.
    converter = av.AudioResampler(format="fltp")
    blocks, total = [], 0
    for frame in container.decode(stream):
      for out in converter.resample(frame):
        block = out.to_ndarray().astype(np.float64)  # [channels, samples]
        if not np.all(np.isfinite(block)):
          raise AudioError(name, "the audio holds NaN or infinite samples")
        blocks.append(block.mean(axis=0).astype(np.float32))
        total += block.shape[1]
        if max_seconds is not None and total > max_seconds * sr:
          raise AudioError(name, f"longer than max_seconds={max_seconds}")
    return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), sr


def load_audio(
  path: str | os.PathLike | BinaryIO,
  *,
  target_sr: int = schema.SAMPLE_RATE,
  max_seconds: float | None = None,
  reject_silent: bool = False,
) -> np.ndarray:
  """Reads an audio file as int16 mono at `target_sr`.

  Reads anything libsndfile reads (wav, flac, ogg/opus, mp3 with libsndfile >= 1.1, ...)
  and, through PyAV's FFmpeg, what it cannot: phone and browser recordings (m4a/mp4 with
  AAC, webm with Opus, amr, ...). The container is recognised by the file's first bytes,
  so an MP4 named `.wav` is read as MP4. Any sample rate and channel count: channels are
  averaged to mono, the rate is converted with `resample`. The file is mixed to mono as it
  is read, so a long multichannel file never sits in memory at full width.

  Args:
    path: file path, or a binary file-like object (e.g. encoded bytes in a
      `BytesIO`).
    target_sr: output sample rate in Hz.
    max_seconds: if given, files longer than this are rejected (checked from
      the header, before decoding).
    reject_silent: if True, silent audio (`silence_reason`: all samples zero, e.g. a
      stereo file whose channels cancel, or an RMS below `SILENCE_DBFS`) is rejected.

  Returns:
    int16 waveform [samples].

  Raises:
    AudioError: naming `path`, for a file that cannot be read or decoded, has
      no samples, holds NaN or infinite samples, is longer than
      `max_seconds`, or (with `reject_silent`) is silent.
  """
  import av

  name = path if isinstance(path, (str, os.PathLike)) else getattr(path, "name", None)
  container = container_format(path)
  try:
    if container is None:
      try:
        mono, sr = _read_soundfile(path, name, max_seconds)
      except sf.LibsndfileError as e:
        # Not a libsndfile format (an AAC .aac stream, ...): FFmpeg may know it.
        if not isinstance(path, (str, os.PathLike)):
          path.seek(0)
        try:
          mono, sr = _read_av(path, name, max_seconds)
        except (av.FFmpegError, ValueError, OSError, EOFError):
          raise AudioError(name, f"cannot be read as audio ({e})") from e
    else:
      mono, sr = _read_av(path, name, max_seconds)
  except AudioError:
    raise
  except (sf.LibsndfileError, av.FFmpegError, RuntimeError, OSError, TypeError, EOFError) as e:
    raise AudioError(name, f"cannot be read as audio ({e})") from e
  if mono.shape[0] == 0:
    raise AudioError(name, "the file has zero samples")
  if reject_silent and (reason := silence_reason(mono)) is not None:
    raise AudioError(name, f"the audio is silent ({reason})")
  mono = resample(mono, sr, target_sr)
  out = np.empty(mono.shape, np.int16)
  for i in range(0, len(mono), _BLOCK):  # In blocks: no full-length float temporaries.
    out[i : i + _BLOCK] = to_int16(mono[i : i + _BLOCK])
  return out
