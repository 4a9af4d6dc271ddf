"""Log-mel features and SpecAugment, computed on device in JAX.

Audio arrives at the accelerator as padded int16 waveforms with a sample mask,
so feature extraction runs inside the jitted step instead of on the input
hosts, and shapes stay static (the number of frames depends only on the padded
length).

Conventions (Kaldi `compute-fbank-feats` with `snip_edges=true`, HTK mel):
- Frames of `frame_length_ms` every `frame_shift_ms`; only frames that lie
  entirely inside the signal exist, so `num_frames(n) = 1 + (n - win) // hop`
  (0 when `n < win`). One second of 16 kHz audio with 25/10 ms gives 98 frames.
- Per frame: optional dither, DC removal, pre-emphasis (the first sample is
  scaled by `1 - preemphasis`, as in Kaldi), Povey window
  (`hann(N - 1 denominator) ** 0.85`), zero-pad to `fft_size`, power spectrum,
  triangular filters that are linear on the HTK mel scale
  `1127 ln(1 + f / 700)` between `lower_edge_hz` and `upper_edge_hz`, natural
  log with a floor.
- int16 audio is scaled by 1/32768, so features differ from Kaldi's (which
  uses raw int16 values) by a constant `2 * ln(32768)` per bin before
  normalisation.
- Frames that reach past an utterance's valid length are masked out and set to
  0, and each frame only reads its own samples, so valid frames do not depend
  on the padding.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_INT16_SCALE = 1.0 / 32768.0


def _from_mapping(cls, cfg: Any):
  """Builds the dataclass `cls` from a ConfigDict or dict holding a subset of its fields."""
  if cfg is None:
    return cls()
  if hasattr(cfg, "to_dict"):
    cfg = cfg.to_dict()
  if not isinstance(cfg, Mapping):
    raise TypeError(f"Expected a ConfigDict or a mapping, got {type(cfg).__name__}.")
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(cfg) - names)
  if unknown:
    raise ValueError(
      f"Unknown {cls.__name__} keys: {', '.join(unknown)}; known keys: {', '.join(sorted(names))}"
    )
  return cls(**dict(cfg))


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
  """Log-mel settings; hashable, so it can be a static argument of `jax.jit`."""

  sample_rate: int = 16000  # Hz.
  num_mel_bins: int = 80
  frame_length_ms: float = 25.0
  frame_shift_ms: float = 10.0
  fft_size: int = 512  # Must be at least the frame length in samples.
  preemphasis: float = 0.97  # 0 disables pre-emphasis.
  # Standard deviation of Gaussian noise added to each frame, in int16 units
  # (Kaldi's convention: 1.0 is one least significant bit). 0 disables dither.
  dither: float = 0.0
  log_floor: float = 1e-6  # Mel energies are clipped to this before the log.
  lower_edge_hz: float = 20.0  # Lower edge of the first mel filter.
  upper_edge_hz: float = 7600.0  # Upper edge of the last mel filter (<= Nyquist).

  def __post_init__(self):
    if self.window_length <= 0 or self.hop_length <= 0:
      raise ValueError(
        f"Frame length and shift must be positive, got {self.window_length} and "
        f"{self.hop_length} samples."
      )
    if self.fft_size < self.window_length:
      raise ValueError(
        f"fft_size={self.fft_size} is smaller than the frame length ({self.window_length} samples)."
      )
    if not 0 <= self.lower_edge_hz < self.upper_edge_hz <= self.sample_rate / 2:
      raise ValueError(
        f"Need 0 <= lower_edge_hz < upper_edge_hz <= {self.sample_rate / 2}, got "
        f"{self.lower_edge_hz} and {self.upper_edge_hz}."
      )
    if self.num_mel_bins <= 0:
      raise ValueError(f"num_mel_bins must be positive, got {self.num_mel_bins}.")

  @property
  def window_length(self) -> int:
    """Frame length in samples."""
    return int(round(self.sample_rate * self.frame_length_ms / 1000.0))

  @property
  def hop_length(self) -> int:
    """Frame shift in samples."""
    return int(round(self.sample_rate * self.frame_shift_ms / 1000.0))

  @classmethod
  def from_config(cls, cfg: Any) -> FeatureConfig:
    """Builds a FeatureConfig from a ConfigDict or dict with a subset of the fields.

    Args:
      cfg: `ml_collections.ConfigDict`, dict or None (all defaults).

    Returns:
      The config; unknown keys raise ValueError so that typos are not ignored.
    """
    return _from_mapping(cls, cfg)


def num_frames(num_samples, cfg: FeatureConfig = FeatureConfig()):
  """Number of frames `log_mel` produces for the given sample counts.

  Args:
    num_samples: a Python int, or an integer numpy / JAX array of sample counts.
    cfg: feature settings.

  Returns:
    An int for an int input, otherwise an array (numpy for numpy input, JAX
    for JAX input) of the same shape.
  """
  win, hop = cfg.window_length, cfg.hop_length
  if isinstance(num_samples, int | np.integer):
    return 0 if num_samples < win else 1 + (int(num_samples) - win) // hop
  xp = jnp if isinstance(num_samples, jax.Array) else np
  n = xp.asarray(num_samples)
  return xp.where(n >= win, 1 + (n - win) // hop, 0)


def _hz_to_mel(hz):
  return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


@functools.lru_cache(maxsize=16)
def mel_filterbank(cfg: FeatureConfig) -> np.ndarray:
  """HTK-scale triangular mel filters, float32 [fft_size // 2 + 1, num_mel_bins].

  Filters are triangles that are linear in mel (as in HTK and Kaldi), with
  `num_mel_bins + 2` edges equally spaced on the mel scale.
  """
  edges = np.linspace(
    _hz_to_mel(cfg.lower_edge_hz), _hz_to_mel(cfg.upper_edge_hz), cfg.num_mel_bins + 2
  )
  left, center, right = edges[:-2], edges[1:-1], edges[2:]  # [num_mel_bins]
  bin_hz = np.arange(cfg.fft_size // 2 + 1) * cfg.sample_rate / cfg.fft_size
  bin_mel = _hz_to_mel(bin_hz)[:, None]  # [fft_bins, 1]
  rising = (bin_mel - left) / (center - left)
  falling = (right - bin_mel) / (right - center)
  return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _povey_window(length: int) -> np.ndarray:
  n = np.arange(length)
  return ((0.5 - 0.5 * np.cos(2 * np.pi * n / (length - 1))) ** 0.85).astype(np.float32)


def log_mel(
  audio: jax.Array,
  audio_mask: jax.Array,
  cfg: FeatureConfig = FeatureConfig(),
  *,
  rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Log-mel filterbank features of a padded batch (conventions in the module docstring).

  Args:
    audio: int16 or float [batch, samples]; int16 is scaled by 1/32768.
    audio_mask: bool [batch, samples], True on valid samples. Valid samples
      must form a prefix (right padding); only their count is used.
    cfg: feature settings (static under `jax.jit`).
    rng: PRNG key, required when `cfg.dither > 0`.

  Returns:
    features: float32 [batch, frames, num_mel_bins], 0 on masked frames.
    frame_mask: bool [batch, frames], True where the frame lies entirely
      within the valid samples; `frame_mask.sum(-1) == num_frames(lengths)`.
  """
  if audio.ndim != 2 or audio_mask.shape != audio.shape:
    raise ValueError(
      f"Expected audio and audio_mask of shape [batch, samples], got {audio.shape} and "
      f"{audio_mask.shape}."
    )
  batch, total = audio.shape
  win, hop = cfg.window_length, cfg.hop_length
  frames_out = num_frames(total, cfg)
  if frames_out == 0:
    return (
      jnp.zeros((batch, 0, cfg.num_mel_bins), jnp.float32),
      jnp.zeros((batch, 0), bool),
    )
  if jnp.issubdtype(audio.dtype, jnp.integer):
    signal = audio.astype(jnp.float32) * _INT16_SCALE
  else:
    signal = audio.astype(jnp.float32)

  # Overlapping frames from hop-sized blocks with static slices (no gather,
  # which is slow on TPU). Each frame reads only its own samples, which is
  # what makes valid frames independent of the padding.
  blocks_per_frame = -(-win // hop)
  num_blocks = frames_out + blocks_per_frame - 1
  signal = jnp.pad(signal, ((0, 0), (0, max(0, num_blocks * hop - total))))
  blocks = signal[:, : num_blocks * hop].reshape(batch, num_blocks, hop)
  frames = jnp.concatenate(
    [blocks[:, k : k + frames_out] for k in range(blocks_per_frame)], axis=-1
  )[..., :win]  # [batch, frames, win]
  if cfg.dither > 0:
    if rng is None:
      raise ValueError("log_mel needs an rng when cfg.dither > 0.")
    frames = frames + cfg.dither * _INT16_SCALE * jax.random.normal(rng, frames.shape)
  frames = frames - jnp.mean(frames, axis=-1, keepdims=True)
  if cfg.preemphasis:
    frames = jnp.concatenate(
      [
        frames[..., :1] * (1.0 - cfg.preemphasis),
        frames[..., 1:] - cfg.preemphasis * frames[..., :-1],
      ],
      axis=-1,
    )
  frames = frames * jnp.asarray(_povey_window(win))
  spectrum = jnp.fft.rfft(frames, n=cfg.fft_size, axis=-1)  # [batch, frames, fft_bins]
  power = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
  # Full float32 precision: the default TPU matmul precision would round the
  # power spectrum to bfloat16.
  mel = jnp.matmul(power, jnp.asarray(mel_filterbank(cfg)), precision=jax.lax.Precision.HIGHEST)
  features = jnp.log(jnp.maximum(mel, cfg.log_floor))  # [batch, frames, num_mel_bins]

  lengths = jnp.sum(audio_mask, axis=-1, dtype=jnp.int32)
  frame_mask = jnp.arange(frames_out)[None, :] < num_frames(lengths, cfg)[:, None]
  features = jnp.where(frame_mask[..., None], features, 0.0)
  return features, frame_mask


def normalize_features(features: jax.Array, frame_mask: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Per-utterance mean and variance normalisation (CMVN) over valid frames.

  Args:
    features: float [batch, frames, bins].
    frame_mask: bool [batch, frames], True on valid frames.
    eps: added to the variance, so that constant bins stay finite.

  Returns:
    float32 [batch, frames, bins] with zero mean and unit variance per bin
    over each utterance's valid frames, and 0 on masked frames.
  """
  features = features.astype(jnp.float32)
  weights = frame_mask[..., None].astype(jnp.float32)  # [batch, frames, 1]
  count = jnp.maximum(jnp.sum(weights, axis=1, keepdims=True), 1.0)
  mean = jnp.sum(features * weights, axis=1, keepdims=True) / count
  centered = (features - mean) * weights
  var = jnp.sum(centered**2, axis=1, keepdims=True) / count
  return centered * jax.lax.rsqrt(var + eps)


@dataclasses.dataclass(frozen=True)
class SpecAugmentConfig:
  """SpecAugment settings (Park et al. 2019; adaptive time masks from Park et al. 2020)."""

  num_freq_masks: int = 2
  max_freq_width: int = 27  # Width of each frequency mask is uniform in [0, this].
  # Number of time masks; with `time_mask_multiplicity > 0` it caps the
  # adaptive count instead.
  num_time_masks: int = 5
  # Adaptive count: min(num_time_masks, floor(multiplicity * valid_frames))
  # masks per utterance (0.04 in Park et al. 2020); 0 uses num_time_masks.
  time_mask_multiplicity: float = 0.0
  # Width of each time mask is uniform in
  # [0, min(max_time_width, floor(max_time_width_ratio * valid_frames))].
  max_time_width_ratio: float = 0.05
  max_time_width: int = 40
  # Time warp: the utterance is stretched piecewise linearly so that a frame
  # at a random centre moves by up to this many frames (0 disables).
  time_warp: int = 0

  @classmethod
  def from_config(cls, cfg: Any) -> SpecAugmentConfig:
    """Builds a SpecAugmentConfig from a ConfigDict or dict with a subset of the fields."""
    return _from_mapping(cls, cfg)


def _randint(rng: jax.Array, shape: tuple[int, ...], maxval: jax.Array) -> jax.Array:
  """Integers uniform in [0, maxval) with a traced (per-example) `maxval` >= 1."""
  maxval = jnp.maximum(maxval, 1)
  draw = jnp.floor(jax.random.uniform(rng, shape) * maxval).astype(jnp.int32)
  return jnp.clip(draw, 0, maxval - 1)


def _time_warp(rng: jax.Array, x: jax.Array, length: jax.Array, max_warp: int) -> jax.Array:
  """Piecewise-linear time warp of the first `length` frames of x [frames, bins]."""
  frames = x.shape[0]
  center_key, shift_key = jax.random.split(rng)
  # The centre c is in [W + 1, L - W - 2], so both warped segments keep at
  # least one frame; shorter utterances are left unwarped.
  can_warp = length > 2 * max_warp + 2
  center = max_warp + 1 + _randint(center_key, (), length - 2 * max_warp - 2)
  new_center = center + _randint(shift_key, (), 2 * max_warp + 1) - max_warp
  last = (length - 1).astype(jnp.float32)
  pos = jnp.arange(frames, dtype=jnp.float32)
  c, nc = center.astype(jnp.float32), new_center.astype(jnp.float32)
  left = pos * c / jnp.maximum(nc, 1.0)
  right = c + (pos - nc) * (last - c) / jnp.maximum(last - nc, 1.0)
  src = jnp.clip(jnp.where(pos < nc, left, right), 0.0, jnp.maximum(last, 0.0))
  lo = jnp.floor(src).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, jnp.maximum(length - 1, 0))
  frac = (src - lo)[:, None]
  warped = x[lo] * (1.0 - frac) + x[hi] * frac
  apply = can_warp & (jnp.arange(frames) < length)
  return jnp.where(apply[:, None], warped, x)


def _augment_one(rng: jax.Array, x: jax.Array, length: jax.Array, cfg: SpecAugmentConfig):
  """SpecAugment for one utterance x [frames, bins] with `length` valid frames."""
  frames, bins = x.shape
  warp_key, fw_key, fs_key, tw_key, ts_key = jax.random.split(rng, 5)
  if cfg.time_warp > 0:
    x = _time_warp(warp_key, x, length, cfg.time_warp)

  freq_width = _randint(fw_key, (cfg.num_freq_masks,), min(cfg.max_freq_width, bins) + 1)
  freq_start = _randint(fs_key, (cfg.num_freq_masks,), bins - freq_width + 1)
  bin_ids = jnp.arange(bins)[None, :]
  freq_masked = jnp.any(
    (bin_ids >= freq_start[:, None]) & (bin_ids < (freq_start + freq_width)[:, None]), axis=0
  )  # [bins]

  length_f = length.astype(jnp.float32)
  max_width = jnp.minimum(
    cfg.max_time_width, jnp.floor(cfg.max_time_width_ratio * length_f).astype(jnp.int32)
  )
  if cfg.time_mask_multiplicity > 0:
    count = jnp.minimum(
      cfg.num_time_masks, jnp.floor(cfg.time_mask_multiplicity * length_f).astype(jnp.int32)
    )
  else:
    count = cfg.num_time_masks
  time_width = _randint(tw_key, (cfg.num_time_masks,), max_width + 1)
  # Starts keep every mask inside the valid frames.
  time_start = _randint(ts_key, (cfg.num_time_masks,), length - time_width + 1)
  active = jnp.arange(cfg.num_time_masks) < count
  frame_ids = jnp.arange(frames)[None, :]
  time_masked = jnp.any(
    active[:, None]
    & (frame_ids >= time_start[:, None])
    & (frame_ids < (time_start + time_width)[:, None]),
    axis=0,
  )  # [frames]

  keep = ~freq_masked[None, :] & ~time_masked[:, None] & (jnp.arange(frames) < length)[:, None]
  return jnp.where(keep, x, 0.0)


def spec_augment(
  rng: jax.Array,
  features: jax.Array,
  frame_mask: jax.Array,
  cfg: SpecAugmentConfig = SpecAugmentConfig(),
) -> jax.Array:
  """Frequency masks, time masks and optional time warp, drawn per utterance.

  Masked values are set to 0, the mean of normalised features. Time masks and
  the warp stay within each utterance's valid frames; padded frames stay 0.

  Args:
    rng: PRNG key; the same key gives the same masks.
    features: float [batch, frames, bins], normally after `normalize_features`.
    frame_mask: bool [batch, frames], True on valid frames (a prefix).
    cfg: augmentation settings (static under `jax.jit`).

  Returns:
    Augmented features, same shape and dtype as `features`.
  """
  lengths = jnp.sum(frame_mask, axis=-1, dtype=jnp.int32)  # [batch]
  keys = jax.random.split(rng, features.shape[0])
  augment = jax.vmap(functools.partial(_augment_one, cfg=cfg))
  return augment(keys, features, lengths).astype(features.dtype)
