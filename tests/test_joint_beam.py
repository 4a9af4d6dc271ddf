"""Joint CTC/attention beam search: prefix scores, CTC-only exactness, fusion parts, ILM."""

from __future__ import annotations

import functools
import itertools
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from moe_asr import config_lib
from moe_asr.decoding import ctc_prefix_score as cps
from moe_asr.decoding import joint_beam
from moe_asr.models import model as model_lib
from moe_asr.models.decoder import shift_right
from moe_asr.models.lm import TransformerLM

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "moe_asr" / "configs"
EOS, BOS = 3, 2


# --- numpy references ---------------------------------------------------------


def _collapse(path):
  out, prev = [], 0
  for p in path:
    if p != 0 and p != prev:
      out.append(p)
    prev = p
  return tuple(out)


def _path_sums(log_probs, frames):
  """log of the summed probability of all frame paths per collapsed label sequence."""
  v = log_probs.shape[1]
  sums = {}
  for path in itertools.product(range(v), repeat=frames):
    p = float(np.exp(sum(log_probs[t, s] for t, s in enumerate(path))))
    key = _collapse(path)
    sums[key] = sums.get(key, 0.0) + p
  return sums


def _prefix_prob(sums, prefix):
  return sum(p for y, p in sums.items() if y[: len(prefix)] == tuple(prefix))


def _ctc_log_prob(log_probs, labels):
  """log P_ctc(labels | x) by the CTC forward algorithm (blank 0), float64."""
  ext = [0]
  for label in labels:
    ext += [label, 0]
  s = len(ext)
  alpha = np.full(s, -np.inf)
  alpha[0] = log_probs[0, 0]
  if s > 1:
    alpha[1] = log_probs[0, ext[1]]
  for t in range(1, log_probs.shape[0]):
    new = np.full(s, -np.inf)
    for j in range(s):
      terms = [alpha[j]]
      if j >= 1:
        terms.append(alpha[j - 1])
      if j >= 2 and ext[j] != 0 and ext[j] != ext[j - 2]:
        terms.append(alpha[j - 2])
      new[j] = np.logaddexp.reduce(terms) + log_probs[t, ext[j]]
    alpha = new
  return float(np.logaddexp.reduce(alpha[-2:])) if s > 1 else float(alpha[0])


def _random_log_probs(seed, b, t, v, scale, rare=(BOS, EOS)):
  logits = scale * np.random.default_rng(seed).normal(size=(b, t, v))
  logits[..., list(rare)] -= 30.0  # bos/eos are never emitted by the searches.
  return np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1), np.float64)


# --- prefix scorer ---------------------------------------------------------------


_score = jax.jit(cps.score, static_argnames="eos_id")
_prefix_scores = jax.jit(cps.prefix_scores, static_argnames="eos_id")
_all_prefix_scores = jax.jit(cps.all_prefix_scores, static_argnames="eos_id")
_advance = jax.jit(cps.advance)


def test_prefix_scores_match_brute_force():
  b, t, v = 2, 5, 5
  lp = _random_log_probs(0, b, t, v, 1.0, rare=())
  lengths = [5, 4]
  mask = np.arange(t)[None, :] < np.array(lengths)[:, None]
  # Two hypotheses per utterance grown token by token: rows (g0, g1) per utterance.
  paths = [[[1, 2, 2], [2, 1, 3]], [[3, 3, 1], [2, 2, 2]]]
  eos = 4
  state = cps.init(jnp.asarray(lp, jnp.float32), jnp.asarray(mask), beam=2)
  sums = [_path_sums(lp[i], lengths[i]) for i in range(b)]
  by_frame = {(i, tau): _path_sums(lp[i], tau + 1) for i in range(b) for tau in range(lengths[i])}
  for step in range(4):
    prefixes = [path[:step] for rows in paths for path in rows]
    cand = jnp.asarray([[1, 2, 3, 0, eos]] * (2 * b), jnp.int32)
    psi, r = _score(state, cand, eos_id=eos)
    np.testing.assert_allclose(psi, _prefix_scores(state, cand, eos_id=eos), atol=1e-5)
    psi_np, r_np = np.asarray(psi), np.asarray(r)
    for n, prefix in enumerate(prefixes):
      i = n // 2
      for j, c in enumerate([1, 2, 3]):
        with np.errstate(divide="ignore"):
          expected = np.log(_prefix_prob(sums[i], prefix + [c]))
        np.testing.assert_allclose(psi_np[n, j], expected, atol=1e-4)
        # r: the probability that exactly prefix + [c] is emitted by frame tau.
        for tau in range(lengths[i]):
          by_tau = by_frame[i, tau].get(tuple(prefix + [c]), 0.0)
          np.testing.assert_allclose(np.exp(r_np[n, j, tau]).sum(), by_tau, atol=1e-5)
      assert psi_np[n, 3] == -np.inf  # blank
      full = sums[i].get(tuple(prefix), 0.0)
      np.testing.assert_allclose(np.exp(psi_np[n, 4]), full, atol=1e-5)  # eos
    # Whole-vocabulary scores agree with the candidate scores.
    every = _all_prefix_scores(state, eos_id=eos)
    np.testing.assert_allclose(every[:, [1, 2, 3, 0, eos]], psi, atol=1e-4)
    if step < 3:
      tokens = jnp.asarray([path[step] for rows in paths for path in rows], jnp.int32)
      chosen = cps.select(state, psi, r, cand, jnp.arange(2 * b) * 5 + tokens - 1)
      state = _advance(state, jnp.arange(2 * b), tokens)
      np.testing.assert_allclose(state.r, chosen.r, atol=1e-5)
      np.testing.assert_allclose(state.prefix_score, chosen.prefix_score, atol=1e-5)


# --- CTC only --------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("beam", "nbest"))
def _ctc_only(log_probs, mask, *, beam, nbest):
  """The search core with CTC alone (no decoder), every token a candidate."""
  return joint_beam.label_synchronous_search(
    log_probs,
    mask,
    scorers={},
    beam=beam,
    max_len=log_probs.shape[1],
    ctc_weight=1.0,
    pre_beam=log_probs.shape[2],
    nbest=nbest,
  )


def _ctc_search(log_probs, mask, beam, nbest=None):
  return _ctc_only(jnp.asarray(log_probs, jnp.float32), jnp.asarray(mask), beam=beam, nbest=nbest)


@pytest.mark.parametrize("seed", [0, 1])
def test_ctc_only_finds_brute_force_argmax(seed):
  b, t, v, beam = 3, 5, 7, 12
  lp = _random_log_probs(seed, b, t, v, 2.5)
  lengths = [5, 3, 0]
  mask = np.arange(t)[None, :] < np.array(lengths)[:, None]
  out = _ctc_search(lp, mask, beam, nbest=3)
  labels = [1, 4, 5, 6]  # Every id but blank, bos and eos.
  for i in range(2):
    seqs = [()] + [s for n in range(1, t + 1) for s in itertools.product(labels, repeat=n)]
    scores = {s: _ctc_log_prob(lp[i, : lengths[i]], s) for s in seqs}
    best = max(scores, key=scores.get)
    # Prefixes of one length are disjoint events: a sequence with P > 1 / (beam + 1)
    # keeps every prefix in the beam, so the search must return it.
    assert np.exp(scores[best]) > 1.0 / (beam + 1)
    n = int(out.lengths[i, 0])
    assert tuple(np.asarray(out.tokens[i, 0, :n])) == best
    np.testing.assert_allclose(out.scores[i, 0], scores[best], atol=1e-4)
    np.testing.assert_allclose(out.parts["ctc"][i, 0], scores[best], atol=1e-4)
    # Every returned hypothesis carries its exact CTC score, sorted.
    for j in range(3):
      hyp = tuple(np.asarray(out.tokens[i, j, : int(out.lengths[i, j])]))
      np.testing.assert_allclose(out.scores[i, j], scores[hyp], atol=1e-4)
    assert np.all(np.diff(np.asarray(out.scores[i])) <= 0)
  # No valid frame: the empty hypothesis with probability 1.
  assert int(out.lengths[2, 0]) == 0 and abs(float(out.scores[2, 0])) < 1e-6
  assert int(out.tokens[2].sum()) == 0


def test_ctc_only_equals_ctc_prefix_beam_search():
  ctc_beam = pytest.importorskip("moe_asr.decoding.ctc_beam")
  b, t, v, beam = 4, 10, 9, 16
  # Both searches are approximate; on peaked posteriors (as a trained model's) they agree.
  # On flat ones either may miss the other's best (a pruned prefix loses path mass).
  lp = _random_log_probs(7, b, t, v, 4.0)
  mask = np.arange(t)[None, :] < np.array([10, 7, 9, 4])[:, None]
  ours = _ctc_search(lp, mask, beam)
  theirs = ctc_beam.ctc_prefix_beam_search(
    jnp.asarray(lp, jnp.float32), jnp.asarray(mask), beam=beam, max_len=t, token_topk=v - 1
  )
  np.testing.assert_array_equal(ours.lengths[:, 0], theirs.lengths[:, 0])
  np.testing.assert_array_equal(ours.tokens[:, 0], theirs.tokens[:, 0])
  # Ours are exact (the prefix scorer's full-sequence probability); frame-synchronous
  # pruning can only lose path mass, so theirs are lower bounds.
  for i, frames in enumerate([10, 7, 9, 4]):
    hyp = np.asarray(ours.tokens[i, 0, : int(ours.lengths[i, 0])])
    np.testing.assert_allclose(
      ours.parts["ctc"][i, 0], _ctc_log_prob(lp[i, :frames], hyp), atol=1e-4
    )
  assert np.all(np.asarray(theirs.parts["ctc"][:, 0]) <= np.asarray(ours.parts["ctc"][:, 0]) + 1e-4)
  # Same shapes, other values: no new compilation.
  compiled = _ctc_only._cache_size()
  _ctc_search(lp[::-1].copy(), mask[::-1].copy(), beam)
  assert _ctc_only._cache_size() == compiled


class _Stateless(NamedTuple):
  """The cache of a token model that reads no history."""

  rows: jax.Array

  def take(self, indices):
    return _Stateless(self.rows[indices])


@functools.partial(jax.jit, static_argnames="pre_beam_score")
def _weak_decoder_search(log_probs, mask, att_row, *, pre_beam_score):
  n = log_probs.shape[0] * 2
  scorer = joint_beam.TokenScorer(
    lambda prev, cache: (jnp.broadcast_to(att_row, (prev.shape[0], att_row.shape[0])), cache),
    _Stateless(jnp.zeros((n,))),
    BOS,
    1.0,
  )
  return joint_beam.label_synchronous_search(
    log_probs,
    mask,
    scorers={"att": scorer},
    beam=2,
    max_len=3,
    ctc_weight=0.7,
    pre_beam=2,
    pre_beam_score=pre_beam_score,
  )


def test_pre_beam_on_every_term_keeps_tokens_a_weak_decoder_would_prune():
  # CTC is sure of "1 4"; a weak attention decoder (here a fixed unigram) prefers 5 and 6
  # everywhere. With two candidates a hypothesis, the token models' pre-beam ("full", as
  # ESPnet's) never offers 1 or 4; scoring the candidates by every term ("all") finds the
  # hypothesis of the best total score, checked against every sequence of up to 3 labels.
  t, v, w = 4, 7, 0.7
  logits = np.full((1, t, v), -8.0)
  for frame, token in enumerate([1, 0, 4, 0]):
    logits[0, frame, token] = 8.0
  lp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1), np.float64)
  att = np.log(np.array([1e-3, 0.02, 1e-3, 0.1, 0.02, 0.5, 0.357]))  # 0..6, eos = 3
  mask = np.ones((1, t), bool)

  def total(y):
    return (1 - w) * (att[list(y)].sum() + att[EOS]) + w * _ctc_log_prob(lp[0], y)

  labels = [1, 4, 5, 6]
  seqs = [()] + [y for n in range(1, 4) for y in itertools.product(labels, repeat=n)]
  best = max(seqs, key=total)
  assert best == (1, 4)
  found = {}
  for mode in ("full", "all"):
    out = _weak_decoder_search(
      jnp.asarray(lp, jnp.float32),
      jnp.asarray(mask),
      jnp.asarray(att, jnp.float32),
      pre_beam_score=mode,
    )
    found[mode] = tuple(np.asarray(out.tokens[0, 0, : int(out.lengths[0, 0])]))
    np.testing.assert_allclose(out.scores[0, 0], total(found[mode]), atol=1e-3)
  assert found["all"] == best
  assert not set(found["full"]) & {1, 4}
  assert total(found["full"]) < total(best) - 10.0
  with pytest.raises(ValueError, match="pre_beam_score"):
    joint_beam.label_synchronous_search(
      jnp.asarray(lp, jnp.float32),
      jnp.asarray(mask),
      scorers={},
      beam=2,
      max_len=3,
      ctc_weight=1.0,
      pre_beam_score="ctc",
    )


@jax.jit
def _ctc_biased(log_probs, mask, bias):
  return joint_beam.label_synchronous_search(
    log_probs, mask, scorers={}, beam=4, max_len=4, ctc_weight=1.0, pre_beam=8, bias=bias
  )


def test_biasing_recovers_a_second_best_phrase():
  biasing = pytest.importorskip("moe_asr.decoding.biasing")
  # Frames: 4 (0.55) or 5 (0.45), blank, 6 (0.55) or 7 (0.45), blank.
  p = np.full((4, 8), 1e-4)
  p[0, [4, 5]] = [0.55, 0.45]
  p[2, [6, 7]] = [0.55, 0.45]
  p[[1, 3], 0] = 1.0
  lp = jnp.asarray(np.log(p / p.sum(-1, keepdims=True))[None], jnp.float32)
  mask = jnp.ones((1, 4), bool)
  # A phrase the likely hypotheses do not contain changes nothing at the top.
  plain = _ctc_biased(lp, mask, biasing.build_context_graph([[6, 4]], 8))
  assert plain.tokens[0, 0, :2].tolist() == [4, 6] and int(plain.lengths[0, 0]) == 2
  np.testing.assert_allclose(plain.parts["bias"][0, 0], 0.0, atol=1e-6)
  exact = _ctc_log_prob(np.asarray(lp[0], np.float64), [4, 6])
  np.testing.assert_allclose(plain.scores[0, 0], exact, atol=1e-4)
  # [4, 7, 5]: a partial match of 4, 7 is taken back at the end.
  graph = biasing.build_context_graph([[5, 7], [4, 7, 5]], 8)
  out = _ctc_biased(lp, mask, graph)
  assert out.tokens[0, 0, :2].tolist() == [5, 7] and int(out.lengths[0, 0]) == 2
  # Every hypothesis: bias part = sum of advance scores + finalize; score = ctc + bias.
  for j in range(4):
    state, total = jnp.int32(biasing.ROOT), 0.0
    for token in np.asarray(out.tokens[0, j, : int(out.lengths[0, j])]):
      state, gain = biasing.advance(graph, state, jnp.int32(token))
      total += float(gain)
    total += float(biasing.finalize(graph, state))
    np.testing.assert_allclose(out.parts["bias"][0, j], total, atol=1e-5)
  np.testing.assert_allclose(out.scores, out.parts["ctc"] + out.parts["bias"], atol=1e-5)
  np.testing.assert_allclose(out.parts["bias"][0, 0], 3.0, atol=1e-5)


# --- the tiny MoeAsr -------------------------------------------------------------

VOCAB, B, BEAM, MAX_LEN = 40, 2, 3, 6


@functools.cache
def _setup():
  cfg = config_lib.load_config(CONFIGS / "tiny.py", ())
  model = model_lib.MoeAsr(
    cfg.model,
    vocab_size=VOCAB,
    num_intents=0,
    num_slot_tags=0,
    rngs=nnx.Rngs(0, specaug=1, condition=2, dropout=3),
  )
  model.eval()
  lm = TransformerLM(VOCAB, 16, 2, 1, 32, 0.0, 16, rngs=nnx.Rngs(4))
  lm.eval()
  audio = np.random.default_rng(1).integers(-3000, 3000, (B, 6000)).astype(np.int16)
  audio_mask = np.ones((B, 6000), bool)
  audio_mask[1, 4500:] = False
  encoded = nnx.jit(lambda m, a, am: m.encode({"audio": a, "audio_mask": am}))(
    model, audio, audio_mask
  )
  return model, lm, encoded


@functools.partial(nnx.jit, static_argnames=("with_lm",))
def _joint(model, lm, encoded, lm_weight, ilm_weight, *, with_lm):
  if not with_lm:
    return joint_beam.joint_beam_search(model, encoded, beam=BEAM, max_len=MAX_LEN)
  return joint_beam.joint_beam_search(
    model, encoded, beam=BEAM, max_len=MAX_LEN, lm=lm, lm_weight=lm_weight, ilm_weight=ilm_weight
  )


def test_zero_lm_and_ilm_weights_equal_plain_search():
  model, lm, encoded = _setup()
  plain = _joint(model, lm, encoded, 0.0, 0.0, with_lm=False)
  fused = _joint(model, lm, encoded, jnp.zeros(B), jnp.zeros(B), with_lm=True)
  np.testing.assert_array_equal(plain.tokens, fused.tokens)
  np.testing.assert_array_equal(plain.lengths, fused.lengths)
  # The same search decisions; the scores come from two different compiled programs (the
  # fused one has more ops to fuse), where XLA may round the last float32 bit differently.
  np.testing.assert_allclose(plain.scores, fused.scores, rtol=1e-6, atol=0)
  assert bool(jnp.isfinite(plain.scores[:, 0]).all())
  # The LM and ILM did run: their (unweighted) parts are filled in.
  assert float(fused.parts["lm"][:, 0].max()) < 0 and float(fused.parts["ilm"][:, 0].max()) < 0
  assert float(jnp.abs(plain.parts["lm"]).max()) == 0.0


def _zero_cross_attention(decoder):
  """A copy of the decoder whose cross-attention adds exactly zero."""
  decoder = nnx.clone(decoder)
  for block in decoder.blocks:
    out = block.cross_attention.out
    out.kernel[...] = jnp.zeros_like(out.kernel[...])
    if getattr(out, "bias", None) is not None:
      out.bias[...] = jnp.zeros_like(out.bias[...])
  return decoder


def _teacher_forced(decoder, model, encoded, tokens, mask, token_lang_probs=None):
  """Sum of decoder log-probs of tokens + eos given bos (per row)."""
  labels, label_mask = model_lib.with_eos(tokens, mask, EOS)
  inputs, _ = shift_right(labels, label_mask, BOS)
  lang = None
  if token_lang_probs is not None:
    lang = jnp.broadcast_to(token_lang_probs[:, None], (*labels.shape, token_lang_probs.shape[-1]))
  out = decoder(
    inputs,
    label_mask,
    encoded.enc.x,
    encoded.enc.mask,
    token_lang_probs=lang,
    enc_lang_probs=encoded.enc.lid_probs,
  )
  lp = jax.nn.log_softmax(out.logits, axis=-1)
  picked = jnp.take_along_axis(lp, labels[..., None], axis=-1)[..., 0]
  return jnp.where(label_mask, picked, 0.0).sum(-1)


@nnx.jit
def _references(model, zero_decoder, lm, encoded, tokens, lengths):
  """Teacher-forced scores of given hypotheses by every model the search fuses."""
  mask = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
  # Attention: log P(y, eos | x) from model.decode_tokens (LID-context routing).
  dec, _ = model.decode_tokens(encoded, tokens, mask)
  labels, label_mask = model_lib.with_eos(tokens, mask, EOS)
  lp = jax.nn.log_softmax(dec.logits, axis=-1)
  att = jnp.where(label_mask, jnp.take_along_axis(lp, labels[..., None], -1)[..., 0], 0).sum(-1)
  # ILM: the decoder without cross-attention, routed by the utterance LID posterior.
  ilm = _teacher_forced(zero_decoder, model, encoded, tokens, mask, encoded.utt_probs)
  pad = lambda m: (~m).astype(jnp.float32)
  ctc = -optax.ctc_loss(encoded.ctc_logits, pad(encoded.enc.mask), tokens, pad(mask), blank_id=0)
  return dict(att=att, lm=lm.score(labels, label_mask), ilm=ilm, ctc=ctc)


def test_parts_match_teacher_forced_scoring():
  model, lm, encoded = _setup()
  lm_w, ilm_w = jnp.array([0.5, 0.2]), jnp.array([0.3, 0.1])
  out = _joint(model, lm, encoded, lm_w, ilm_w, with_lm=True)
  # Every hypothesis of the n-best (B x BEAM), scored against its utterance.
  assert bool(jnp.isfinite(out.scores).all())
  tokens, lengths = out.tokens.reshape(B * BEAM, MAX_LEN), out.lengths.reshape(B * BEAM)
  assert int((lengths > 0).sum()) >= B
  rep = lambda x: jnp.repeat(x, BEAM, axis=0)
  enc = encoded.enc
  repeated = encoded.replace(
    enc=enc.replace(x=rep(enc.x), mask=rep(enc.mask), lid_probs=rep(enc.lid_probs)),
    ctc_logits=rep(encoded.ctc_logits),
    utt_probs=rep(encoded.utt_probs),
  )
  ref = _references(model, _zero_cross_attention(model.decoder), lm, repeated, tokens, lengths)
  ref = {name: np.asarray(v).reshape(B, BEAM) for name, v in ref.items()}
  # float32 model: differences are summation order only (stated tolerance 1e-3).
  for name in ("att", "lm", "ilm", "ctc"):
    np.testing.assert_allclose(out.parts[name], ref[name], atol=1e-3, err_msg=name)
  np.testing.assert_array_equal(out.parts["length"], out.lengths)
  w_lm, w_ilm = lm_w[:, None], ilm_w[:, None]
  total = 0.7 * ref["att"] + 0.3 * ref["ctc"] + w_lm * ref["lm"] - w_ilm * ref["ilm"]
  np.testing.assert_allclose(out.scores, total, atol=1e-3)
  assert np.all(np.diff(np.asarray(out.scores), axis=1) <= 0)


@nnx.jit
def _without_context(decoder, zero_decoder, tokens, encoded):
  """decode_step(context=False) step by step, and full-forward references."""
  enc = encoded.enc
  num_lang = encoded.utt_probs.shape[-1]
  ones = jnp.ones(tokens.shape, bool)

  def steps(token_lang):
    def step(cache, token):
      logits, _, cache = decoder.decode_step(
        token, cache, None, enc.mask, token_lang_probs=token_lang, context=False
      )
      return cache, logits

    _, logits = jax.lax.scan(step, decoder.init_cache(tokens.shape[0], tokens.shape[1]), tokens.T)
    return jnp.swapaxes(logits, 0, 1)

  def reference(lang):
    lang = jnp.broadcast_to(lang[:, None], (*tokens.shape, num_lang))
    return zero_decoder(tokens, ones, enc.x, enc.mask, token_lang_probs=lang).logits

  uniform = jnp.full(encoded.utt_probs.shape, 1.0 / num_lang)
  with_context = decoder(tokens, ones, enc.x, enc.mask, enc_lang_probs=enc.lid_probs).logits
  return dict(
    uniform=(steps(None), reference(uniform)),
    given=(steps(encoded.utt_probs), reference(encoded.utt_probs)),
    with_context=with_context,
  )


def test_decode_step_without_context_is_decoder_with_zero_cross_attention():
  model, _, encoded = _setup()
  tokens = jnp.asarray(np.random.default_rng(3).integers(4, VOCAB, (B, 5)), jnp.int32)
  out = _without_context(model.decoder, _zero_cross_attention(model.decoder), tokens, encoded)
  # Reference: a copy whose cross-attention output is zero, routed by uniform language
  # posteriors (nothing given) or by the given ones.
  for name in ("uniform", "given"):
    got, ref = out[name]
    np.testing.assert_allclose(got, ref, atol=1e-4, err_msg=name)
  # The acoustic context and the routing languages do matter.
  assert float(jnp.abs(out["with_context"] - out["given"][1]).max()) > 1e-2
  assert float(jnp.abs(out["uniform"][1] - out["given"][1]).max()) > 1e-3
