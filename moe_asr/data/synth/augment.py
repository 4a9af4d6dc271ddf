"""Audio augmentation for the synthetic corpus: noise, reverberation, speed.

Everything is numpy/scipy and deterministic given a `np.random.Generator`.
Waveforms are float32 mono at 16 kHz in [-1, 1], except the unit-RMS noise of
`make_noise`, which is an ingredient for `add_noise` rather than audio.
"""

from __future__ import annotations

import fractions
import math
from collections.abc import Sequence

import numpy as np
import scipy.signal

from moe_asr.data import schema

NOISE_KINDS = ("white", "pink", "brown", "babble", "hum")

SAMPLE_RATE = schema.SAMPLE_RATE
_PEAK_DBFS = -1.0  # Level that peak normalisation brings loud audio down to.
_MAX_SPEED_DENOMINATOR = 100  # Keeps the polyphase filters of speed_perturb short.


def _unit_rms(x: np.ndarray) -> np.ndarray:
  rms = math.sqrt(float(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
  if rms == 0.0:
    return np.zeros_like(x)
  return x / rms


def _coloured_noise(num_samples: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
  """Gaussian noise with power spectral density proportional to 1 / f**exponent."""
  spectrum = np.fft.rfft(rng.standard_normal(num_samples))
  freqs = np.fft.rfftfreq(num_samples)
  gain = np.zeros_like(freqs)
  # No DC: a random offset is not noise, and 1/f**a diverges there.
  gain[1:] = freqs[1:] ** (-exponent / 2.0)
  return np.fft.irfft(spectrum * gain, n=num_samples)


def _babble(
  num_samples: int, rng: np.random.Generator, sources: Sequence[np.ndarray]
) -> np.ndarray:
  """3-6 talkers, each a random source started at a random offset and looped."""
  usable = [np.asarray(s, np.float64) for s in sources if np.any(s)]
  if not usable:
    raise ValueError("babble noise needs babble_sources with at least one non-silent waveform")
  mix = np.zeros(num_samples)
  for _ in range(int(rng.integers(3, 7))):
    source = usable[int(rng.integers(len(usable)))]
    start = int(rng.integers(len(source)))
    # Equal levels per talker, so no single voice stands out of the babble.
    mix += _unit_rms(np.resize(np.roll(source, -start), num_samples))
  return mix


def _hum(num_samples: int, rng: np.random.Generator) -> np.ndarray:
  """Mains hum: 50 or 60 Hz with decaying harmonics, plus a little white noise."""
  mains_hz = float(rng.choice([50.0, 60.0]))
  t = np.arange(num_samples) / SAMPLE_RATE
  hum = np.zeros(num_samples)
  for harmonic in range(1, 6):
    amplitude = rng.uniform(0.3, 1.0) / harmonic
    hum += amplitude * np.sin(2 * np.pi * mains_hz * harmonic * t + rng.uniform(0, 2 * np.pi))
  return _unit_rms(hum) + 0.05 * rng.standard_normal(num_samples)


def make_noise(
  kind: str,
  num_samples: int,
  rng: np.random.Generator,
  *,
  babble_sources: Sequence[np.ndarray] = (),
) -> np.ndarray:
  """Draws a noise waveform with unit RMS.

  Args:
    kind: one of `NOISE_KINDS`: "white", "pink" (1/f), "brown" (1/f**2),
      "babble" (3-6 overlapping talkers from `babble_sources`) or "hum" (mains
      hum at 50 or 60 Hz with harmonics and a little white noise).
    num_samples: length of the noise.
    rng: source of randomness.
    babble_sources: speech waveforms to build babble from (required for it).

  Returns:
    float32 [num_samples] with root-mean-square 1 (peaks exceed 1).

  Raises:
    ValueError: for an unknown kind, or babble without usable sources.
  """
  if kind not in NOISE_KINDS:
    raise ValueError(f"Unknown noise kind {kind!r}; known kinds: {', '.join(NOISE_KINDS)}")
  if num_samples < 0:
    raise ValueError(f"num_samples must be >= 0, got {num_samples}")
  if kind == "babble":
    noise = _babble(num_samples, rng, babble_sources)
  elif num_samples == 0:
    noise = np.zeros(0)
  elif kind == "white":
    noise = rng.standard_normal(num_samples)
  elif kind == "pink":
    noise = _coloured_noise(num_samples, rng, exponent=1.0)
  elif kind == "brown":
    noise = _coloured_noise(num_samples, rng, exponent=2.0)
  else:
    noise = _hum(num_samples, rng)
  return _unit_rms(noise).astype(np.float32)


def _peak_normalise(x: np.ndarray) -> np.ndarray:
  """Scales `x` down to a -1 dBFS peak if it exceeds full scale; else returns it."""
  peak = float(np.max(np.abs(x))) if x.size else 0.0
  if peak <= 1.0:
    return x
  return x * (10.0 ** (_PEAK_DBFS / 20.0) / peak)


def add_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
  """Mixes `noise` into `audio` at a signal-to-noise ratio of exactly `snr_db`.

  The noise is looped or cropped to the length of `audio`, and the tiny part of
  it that correlates with `audio` is projected out, so the powers of speech and
  noise add up and `snr_db` below measures exactly the requested ratio
  (10 * log10(P_signal / P_noise) over the whole waveform). When the mixture
  would exceed full scale it is scaled down as a whole to a -1 dBFS peak, which
  keeps the ratio.

  Args:
    audio: float32 [samples] clean waveform.
    noise: noise waveform of any length (e.g. from `make_noise`).
    snr_db: target SNR in dB.

  Returns:
    float32 [samples] noisy waveform in [-1, 1].

  Raises:
    ValueError: for silent audio or noise, or a non-finite `snr_db`.
  """
  if not math.isfinite(snr_db):
    raise ValueError(f"snr_db must be finite, got {snr_db}")
  clean = np.asarray(audio, np.float64)
  signal_power = float(np.mean(np.square(clean))) if clean.size else 0.0
  if signal_power == 0.0:
    raise ValueError("add_noise needs non-silent audio to set an SNR against")
  noise = np.resize(np.asarray(noise, np.float64), clean.shape)
  noise = noise - (np.dot(noise, clean) / np.dot(clean, clean)) * clean
  noise_power = float(np.mean(np.square(noise)))
  if noise_power == 0.0:
    raise ValueError("add_noise needs noise that is not silent (or a copy of the audio)")
  gain = math.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
  return _peak_normalise(clean + gain * noise).astype(np.float32)


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
  """Measured SNR of `noisy` against its clean source, in dB.

  The level of the mixture does not count as noise: the clean signal is first
  fitted to `noisy` with the least-squares gain, and the residual is the noise.
  For mixtures from `add_noise` this is exactly the requested SNR.

  Args:
    clean: float [samples] clean waveform.
    noisy: float [samples] the same waveform with noise added (any gain).

  Returns:
    SNR in dB; +inf when `noisy` is a scaled copy of `clean`, -inf when the
    clean signal is silent or absent from `noisy`.
  """
  clean = np.asarray(clean, np.float64)
  noisy = np.asarray(noisy, np.float64)
  if clean.shape != noisy.shape:
    raise ValueError(f"clean and noisy shapes differ: {clean.shape} vs {noisy.shape}")
  clean_energy = float(np.dot(clean, clean))
  if clean_energy == 0.0:
    return -math.inf
  gain = float(np.dot(noisy, clean)) / clean_energy
  signal_energy = gain * gain * clean_energy
  noise_energy = float(np.sum(np.square(noisy - gain * clean)))
  if signal_energy == 0.0:
    return -math.inf
  if noise_energy == 0.0:
    return math.inf
  return 10.0 * math.log10(signal_energy / noise_energy)


def reverberate(
  audio: np.ndarray, rng: np.random.Generator, *, rt60_s: float, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
  """Convolves `audio` with a synthetic room impulse response.

  The response has a direct path, 3-6 early reflections within the first
  30 ms, and a late tail of Gaussian noise whose envelope decays by 60 dB in
  `rt60_s`; the energy ratio of direct path to tail is drawn between 0 and
  10 dB.
  The direct path comes first, so speech is not delayed and sample positions
  (and segments) stay valid.

  Args:
    audio: float32 [samples] waveform.
    rng: source of randomness for the room.
    rt60_s: reverberation time in seconds (> 0), e.g. 0.2 (small room) to 1.0 (hall).
    sample_rate: sample rate of `audio`.

  Returns:
    float32 [samples]: the reverberant waveform, same length as `audio`, with
    the same peak level as `audio`.
  """
  if not rt60_s > 0:
    raise ValueError(f"rt60_s must be > 0, got {rt60_s}")
  clean = np.asarray(audio, np.float64)
  peak_in = float(np.max(np.abs(clean))) if clean.size else 0.0
  if peak_in == 0.0:
    return np.zeros(clean.shape, np.float32)

  length = max(2, int(round(rt60_s * sample_rate)))
  t = np.arange(length) / sample_rate
  tail = rng.standard_normal(length) * np.exp(-math.log(1000.0) * t / rt60_s)
  tail[: int(0.002 * sample_rate)] = 0.0  # The tail builds up after the direct sound.
  drr_db = rng.uniform(0.0, 10.0)
  rir = tail * math.sqrt(10.0 ** (-drr_db / 10.0) / float(np.sum(np.square(tail))))
  rir[0] = 1.0
  for _ in range(int(rng.integers(3, 7))):
    delay = int(rng.integers(int(0.002 * sample_rate), int(0.03 * sample_rate)))
    if delay < length:
      rir[delay] += rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.6)

  wet = scipy.signal.fftconvolve(clean, rir)[: clean.size]
  peak_out = float(np.max(np.abs(wet)))
  return (wet * (peak_in / peak_out)).astype(np.float32)


def _speed_fraction(factor: float) -> fractions.Fraction:
  if not factor > 0:
    raise ValueError(f"speed factor must be > 0, got {factor}")
  return fractions.Fraction(factor).limit_denominator(_MAX_SPEED_DENOMINATOR)


def speed_perturb(audio: np.ndarray, factor: float) -> np.ndarray:
  """Kaldi-style speed perturbation: plays `audio` `factor` times faster.

  The waveform is resampled, so tempo and pitch change together and the
  duration is divided by `factor`. The factor is approximated by a fraction
  p/q with q <= 100 (exact for factors like 0.9, 1.1, 0.95), and the output
  has ceil(len(audio) * q / p) samples.

  Args:
    audio: float32 [samples] waveform.
    factor: speed factor (> 0); 1.1 makes speech 10% faster and shorter.

  Returns:
    float32 waveform in [-1, 1].
  """
  ratio = _speed_fraction(factor)
  clean = np.asarray(audio, np.float32)
  if ratio == 1:
    return clean.copy()
  out = scipy.signal.resample_poly(clean.astype(np.float64), ratio.denominator, ratio.numerator)
  # The anti-aliasing filter can overshoot full scale by a hair.
  return np.clip(out, -1.0, 1.0).astype(np.float32)


def scale_segments(segments: np.ndarray, old_len: int, new_len: int) -> np.ndarray:
  """Maps (start, end, language) sample segments onto a resampled waveform.

  Every boundary is mapped by the same rounding of `position * new_len /
  old_len`, so segments that tiled [0, old_len] still tile [0, new_len].

  Args:
    segments: int [n, 3] rows of (start_sample, end_sample, language index).
    old_len: length of the waveform the segments refer to (> 0).
    new_len: length of the resampled waveform.

  Returns:
    int32 [n, 3] with rescaled positions and unchanged language indices.
  """
  if old_len <= 0:
    raise ValueError(f"old_len must be > 0, got {old_len}")
  segments = np.asarray(segments, np.int64).reshape(-1, 3)
  positions = segments[:, :2]
  # Integer round-half-up: exact for long waveforms, unlike float products.
  scaled = (positions * new_len * 2 + old_len) // (2 * old_len)
  return np.concatenate([scaled, segments[:, 2:]], axis=1).astype(np.int32)


def peak_limited_int16(audio: np.ndarray) -> np.ndarray:
  """Converts a float waveform to int16 PCM without clipping (synthesised audio).

  Audio that would clip is first scaled down to a -1 dBFS peak; anything else
  keeps its level. (`audio_io.to_int16` converts recorded audio: it clips.)

  Args:
    audio: float [samples] waveform, nominally in [-1, 1].

  Returns:
    int16 [samples].

  Raises:
    ValueError: if `audio` contains NaN or infinity.
  """
  x = np.asarray(audio, np.float64)
  if not np.all(np.isfinite(x)):
    raise ValueError("peak_limited_int16 got non-finite samples")
  x = np.clip(_peak_normalise(x), -1.0, 1.0)
  return np.round(x * 32767.0).astype(np.int16)
