"""CTC prefix beam search on device: batched, fixed shapes, one `lax.scan` over frames.

Frame-synchronous prefix search (Graves 2012; Hannun et al. 2014; as in ESPnet's
CTCPrefixScore and icefall): every hypothesis is a label prefix with two
log-probabilities, of the paths over the frames so far that collapse to it and end
in blank (`p_b`) or in its last label (`p_nb`). At each frame a beam can stay
(same prefix) or be extended by one of the frame's top-k non-blank labels.
Extensions that rebuild a prefix already in the beam are merged into that beam
before the top-K selection, so duplicates never crowd the beam. Padded frames
(mask False) leave every beam as it is.

Total score of a prefix y, used for pruning at every frame and for the final
ranking:

  log P_ctc(y | x) + lm_weight * log P_lm(y) + length_bonus * |y| + bias(y)

where the LM term adds `log P_lm(eos | y)` at the end and the bias term is the
sum of `biasing.advance` scores along y plus `biasing.finalize` at the end.

Prefix identity: two uint32 multiplicative rolling hashes of the token sequence
(h <- h * m + token + 1 mod 2^32, two multipliers) plus the exact length; a false
merge needs both 32-bit hashes to collide at the same length (about 2^-64 per
pair). Comparing hashes costs O(K^2 k) per frame whatever `max_len` is, where
comparing token rows would cost O(K^2 k L).

Tokens are not carried through the scan: each frame records back-pointers
(source beam, whether a token was emitted, the last token), and the n best are
traced back after the last frame, so per-frame work does not grow with
`max_len`. Token frames follow the more probable contribution at a merge: when
the extension that rebuilds a beam's prefix outweighs the beam's own paths, the
prefix takes that extension's history and emission frame (with an LM, also its
per-frame LM weights), so an improbable early emission does not set a token's
time.

Shallow fusion runs one `lm.decode_step` per frame for all B*K rows. The LM's
cache holds a single position index for the whole batch, while beams here have
different lengths, so the step is vmapped over rows with a per-row position
(`length + 1`, after bos at position 0). Rows that were not extended write
into the free slot after their prefix (harmless: it is rewritten before any
later step attends to it) and keep their stored next-token distribution.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moe_asr.decoding import biasing
from moe_asr.decoding.nbest import NBest

_NEG_INF = -jnp.inf
_HASH_MULTIPLIERS = (np.uint32(0x9E3779B1), np.uint32(0x85EBCA77))


class _Config(NamedTuple):
  """Static settings of one compiled search."""

  beam: int
  max_len: int
  token_topk: int
  blank_id: int
  eos_id: int | None
  nbest: int
  bias_reserve: int


@flax.struct.dataclass
class _Beams:
  """The search state of K prefixes per utterance (leading axes [batch, beam])."""

  log_p_blank: jax.Array  # float32, paths ending in blank
  log_p_label: jax.Array  # float32, paths ending in the last label
  last: jax.Array  # int32, last label (blank for the empty prefix)
  length: jax.Array  # int32
  hash1: jax.Array  # uint32
  hash2: jax.Array  # uint32
  lm: jax.Array  # float32, unweighted LM log-prob of the prefix
  lm_weighted: jax.Array  # float32, sum of lm_weight(frame) * token LM log-prob
  bias: jax.Array  # float32, accumulated bias score
  bias_state: jax.Array  # int32, context-graph node
  lm_next: jax.Array | None  # float32 [batch, beam, vocab], log P_lm(. | prefix)
  lm_kv: Any  # the LM's self-attention caches, rows batch * beam

  def ctc(self) -> jax.Array:
    return jnp.logaddexp(self.log_p_blank, self.log_p_label)


def ctc_prefix_beam_search(
  log_probs: jax.Array,
  mask: jax.Array,
  *,
  beam: int,
  max_len: int,
  token_topk: int | None = None,
  prune_threshold: float | None = None,
  blank_id: int = 0,
  lm=None,
  lm_weight: float | jax.Array = 0.0,
  length_bonus: float = 0.0,
  eos_id: int | None = 3,
  bias=None,
  nbest: int | None = None,
  bias_reserve: int | None = None,
) -> NBest:
  """CTC prefix beam search with optional LM shallow fusion and contextual biasing.

  Callable eagerly (it is jit-compiled once per shape and setting) or inside a
  caller's `jax.jit` / `nnx.jit`.

  Args:
    log_probs: float32 [batch, frames, vocab] CTC log-posteriors.
    mask: bool [batch, frames], valid frames; invalid frames leave the search
      state unchanged (a row without valid frames returns the empty hypothesis).
    beam: K, hypotheses kept per utterance.
    max_len: L, output token slots; prefixes of L tokens are not extended.
    token_topk: extension candidates per frame, the top-k non-blank labels
      (default min(vocab - 1, beam)).
    prune_threshold: if set, candidates with log p < max_v log p(v) - threshold
      (max over the whole frame, blank included) are skipped.
    blank_id: the CTC blank.
    lm: a `TransformerLM` (in eval mode; needs `max_len + 1` positions), or None.
    lm_weight: scalar, [batch] or [batch, frames]: the LM weight of a token is
      the one at the frame that emits it; eos uses the last valid frame's.
    length_bonus: added per emitted token.
    eos_id: with an LM, `lm_weight * log P_lm(eos | prefix)` is added at the end;
      None skips it.
    bias: a `biasing.ContextGraph`, or None.
    nbest: hypotheses returned (<= beam, default beam).
    bias_reserve: with a graph, beam slots that go to the best candidates by their
      score without the bias (the others by the total score); default beam // 2.
      A hypothesis without a completed phrase ends with exactly its unbiased score
      (partial matches are taken back), so keeping the unbiased search alive in
      these slots lets biasing change the result only through a completed phrase,
      where partial boosts would otherwise push better hypotheses out of the beam.

  Returns:
    `NBest` with tokens/token_frames [batch, nbest, max_len], lengths and scores
    [batch, nbest] (best first, -inf for empty slots, whose tokens and lengths
    are 0), and parts "ctc", "lm" (unweighted, eos included; 0 without an LM),
    "bias" (0 without a graph) and "length" (token count). `token_frames` holds
    the frame where each token was emitted on the prefix's dominant history
    (see the module docstring).
  """
  batch, frames, vocab = log_probs.shape
  nbest = beam if nbest is None else nbest
  if not 1 <= nbest <= beam:
    raise ValueError(f"nbest={nbest} must be in [1, beam={beam}]")
  if max_len < 1:
    raise ValueError(f"max_len={max_len} must be positive")
  topk = min(vocab - 1, beam) if token_topk is None else min(token_topk, vocab - 1)
  if topk < 1:
    raise ValueError(f"token_topk={token_topk} leaves no extension candidates")
  reserve = 0
  if bias is not None:
    reserve = beam // 2 if bias_reserve is None else int(bias_reserve)
    if not 0 <= reserve < beam:
      raise ValueError(f"bias_reserve={bias_reserve} must be in [0, beam={beam})")
  config = _Config(
    beam=beam,
    max_len=max_len,
    token_topk=topk,
    blank_id=blank_id,
    eos_id=eos_id,
    nbest=nbest,
    bias_reserve=reserve,
  )
  lm_graph = lm_state = None
  weights = None
  if lm is not None:
    if lm.vocab_size != vocab:
      raise ValueError(f"LM vocabulary {lm.vocab_size} != CTC vocabulary {vocab}")
    lm_graph, lm_state = nnx.split(lm)
    weights = jnp.asarray(lm_weight, jnp.float32)
    if weights.ndim == 1:
      weights = weights[:, None]
    weights = jnp.broadcast_to(weights, (batch, frames))
  if bias is not None and bias.vocab_size != vocab:
    raise ValueError(f"Context graph vocabulary {bias.vocab_size} != CTC vocabulary {vocab}")
  return _search(
    log_probs.astype(jnp.float32),
    mask.astype(bool),
    weights,
    jnp.float32(length_bonus),
    jnp.float32(jnp.inf if prune_threshold is None else prune_threshold),
    bias,
    lm_state,
    config=config,
    lm_graph=lm_graph,
  )


@functools.partial(jax.jit, static_argnames=("config", "lm_graph"))
def _search(
  log_probs, mask, weights, length_bonus, prune_threshold, bias, lm_state, *, config, lm_graph
) -> NBest:
  """The compiled search (see `ctc_prefix_beam_search`)."""
  batch, frames, vocab = log_probs.shape
  K, L, C = config.beam, config.max_len, config.token_topk
  lm = None
  if lm_graph is not None:
    lm = nnx.merge(lm_graph, lm_state)
    lm.eval()

  # ---- Initial state: one live beam, the empty prefix.
  first = jnp.arange(K)[None, :] == 0
  zeros_f = jnp.zeros((batch, K), jnp.float32)
  zeros_i = jnp.zeros((batch, K), jnp.int32)
  lm_next = lm_kv = None
  if lm is not None:
    cache = lm.init_cache(batch * K, L + 1)
    bos = jnp.full((batch * K,), lm.bos_id, jnp.int32)
    lm_next, lm_kv = _lm_step(lm, cache, cache.self_kv, bos, jnp.zeros((batch * K,), jnp.int32))
    lm_next = lm_next.reshape(batch, K, vocab)
  state = _Beams(
    log_p_blank=jnp.where(first, 0.0, _NEG_INF) + zeros_f,
    log_p_label=jnp.full((batch, K), _NEG_INF, jnp.float32),
    last=zeros_i + config.blank_id,
    length=zeros_i,
    hash1=jnp.zeros((batch, K), jnp.uint32),
    hash2=jnp.zeros((batch, K), jnp.uint32),
    lm=zeros_f,
    lm_weighted=zeros_f,
    bias=zeros_f,
    bias_state=zeros_i,
    lm_next=lm_next,
    lm_kv=lm_kv,
  )

  def step(state: _Beams, inputs) -> tuple[_Beams, tuple[jax.Array, jax.Array, jax.Array]]:
    t, valid, weight = inputs  # [], [batch], [batch] or None
    # Slicing here, rather than scanning over transposed log-probs, saves a copy of them.
    frame_lp = jax.lax.dynamic_index_in_dim(log_probs, t, axis=1, keepdims=False)  # [batch, V]
    # ---- Candidates: stay (K) and extend by one of the top-C labels (K * C).
    blank_lp = frame_lp[:, config.blank_id]  # [batch]
    labels_lp = frame_lp.at[:, config.blank_id].set(_NEG_INF)
    cand_lp, cand_tok = jax.lax.top_k(labels_lp, C)  # [batch, C]
    floor = frame_lp.max(-1, keepdims=True) - prune_threshold  # -inf without a threshold
    cand_lp = jnp.where(cand_lp >= floor, cand_lp, _NEG_INF)
    ctc = state.ctc()  # [batch, K]
    alive = ctc > _NEG_INF
    stay_b = ctc + blank_lp[:, None]
    stay_nb = state.log_p_label + jnp.take_along_axis(frame_lp, state.last, axis=1)
    tok = jnp.broadcast_to(cand_tok[:, None, :], (batch, K, C))
    repeat = tok == state.last[:, :, None]  # a repeated label needs a blank in between
    ext_nb = jnp.where(repeat, state.log_p_blank[..., None], ctc[..., None]) + cand_lp[:, None, :]
    ext_nb = jnp.where((state.length < L)[..., None], ext_nb, _NEG_INF)  # [batch, K, C]
    ext_hash1 = state.hash1[..., None] * _HASH_MULTIPLIERS[0] + (tok + 1).astype(jnp.uint32)
    ext_hash2 = state.hash2[..., None] * _HASH_MULTIPLIERS[1] + (tok + 1).astype(jnp.uint32)

    # ---- Merge extensions that rebuild a prefix already in the beam into its stay.
    same = (
      (ext_hash1[..., None] == state.hash1[:, None, None, :])
      & (ext_hash2[..., None] == state.hash2[:, None, None, :])
      & ((state.length[:, :, None, None] + 1) == state.length[:, None, None, :])
      & alive[:, None, None, :]
      & alive[:, :, None, None]
    )  # [batch, K (parent), C, K (existing)]
    # Live beams are distinct prefixes, so at most one extension rebuilds each of them: a max
    # and an integer sum find it (cheaper than logsumexp and argmax).
    incoming = jnp.where(same, ext_nb[..., None], _NEG_INF).reshape(batch, K * C, K)
    merged = incoming.max(axis=1)  # [batch, K]
    # Token frames follow the larger contribution, so that an improbable early emission of
    # the last token does not set its time once the likely one merges in.
    frames_from_ext = (merged > jnp.logaddexp(stay_b, stay_nb)) & valid[:, None]
    kc = jnp.arange(K * C, dtype=jnp.int32)[None, :, None]
    merged_from = jnp.where(same.reshape(batch, K * C, K), kc, 0).sum(1)  # index into K * C
    frames_source = jnp.where(frames_from_ext, merged_from // C, jnp.arange(K))
    stay_nb = jnp.logaddexp(stay_nb, merged)
    ext_nb = jnp.where(same.any(-1), _NEG_INF, ext_nb)

    # ---- Total scores and top-K selection.
    ext_extra = length_bonus + jnp.zeros((batch, K, C), jnp.float32)
    ext_lm = ext_bias = ext_bias_state = None
    stay_lm_weighted = state.lm_weighted
    if lm is not None:
      ext_lm = jnp.take_along_axis(state.lm_next, tok, axis=2)  # [batch, K, C]
      ext_lm_weighted = weight[:, None, None] * ext_lm
      ext_extra = ext_extra + ext_lm_weighted
      # A prefix retimed by a merge takes the LM weights of its new emission frames.
      retimed_lm = _rows(state.lm_weighted, frames_source) + jnp.take_along_axis(
        ext_lm_weighted.reshape(batch, K * C), merged_from, axis=1
      )
      stay_lm_weighted = jnp.where(frames_from_ext, retimed_lm, state.lm_weighted)
    base = stay_lm_weighted + length_bonus * state.length + state.bias  # [batch, K]
    if bias is not None:
      # [batch, K, 1] states and [batch, 1, C] tokens: each looked up once, then broadcast.
      ext_bias_state, ext_bias = biasing.advance(
        bias, state.bias_state[..., None], cand_tok[:, None, :]
      )
      ext_extra = ext_extra + ext_bias
    stay_total = jnp.logaddexp(stay_b, stay_nb) + base
    ext_total = ext_nb + base[..., None] + ext_extra
    total = jnp.concatenate([stay_total, ext_total.reshape(batch, K * C)], axis=1)
    if config.bias_reserve:
      # The reserved slots: the best candidates without their bias; then the rest by total.
      bias_part = jnp.concatenate(
        [state.bias, (state.bias[..., None] + ext_bias).reshape(batch, K * C)], axis=1
      )
      _, reserved = jax.lax.top_k(total - bias_part, config.bias_reserve)
      # A comparison, not a scatter: XLA's CPU scatter is a serial loop.
      slots = jnp.arange(total.shape[1], dtype=reserved.dtype)
      taken = (reserved[:, :, None] == slots).any(axis=1)  # [batch, K + K * C]
      # Dead candidates (-inf) still rank above the reserved ones, so no slot is taken twice.
      lowest = jnp.finfo(jnp.float32).min
      _, rest = jax.lax.top_k(
        jnp.where(taken, _NEG_INF, jnp.maximum(total, lowest)), K - config.bias_reserve
      )
      choice = jnp.concatenate([reserved, rest], axis=1)
    else:
      _, choice = jax.lax.top_k(total, K)  # [batch, K]
    is_ext = (choice >= K) & valid[:, None]
    flat = jnp.maximum(choice - K, 0)  # index into K * C
    parent = jnp.where(is_ext, flat // C, jnp.where(valid[:, None], choice, jnp.arange(K)))
    new_tok = jnp.take_along_axis(cand_tok, flat % C, axis=1)  # [batch, K]

    rows = functools.partial(_rows, index=parent)

    def pick(ext_values, stay_values):
      """[batch, K]: the extension's value where extended, else the parent's."""
      ext = jnp.take_along_axis(ext_values.reshape(batch, K * C), flat, axis=1)
      return jnp.where(is_ext, ext, rows(stay_values))

    log_p_blank = jnp.where(is_ext, _NEG_INF, rows(stay_b))
    log_p_label = pick(ext_nb, stay_nb)
    keep = ~valid[:, None]
    length = rows(state.length)
    retimed = ~is_ext & rows(frames_from_ext)
    hash1 = rows(state.hash1)
    hash2 = rows(state.hash2)
    tok_u32 = (new_tok + 1).astype(jnp.uint32)
    new = state.replace(
      log_p_blank=jnp.where(keep, state.log_p_blank, log_p_blank),
      log_p_label=jnp.where(keep, state.log_p_label, log_p_label),
      last=jnp.where(is_ext, new_tok, rows(state.last)),
      length=length + is_ext,
      hash1=jnp.where(is_ext, hash1 * _HASH_MULTIPLIERS[0] + tok_u32, hash1),
      hash2=jnp.where(is_ext, hash2 * _HASH_MULTIPLIERS[1] + tok_u32, hash2),
    )
    if bias is not None:
      new = new.replace(
        bias=rows(state.bias) + jnp.where(is_ext, pick(ext_bias, zeros_f), 0.0),
        bias_state=pick(ext_bias_state, state.bias_state),
      )
    if lm is not None:
      token_lm = jnp.where(is_ext, pick(ext_lm, zeros_f), 0.0)
      new = new.replace(
        lm=rows(state.lm) + token_lm,
        lm_weighted=jnp.where(
          is_ext, rows(state.lm_weighted) + weight[:, None] * token_lm, rows(stay_lm_weighted)
        ),
        lm_next=rows(state.lm_next),
      )
      new = _advance_lm(lm, cache, new, parent, is_ext, new_tok, L)
    # Back-pointers of the alignment the token frames follow: the parent, or for a retimed
    # prefix the beam whose extension merged into it; and whether a token was emitted here.
    pointer = jnp.where(retimed, rows(frames_source), parent)
    return new, (pointer, is_ext | retimed, new.last)

  weights_t = None if lm is None else weights.T
  xs = (jnp.arange(frames, dtype=jnp.int32), mask.T, weights_t)
  state, back = jax.lax.scan(step, state, xs)

  # ---- End of utterance: LM eos, bias take-back of partial matches, ranking.
  lm_total, lm_weighted, bias_total = state.lm, state.lm_weighted, state.bias
  if lm is not None and config.eos_id is not None:
    eos_lp = state.lm_next[..., config.eos_id]  # [batch, K]
    last_frame = jnp.maximum(mask.sum(-1) - 1, 0)
    eos_weight = jnp.take_along_axis(weights, last_frame[:, None], axis=1)  # [batch, 1]
    lm_total = lm_total + eos_lp
    lm_weighted = lm_weighted + eos_weight * eos_lp
  if bias is not None:
    bias_total = bias_total + biasing.finalize(bias, state.bias_state)
  ctc = state.ctc()
  alive = ctc > _NEG_INF
  score = ctc + lm_weighted + length_bonus * state.length + bias_total
  score = jnp.where(alive, score, _NEG_INF)
  scores, order = jax.lax.top_k(score, config.nbest)  # [batch, nbest]
  take = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), 1)
  empty = scores == _NEG_INF
  lengths = jnp.where(empty, 0, take(state.length))
  tokens, token_frames = _backtrack(back, jnp.where(empty, 0, order), L)
  slot_ok = ~empty[..., None]
  return NBest(
    tokens=jnp.where(slot_ok, tokens, 0),
    lengths=lengths,
    scores=scores,
    parts={
      "ctc": take(ctc),
      "lm": jnp.where(empty, 0.0, take(lm_total)),
      "bias": jnp.where(empty, 0.0, take(bias_total)),
      "length": lengths.astype(jnp.float32),
    },
    token_frames=jnp.where(slot_ok, token_frames, 0),
  )


def _backtrack(back, order: jax.Array, max_len: int) -> tuple[jax.Array, jax.Array]:
  """Tokens and their frames of the final beams `order` [batch, n] from the back-pointers.

  Args:
    back: per frame (scan outputs, [frames, batch, beam]): the beam each beam came from, whether
      it emitted a token at that frame, and its last token.
    order: int32 [batch, n], final beam indices.
    max_len: token slots.

  Returns:
    tokens and token_frames, int32 [batch, n, max_len], left-aligned, padded with 0.
  """
  pointers, emitted, last = back

  def step(beam, frame_back):
    pointer, emit, token = (jnp.take_along_axis(x, beam, axis=1) for x in frame_back)
    return pointer, (emit, token)

  _, (emit, token) = jax.lax.scan(step, order, (pointers, emitted, last), reverse=True)
  emit = jnp.moveaxis(emit, 0, -1)  # [batch, n, frames]
  token = jnp.moveaxis(token, 0, -1)
  slot = jnp.where(emit, jnp.cumsum(emit, axis=-1) - 1, max_len)  # out of range: dropped
  batch, n, frames = emit.shape
  b, i = jnp.arange(batch)[:, None, None], jnp.arange(n)[None, :, None]
  empty = jnp.zeros((batch, n, max_len), jnp.int32)
  tokens = empty.at[b, i, slot].set(token, mode="drop")
  frame = jnp.broadcast_to(jnp.arange(frames, dtype=jnp.int32), emit.shape)
  return tokens, empty.at[b, i, slot].set(frame, mode="drop")


def _rows(x: jax.Array, index: jax.Array) -> jax.Array:
  """x [batch, K, ...] at beam indices `index` [batch, K']."""
  return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def _lm_step(lm, cache, self_kv, tokens: jax.Array, positions: jax.Array):
  """One LM step per row at its own position.

  Args:
    lm: the LM.
    cache: a cache of the LM (a template for its structure).
    self_kv: its self-attention caches, rows [batch * beam, ...].
    tokens: int32 [rows], the input token of each row.
    positions: int32 [rows], where each row's token goes.

  Returns:
    (log P_lm(. | row's tokens) float32 [rows, vocab], updated self_kv).
  """

  def one(token, position, kv):
    row_cache = cache.replace(self_kv=jax.tree.map(lambda x: x[None], kv), index=position)
    logits, _, row_cache = lm.decode_step(token[None], row_cache)
    return logits[0], jax.tree.map(lambda x: x[0], row_cache.self_kv)

  logits, self_kv = jax.vmap(one)(tokens, positions, self_kv)
  return jax.nn.log_softmax(logits, axis=-1), self_kv


def _advance_lm(lm, cache, new: _Beams, parent, is_ext, new_tok, max_len: int) -> _Beams:
  """Gathers the parents' LM caches and steps the LM on extended rows."""
  batch, beam = parent.shape
  rows = (parent + beam * jnp.arange(batch)[:, None]).reshape(-1)
  lm_kv = cache.replace(self_kv=new.lm_kv).take(rows).self_kv
  # The parent's prefix is `new.length - is_ext` long (bos at position 0).
  positions = jnp.minimum(new.length - is_ext + 1, max_len).reshape(-1)

  def run(lm_kv):
    lm_next, stepped = _lm_step(lm, cache, lm_kv, new_tok.reshape(-1), positions)
    lm_next = lm_next.reshape(batch, beam, -1)
    return jnp.where(is_ext[..., None], lm_next, new.lm_next), stepped

  lm_next, lm_kv = jax.lax.cond(is_ext.any(), run, lambda kv: (new.lm_next, kv), lm_kv)
  return new.replace(lm_next=lm_next, lm_kv=lm_kv)
