"""Vectorised CTC prefix scoring for label-synchronous beam search.

The CTC prefix probability psi(h) of a label prefix h is the probability that
the CTC output starts with h (Watanabe et al. 2017, "Hybrid CTC/attention
architecture for end-to-end speech recognition"; ESPnet `CTCPrefixScoreTH`).
For every hypothesis g the state keeps, over frames t,

  r^n_t(g): log P(g emitted by frame t, the path ending in a non-blank),
  r^b_t(g): log P(g emitted by frame t, the path ending in blank),

and the extension h = g + c is scored by

  phi_t     = r^b_t(g) + (r^n_t(g) if c != last(g) else 0)     (sums in prob space)
  r^n_t(h)  = (r^n_{t-1}(h) + phi_{t-1}) * x_t(c)
  r^b_t(h)  = (r^n_{t-1}(h) + r^b_{t-1}(h)) * x_t(blank)
  psi(h)    = sum_t phi_{t-1} * x_t(c),

with phi_{-1} = 1 for the empty prefix (0 otherwise). `psi` needs no recursion,
so it is one masked log-sum-exp over frames; only `r(h)` needs a `lax.scan`
over frames. The end candidate (eos) gets the full-sequence probability
log(r^n_{T-1}(g) + r^b_{T-1}(g)) of g, and the blank candidate -inf.
Padded frames (mask False) leave r unchanged and add nothing to psi, so the
value at the last frame is the value at the last valid frame.

Hypotheses are laid out as N = B * beam rows (utterance-major); the frame
log-posteriors stay [B, T, V] and are gathered per candidate, never repeated
per beam.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

NEG_INF = float("-inf")


@flax.struct.dataclass
class CtcPrefixState:
  """Prefix-scoring state of N = B * beam hypotheses.

  Attributes:
    log_probs: float32 [B, T, V] CTC log-posteriors (constant during a search).
    mask: bool [B, T] valid frames (constant).
    r: float32 [N, T, 2], log r^n_t and log r^b_t of each hypothesis.
    prefix_score: float32 [N], log psi of each hypothesis (0 for the empty one).
    last: int32 [N], the last token (-1 for the empty prefix).
    blank_id: the CTC blank.
  """

  log_probs: jax.Array
  mask: jax.Array
  r: jax.Array
  prefix_score: jax.Array
  last: jax.Array
  blank_id: int = flax.struct.field(pytree_node=False, default=0)

  @property
  def beam(self) -> int:
    """Hypotheses per utterance."""
    return self.r.shape[0] // self.log_probs.shape[0]


def init(
  log_probs: jax.Array, mask: jax.Array, *, beam: int = 1, blank_id: int = 0
) -> CtcPrefixState:
  """State of the empty prefix for every hypothesis.

  Args:
    log_probs: float32 [B, T, V] CTC log-posteriors (log_softmax applied).
    mask: bool [B, T] valid frames.
    beam: hypotheses per utterance (rows are utterance-major, N = B * beam).
    blank_id: the CTC blank.

  Returns:
    A `CtcPrefixState` with N rows, all the empty prefix.
  """
  log_probs = log_probs.astype(jnp.float32)
  blank = jnp.where(mask, log_probs[..., blank_id], 0.0)
  r_b = jnp.cumsum(blank, axis=1)  # [B, T]: only blanks so far.
  r = jnp.stack([jnp.full_like(r_b, NEG_INF), r_b], axis=-1)
  r = jnp.repeat(r, beam, axis=0)
  n = r.shape[0]
  return CtcPrefixState(
    log_probs=log_probs,
    mask=mask,
    r=r,
    prefix_score=jnp.zeros((n,), jnp.float32),
    last=jnp.full((n,), -1, jnp.int32),
    blank_id=blank_id,
  )


def _previous_phi(state: CtcPrefixState, same_as_last: jax.Array) -> jax.Array:
  """phi_{t-1} [N, T, C] of each candidate (frame t uses the value of frame t - 1)."""
  r_n, r_b = state.r[..., 0], state.r[..., 1]  # [N, T]
  phi_any = jnp.logaddexp(r_n, r_b)[:, :, None]
  phi = jnp.where(same_as_last[:, None, :], r_b[:, :, None], phi_any)  # [N, T, C]
  start = jnp.where(state.last < 0, 0.0, NEG_INF)[:, None, None]  # phi_{-1}
  start = jnp.broadcast_to(start, (phi.shape[0], 1, phi.shape[2]))
  return jnp.concatenate([start, phi[:, :-1]], axis=1)


def _candidate_log_probs(state: CtcPrefixState, cand: jax.Array) -> jax.Array:
  """x_t(cand) as float32 [N, T, C], gathered from the per-utterance posteriors."""
  b, t, _ = state.log_probs.shape
  n, c = cand.shape
  k = n // b
  idx = jnp.clip(cand, 0, None).reshape(b, 1, k * c)
  x = jnp.take_along_axis(state.log_probs, idx, axis=2)  # [B, T, K*C]
  return x.reshape(b, t, k, c).transpose(0, 2, 1, 3).reshape(n, t, c)


def _frames_mask(state: CtcPrefixState) -> jax.Array:
  return jnp.repeat(state.mask, state.beam, axis=0)  # [N, T]


def _end_score(state: CtcPrefixState) -> jax.Array:
  """log P_ctc(g | x) [N]: the full-sequence probability of each prefix."""
  return jnp.logaddexp(state.r[:, -1, 0], state.r[:, -1, 1])


def _special(state, cand, psi, eos_id):
  psi = jnp.where(cand == state.blank_id, NEG_INF, psi)
  if eos_id is not None:
    psi = jnp.where(cand == eos_id, _end_score(state)[:, None], psi)
  return psi


def prefix_scores(
  state: CtcPrefixState, cand: jax.Array, *, eos_id: int | None = None
) -> jax.Array:
  """log psi(g + c) of candidates, without the new frame states (no scan).

  Args:
    state: the hypotheses g.
    cand: int [N, C] candidate tokens per hypothesis.
    eos_id: the end token (scored with the full-sequence probability of g).

  Returns:
    float32 [N, C] prefix log-probabilities (blank: -inf).
  """
  phi_prev = _previous_phi(state, cand == state.last[:, None])
  x = _candidate_log_probs(state, cand)
  terms = jnp.where(_frames_mask(state)[:, :, None], phi_prev + x, NEG_INF)
  return _special(state, cand, jax.nn.logsumexp(terms, axis=1), eos_id)


def score(
  state: CtcPrefixState, cand: jax.Array, *, eos_id: int | None = None
) -> tuple[jax.Array, jax.Array]:
  """Prefix scores of candidates and their new frame states.

  Args:
    state: the hypotheses g.
    cand: int [N, C] candidate tokens per hypothesis.
    eos_id: the end token (scored with the full-sequence probability of g).

  Returns:
    (log psi(g + c) float32 [N, C], r(g + c) float32 [N, C, T, 2]). The eos and
    blank candidates' r are not meaningful (they are never extended).
  """
  phi_prev = _previous_phi(state, cand == state.last[:, None])  # [N, T, C]
  x = _candidate_log_probs(state, cand)  # [N, T, C]
  frames = _frames_mask(state)  # [N, T]
  terms = jnp.where(frames[:, :, None], phi_prev + x, NEG_INF)
  psi = _special(state, cand, jax.nn.logsumexp(terms, axis=1), eos_id)
  blank = state.log_probs[..., state.blank_id]  # [B, T]
  blank = jnp.repeat(blank, state.beam, axis=0)  # [N, T]

  def step(carry, inputs):
    r_n, r_b = carry  # [N, C]
    phi_t, x_t, blank_t, valid_t = inputs
    new_n = jnp.logaddexp(r_n, phi_t) + x_t
    new_b = jnp.logaddexp(r_n, r_b) + blank_t[:, None]
    r_n = jnp.where(valid_t[:, None], new_n, r_n)
    r_b = jnp.where(valid_t[:, None], new_b, r_b)
    return (r_n, r_b), jnp.stack([r_n, r_b], axis=-1)

  init_r = jnp.full(cand.shape, NEG_INF, jnp.float32)
  xs = (
    jnp.moveaxis(phi_prev, 1, 0),
    jnp.moveaxis(x, 1, 0),
    jnp.moveaxis(blank, 1, 0),
    jnp.moveaxis(frames, 1, 0),
  )
  _, r = jax.lax.scan(step, (init_r, init_r), xs)  # [T, N, C, 2]
  return psi, jnp.moveaxis(r, 0, 2)


def select(
  state: CtcPrefixState,
  psi: jax.Array,
  r: jax.Array,
  cand: jax.Array,
  index: jax.Array,
) -> CtcPrefixState:
  """The state of chosen candidates.

  Args:
    state: the hypotheses that were scored.
    psi: [N, C] from `score`.
    r: [N, C, T, 2] from `score`.
    cand: [N, C] the scored candidates.
    index: int [N] flat indices into the N * C candidates; row n of the new
      state is candidate `index[n]`, which must belong to utterance n // beam.

  Returns:
    The new `CtcPrefixState` (N rows).
  """
  c = cand.shape[1]
  parent, choice = index // c, index % c
  return state.replace(
    r=r[parent, choice],
    prefix_score=psi[parent, choice],
    last=cand[parent, choice].astype(jnp.int32),
  )


def advance(state: CtcPrefixState, parent: jax.Array, token: jax.Array) -> CtcPrefixState:
  """State of hypotheses `parent` extended by `token` (one scan over frames).

  Equivalent to `score` of all candidates then `select`, at the cost of
  scoring only the chosen extensions.

  Args:
    state: the current hypotheses.
    parent: int [N] the row each new hypothesis extends (same utterance).
    token: int [N] the appended tokens (not eos or blank).

  Returns:
    The new `CtcPrefixState`.
  """
  sub = state.replace(r=state.r[parent], prefix_score=state.prefix_score[parent])
  sub = sub.replace(last=state.last[parent])
  psi, r = score(sub, token[:, None])
  return sub.replace(r=r[:, 0], prefix_score=psi[:, 0], last=token.astype(jnp.int32))


def all_prefix_scores(state: CtcPrefixState, *, eos_id: int | None = None) -> jax.Array:
  """log psi(g + c) for every token c of the vocabulary, float32 [N, V].

  A `lax.scan` over frames with an [N, V] carry (no [N, T, V] array); used
  when CTC alone chooses the candidates.

  Args:
    state: the hypotheses g.
    eos_id: the end token (full-sequence probability of g).

  Returns:
    float32 [N, V] (blank: -inf).
  """
  b, t, v = state.log_probs.shape
  n = state.r.shape[0]
  k = n // b
  no_last = jnp.full((n, 1), -2, jnp.int32)
  phi_prev = _previous_phi(state, no_last == state.last[:, None])[..., 0]  # [N, T]

  def step(acc, inputs):
    phi_t, x_t, valid_t = inputs  # [B, K], [B, V], [B]
    term = phi_t[:, :, None] + x_t[:, None, :]  # [B, K, V]
    return jnp.where(valid_t[:, None, None], jnp.logaddexp(acc, term), acc), None

  xs = (
    jnp.moveaxis(phi_prev.reshape(b, k, t), 2, 0),
    jnp.moveaxis(state.log_probs, 1, 0),
    jnp.moveaxis(state.mask, 1, 0),
  )
  acc, _ = jax.lax.scan(step, jnp.full((b, k, v), NEG_INF, jnp.float32), xs)
  acc = acc.reshape(n, v)
  # A repeated token extends only the blank-ending paths.
  last = jnp.clip(state.last, 0, None)[:, None]
  psi_last = prefix_scores(state, last)
  acc = jnp.where(
    (jnp.arange(v)[None, :] == last) & (state.last[:, None] >= 0),
    psi_last,
    acc,
  )
  vocab = jnp.broadcast_to(jnp.arange(v)[None, :], (n, v))
  return _special(state, vocab, acc, eos_id)
