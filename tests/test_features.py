"""Tests for on-device log-mel features, CMVN and SpecAugment."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from moe_asr.data import features

CFG = features.FeatureConfig()
SR = 16000


def _htk_mel(hz):
  # Same scale as HTK's 1127 ln(1 + f/700), written in its log10 form.
  return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def _reference_filterbank(num_bins=80, fft_size=512, low=20.0, high=7600.0):
  """Triangles linear in HTK mel, built bin by bin with np.interp."""
  edges = np.linspace(_htk_mel(low), _htk_mel(high), num_bins + 2)
  fft_mel = _htk_mel(np.arange(fft_size // 2 + 1) * SR / fft_size)
  fb = np.zeros((fft_size // 2 + 1, num_bins))
  for m in range(num_bins):
    fb[:, m] = np.interp(fft_mel, edges[m : m + 3], [0.0, 1.0, 0.0], left=0.0, right=0.0)
  return fb


def _reference_log_mel(samples_int16: np.ndarray, win=400, hop=160) -> np.ndarray:
  """Kaldi-style fbank (snip_edges, Povey window) in float64 numpy, one utterance."""
  x = samples_int16.astype(np.float64) / 32768.0
  fft_size = 512
  n = 0 if len(x) < win else 1 + (len(x) - win) // hop
  window = np.hanning(win) ** 0.85  # Povey window.
  fb = _reference_filterbank()
  out = []
  for i in range(n):
    frame = x[i * hop : i * hop + win].copy()
    frame -= frame.mean()
    frame = np.concatenate([[frame[0] * (1 - 0.97)], frame[1:] - 0.97 * frame[:-1]])
    power = np.abs(np.fft.rfft(frame * window, n=fft_size)) ** 2
    out.append(np.log(np.maximum(power @ fb, 1e-6)))
  return np.asarray(out).reshape(n, 80)


def _random_audio(rng: np.random.Generator, n: int) -> np.ndarray:
  t = np.arange(n) / SR
  x = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)
  return np.round(x * 32767).astype(np.int16)


def _batch(utterances, total=None, pad_values=None):
  total = total or max(len(u) for u in utterances)
  audio = np.zeros((len(utterances), total), np.int16)
  if pad_values is not None:
    audio[:] = pad_values
  mask = np.zeros((len(utterances), total), bool)
  for i, u in enumerate(utterances):
    audio[i, : len(u)] = u
    mask[i, : len(u)] = True
  return jnp.asarray(audio), jnp.asarray(mask)


_log_mel = jax.jit(features.log_mel, static_argnames="cfg")


def test_log_mel_matches_numpy_reference():
  rng = np.random.default_rng(0)
  utts = [_random_audio(rng, 8000), _random_audio(rng, 5321)]
  audio, mask = _batch(utts)
  feats, frame_mask = _log_mel(audio, mask, cfg=CFG)
  for i, u in enumerate(utts):
    ref = _reference_log_mel(u)
    n = ref.shape[0]
    assert int(frame_mask[i].sum()) == n
    # float32 FFT against float64: log-mel agrees to 1e-3 absolute.
    np.testing.assert_allclose(np.asarray(feats[i, :n]), ref, atol=1e-3, rtol=0)


def test_other_frame_sizes_match_reference():
  # 20 ms frames every 12.5 ms: the shift does not divide the frame length.
  cfg = features.FeatureConfig(frame_length_ms=20.0, frame_shift_ms=12.5)
  utt = _random_audio(np.random.default_rng(7), 3000)
  feats, frame_mask = _log_mel(*_batch([utt], total=3500), cfg=cfg)
  ref = _reference_log_mel(utt, win=320, hop=200)
  assert ref.shape[0] == features.num_frames(3000, cfg) == int(frame_mask.sum()) == 14
  np.testing.assert_allclose(np.asarray(feats[0, :14]), ref, atol=1e-3, rtol=0)


def test_filterbank_matches_reference():
  np.testing.assert_allclose(features.mel_filterbank(CFG), _reference_filterbank(), atol=1e-6)


def test_one_second_gives_98_frames():
  # snip_edges framing: 1 + (16000 - 400) // 160 = 98.
  assert features.num_frames(16000, CFG) == 98
  audio = jnp.zeros((2, 16000), jnp.int16)
  feats, frame_mask = _log_mel(audio, jnp.ones((2, 16000), bool), cfg=CFG)
  assert feats.shape == (2, 98, 80)
  assert feats.dtype == jnp.float32
  assert frame_mask.shape == (2, 98) and bool(frame_mask.all())


def test_num_frames_types_and_edges():
  counts = [0, 399, 400, 559, 560, 16000]
  expected = [0, 0, 1, 1, 2, 98]
  assert [features.num_frames(c, CFG) for c in counts] == expected
  np.testing.assert_array_equal(features.num_frames(np.array(counts), CFG), expected)
  got = features.num_frames(jnp.array(counts), CFG)
  assert isinstance(got, jax.Array)
  np.testing.assert_array_equal(np.asarray(got), expected)


def test_frame_mask_matches_num_frames_and_masked_frames_are_zero():
  rng = np.random.default_rng(1)
  lengths = [100, 400, 559, 560, 4000, 6400]
  audio, mask = _batch([_random_audio(rng, n) for n in lengths], total=6400)
  feats, frame_mask = _log_mel(audio, mask, cfg=CFG)
  np.testing.assert_array_equal(
    np.asarray(frame_mask.sum(-1)), features.num_frames(np.array(lengths), CFG)
  )
  # Valid frames form a prefix.
  n = features.num_frames(np.array(lengths), CFG)
  np.testing.assert_array_equal(np.asarray(frame_mask), np.arange(feats.shape[1]) < n[:, None])
  assert float(jnp.abs(jnp.where(frame_mask[..., None], 0.0, feats)).max()) == 0.0


def test_padding_does_not_change_valid_frames():
  rng = np.random.default_rng(2)
  utt = _random_audio(rng, 7000)
  n = features.num_frames(7000, CFG)
  alone, _ = _log_mel(*_batch([utt]), cfg=CFG)
  zeros, _ = _log_mel(*_batch([utt], total=12000), cfg=CFG)
  garbage = rng.integers(-32768, 32767, size=12000, dtype=np.int16)
  noisy, noisy_mask = _log_mel(*_batch([utt], total=12000, pad_values=garbage), cfg=CFG)
  np.testing.assert_allclose(np.asarray(zeros[0, :n]), np.asarray(alone[0, :n]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(noisy[0, :n]), np.asarray(alone[0, :n]), atol=1e-5)
  assert int(noisy_mask.sum()) == n
  assert float(jnp.abs(noisy[0, n:]).max()) == 0.0


def test_sine_peaks_in_the_right_mel_bin():
  t = np.arange(SR) / SR
  sine = np.round(0.5 * 32767 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.int16)
  feats, _ = _log_mel(*_batch([sine]), cfg=CFG)
  peak = np.bincount(np.asarray(feats[0]).argmax(-1))
  centres_hz = 700.0 * (
    10 ** (np.linspace(_htk_mel(20.0), _htk_mel(7600.0), 82)[1:-1] / 2595.0) - 1.0
  )
  expected = int(np.argmin(np.abs(centres_hz - 1000.0)))
  # Every frame peaks in the filter centred nearest 1 kHz (or its neighbour,
  # since 1 kHz may fall between two centres).
  assert peak.argmax() in (expected - 1, expected, expected + 1)
  assert abs(int(peak.argmax()) - expected) <= 1 and peak.max() == feats.shape[1]


def test_float_audio_matches_int16_scaled():
  rng = np.random.default_rng(3)
  utt = _random_audio(rng, 4000)
  audio, mask = _batch([utt])
  from_int, _ = _log_mel(audio, mask, cfg=CFG)
  from_float, _ = _log_mel(audio.astype(jnp.float32) / 32768.0, mask, cfg=CFG)
  np.testing.assert_allclose(np.asarray(from_int), np.asarray(from_float), atol=1e-5)


def test_jit_matches_eager():
  rng = np.random.default_rng(4)
  audio, mask = _batch([_random_audio(rng, 4800), _random_audio(rng, 3000)])
  eager, eager_mask = features.log_mel(audio, mask, CFG)
  jitted, jitted_mask = jax.jit(functools.partial(features.log_mel, cfg=CFG))(audio, mask)
  np.testing.assert_array_equal(np.asarray(eager_mask), np.asarray(jitted_mask))
  # XLA fuses and reorders float32 arithmetic under jit: agree to 1e-4 absolute
  # on log-mel values of magnitude up to ~15.
  np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), atol=1e-4, rtol=0)


def test_dither_needs_rng_and_is_deterministic():
  cfg = features.FeatureConfig(dither=1.0)
  audio, mask = _batch([_random_audio(np.random.default_rng(5), 3200)])
  with pytest.raises(ValueError, match="rng"):
    features.log_mel(audio, mask, cfg)
  a, _ = _log_mel(audio, mask, cfg=cfg, rng=jax.random.key(0))
  b, _ = _log_mel(audio, mask, cfg=cfg, rng=jax.random.key(0))
  c, _ = _log_mel(audio, mask, cfg=cfg, rng=jax.random.key(1))
  clean, _ = _log_mel(audio, mask, cfg=CFG)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(jnp.abs(a - c).max()) > 0
  # One-LSB noise hardly moves a loud signal's features.
  assert float(jnp.abs(a - clean).mean()) < 0.05


def test_config_from_config_dict():
  cfg = features.FeatureConfig.from_config(ml_collections.ConfigDict({"num_mel_bins": 40}))
  assert cfg.num_mel_bins == 40 and cfg.fft_size == 512
  assert features.FeatureConfig.from_config({"dither": 0.5}).dither == 0.5
  with pytest.raises(ValueError, match="num_mel_binz"):
    features.FeatureConfig.from_config({"num_mel_binz": 40})
  with pytest.raises(ValueError, match="fft_size"):
    features.FeatureConfig(fft_size=256)
  spec = features.SpecAugmentConfig.from_config(ml_collections.ConfigDict({"time_warp": 5}))
  assert spec.time_warp == 5 and spec.num_freq_masks == 2


def test_normalize_features_zero_mean_unit_variance_on_valid_frames():
  rng = np.random.default_rng(6)
  x = jnp.asarray(3.0 + 2.0 * rng.standard_normal((3, 50, 8)), jnp.float32)
  mask = jnp.arange(50)[None, :] < jnp.array([50, 31, 7])[:, None]
  out = features.normalize_features(x, mask)
  for i, n in enumerate([50, 31, 7]):
    valid = np.asarray(out[i, :n])
    np.testing.assert_allclose(valid.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(valid.var(0), 1.0, atol=1e-3)
    assert np.all(np.asarray(out[i, n:]) == 0.0)
  # Garbage in padded frames does not leak into the statistics.
  poisoned = jnp.where(mask[..., None], x, 1e6)
  np.testing.assert_allclose(
    np.asarray(features.normalize_features(poisoned, mask)), np.asarray(out), atol=1e-5
  )


_spec_augment = jax.jit(features.spec_augment, static_argnames="cfg")


def _ones(lengths, frames, bins=80):
  mask = jnp.arange(frames)[None, :] < jnp.asarray(lengths)[:, None]
  return jnp.where(mask[..., None], 1.0, 0.0) * jnp.ones((len(lengths), frames, bins)), mask


def test_spec_augment_masks_within_bounds():
  cfg = features.SpecAugmentConfig()
  lengths = [400, 250, 90, 17]
  x, mask = _ones(lengths, 400)
  out = np.asarray(_spec_augment(jax.random.key(0), x, mask, cfg=cfg))
  for i, n in enumerate(lengths):
    assert np.all(out[i, n:] == 0.0)
    valid = out[i, :n]
    time_masked = np.all(valid == 0.0, axis=1)
    freq_masked = np.all(valid == 0.0, axis=0)
    # Every zero comes from a whole masked frame or a whole masked bin.
    zeros = valid == 0.0
    np.testing.assert_array_equal(zeros, time_masked[:, None] | freq_masked[None, :])
    assert freq_masked.sum() <= cfg.num_freq_masks * cfg.max_freq_width
    max_width = min(cfg.max_time_width, int(cfg.max_time_width_ratio * n))
    assert time_masked.sum() <= cfg.num_time_masks * max_width


def test_spec_augment_time_masks_land_in_valid_frames():
  # One time mask of width U{0..20} per utterance with 100 valid frames out of
  # 400: the mean masked width is 10 only if masks are placed in valid frames
  # (it would be ~2.5 if starts ranged over the padding too).
  cfg = features.SpecAugmentConfig(
    num_freq_masks=0, num_time_masks=1, max_time_width_ratio=0.2, max_time_width=40
  )
  x, mask = _ones([100] * 256, 400, bins=4)
  out = np.asarray(_spec_augment(jax.random.key(1), x, mask, cfg=cfg))
  widths = np.all(out[:, :100] == 0.0, axis=2).sum(1)
  assert widths.max() <= 20
  assert 9.0 < widths.mean() < 11.0
  # Frequency masks: widths U{0..27}, mean 13.5.
  cfg = features.SpecAugmentConfig(num_freq_masks=1, num_time_masks=0)
  x, mask = _ones([50] * 256, 50)
  out = np.asarray(_spec_augment(jax.random.key(2), x, mask, cfg=cfg))
  widths = np.all(out == 0.0, axis=1).sum(1)
  assert widths.max() <= 27 and 12.0 < widths.mean() < 15.0


def test_spec_augment_is_deterministic_per_rng():
  x, mask = _ones([300, 200], 300)
  a = _spec_augment(jax.random.key(3), x, mask, cfg=features.SpecAugmentConfig())
  b = _spec_augment(jax.random.key(3), x, mask, cfg=features.SpecAugmentConfig())
  c = _spec_augment(jax.random.key(4), x, mask, cfg=features.SpecAugmentConfig())
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))
  # Examples in a batch get different masks.
  assert not np.array_equal(np.asarray(a[0, :200]), np.asarray(a[1, :200]))


def test_adaptive_time_mask_count():
  cfg = features.SpecAugmentConfig(
    num_freq_masks=0, num_time_masks=20, time_mask_multiplicity=0.04, max_time_width_ratio=0.04
  )
  # 20 frames: floor(0.8) = 0 masks; 1000 frames: up to 20 masks of <= 40 frames.
  x, mask = _ones([20] * 64 + [1000] * 64, 1000, bins=2)
  out = np.asarray(_spec_augment(jax.random.key(5), x, mask, cfg=cfg))
  masked = np.all(out == 0.0, axis=2) & np.asarray(mask)
  assert masked[:64].sum() == 0
  per_long = masked[64:].sum(1)
  assert per_long.max() <= 20 * 40 and per_long.mean() > 100


def test_time_warp_moves_frames_by_at_most_the_warp():
  cfg = features.SpecAugmentConfig(num_freq_masks=0, num_time_masks=0, time_warp=5)
  lengths = [120] * 31 + [12]
  ramp = jnp.broadcast_to(jnp.arange(150, dtype=jnp.float32)[None, :, None], (32, 150, 3))
  mask = jnp.arange(150)[None, :] < jnp.asarray(lengths)[:, None]
  x = jnp.where(mask[..., None], ramp, 0.0)
  out = np.asarray(_spec_augment(jax.random.key(6), x, mask, cfg=cfg))
  for i, n in enumerate(lengths):
    warped = out[i, :n, 0]
    # A warped ramp reads the source position of each frame.
    assert np.all(np.abs(warped - np.arange(n)) <= 5.0 + 1e-4)
    assert np.all(np.diff(warped) >= 0.0)
    assert warped[0] == 0.0 and abs(warped[-1] - (n - 1)) < 1e-4
    assert np.all(out[i, n:] == 0.0)
  assert np.abs(out[:31, :120, 0] - np.arange(120)).max() > 1.0
  # Too short to warp (needs more than 2 * 5 + 2 frames): unchanged.
  np.testing.assert_array_equal(out[31], np.asarray(x[31]))
