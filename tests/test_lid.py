"""Tests for the LID heads, conditioning and losses.

Losses are compared with hand / brute-force computations in float64 numpy at
atol 1e-5 (float32 round-off); structural identities are exact.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_asr.models import lid

D, L = 8, 3


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _random(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# --- heads --------------------------------------------------------------------


def test_frame_head_ctc_logits_put_blank_first():
  head = lid.FrameLidHead(D, L, rngs=nnx.Rngs(0))
  logits, ctc = head(_random((2, 5, D), 0))
  assert logits.shape == (2, 5, L) and ctc.shape == (2, 5, L + 1)
  assert logits.dtype == jnp.float32 and ctc.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(ctc[..., 1:]), np.asarray(logits))


def test_utterance_lid_pools_only_valid_frames():
  utt = lid.UtteranceLid(D, L, rngs=nnx.Rngs(0))
  x = _random((2, 6, D), 1)
  mask = jnp.arange(6)[None, :] < jnp.array([6, 3])[:, None]
  out = utt(x, mask)
  garbage = 1e3 * _random((2, 6, D), 2)
  out2 = utt(jnp.where(mask[..., None], x, garbage), mask)
  np.testing.assert_allclose(np.asarray(out2), np.asarray(out), atol=1e-5)
  # Valid frames matter.
  out3 = utt(x.at[1, 2].add(_random((D,), 3)), mask)  # Not a constant: LayerNorm removes those.
  assert float(jnp.abs(out3[1] - out[1]).max()) > 1e-5
  # Reference: softmax over valid frames of <LayerNorm(x_t), q> / sqrt(d), pooled, projected.
  h = np.asarray(utt.norm(x), np.float64)[1, :3]
  scores = h @ np.asarray(utt.query[...], np.float64) / np.sqrt(D)
  w = np.exp(scores - scores.max())
  pooled = (w / w.sum()) @ h
  ref = pooled @ np.asarray(utt.out.kernel[...]) + np.asarray(utt.out.bias[...])
  np.testing.assert_allclose(np.asarray(out[1]), ref, atol=1e-5)


def test_film_conditioner_is_identity_at_init_and_masks_padding():
  cond = lid.LanguageConditioner("film", D, L, rngs=nnx.Rngs(0))
  x = _random((2, 4, D), 0)
  probs = jax.nn.softmax(_random((2, 4, L), 1))
  mask = jnp.array([[True, True, True, False], [True, False, False, False]])
  np.testing.assert_array_equal(np.asarray(cond(x, probs, mask)), np.asarray(x))
  gamma, beta = _random((L, D), 2), _random((L, D), 3)
  cond.gamma.value, cond.beta.value = gamma, beta
  y = np.asarray(cond(x, probs, mask))
  p = np.asarray(probs, np.float64)
  expected = np.asarray(x) * (1 + p @ np.asarray(gamma)) + p @ np.asarray(beta)
  expected = np.where(np.asarray(mask)[..., None], expected, np.asarray(x))
  np.testing.assert_allclose(y, expected, atol=1e-5)


def test_add_conditioner_acts_only_through_embedding():
  cond = lid.LanguageConditioner("add", D, L, rngs=nnx.Rngs(0))
  x = _random((2, 4, D), 0)
  probs = jax.nn.softmax(_random((2, 4, L), 1))
  mask = jnp.array([[True, True, True, False], [True, False, False, False]])
  emb = np.asarray(cond.embedding[...])
  assert np.abs(emb).max() > 0
  expected = np.asarray(x) + np.asarray(probs) @ emb
  expected = np.where(np.asarray(mask)[..., None], expected, np.asarray(x))
  np.testing.assert_allclose(np.asarray(cond(x, probs, mask)), expected, atol=1e-6)
  cond.embedding.value = jnp.zeros_like(cond.embedding.value)
  np.testing.assert_array_equal(np.asarray(cond(x, probs, mask)), np.asarray(x))
  with pytest.raises(ValueError, match="conditioning mode"):
    lid.LanguageConditioner("concat", D, L, rngs=nnx.Rngs(0))


def test_oracle_lang_probs():
  targets = jnp.array([[0, 2, -1, 1], [1, -1, -1, 0]])
  mask = jnp.array([[True, True, True, False], [True, True, True, True]])
  probs = np.asarray(lid.oracle_lang_probs(targets, mask, L))
  u = np.full(L, 1 / L)
  np.testing.assert_allclose(probs[0], [[1, 0, 0], [0, 0, 1], u, u], atol=0)
  np.testing.assert_allclose(probs[1], [[0, 1, 0], u, u, [1, 0, 0]], atol=0)
  with_utt = np.asarray(lid.oracle_lang_probs(targets, mask, L, utt_labels=jnp.array([2, -1])))
  np.testing.assert_allclose(with_utt[0], [[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]], atol=0)
  np.testing.assert_allclose(with_utt[1], probs[1], atol=0)


# --- losses -----------------------------------------------------------------


def test_frame_lid_loss_matches_hand_computation():
  logits = _random((2, 4, L), 0)
  targets = jnp.array([[0, 2, -1, 1], [1, 1, 0, 2]])
  mask = jnp.array([[True, True, True, True], [True, True, False, False]])
  loss, count = lid.frame_lid_loss(logits, targets, mask)
  lp = _log_softmax(logits)
  terms = [-lp[0, 0, 0], -lp[0, 1, 2], -lp[0, 3, 1], -lp[1, 0, 1], -lp[1, 1, 1]]
  assert float(count) == 5
  np.testing.assert_allclose(float(loss), np.mean(terms), atol=1e-5)
  # Nothing labelled: zero loss, zero count, no NaN.
  loss, count = lid.frame_lid_loss(logits, jnp.full((2, 4), -1), mask)
  assert float(loss) == 0.0 and float(count) == 0.0


def test_utterance_lid_loss_matches_hand_computation():
  logits = _random((3, L), 0)
  labels = jnp.array([2, -1, 0])
  loss, count = lid.utterance_lid_loss(logits, labels)
  lp = _log_softmax(logits)
  assert float(count) == 2
  np.testing.assert_allclose(float(loss), -(lp[0, 2] + lp[2, 0]) / 2, atol=1e-5)


def _brute_force_ctc_nll(log_probs, runs):
  """-log sum over all frame paths that collapse (merge repeats, drop blank 0) to runs + 1."""
  t, k = log_probs.shape
  target = [r + 1 for r in runs]
  total = 0.0
  for path in itertools.product(range(k), repeat=t):
    collapsed = [s for i, s in enumerate(path) if s != 0 and (i == 0 or s != path[i - 1])]
    if collapsed == target:
      total += np.exp(sum(log_probs[i, s] for i, s in enumerate(path)))
  return -np.log(total)


def test_lid_ctc_loss_matches_brute_force_sum_over_alignments():
  ctc_logits = _random((4, 5, L + 1), 0)
  mask = jnp.array(
    [[True] * 4 + [False], [True] * 5, [True] * 5, [True] + [False] * 4],
  )
  lang_runs = jnp.array([[1, 0, -1], [2, -1, -1], [-1, -1, -1], [0, 1, 2]])
  loss, count = lid.lid_ctc_loss(ctc_logits, mask, lang_runs)
  lp = _log_softmax(ctc_logits)
  # Example 2 has no runs, example 3 has 1 valid frame for 3 runs: both skipped.
  expected = [_brute_force_ctc_nll(lp[0, :4], [1, 0]) / 4, _brute_force_ctc_nll(lp[1], [2]) / 5]
  assert float(count) == 2
  np.testing.assert_allclose(float(loss), np.mean(expected), atol=1e-5)
  # Repeated languages need a blank between them: [0, 0] fits 3 frames, not 2.
  runs = jnp.array([[0, 0, -1]])
  for frames, usable in ((3, 1.0), (2, 0.0)):
    m = jnp.arange(5)[None, :] < frames
    loss, count = lid.lid_ctc_loss(ctc_logits[:1], m, runs)
    assert float(count) == usable
    if usable:
      np.testing.assert_allclose(
        float(loss), _brute_force_ctc_nll(lp[0, :3], [0, 0]) / 3, atol=1e-5
      )


def test_lid_loss_selects_supervision_per_example():
  b, t = 5, 5
  frame_logits = _random((b, t, L), 0)
  ctc_logits = _random((b, t, L + 1), 1)
  utt_logits = _random((b, L), 2)
  mask = jnp.ones((b, t), bool).at[4, 2:].set(False)
  no = -1
  frame_targets = jnp.array(
    [
      [0, 0, 1, no, no],  # Frames known (runs and utterance label too): frame CE.
      [no] * 5,  # Runs and utterance label: CTC.
      [no] * 5,  # Utterance label only: utterance CE.
      [no] * 5,  # Nothing.
      [no, no, no, 2, 2],  # Targets only on padded frames, 3 runs in 2 frames: utterance CE.
    ]
  )
  lang_runs = jnp.array([[0, 1, no], [2, 0, no], [no, no, no], [no, no, no], [0, 1, 2]])
  utt_labels = jnp.array([0, 2, 1, no, 2])
  kind = lid.lid_supervision(frame_targets, mask, lang_runs, utt_labels)
  np.testing.assert_array_equal(
    np.asarray(kind),
    [
      lid.SUPERVISION_FRAME,
      lid.SUPERVISION_CTC,
      lid.SUPERVISION_UTTERANCE,
      lid.SUPERVISION_NONE,
      lid.SUPERVISION_UTTERANCE,
    ],
  )
  loss, count = lid.lid_loss(
    frame_logits, ctc_logits, utt_logits, mask, frame_targets, lang_runs, utt_labels
  )
  flp, clp, ulp = _log_softmax(frame_logits), _log_softmax(ctc_logits), _log_softmax(utt_logits)
  expected = [
    -(flp[0, 0, 0] + flp[0, 1, 0] + flp[0, 2, 1]) / 3,
    _brute_force_ctc_nll(clp[1], [2, 0]) / 5,
    -ulp[2, 1],
    -ulp[4, 2],
  ]
  assert float(count) == 4
  np.testing.assert_allclose(float(loss), np.mean(expected), atol=1e-5)


def test_lid_loss_gradients_are_finite_with_unusable_examples():
  frame_logits = _random((2, 3, L), 0)
  ctc_logits = _random((2, 3, L + 1), 1)
  utt_logits = _random((2, L), 2)
  mask = jnp.array([[True, False, False], [True, True, True]])
  frame_targets = jnp.full((2, 3), -1)
  lang_runs = jnp.array([[0, 1, 2], [1, -1, -1]])  # Example 0 cannot emit 3 runs in 1 frame.
  utt_labels = jnp.array([1, -1])

  def loss_fn(f, c, u):
    return lid.lid_loss(f, c, u, mask, frame_targets, lang_runs, utt_labels)[0]

  grads = jax.jit(jax.grad(loss_fn, argnums=(0, 1, 2)))(frame_logits, ctc_logits, utt_logits)
  for g in grads:
    assert np.isfinite(np.asarray(g)).all()
  assert np.abs(np.asarray(grads[1][0])).max() == 0.0  # Unusable CTC example: no gradient.
  assert np.abs(np.asarray(grads[2][0])).max() > 0.0  # It falls back to the utterance CE.
  assert np.abs(np.asarray(grads[1][1])).max() > 0.0


def test_lid_log_prior_adjusts_the_training_logits_only():
  """Logit adjustment (`train.loss.lid_log_prior`): the LID losses read logits + log prior
  (the LID-CTC blank untouched); the prior of a transfer's mix sums to one."""
  import types

  from moe_asr.training import losses, transfer

  out = types.SimpleNamespace(
    frame_lid_logits=_random((2, 4, L), 0),
    lid_ctc_logits=_random((2, 4, L + 1), 1),
    utt_lid_logits=_random((2, L), 2),
  )
  prior = (np.log(0.9), np.log(0.05), np.log(0.05))
  frame, ctc, utt = losses.lid_logits_with_prior(out, prior)
  np.testing.assert_allclose(frame, np.asarray(out.frame_lid_logits) + prior, atol=1e-6)
  np.testing.assert_allclose(utt, np.asarray(out.utt_lid_logits) + prior, atol=1e-6)
  np.testing.assert_array_equal(ctc[..., 0], out.lid_ctc_logits[..., 0])
  np.testing.assert_allclose(
    ctc[..., 1:], np.asarray(out.lid_ctc_logits[..., 1:]) + prior, atol=1e-6
  )
  unchanged = losses.lid_logits_with_prior(out, ())
  assert all(a is b for a, b in zip(unchanged, vars(out).values(), strict=True))
  with pytest.raises(ValueError, match="2 entries for 3 languages"):
    losses.lid_logits_with_prior(out, prior[:2])
  # A class the mix favours needs less of a raw margin: its adjusted CE is lower, the others'
  # higher, so training matches the raw logits to the data without the mix's prior.
  targets = jnp.array([[0, 0, 0, 0], [1, 1, 1, 1]])
  mask = jnp.ones((2, 4), bool)
  raw = [
    lid.frame_lid_loss(out.frame_lid_logits[i : i + 1], targets[i : i + 1], mask[:1])[0]
    for i in (0, 1)
  ]
  adj = [lid.frame_lid_loss(frame[i : i + 1], targets[i : i + 1], mask[:1])[0] for i in (0, 1)]
  assert float(adj[0]) < float(raw[0]) and float(adj[1]) > float(raw[1])
  # The mix of a transfer with 10% replay over six old languages (a seventh, never trained,
  # is the new one).
  mix = np.exp(transfer.mix_log_prior(7, 6, 7, 0.9))
  np.testing.assert_allclose(mix.sum(), 1.0, atol=1e-9)
  np.testing.assert_allclose(mix, [0.1 / 6] * 6 + [0.9], atol=1e-12)
  # A grown axis: the new class beyond the source's; a class of neither gets the old share.
  mix = np.exp(transfer.mix_log_prior(8, 7, 6, 0.7))
  np.testing.assert_allclose(mix[:6], 0.05, atol=1e-12)
  assert mix[7] == pytest.approx(0.7) and mix[6] == pytest.approx(0.05)
  # With the replay's utterances counted: English 3, Spanish 1, German none (add-one
  # smoothed: 4, 2, 1 of 7), half of the mix new; a fifth class of neither gets German's.
  mix = np.exp(transfer.mix_log_prior(5, 3, 3, 0.5, old_counts={"en": 3, "es": 1}))
  np.testing.assert_allclose(mix, [0.5 * 4 / 7, 0.5 * 2 / 7, 0.5 / 7, 0.5, 0.5 / 7], atol=1e-12)
  with pytest.raises(ValueError, match="unknown languages"):
    transfer.mix_log_prior(5, 3, 3, 0.5, old_counts={"xx": 1})
