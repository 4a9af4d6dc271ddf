"""Confidence: token spans, n-best posteriors, temperature and Platt fits, coverage, defer."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_asr.decoding import confidence
from moe_asr.evaluation import metrics


def _log(p):
  return np.log(np.asarray(p, np.float32))


def test_token_confidence_hand_case():
  # Vocabulary of 4 (0 = blank); 6 frames, row 0 has 5 valid, row 1 has 4.
  p = np.full((2, 6, 4), 0.25, np.float32)
  p[0, 0] = [0.1, 0.8, 0.05, 0.05]  # p(1) high before token 0's span: ignored.
  p[0, 1] = [0.5, 0.3, 0.1, 0.1]
  p[0, 2] = [0.3, 0.6, 0.05, 0.05]  # Token 0 (id 1) spans frames 1-2: max 0.6.
  p[0, 3] = [0.7, 0.1, 0.1, 0.1]
  p[0, 4] = [0.4, 0.1, 0.1, 0.4]  # Token 1 (id 3) spans frames 3-4: max 0.4.
  p[0, 5] = [0.0, 0.0, 0.0, 1.0]  # Padded frame: ignored.
  p[1, 2] = [0.1, 0.2, 0.6, 0.1]  # Row 1: one token (id 2) from frame 2 to frame 3.
  p[1, 3] = [0.2, 0.2, 0.5, 0.1]
  p[1, 4] = [0.0, 0.0, 1.0, 0.0]  # Padded frame.
  mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]], bool)
  tokens = np.array([[1, 3, 0], [2, 0, 0]], np.int32)
  lengths = np.array([2, 1], np.int32)
  token_frames = np.array([[1, 3, 0], [2, 0, 0]], np.int32)
  fn = jax.jit(confidence.token_confidence)
  conf = np.asarray(fn(_log(np.maximum(p, 1e-30)), mask, tokens, lengths, token_frames))
  np.testing.assert_allclose(conf, [[0.6, 0.4, 0.0], [0.6, 0.0, 0.0]], atol=1e-6)


def test_nbest_posteriors_hand_values():
  scores = jnp.array([[math.log(3.0), 0.0, -jnp.inf], [-jnp.inf, -jnp.inf, -jnp.inf]])
  post = np.asarray(jax.jit(confidence.nbest_posteriors)(scores))
  np.testing.assert_allclose(post, [[0.75, 0.25, 0.0], [0.0, 0.0, 0.0]], atol=1e-6)
  warm = np.asarray(confidence.nbest_posteriors(scores, temperature=2.0))
  s3 = math.sqrt(3.0)
  np.testing.assert_allclose(warm[0], [s3 / (s3 + 1), 1 / (s3 + 1), 0.0], atol=1e-6)


def test_word_confidence_is_min_over_tokens():
  conf = np.array([[0.9, 0.5, 0.8, 0.7], [0.6, 0.4, 0.0, 0.0]])
  word = np.array([[0, 0, 1, 2], [0, 0, -1, -1]])
  out = confidence.word_confidence(conf, word)
  np.testing.assert_allclose(out, [[0.5, 0.8, 0.7], [0.4, np.nan, np.nan]])
  np.testing.assert_allclose(confidence.word_confidence(conf[0], word[0]), [0.5, 0.8, 0.7])


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _nll(logits, labels):
  return float(-np.log(_softmax(logits)[np.arange(len(labels)), labels]).mean())


def _ece(logits, labels):
  probs = _softmax(logits)
  return metrics.expected_calibration_error(probs.max(-1), probs.argmax(-1) == labels)


def test_fit_temperature_recovers_the_scale():
  rng = np.random.default_rng(0)
  true_logits = rng.normal(0.0, 1.5, (4000, 5))
  labels = np.array([rng.choice(5, p=p) for p in _softmax(true_logits)])
  logits = 3.0 * true_logits  # Over-confident by a factor 3.
  t = confidence.fit_temperature(logits, labels)
  # 4000 samples: the estimate's spread is about 0.06 (seeds 0-9 give 2.90-3.07).
  assert abs(t - 3.0) < 0.3, t
  assert _nll(logits / t, labels) < _nll(logits, labels) - 0.1
  assert _ece(logits / t, labels) < 0.03 < _ece(logits, labels)
  # The mask selects rows: masking out half the data fits the other half.
  mask = np.arange(4000) % 2 == 0
  assert confidence.fit_temperature(logits, labels, mask=mask) == pytest.approx(
    confidence.fit_temperature(logits[mask], labels[mask]), rel=1e-6
  )


def test_fit_temperature_edge_cases():
  logits = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0]])
  # Always right: NLL keeps falling as T -> 0, so the lower bound.
  assert confidence.fit_temperature(logits, [0, 1]) == confidence.MIN_TEMPERATURE
  # Uniform rows: T does not matter, 1.0.
  assert confidence.fit_temperature(np.ones((3, 4)), [0, 1, 2]) == 1.0
  # One wrong example: finite, inside the bracket.
  t = confidence.fit_temperature(logits[:1], [2])
  assert confidence.MIN_TEMPERATURE <= t <= confidence.MAX_TEMPERATURE
  # Hand case: two classes, logits (0, 1), label 1 then label 0 once each out of 4 rows
  # with the same logits: p(1) = 3/4 is optimal, so 1/T = log 3.
  same = np.tile([[0.0, 1.0]], (4, 1))
  assert confidence.fit_temperature(same, [1, 1, 1, 0]) == pytest.approx(1 / math.log(3), 1e-4)
  with pytest.raises(ValueError):
    confidence.fit_temperature(np.zeros((0, 3)), [])
  with pytest.raises(ValueError):
    confidence.fit_temperature(logits, [0, 1], mask=[False, False])
  with pytest.raises(ValueError):
    confidence.fit_temperature(logits, [0, 3])


def _overconfident(n, seed):
  rng = np.random.default_rng(seed)
  p_true = rng.uniform(0.3, 0.99, n)
  correct = rng.random(n) < p_true
  logit = np.log(p_true) - np.log1p(-p_true)
  return 1 / (1 + np.exp(-(3.0 * logit + 1.0))), correct


def test_platt_fit_improves_ece():
  conf, correct = _overconfident(5000, 0)
  a, b = confidence.fit_binary_calibration(conf, correct)
  # The generating map is inverted by a = 1/3, b = -1/3 (tolerance: sampling noise of 5000).
  assert a == pytest.approx(1 / 3, abs=0.05) and b == pytest.approx(-1 / 3, abs=0.1)
  test_conf, test_correct = _overconfident(5000, 1)
  calibrated = confidence.apply_binary_calibration(test_conf, (a, b))
  before = metrics.expected_calibration_error(test_conf, test_correct)
  after = metrics.expected_calibration_error(calibrated, test_correct)
  assert after < 0.03 < 0.1 < before
  # Device (float32) and host (float64) paths agree on the same float32 inputs, away from 1
  # where float32 cannot resolve 1 - c (its spacing there is 6e-8).
  conf32 = test_conf.astype(np.float32)
  conf32 = conf32[conf32 < 0.999]
  on_device = jax.jit(lambda c: confidence.apply_binary_calibration(c, (a, b)))(jnp.asarray(conf32))
  host = confidence.apply_binary_calibration(conf32, (a, b))
  np.testing.assert_allclose(np.asarray(on_device), host, atol=1e-5)


def test_platt_fit_on_one_class_is_finite():
  # Four correct items of equal confidence: Platt's smoothed target is (4 + 1) / (4 + 2).
  a, b = confidence.fit_binary_calibration([0.7] * 4, [True] * 4)
  assert math.isfinite(a) and math.isfinite(b)
  out = confidence.apply_binary_calibration(np.array([0.7]), (a, b))
  np.testing.assert_allclose(out, [5 / 6], atol=1e-4)
  with pytest.raises(ValueError):
    confidence.fit_binary_calibration([], [])


def test_coverage_curve_hand_case():
  curve = confidence.coverage_curve([0.7, 0.9, 0.6, 0.8], [0, 1, 1, 1])
  np.testing.assert_allclose(curve["thresholds"], [0.9, 0.8, 0.7, 0.6])
  np.testing.assert_allclose(curve["coverage"], [0.25, 0.5, 0.75, 1.0])
  np.testing.assert_allclose(curve["accuracy"], [1.0, 1.0, 2 / 3, 0.75])
  # Risks 0, 0, 1/3, 1/4 at coverages 1/4 ... 1.
  assert curve["aurc"] == pytest.approx(7 / 48)
  # Tied confidences are kept or deferred together.
  tied = confidence.coverage_curve([0.9, 0.5, 0.9], [1, 1, 0])
  np.testing.assert_allclose(tied["thresholds"], [0.9, 0.5])
  np.testing.assert_allclose(tied["coverage"], [2 / 3, 1.0])
  np.testing.assert_allclose(tied["accuracy"], [0.5, 2 / 3])
  assert tied["aurc"] == pytest.approx(2 / 3 * 0.5 + 1 / 3 * 1 / 3)
  assert math.isnan(confidence.coverage_curve([], [])["aurc"])


def test_choose_defer_threshold_hand_case():
  conf, correct = [0.7, 0.9, 0.6, 0.8], [0, 1, 1, 1]
  choose = lambda **kw: confidence.choose_defer_threshold(conf, correct, **kw)
  assert choose(target_accuracy=1.0) == 0.8
  assert choose(target_accuracy=0.75) == 0.6
  assert choose(target_accuracy=0.9) == 0.8
  assert choose(target_coverage=0.5) == 0.8
  assert choose(target_coverage=0.6) == 0.7
  assert choose(target_coverage=1.0) == 0.6
  nothing = choose(target_coverage=0.0)
  assert nothing > 0.9 and not (np.asarray(conf) >= nothing).any()
  never = confidence.choose_defer_threshold([0.9, 0.2], [0, 0], target_accuracy=0.5)
  assert never > 0.9
  with pytest.raises(ValueError):
    choose(target_accuracy=0.9, target_coverage=0.5)
  with pytest.raises(ValueError):
    choose()
  with pytest.raises(ValueError):
    confidence.choose_defer_threshold([], [], target_coverage=0.5)


def test_calibration_round_trip(tmp_path):
  cal = confidence.Calibration(
    intent_temperature=2.5,
    lid_temperature=0.8,
    utterance=(0.5, -0.25),
    word=(1.5, 0.125),
    defer_threshold=0.6,
  )
  assert confidence.Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal
  path = tmp_path / "calibration.json"
  cal.save(path)
  assert confidence.Calibration.load(path) == cal
  assert confidence.Calibration.from_dict({}) == confidence.Calibration()
  with pytest.raises(ValueError):
    confidence.Calibration.from_dict({"temperature": 1.0})
  with pytest.raises(ValueError):
    confidence.Calibration(intent_temperature=0.0)
  # sigmoid(0.5 * logit(c) - 0.25) < 0.6 exactly when logit(c) < 2 * (logit(0.6) + 0.25).
  limit = 1 / (1 + math.exp(-2 * (math.log(1.5) + 0.25)))
  np.testing.assert_array_equal(cal.defer(np.array([limit - 1e-3, limit + 1e-3])), [True, False])
  # The default never defers.
  assert not confidence.Calibration().defer(np.array([0.0, 1e-9])).any()
