"""Second pass: rescore an n-best with acoustic, LM and task-head scores together.

Every hypothesis of the first pass is read again by the attention decoder
(teacher forcing, eos included) and the task heads, so the ranking can use
what the end task believes: the new score is

  sum_p weights[p] * part_p,   p in nbest.parts | {"att", "lm", "task"}

with "att" the attention log-probability of hypothesis + eos, "lm" the
external LM's log-probability of hypothesis + eos, and "task" the task head's
confidence in its own reading, max_i log p(intent i | hypothesis, audio).
A hypothesis the intent head reads with conviction can thus overtake one the
acoustics slightly prefer, and the utterance's intent is the n-best marginal
of the heads' posteriors under the new scores.

All of it is batched over [batch * n] hypotheses in one decoder call, with
fixed shapes; call it under `nnx.jit`. The weights may be closed over (Python
floats: zero weights are skipped) or passed in as traced scalars (one
compilation for every value).
"""

from __future__ import annotations

from collections.abc import Mapping

import flax
import jax
import jax.numpy as jnp

from moe_asr.decoding import confidence
from moe_asr.decoding.nbest import NBest
from moe_asr.models import model as model_lib
from moe_asr.models import task_heads


@flax.struct.dataclass
class RescoreOutput:
  """Task-head readings of the rescored n-best (None for a model without task heads).

  Attributes:
    intent_log_probs: float32 [batch, n, intents], in the order of the rescored n-best.
    slot_log_probs: float32 [batch, n, max_len, slot tags], likewise.
    intent_posterior: float32 [batch, intents], sum over k of softmax(new scores)_k *
      p(intent | hypothesis k): the n-best marginal, used for the utterance's intent and
      its confidence.
  """

  intent_log_probs: jax.Array | None
  slot_log_probs: jax.Array | None
  intent_posterior: jax.Array | None


def _repeat_encoded(encoded: model_lib.Encoded, n: int) -> model_lib.Encoded:
  """Each utterance's rows repeated n times (utterance-major), for [batch * n] hypotheses."""
  rep = lambda x: jnp.repeat(x, n, axis=0)
  enc = encoded.enc
  return encoded.replace(
    enc=enc.replace(
      x=rep(enc.x),
      mask=rep(enc.mask),
      frame_lid_logits=rep(enc.frame_lid_logits),
      lid_ctc_logits=rep(enc.lid_ctc_logits),
      utt_lid_logits=rep(enc.utt_lid_logits),
      lid_probs=rep(enc.lid_probs),
    ),
    ctc_logits=rep(encoded.ctc_logits),
    ctc_mask=rep(encoded.ctc_mask),
    frame_lang=rep(encoded.frame_lang),
    utt_probs=rep(encoded.utt_probs),
  )


def _sequence_log_prob(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  """sum over valid positions of log softmax(logits)[label]: [rows]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token_lp = jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return jnp.where(mask, token_lp, 0.0).sum(-1)


def rescore_nbest(
  model: model_lib.MoeAsr,
  encoded: model_lib.Encoded,
  nbest: NBest,
  *,
  weights: Mapping[str, float],
  lm=None,
  eos_id: int = 3,
  word_table=None,
) -> tuple[NBest, RescoreOutput]:
  """Rescores and reorders an n-best with the decoder, the task heads and an LM.

  Args:
    model: the `MoeAsr` (in eval mode).
    encoded: `model.encode(batch)` for the same utterances.
    nbest: the first pass's n-best, [batch, n, max_len].
    weights: part name -> weight; parts are nbest.parts plus "att" (recomputed, eos
      included), "lm" (recomputed when `lm` is given) and "task". Parts without a weight
      count 0; a weight for a part that is not available raises.
    lm: optional `TransformerLM` (in eval mode) scoring hypothesis + eos.
    eos_id: the end token appended for the LM.
    word_table: the tokenizer's `word_table`, for the word-level slot tagger.

  Returns:
    (the n-best with new scores, sorted descending, its parts extended by "att", "task"
    and "lm"; the task heads' readings in the same order). Empty slots (score -inf) keep
    -inf and stay last; the recomputed parts are -inf there too.

  Raises:
    ValueError: when a weight names a part that is not available.
  """
  computed = {"att": model.decoder is not None, "task": model.task_heads is not None}
  computed["lm"] = lm is not None
  available = set(nbest.parts) | {name for name, ok in computed.items() if ok}
  unknown = sorted(set(weights) - available)
  if unknown:
    raise ValueError(f"Weights for unavailable parts {unknown}; available: {sorted(available)}")
  batch, n, max_len = nbest.tokens.shape
  valid = jnp.isfinite(nbest.scores)  # [batch, n]
  tokens = nbest.tokens.reshape(batch * n, max_len)
  token_mask = jnp.arange(max_len)[None, :] < nbest.lengths.reshape(batch * n, 1)
  tokens = jnp.where(token_mask, tokens, 0)
  unflat = lambda x: x.reshape(batch, n, *x.shape[1:])
  empty_to_inf = lambda x: jnp.where(valid, x, -jnp.inf)

  parts = dict(nbest.parts)
  intent_log_probs = slot_log_probs = None
  token_word = None
  if word_table is not None:
    token_word = task_heads.word_index(tokens, token_mask, jnp.asarray(word_table))
  dec, task = model.decode_tokens(
    _repeat_encoded(encoded, n), tokens, token_mask, token_word=token_word
  )
  if dec is not None:
    labels, label_mask = model_lib.with_eos(tokens, token_mask, model.eos_id)
    parts["att"] = empty_to_inf(unflat(_sequence_log_prob(dec.logits, labels, label_mask)))
  if task is not None:
    intent_log_probs = unflat(task.intent_log_probs.astype(jnp.float32))  # [batch, n, intents]
    slot_log_probs = unflat(task.slot_log_probs.astype(jnp.float32))  # [batch, n, len, tags]
    parts["task"] = empty_to_inf(intent_log_probs.max(-1))
  if lm is not None:
    lm_tokens, lm_mask = model_lib.with_eos(tokens, token_mask, eos_id)
    parts["lm"] = empty_to_inf(unflat(lm.score(lm_tokens, lm_mask)))

  scores = jnp.zeros((batch, n), jnp.float32)
  for name, weight in weights.items():
    if isinstance(weight, int | float) and weight == 0:
      continue  # Skipped, so that 0 * -inf cannot turn a score into nan.
    scores = scores + weight * jnp.where(valid, parts[name].astype(jnp.float32), 0.0)
  scores = jnp.where(valid, scores, -jnp.inf)

  # Stable: equal scores keep the first pass's order; -inf (empty) sorts last.
  order = jnp.argsort(-scores, axis=-1, stable=True)
  rescored = nbest.replace(scores=scores, parts=parts).take(order)
  rows = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), 1)
  intent_posterior = None
  if intent_log_probs is not None:
    intent_log_probs, slot_log_probs = rows(intent_log_probs), rows(slot_log_probs)
    posterior = confidence.nbest_posteriors(rescored.scores)  # [batch, n]
    intent_posterior = jnp.einsum("bn,bni->bi", posterior, jnp.exp(intent_log_probs))
  return rescored, RescoreOutput(
    intent_log_probs=intent_log_probs,
    slot_log_probs=slot_log_probs,
    intent_posterior=intent_posterior,
  )
