"""Greedy (best-path) CTC decoding, on device and batched.

The best path takes the arg-max label of every frame, merges repeats and drops
blanks. The result is compacted to the left with a cumulative sum and a
scatter, so the whole decoder is one fixed-shape computation inside `jax.jit`.

It lives with the models because the model itself runs it: the hypothesis pass of
`MoeAsrModel` (task heads on the greedy hypothesis) and the searches of `moe_asr.decoding`
both start from it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ctc_greedy(
  logits: jax.Array, mask: jax.Array, *, blank_id: int = 0
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Best-path CTC decoding.

  Args:
    logits: [batch, frames, vocab] (log-)probabilities or logits.
    mask: bool [batch, frames], True on valid frames.
    blank_id: the CTC blank.

  Returns:
    (tokens int32 [batch, frames], left-aligned and padded with `blank_id`;
    lengths int32 [batch]; confidence float32 [batch]: the mean over emitted
    tokens of their frame posterior, 1.0 for an empty hypothesis).
  """
  best = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [batch, frames]
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  best_prob = jnp.exp(jnp.take_along_axis(log_probs, best[..., None], axis=-1)[..., 0])
  previous = jnp.pad(best, ((0, 0), (1, 0)), constant_values=blank_id)[:, :-1]
  emit = mask & (best != blank_id) & (best != previous)  # [batch, frames]
  position = jnp.cumsum(emit, axis=-1) - 1
  lengths = emit.sum(-1).astype(jnp.int32)
  frames = logits.shape[1]
  # Non-emitting frames scatter out of bounds and are dropped.
  target = jnp.where(emit, position, frames)
  rows = jnp.arange(logits.shape[0])[:, None]
  tokens = jnp.full_like(best, blank_id).at[rows, target].set(best, mode="drop")
  emitted_prob = jnp.where(emit, best_prob, 0.0).sum(-1)
  confidence = jnp.where(lengths > 0, emitted_prob / jnp.maximum(lengths, 1), 1.0)
  return tokens, lengths, confidence


def token_mask(lengths: jax.Array, max_len: int) -> jax.Array:
  """bool [batch, max_len]: True on the first `lengths` positions."""
  return jnp.arange(max_len)[None, :] < lengths[:, None]
