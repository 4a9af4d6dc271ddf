"""Confidence scores, their calibration, and the decision to defer.

Device side (jittable, batched): `token_confidence` reads CTC frame posteriors
over each token's span, `nbest_posteriors` turns n-best scores into
posteriors. Host side (numpy, on a held-out set): `fit_temperature` scales
multi-class logits (intent, LID), `fit_binary_calibration` is Platt scaling of
a scalar confidence (utterance, word), and `coverage_curve` /
`choose_defer_threshold` pick the confidence below which an utterance is
handed to a person. `Calibration` holds the fitted values as JSON.

ECE and reliability bins live in `moe_asr.evaluation.metrics`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

# Bracket of `fit_temperature` (the answer is clipped to it).
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
# Confidences are clipped to [EPS, 1 - EPS] before the logit of Platt scaling (float32-safe).
EPS = 1e-6


# --- device ---------------------------------------------------------------------


def token_confidence(
  log_probs: jax.Array,
  mask: jax.Array,
  tokens: jax.Array,
  lengths: jax.Array,
  token_frames: jax.Array,
) -> jax.Array:
  """Per-token confidence from CTC frame posteriors.

  Token j's span is the frames [token_frames[j], token_frames[j + 1]) (the last
  token's runs to the last valid frame); its confidence is the largest
  posterior p_t(token_j) over the valid frames of that span. A span that is
  empty (non-increasing frames) is widened to its first frame.

  Args:
    log_probs: float [B, T, V] CTC log-probabilities (logits are normalised here too).
    mask: bool [B, T], True on valid frames.
    tokens: int [B, L] left-aligned token ids.
    lengths: int [B] number of valid tokens.
    token_frames: int [B, L] frame at which each token was first emitted.

  Returns:
    float32 [B, L]: the confidence of each token, 0 on padding.
  """
  log_probs = jax.nn.log_softmax(log_probs.astype(jnp.float32), axis=-1)
  num_tokens = tokens.shape[1]
  token_valid = jnp.arange(num_tokens)[None, :] < lengths[:, None]  # [B, L]
  num_frames = mask.sum(-1).astype(jnp.int32)  # [B]
  start = token_frames.astype(jnp.int32)
  next_start = jnp.pad(start[:, 1:], ((0, 0), (0, 1)))
  is_last = jnp.arange(num_tokens)[None, :] == (lengths[:, None] - 1)
  end = jnp.where(is_last, num_frames[:, None], next_start)
  end = jnp.maximum(end, start + 1)  # [B, L], exclusive
  # p_t(token_j) for every frame t and token j: [B, T, L].
  frame_lp = jnp.take_along_axis(log_probs, tokens[:, None, :].astype(jnp.int32), axis=-1)
  t = jnp.arange(log_probs.shape[1])[None, :, None]
  in_span = (t >= start[:, None, :]) & (t < end[:, None, :]) & mask[:, :, None]
  best = jnp.max(jnp.where(in_span, frame_lp, -jnp.inf), axis=1)  # [B, L]
  return jnp.where(token_valid & jnp.isfinite(best), jnp.exp(best), 0.0).astype(jnp.float32)


def nbest_posteriors(scores: jax.Array, temperature: float | jax.Array = 1.0) -> jax.Array:
  """Posterior of each hypothesis: softmax(scores / temperature) over the n axis.

  Args:
    scores: float [B, N] hypothesis scores; -inf marks an empty slot.
    temperature: > 0; larger flattens the posterior.

  Returns:
    float32 [B, N], 0 on empty slots; a row with no hypothesis is all 0.
  """
  scores = scores.astype(jnp.float32)
  valid = jnp.isfinite(scores)
  scaled = jnp.where(valid, scores / temperature, -jnp.inf)
  top = jnp.max(jnp.where(valid, scaled, -jnp.inf), axis=-1, keepdims=True)
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  weights = jnp.where(valid, jnp.exp(scaled - top), 0.0)
  total = weights.sum(-1, keepdims=True)
  return jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 0.0)


# --- host -------------------------------------------------------------------------


def word_confidence(token_conf: np.ndarray, token_word: np.ndarray) -> np.ndarray:
  """Word confidence: the minimum over the word's tokens.

  The minimum, not the mean or product: a word is wrong as soon as one of its
  pieces is, so its weakest token bounds it, and unlike the product it does
  not penalise words for being split into many pieces.

  Args:
    token_conf: float [..., L] token confidences.
    token_word: int [..., L] index of the word each token belongs to (0, 1, ... in
      order), -1 for tokens in no word (padding).

  Returns:
    float [..., W] with W = token_word.max() + 1 (0 if there is no word); nan for
    word slots a row does not have.
  """
  conf = np.asarray(token_conf, np.float64)
  word = np.asarray(token_word, np.int64)
  if conf.shape != word.shape:
    raise ValueError(f"token_conf has shape {conf.shape} but token_word has {word.shape}")
  if conf.ndim == 0:
    raise ValueError("token_conf needs a token axis")
  num_words = int(word.max()) + 1 if word.size else 0
  lead = conf.shape[:-1]
  flat_conf = conf.reshape(-1, conf.shape[-1])
  flat_word = word.reshape(flat_conf.shape)
  out = np.full((flat_conf.shape[0], num_words), np.inf)
  rows = np.broadcast_to(np.arange(flat_conf.shape[0])[:, None], flat_conf.shape)
  keep = flat_word >= 0
  np.minimum.at(out, (rows[keep], flat_word[keep]), flat_conf[keep])
  out[np.isinf(out)] = np.nan
  return out.reshape(*lead, num_words)


def _temperature_nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
  z = logits / temperature
  top = z.max(axis=-1, keepdims=True)
  lse = top[:, 0] + np.log(np.exp(z - top).sum(-1))
  return float(np.mean(lse - z[np.arange(len(labels)), labels]))


def fit_temperature(
  logits: np.ndarray, labels: np.ndarray, *, mask: np.ndarray | None = None
) -> float:
  """Temperature T minimising the NLL of softmax(logits / T) (temperature scaling).

  The NLL is convex in 1 / T, hence unimodal in log T, so a golden-section
  search over log T in [MIN_TEMPERATURE, MAX_TEMPERATURE] finds the minimum
  to 1e-6 relative precision. Rule for data that do not pin T down: the
  answer is the minimiser clipped to that bracket, so a set whose arg-max is
  always right (NLL falls all the way to T -> 0) gives MIN_TEMPERATURE, and
  a set whose rows are all uniform (NLL flat in T) gives 1.0.

  Args:
    logits: float [N, C] uncalibrated logits (or log-probabilities).
    labels: int [N] true classes.
    mask: optional bool [N]; only True rows are used.

  Returns:
    T in [MIN_TEMPERATURE, MAX_TEMPERATURE].

  Raises:
    ValueError: on empty input, mismatched shapes, labels out of range or non-finite logits.
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels, np.int64).reshape(-1)
  if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
    raise ValueError(
      f"logits must be [N, C] with N = len(labels); got {logits.shape}, {labels.shape}"
    )
  if mask is not None:
    mask = np.asarray(mask, bool).reshape(-1)
    if mask.shape != labels.shape:
      raise ValueError(f"mask has {mask.size} values but labels has {labels.size}")
    logits, labels = logits[mask], labels[mask]
  if labels.size == 0 or logits.shape[1] == 0:
    raise ValueError("fit_temperature needs at least one example and one class")
  if labels.min() < 0 or labels.max() >= logits.shape[1]:
    raise ValueError(
      f"labels must lie in [0, {logits.shape[1]}); got [{labels.min()}, {labels.max()}]"
    )
  if not np.isfinite(logits).all():
    raise ValueError("logits must be finite")
  # Constant offsets per row do not change the softmax; removing them keeps exp() in range.
  logits = logits - logits.max(axis=-1, keepdims=True)
  if not logits.any():
    return 1.0  # Every row is uniform whatever T is.
  nll = lambda u: _temperature_nll(logits, labels, math.exp(u))
  lo, hi = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
  ratio = (math.sqrt(5.0) - 1.0) / 2.0
  a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
  fa, fb = nll(a), nll(b)
  while hi - lo > 1e-6:
    if fa <= fb:
      hi, b, fb = b, a, fa
      a = hi - ratio * (hi - lo)
      fa = nll(a)
    else:
      lo, a, fa = a, b, fb
      b = lo + ratio * (hi - lo)
      fb = nll(b)
  # A minimum at a bracket end is found only to within 1e-6 of it; snap to the end then
  # (also when the NLL is flat there to float64 precision: min keeps the first of ties).
  candidates = (MIN_TEMPERATURE, MAX_TEMPERATURE, math.exp((lo + hi) / 2.0))
  best = min(candidates, key=lambda t: _temperature_nll(logits, labels, t))
  return float(min(max(best, MIN_TEMPERATURE), MAX_TEMPERATURE))


def _logit(p: np.ndarray) -> np.ndarray:
  p = np.clip(p, EPS, 1.0 - EPS)
  return np.log(p) - np.log1p(-p)


def fit_binary_calibration(confidence: np.ndarray, correct: np.ndarray) -> tuple[float, float]:
  """Platt scaling: p = sigmoid(a * logit(confidence) + b), fitted by Newton's method.

  Targets are Platt's smoothed labels ((N+ + 1) / (N+ + 2) for correct,
  1 / (N- + 2) for wrong), so separable or one-class sets still give finite
  parameters; a tiny ridge towards the identity (a = 1, b = 0) fixes the
  direction the data cannot (e.g. all confidences equal).

  Args:
    confidence: float [N] in [0, 1].
    correct: [N] booleans (or 0/1).

  Returns:
    (a, b).

  Raises:
    ValueError: on empty or mismatched input.
  """
  conf = np.asarray(confidence, np.float64).reshape(-1)
  corr = np.asarray(correct, np.float64).reshape(-1)
  if conf.shape != corr.shape:
    raise ValueError(f"confidence has {conf.size} values but correct has {corr.size}")
  if conf.size == 0:
    raise ValueError("fit_binary_calibration needs at least one example")
  if not np.isfinite(conf).all():
    raise ValueError("confidence must be finite")
  x = _logit(conf)
  num_pos = corr.sum()
  num_neg = corr.size - num_pos
  target = np.where(corr > 0.5, (num_pos + 1.0) / (num_pos + 2.0), 1.0 / (num_neg + 2.0))
  ridge = 1e-6 * conf.size
  features = np.stack([x, np.ones_like(x)], axis=-1)  # [N, 2]
  prior = np.array([1.0, 0.0])

  def loss(theta):
    z = features @ theta
    # Cross-entropy with soft targets: log(1 + e^z) - t z, stable for either sign of z.
    return float(
      np.sum(np.logaddexp(0.0, z) - target * z) + 0.5 * ridge * np.sum((theta - prior) ** 2)
    )

  theta = prior.copy()
  value = loss(theta)
  for _ in range(100):
    p = 1.0 / (1.0 + np.exp(-(features @ theta)))
    grad = features.T @ (p - target) + ridge * (theta - prior)
    hess = (features * (p * (1.0 - p))[:, None]).T @ features + ridge * np.eye(2)
    step = np.linalg.solve(hess, grad)
    scale = 1.0
    while scale > 1e-10:
      candidate = theta - scale * step
      new_value = loss(candidate)
      if new_value <= value:
        break
      scale /= 2.0
    else:
      break
    theta, improvement, value = candidate, value - new_value, new_value
    if improvement < 1e-12 * max(1.0, abs(value)) and np.abs(scale * step).max() < 1e-9:
      break
  return float(theta[0]), float(theta[1])


def apply_binary_calibration(confidence, params: tuple[float, float]):
  """sigmoid(a * logit(confidence) + b); numpy in, numpy out; jax arrays stay on device.

  Args:
    confidence: float array (any shape) in [0, 1].
    params: (a, b) from `fit_binary_calibration`.

  Returns:
    Calibrated confidence, same shape.
  """
  a, b = params
  if isinstance(confidence, jax.Array):
    c = jnp.clip(confidence.astype(jnp.float32), EPS, 1.0 - EPS)
    return jax.nn.sigmoid(a * (jnp.log(c) - jnp.log1p(-c)) + b)
  z = a * _logit(np.asarray(confidence, np.float64)) + b
  return 1.0 / (1.0 + np.exp(-z))


@dataclasses.dataclass
class Calibration:
  """Fitted calibration of a model's confidences (JSON via to_dict/from_dict, save/load)."""

  intent_temperature: float = 1.0  # Divides intent logits.
  lid_temperature: float = 1.0  # Divides utterance LID logits.
  utterance: tuple[float, float] = (1.0, 0.0)  # Platt (a, b) on utterance confidence.
  word: tuple[float, float] = (1.0, 0.0)  # Platt (a, b) on word confidence.
  defer_threshold: float = 0.0  # Defer when calibrated utterance confidence < threshold.

  def __post_init__(self):
    self.intent_temperature = float(self.intent_temperature)
    self.lid_temperature = float(self.lid_temperature)
    self.utterance = _pair(self.utterance, "utterance")
    self.word = _pair(self.word, "word")
    self.defer_threshold = float(self.defer_threshold)
    for name in ("intent_temperature", "lid_temperature"):
      value = getattr(self, name)
      if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value}")

  def calibrate_utterance(self, confidence):
    """Calibrated utterance confidence (see `apply_binary_calibration`)."""
    return apply_binary_calibration(confidence, self.utterance)

  def calibrate_word(self, confidence):
    """Calibrated word confidence (see `apply_binary_calibration`)."""
    return apply_binary_calibration(confidence, self.word)

  def defer(self, confidence):
    """True where an utterance with this raw confidence goes to a person."""
    return self.calibrate_utterance(confidence) < self.defer_threshold

  def to_dict(self) -> dict[str, Any]:
    """A JSON-safe dict (pairs as lists)."""
    out = dataclasses.asdict(self)
    out["utterance"], out["word"] = list(self.utterance), list(self.word)
    return out

  @classmethod
  def from_dict(cls, obj: dict[str, Any]) -> Calibration:
    """Inverse of `to_dict`; missing fields take their defaults.

    Raises:
      ValueError: on unknown fields.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(obj) - names)
    if unknown:
      raise ValueError(f"Unknown Calibration fields {unknown}")
    return cls(**obj)

  def save(self, path: str | epath.PathLike) -> None:
    """Writes the JSON file."""
    epath.Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

  @classmethod
  def load(cls, path: str | epath.PathLike) -> Calibration:
    """Reads a file written by `save`."""
    return cls.from_dict(json.loads(epath.Path(path).read_text()))


def _pair(value, name: str) -> tuple[float, float]:
  pair = tuple(float(v) for v in value)
  if len(pair) != 2:
    raise ValueError(f"{name} must be a pair (a, b), got {value!r}")
  return pair


# --- coverage and deferral --------------------------------------------------------------


def _check_pairs(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
  conf = np.asarray(confidence, np.float64).reshape(-1)
  corr = np.asarray(correct, np.float64).reshape(-1)
  if conf.shape != corr.shape:
    raise ValueError(f"confidence has {conf.size} values but correct has {corr.size}")
  if np.isnan(conf).any():
    raise ValueError("confidence must not be nan")
  return conf, corr


def coverage_curve(confidence, correct) -> dict[str, Any]:
  """Accuracy of the kept set as the confidence threshold falls.

  Items are sorted by confidence, highest first; keeping every item with
  confidence >= threshold gives one point per distinct confidence (tied items
  are kept or deferred together).

  Args:
    confidence: [N] scores (any scale; higher = surer).
    correct: [N] booleans (or 0/1).

  Returns:
    {"thresholds": float [P] distinct confidences, descending; "coverage": [P] fraction
    kept; "accuracy": [P] accuracy among the kept; "aurc": area under the risk-coverage
    curve, sum over points of (coverage step) * (1 - accuracy), which without ties is the
    mean over k = 1..N of the error rate of the k most confident items (nan for no data)}.
  """
  conf, corr = _check_pairs(confidence, correct)
  if conf.size == 0:
    empty = np.zeros(0)
    return {"thresholds": empty, "coverage": empty, "accuracy": empty, "aurc": math.nan}
  order = np.argsort(-conf, kind="stable")
  conf, corr = conf[order], corr[order]
  kept_correct = np.cumsum(corr)
  # The last index of each run of equal confidence closes a point.
  last = np.flatnonzero(np.append(conf[1:] != conf[:-1], True))
  kept = last + 1.0
  coverage = kept / conf.size
  accuracy = kept_correct[last] / kept
  steps = np.diff(np.concatenate([[0.0], coverage]))
  aurc = float(np.sum(steps * (1.0 - accuracy)))
  return {"thresholds": conf[last], "coverage": coverage, "accuracy": accuracy, "aurc": aurc}


def choose_defer_threshold(
  confidence,
  correct,
  *,
  target_accuracy: float | None = None,
  target_coverage: float | None = None,
) -> float:
  """Confidence threshold: keep items with confidence >= it, defer the rest.

  Give exactly one target. With `target_accuracy`, the lowest threshold (most
  coverage) whose kept set is at least that accurate; with `target_coverage`,
  the highest threshold that keeps at least that fraction. When no threshold
  meets an accuracy target (or the coverage target is 0), the answer is just
  above the largest confidence, so everything is deferred.

  Args:
    confidence: [N] scores on the scale the threshold will be applied to (e.g.
      calibrated utterance confidence).
    correct: [N] booleans (or 0/1).
    target_accuracy: in [0, 1].
    target_coverage: in [0, 1].

  Returns:
    The threshold.

  Raises:
    ValueError: on empty input, or not exactly one target in [0, 1].
  """
  if (target_accuracy is None) == (target_coverage is None):
    raise ValueError("Give exactly one of target_accuracy and target_coverage")
  target = target_accuracy if target_accuracy is not None else target_coverage
  if not 0.0 <= target <= 1.0:
    raise ValueError(f"The target must lie in [0, 1], got {target}")
  curve = coverage_curve(confidence, correct)
  if not curve["thresholds"].size:
    raise ValueError("choose_defer_threshold needs at least one example")
  defer_all = float(np.nextafter(curve["thresholds"][0], np.inf))
  if target_accuracy is not None:
    # Accuracy is compared with a little slack so a hand-computed 0.75 meets 0.75.
    ok = np.flatnonzero(curve["accuracy"] >= target_accuracy - 1e-12)
    return float(curve["thresholds"][ok[-1]]) if ok.size else defer_all
  ok = np.flatnonzero(curve["coverage"] >= target_coverage - 1e-12)
  return float(curve["thresholds"][ok[0]]) if target_coverage > 0 else defer_all
