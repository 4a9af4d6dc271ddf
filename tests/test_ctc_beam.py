"""Tests of the CTC prefix beam search against brute-force enumeration of label sequences."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_asr.decoding import biasing
from moe_asr.decoding.ctc_beam import ctc_prefix_beam_search
from moe_asr.models.lm import TransformerLM

# --- References -----------------------------------------------------------------------------


def ctc_log_prob(log_probs: np.ndarray, labels, blank: int = 0) -> float:
  """log P(labels | x) by the CTC forward recursion over frames `log_probs` [T, V]."""
  ext = [blank]
  for label in labels:
    ext += [label, blank]
  alpha = np.full(len(ext), -np.inf)
  alpha[0] = log_probs[0, blank]
  if len(ext) > 1:
    alpha[1] = log_probs[0, ext[1]]
  for t in range(1, log_probs.shape[0]):
    prev = alpha
    alpha = np.full(len(ext), -np.inf)
    for s, label in enumerate(ext):
      terms = [prev[s]]
      if s >= 1:
        terms.append(prev[s - 1])
      if s >= 2 and label != blank and label != ext[s - 2]:
        terms.append(prev[s - 2])
      alpha[s] = np.logaddexp.reduce(terms) + log_probs[t, label]
  return float(np.logaddexp(alpha[-1], alpha[-2]) if len(ext) > 1 else alpha[-1])


def all_sequences(labels, max_len: int):
  """Every label sequence of length 1..max_len (the empty one first)."""
  seqs = [()]
  for n in range(1, max_len + 1):
    seqs += list(itertools.product(labels, repeat=n))
  return seqs


def random_log_probs(seed: int, batch: int, frames: int, vocab: int, scale: float = 2.0):
  logits = scale * jax.random.normal(jax.random.key(seed), (batch, frames, vocab))
  return jax.nn.log_softmax(logits, axis=-1)


def lengths_mask(lengths, frames: int):
  return jnp.arange(frames)[None, :] < jnp.asarray(lengths)[:, None]


def hyps(nbest, row: int) -> list[tuple[int, ...]]:
  """The finite-score hypotheses of one utterance as tuples."""
  tokens, lengths, scores = (
    np.asarray(x[row]) for x in (nbest.tokens, nbest.lengths, nbest.scores)
  )
  return [tuple(tokens[i, : lengths[i]]) for i in range(len(scores)) if np.isfinite(scores[i])]


@functools.cache
def tiny_lm(vocab: int) -> TransformerLM:
  model = TransformerLM(vocab, 16, 2, 1, 32, 0.0, 16, rngs=nnx.Rngs(3))
  model.eval()
  return model


def lm_token_log_probs(lm: TransformerLM, seqs, eos_id: int) -> np.ndarray:
  """[n, max_len + 1]: log P_lm of each token of `seqs + eos` given bos (0 on padding)."""
  width = max(len(s) for s in seqs) + 1
  tokens = np.zeros((len(seqs), width), np.int32)
  mask = np.zeros((len(seqs), width), bool)
  for i, s in enumerate(seqs):
    tokens[i, : len(s) + 1] = list(s) + [eos_id]
    mask[i, : len(s) + 1] = True
  inputs = np.concatenate([np.full((len(seqs), 1), lm.bos_id, np.int32), tokens[:, :-1]], 1)
  lp = jax.nn.log_softmax(lm(jnp.asarray(inputs), jnp.ones_like(jnp.asarray(mask))), axis=-1)
  token_lp = np.take_along_axis(np.asarray(lp), tokens[..., None], axis=-1)[..., 0]
  total = np.asarray(lm.score(jnp.asarray(tokens), jnp.asarray(mask)))
  np.testing.assert_allclose(np.where(mask, token_lp, 0).sum(1), total, atol=1e-4)
  return np.where(mask, token_lp, 0.0)


# Shapes shared by the tests below the brute-force ones, so their searches compile once.
VOCAB, FRAMES = 10, 6
KW = dict(beam=8, max_len=FRAMES, nbest=3)

# --- Exactness against brute force ------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_matches_brute_force_nbest(seed):
  # vocab 4 (blank + 3 labels), T = 5: at most 121 prefixes live before the last frame, so a
  # beam of 128 keeps all of them and the search is exact.
  batch, frames, vocab, n = 3, 5, 4, 6
  lengths = [5, 3, 1]
  log_probs = random_log_probs(seed, batch, frames, vocab)
  # Garbage on padded frames must not matter.
  log_probs = jnp.where(lengths_mask(lengths, frames)[..., None], log_probs, 5.0)
  out = ctc_prefix_beam_search(
    log_probs,
    lengths_mask(lengths, frames),
    beam=128,
    max_len=frames,
    token_topk=vocab - 1,
    nbest=n,
  )
  assert out.tokens.shape == (batch, n, frames) and out.scores.shape == (batch, n)
  for row, length in enumerate(lengths):
    lp = np.asarray(log_probs[row, :length])
    seqs = all_sequences([1, 2, 3], length)
    ref = np.array([ctc_log_prob(lp, s) for s in seqs])
    order = np.argsort(-ref)
    reachable = int(np.isfinite(ref).sum())
    got = hyps(out, row)
    assert len(got) == min(n, reachable)
    assert got == [seqs[i] for i in order[: len(got)]]
    np.testing.assert_allclose(out.scores[row, : len(got)], ref[order[: len(got)]], atol=1e-4)
    np.testing.assert_allclose(out.parts["ctc"][row, : len(got)], ref[order[: len(got)]], atol=1e-4)
    np.testing.assert_array_equal(out.parts["length"][row, : len(got)], [len(s) for s in got])
    assert np.all(np.diff(np.asarray(out.scores[row, : len(got)])) <= 0)
    # Fewer distinct hypotheses than n: empty slots are -inf with length 0.
    assert np.all(np.isneginf(out.scores[row, len(got) :]))
    assert np.all(np.asarray(out.lengths[row, len(got) :]) == 0)


def test_narrow_beam_finds_the_best_of_a_peaked_utterance():
  # A few confident frames: the default top-k and a small beam suffice for the argmax.
  frames, vocab = 5, 4
  rng = np.random.default_rng(7)
  logits = rng.normal(size=(1, frames, vocab)) + 4.0 * np.eye(vocab)[[1, 0, 2, 2, 3]]
  log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  out = ctc_prefix_beam_search(log_probs, jnp.ones((1, frames), bool), beam=4, max_len=frames)
  seqs = all_sequences([1, 2, 3], frames)
  ref = np.array([ctc_log_prob(np.asarray(log_probs[0]), s) for s in seqs])
  assert hyps(out, 0)[0] == seqs[int(np.argmax(ref))]
  # Pruned prefixes lose their paths: the beam's log-prob is a lower bound, here a tight one.
  assert ref.max() - 0.05 < float(out.scores[0, 0]) <= ref.max() + 1e-5


def test_token_frames_and_max_len():
  # Frames: a a _ b b a (peaked) -> "a b a" emitted at frames 0, 3, 5.
  path = [4, 4, 0, 5, 5, 4]
  log_probs = jax.nn.log_softmax(8.0 * jax.nn.one_hot(jnp.array([path]), VOCAB), axis=-1)
  mask = jnp.ones((1, FRAMES), bool)
  out = ctc_prefix_beam_search(log_probs, mask, **KW)
  assert hyps(out, 0)[0] == (4, 5, 4)
  np.testing.assert_array_equal(out.token_frames[0, 0, :3], [0, 3, 5])
  ref = ctc_log_prob(np.asarray(log_probs[0]), (4, 5, 4))
  # The beam drops some of the 9 labels' paths: a lower bound within 0.01.
  assert ref - 0.01 < float(out.scores[0, 0]) <= ref + 1e-5
  short = ctc_prefix_beam_search(log_probs, mask, beam=8, max_len=2, nbest=3)
  assert short.tokens.shape == (1, 3, 2)
  assert int(np.asarray(short.lengths).max()) <= 2
  assert hyps(short, 0)[0] == (4, 5)


def test_prune_threshold_only_emits_tokens_near_the_frame_max():
  threshold = 0.5
  log_probs = random_log_probs(0, 1, FRAMES, VOCAB, scale=1.5)
  mask = jnp.ones((1, FRAMES), bool)
  lp = np.asarray(log_probs[0])

  def far_tokens(out) -> int:
    """Emitted tokens further than `threshold` below their frame's best log-prob."""
    count = 0
    for k, hyp in enumerate(hyps(out, 0)):
      for i, token in enumerate(hyp):
        frame = int(out.token_frames[0, k, i])
        count += lp[frame, token] < lp[frame].max() - threshold
    return count

  pruned = ctc_prefix_beam_search(log_probs, mask, prune_threshold=threshold, **KW)
  plain = ctc_prefix_beam_search(log_probs, mask, **KW)
  assert far_tokens(plain) > 0 and far_tokens(pruned) == 0
  assert len(hyps(pruned, 0)) == 3 and max(map(len, hyps(pruned, 0))) > 0
  # A threshold that excludes nothing is the unpruned search.
  loose = ctc_prefix_beam_search(log_probs, mask, prune_threshold=1e9, **KW)
  np.testing.assert_array_equal(loose.tokens, plain.tokens)
  np.testing.assert_array_equal(loose.scores, plain.scores)


def test_compiles_once_and_empty_row_gives_empty_hypothesis():
  traces = []

  @jax.jit
  def search(log_probs, mask):
    traces.append(1)
    return ctc_prefix_beam_search(log_probs, mask, **KW)

  for seed in range(3):
    mask = lengths_mask([6, 0, 2 + seed], FRAMES)
    out = search(random_log_probs(seed, 3, FRAMES, VOCAB), mask)
    assert int(out.lengths[1, 0]) == 0 and float(out.scores[1, 0]) == 0.0
    assert np.all(np.isneginf(out.scores[1, 1:]))
    assert np.all(np.asarray(out.tokens[1]) == 0)
    assert np.all(np.isfinite(out.scores[0]))
  assert len(traces) == 1


# --- Shallow fusion ---------------------------------------------------------------------------

LM_VOCAB, EOS = 6, 3


def test_lm_weight_zero_equals_no_lm():
  frames = 6
  log_probs = random_log_probs(11, 2, frames, LM_VOCAB)
  mask = lengths_mask([6, 4], frames)
  kw = dict(beam=6, max_len=frames, nbest=3)
  plain = ctc_prefix_beam_search(log_probs, mask, **kw)
  fused = ctc_prefix_beam_search(log_probs, mask, lm=tiny_lm(LM_VOCAB), lm_weight=0.0, **kw)
  np.testing.assert_array_equal(fused.tokens, plain.tokens)
  np.testing.assert_array_equal(fused.lengths, plain.lengths)
  np.testing.assert_array_equal(fused.parts["ctc"], plain.parts["ctc"])
  np.testing.assert_array_equal(fused.scores, plain.scores)
  assert np.all(np.asarray(fused.parts["lm"])[np.isfinite(fused.scores)] < 0)


def test_lm_fusion_matches_brute_force():
  # 4 labels, T = 4: at most 85 prefixes before the last frame; beam 88 is exact, so the
  # n-best must be the top of ctc + w * lm (+ eos) + bonus * |y| over all 340 sequences.
  batch, frames, vocab, n, weight, bonus = 2, 4, 5, 5, 1.5, 0.5
  lengths = [4, 3]
  lm = tiny_lm(vocab)
  log_probs = random_log_probs(21, batch, frames, vocab)
  mask = lengths_mask(lengths, frames)
  kw = dict(beam=88, max_len=frames, token_topk=vocab - 1, nbest=n, eos_id=EOS)
  out = ctc_prefix_beam_search(log_probs, mask, lm=lm, lm_weight=weight, length_bonus=bonus, **kw)
  changed = False
  for row, length in enumerate(lengths):
    seqs = all_sequences(range(1, vocab), length)
    ctc = np.array([ctc_log_prob(np.asarray(log_probs[row, :length]), s) for s in seqs])
    lm_lp = lm_token_log_probs(lm, seqs, EOS).sum(1)
    total = ctc + weight * lm_lp + bonus * np.array([len(s) for s in seqs])
    order = np.argsort(-total)[:n]
    assert hyps(out, row) == [seqs[i] for i in order]
    np.testing.assert_allclose(out.scores[row], total[order], atol=1e-3)
    np.testing.assert_allclose(out.parts["ctc"][row], ctc[order], atol=1e-4)
    np.testing.assert_allclose(out.parts["lm"][row], lm_lp[order], atol=1e-3)
    changed |= list(order) != list(np.argsort(-ctc)[:n])
  assert changed


def test_per_utterance_and_per_frame_lm_weights():
  frames = 6
  lm = tiny_lm(LM_VOCAB)
  log_probs = random_log_probs(31, 2, frames, LM_VOCAB)
  mask = lengths_mask([6, 5], frames)
  kw = dict(beam=6, max_len=frames, nbest=3, lm=lm, eos_id=EOS)
  per_row = ctc_prefix_beam_search(log_probs, mask, lm_weight=jnp.array([0.3, 1.2]), **kw)
  for row, w in enumerate([0.3, 1.2]):
    alone = ctc_prefix_beam_search(log_probs, mask, lm_weight=w, **kw)
    np.testing.assert_array_equal(per_row.tokens[row], alone.tokens[row])
    np.testing.assert_allclose(per_row.scores[row], alone.scores[row], atol=1e-5)
  # Per frame: a token's LM term uses the weight of the frame emitting it (`token_frames`), eos
  # the last valid frame's (row 1 ends at frame 4; frame 5's weight must not count).
  weights = jnp.where(jnp.arange(frames)[None, :] < 3, 0.2, 2.0) * jnp.array([[1.0], [0.5]])
  weights = weights.at[1, 5].set(7.0)
  out = ctc_prefix_beam_search(log_probs, mask, lm_weight=weights, **kw)
  for row, last in enumerate([5, 4]):
    seqs = hyps(out, row)
    token_lp = lm_token_log_probs(lm, seqs, EOS)
    for k, s in enumerate(seqs):
      w = np.asarray(weights[row])[np.asarray(out.token_frames[row, k, : len(s)])]
      lm_term = (w * token_lp[k, : len(s)]).sum() + weights[row, last] * token_lp[k, len(s)]
      # A beam of 6 drops paths, so the CTC part is a lower bound of the exact log-prob.
      ctc = ctc_log_prob(np.asarray(log_probs[row, : last + 1]), s)
      assert ctc - 0.1 < float(out.parts["ctc"][row, k]) <= ctc + 1e-5
      np.testing.assert_allclose(out.scores[row, k], out.parts["ctc"][row, k] + lm_term, atol=1e-3)


# --- Contextual biasing -----------------------------------------------------------------------


def biasing_case():
  """Best path "4 5"; the phrase "6 7" is second best at the two emitting frames."""
  probs = np.full((FRAMES, VOCAB), 1e-9)
  probs[:, 0] = 0.9  # Blank frames.
  probs[1] = [0.1, 1e-9, 1e-9, 1e-9, 0.55, 1e-9, 0.35, 1e-9, 1e-9, 1e-9]
  probs[3] = [0.1, 1e-9, 1e-9, 1e-9, 1e-9, 0.55, 1e-9, 0.35, 1e-9, 1e-9]
  probs[:, 8:] = 1e-9
  log_probs = np.log(probs / probs.sum(-1, keepdims=True)).astype(np.float32)
  return jnp.asarray(log_probs)[None], jnp.ones((1, FRAMES), bool), VOCAB


def test_biasing_recovers_a_second_best_phrase():
  log_probs, mask, vocab = biasing_case()
  plain = ctc_prefix_beam_search(log_probs, mask, **KW)
  assert hyps(plain, 0)[0] == (4, 5)
  graph = biasing.build_context_graph([[6, 7]], vocab, boost=1.5)
  biased = ctc_prefix_beam_search(log_probs, mask, bias=graph, **KW)
  assert hyps(biased, 0)[0] == (6, 7)
  ctc = ctc_log_prob(np.asarray(log_probs[0]), (6, 7))
  np.testing.assert_allclose(biased.parts["bias"][0, 0], 3.0, atol=1e-6)
  np.testing.assert_allclose(biased.parts["ctc"][0, 0], ctc, atol=1e-4)
  np.testing.assert_allclose(biased.scores[0, 0], ctc + 3.0, atol=1e-4)
  # "6 5" starts the phrase and breaks it: the boost is taken back, nothing is gained.
  for k, hyp in enumerate(hyps(biased, 0)):
    if hyp in {(6,), (6, 5), (4, 5)}:
      np.testing.assert_allclose(biased.parts["bias"][0, k], 0.0, atol=1e-6)


def test_biasing_with_absent_phrase_changes_nothing():
  log_probs, mask, vocab = biasing_case()
  plain = ctc_prefix_beam_search(log_probs, mask, **KW)
  graph = biasing.build_context_graph([[8, 9], [9, 8, 9]], vocab)
  biased = ctc_prefix_beam_search(log_probs, mask, bias=graph, **KW)
  np.testing.assert_array_equal(biased.tokens, plain.tokens)
  np.testing.assert_allclose(biased.scores, plain.scores, atol=1e-6)
  np.testing.assert_array_equal(biased.parts["bias"], 0.0)
