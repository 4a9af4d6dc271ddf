"""Tests for audio augmentation (moe_asr.data.synth.augment)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal

from moe_asr.data.synth import augment

SR = augment.SAMPLE_RATE


def _speech_like(seconds: float = 1.5, peak: float = 0.5, seed: int = 0) -> np.ndarray:
  """Harmonic bursts with syllable-rate amplitude modulation and pauses."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * SR)) / SR
  f0 = 120 + 20 * np.sin(2 * np.pi * 0.7 * t)
  phase = 2 * np.pi * np.cumsum(f0) / SR
  voiced = sum(np.sin(h * phase) / h for h in range(1, 12))
  envelope = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 2
  x = voiced * envelope + 0.01 * rng.standard_normal(t.size) * envelope
  return (peak * x / np.max(np.abs(x))).astype(np.float32)


def _psd_slope(x: np.ndarray) -> float:
  """Log-log slope of the power spectral density between 50 Hz and 4 kHz."""
  freqs, psd = scipy.signal.welch(x, fs=SR, nperseg=4096)
  band = (freqs >= 50) & (freqs <= 4000)
  return float(np.polyfit(np.log(freqs[band]), np.log(psd[band]), 1)[0])


@pytest.mark.parametrize("kind", augment.NOISE_KINDS)
def test_make_noise_unit_rms_and_deterministic(kind):
  sources = [_speech_like(seed=i) for i in range(3)]
  noise = augment.make_noise(kind, 32000, np.random.default_rng(1), babble_sources=sources)
  assert noise.dtype == np.float32 and noise.shape == (32000,)
  assert np.all(np.isfinite(noise))
  assert math.sqrt(np.mean(noise.astype(np.float64) ** 2)) == pytest.approx(1.0, abs=1e-4)
  again = augment.make_noise(kind, 32000, np.random.default_rng(1), babble_sources=sources)
  assert noise.tobytes() == again.tobytes()
  other = augment.make_noise(kind, 32000, np.random.default_rng(2), babble_sources=sources)
  assert not np.allclose(noise, other)


@pytest.mark.parametrize(("kind", "slope"), [("white", 0.0), ("pink", -1.0), ("brown", -2.0)])
def test_coloured_noise_spectral_slope(kind, slope):
  noise = augment.make_noise(kind, 10 * SR, np.random.default_rng(0))
  assert _psd_slope(noise) == pytest.approx(slope, abs=0.15)


def test_hum_is_mains_frequency():
  for seed in range(4):
    noise = augment.make_noise("hum", 4 * SR, np.random.default_rng(seed))
    freqs, psd = scipy.signal.welch(noise, fs=SR, nperseg=16000)  # 1 Hz bins.
    assert freqs[np.argmax(psd)] in (50.0, 60.0)


def test_babble_needs_sources():
  with pytest.raises(ValueError, match="babble_sources"):
    augment.make_noise("babble", 1000, np.random.default_rng(0))
  with pytest.raises(ValueError, match="babble_sources"):
    augment.make_noise("babble", 1000, np.random.default_rng(0), babble_sources=[np.zeros(50)])


def test_unknown_noise_kind():
  with pytest.raises(ValueError, match="'rain'"):
    augment.make_noise("rain", 1000, np.random.default_rng(0))


@pytest.mark.parametrize("kind", augment.NOISE_KINDS)
@pytest.mark.parametrize("target", [0.0, 5.0, 10.0, 20.0])
def test_add_noise_hits_target_snr(kind, target):
  clean = _speech_like(peak=0.2)
  sources = [_speech_like(seed=i) for i in range(1, 4)]
  # Shorter noise than audio: add_noise loops it.
  noise = augment.make_noise(kind, SR, np.random.default_rng(3), babble_sources=sources)
  noisy = augment.add_noise(clean, noise, target)
  assert noisy.dtype == np.float32 and noisy.shape == clean.shape
  assert np.all(np.isfinite(noisy)) and np.max(np.abs(noisy)) <= 1.0
  assert augment.snr_db(clean, noisy) == pytest.approx(target, abs=0.05)
  # Quiet audio is not rescaled, so the plain definition holds too.
  residual = noisy.astype(np.float64) - clean
  plain = 10 * math.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(residual**2))
  assert plain == pytest.approx(target, abs=0.05)


def test_add_noise_loud_mixture_is_peak_normalised_keeping_snr():
  clean = _speech_like(peak=0.99)
  noise = augment.make_noise("white", clean.size, np.random.default_rng(0))
  noisy = augment.add_noise(clean, noise, 0.0)
  assert np.max(np.abs(noisy)) == pytest.approx(10 ** (-1 / 20), abs=1e-4)
  assert augment.snr_db(clean, noisy) == pytest.approx(0.0, abs=0.05)


def test_add_noise_rejects_silence():
  noise = np.ones(100, np.float32)
  with pytest.raises(ValueError):
    augment.add_noise(np.zeros(100, np.float32), noise, 10.0)
  with pytest.raises(ValueError):
    augment.add_noise(_speech_like(), np.zeros(100, np.float32), 10.0)


def test_snr_db_edge_cases():
  clean = _speech_like()
  assert augment.snr_db(clean, clean) == math.inf
  assert augment.snr_db(clean, 0.5 * clean) == math.inf  # A level change is not noise.
  assert augment.snr_db(np.zeros(10), np.ones(10)) == -math.inf


@pytest.mark.parametrize("factor", [0.9, 0.95, 1.0, 1.05, 1.1])
def test_speed_perturb_length_and_pitch(factor):
  n = 16001
  t = np.arange(n) / SR
  tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
  out = augment.speed_perturb(tone, factor)
  assert out.dtype == np.float32 and np.max(np.abs(out)) <= 1.0
  # These factors are exact fractions p/q; the output has ceil(n * q / p)
  # samples, i.e. within 1 sample of n / factor.
  assert abs(len(out) - n / factor) < 1.0
  spectrum = np.abs(np.fft.rfft(out[1000:-1000] * np.hanning(len(out) - 2000)))
  freqs = np.fft.rfftfreq(len(out) - 2000, 1 / SR)
  # Resampling scales the pitch by the factor too (1 Hz tolerance).
  assert freqs[np.argmax(spectrum)] == pytest.approx(440 * factor, abs=1.0)


def test_speed_perturb_rejects_bad_factor():
  with pytest.raises(ValueError):
    augment.speed_perturb(np.zeros(10, np.float32), 0.0)


@pytest.mark.parametrize(("old_len", "new_len"), [(16000, 14545), (16000, 17778), (12345, 12345)])
def test_scale_segments_keeps_tiling(old_len, new_len):
  rng = np.random.default_rng(0)
  cuts = np.sort(rng.choice(np.arange(1, old_len), size=5, replace=False))
  bounds = np.concatenate([[0], cuts, [old_len]])
  segments = np.stack([bounds[:-1], bounds[1:], rng.integers(0, 7, size=6)], axis=1)
  scaled = augment.scale_segments(segments, old_len, new_len)
  assert scaled.dtype == np.int32 and scaled.shape == segments.shape
  assert scaled[0, 0] == 0 and scaled[-1, 1] == new_len
  np.testing.assert_array_equal(scaled[:-1, 1], scaled[1:, 0])
  np.testing.assert_array_equal(scaled[:, 2], segments[:, 2])
  # Each boundary moves to within half a sample of its exact position.
  exact = segments[:, :2] * new_len / old_len
  assert np.max(np.abs(scaled[:, :2] - exact)) <= 0.5


def test_scale_segments_with_speed_perturb_and_empty():
  audio = _speech_like()
  segments = np.array([[0, 9000, 0], [9000, len(audio), 1]], np.int32)
  fast = augment.speed_perturb(audio, 1.1)
  scaled = augment.scale_segments(segments, len(audio), len(fast))
  assert scaled[-1, 1] == len(fast) and scaled[0, 1] == scaled[1, 0]
  empty = augment.scale_segments(np.zeros((0, 3), np.int32), 100, 90)
  assert empty.shape == (0, 3) and empty.dtype == np.int32


def test_reverberate_length_peak_and_determinism():
  clean = _speech_like()
  wet = augment.reverberate(clean, np.random.default_rng(0), rt60_s=0.5)
  assert wet.dtype == np.float32 and wet.shape == clean.shape
  assert np.all(np.isfinite(wet))
  assert np.max(np.abs(wet)) == pytest.approx(np.max(np.abs(clean)), rel=1e-6)
  assert not np.allclose(wet, clean, atol=1e-3)
  again = augment.reverberate(clean, np.random.default_rng(0), rt60_s=0.5)
  assert wet.tobytes() == again.tobytes()


def _measured_rt60(response: np.ndarray) -> float:
  """RT60 from the slope of the Schroeder energy decay curve (25 dB range).

  The fit starts 30 ms in, after the direct path and early reflections.
  """
  energy = response**2
  decay_db = 10 * np.log10(np.cumsum(energy[::-1])[::-1] / energy.sum() + 1e-30)
  start = int(0.03 * SR)
  stop = start + int(np.argmax(decay_db[start:] < decay_db[start] - 25))
  slope_db_per_s = np.polyfit(np.arange(start, stop) / SR, decay_db[start:stop], 1)[0]
  return -60.0 / slope_db_per_s


@pytest.mark.parametrize("rt60", [0.2, 0.5, 0.8])
def test_reverberate_direct_path_first_and_decay_follows_rt60(rt60):
  impulse = np.zeros(2 * SR, np.float32)
  impulse[1000] = 0.5
  for seed in range(3):
    response = augment.reverberate(impulse, np.random.default_rng(seed), rt60_s=rt60)
    response = response.astype(np.float64)
    # The direct path is the loudest tap and keeps its position (no delay).
    assert int(np.argmax(np.abs(response))) == 1000
    assert np.max(np.abs(response[:1000])) < 1e-6  # FFT round-off only.
    # Measured within 5% on these seeds; 10% allows for the random tail.
    assert _measured_rt60(response[1000:]) == pytest.approx(rt60, rel=0.1)


def test_reverberate_silence_and_bad_rt60():
  assert not np.any(
    augment.reverberate(np.zeros(100, np.float32), np.random.default_rng(0), rt60_s=0.3)
  )
  with pytest.raises(ValueError):
    augment.reverberate(_speech_like(), np.random.default_rng(0), rt60_s=0.0)


def test_peak_limited_int16():
  quiet = 0.5 * np.sin(np.linspace(0, 100, 5000))
  pcm = augment.peak_limited_int16(quiet)
  assert pcm.dtype == np.int16
  assert abs(int(np.max(np.abs(pcm))) - round(0.5 * 32767)) <= 2  # Level kept.
  loud = augment.peak_limited_int16(3.0 * quiet)
  assert abs(int(np.max(np.abs(loud))) - round(32767 * 10 ** (-1 / 20))) <= 2  # -1 dBFS.
  assert augment.peak_limited_int16(np.array([1.0, -1.0])).tolist() == [32767, -32767]
  with pytest.raises(ValueError):
    augment.peak_limited_int16(np.array([0.0, np.nan]))
