"""What the evaluation step adds to a decode step's outputs: statistics no decoder needs.

`step_outputs(encoding, batch, ...)` reads the encoding the decode step searched
(`decoding.decode.encode`) against the batch's references: frame-LID and code-switch boundary
counts (`lid_counts`), the routing weight each expert got from each language's frames
(`expert_language_load`), and, with `decode.teacher_forced`, the task heads on the reference
transcript (`teacher_forced_heads`: the heads' own accuracy, apart from recognition errors).
All fixed-shape arrays with the batch first, to be called inside `jax.jit`.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections

from moe_asr.decoding import decode as decode_lib


def step_outputs(
  encoding: decode_lib.Encoding,
  batch: Mapping[str, jax.Array],
  cfg: ml_collections.ConfigDict,
  *,
  decoder_max_len: int,
  word_table=None,
) -> dict[str, jax.Array]:
  """The evaluation statistics of a decoded batch.

  Args:
    encoding: `decode.encode(model, batch, ensemble_weights)`, the one the step decoded.
    batch: the batch (`frame_lang` targets live in the encoding; `tokens` and `token_mask`
      are the reference transcript).
    cfg: the `decode` config section (`teacher_forced`).
    decoder_max_len: the attention decoder's positions (the reference is cut to fit).
    word_table: the tokenizer's `word_table`, for a word-level slot tagger.

  Returns:
    `lid_counts`' four int32 [B] counts, `expert_language_load` [B, layers, languages, E]
    and, with `cfg.teacher_forced`, task heads and a reference transcript in the batch,
    `tf_intent_log_probs` [B, intents] and `tf_slot_tags` [B, L'] (`tokens`, L' of them).
  """
  enc = encoding.encoded.enc
  frame_lang = encoding.encoded.frame_lang
  out = dict(lid_counts(encoding.lid_probs, frame_lang, enc.mask))
  out["expert_language_load"] = expert_language_load(
    enc.token_expert_load, frame_lang, enc.mask, enc.lid_probs.shape[-1]
  )
  if cfg.get("teacher_forced", True):
    out.update(teacher_forced_heads(encoding, batch, decoder_max_len, word_table))
  return out


def teacher_forced_heads(
  encoding: decode_lib.Encoding, batch: Mapping[str, jax.Array], decoder_max_len: int, word_table
) -> dict[str, jax.Array]:
  """`tf_intent_log_probs` and `tf_slot_tags` of the task heads on the reference transcript.

  Empty without task heads or without reference tokens in the batch."""
  ref_mask = batch.get("token_mask")
  if ref_mask is None:
    return {}
  ref_mask = ref_mask[:, : decoder_max_len - 1]
  ref = batch["tokens"][:, : ref_mask.shape[1]]
  task = decode_lib.task_head_log_probs(encoding, ref, ref_mask, word_table)
  if task is None:
    return {}
  return {
    "tf_intent_log_probs": task[0],
    "tf_slot_tags": jnp.argmax(task[1], -1).astype(jnp.int32),
  }


def lid_counts(
  lid_probs: jax.Array, frame_lang: jax.Array, mask: jax.Array, tolerance: int = 2
) -> dict[str, jax.Array]:
  """Per-utterance frame-LID and code-switch boundary counts against frame targets.

  Args:
    lid_probs: [B, T, languages] frame LID posteriors (encoder rate).
    frame_lang: int [B, T] reference language per encoder frame (-1 unknown).
    mask: bool [B, T] valid frames.
    tolerance: a reference switch counts as found when the predicted language also
      changes within this many frames of it (2 frames = 80 ms).

  Returns:
    int32 [B] each: `frame_lid_correct`, `frame_lid_total` (frames with a known
    language), `boundary_hit`, `boundary_total` (reference switches between two known
    languages).
  """
  pred = jnp.argmax(lid_probs, axis=-1)
  known = mask & (frame_lang >= 0)
  prev = lambda x: jnp.pad(x, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
  ref_switch = known & (prev(frame_lang) >= 0) & (frame_lang != prev(frame_lang))
  pred_switch = mask & (prev(jnp.where(mask, pred, -1)) >= 0) & (pred != prev(pred))
  # near[t]: a predicted switch at some t + d, |d| <= tolerance (no wrap-around).
  padded = jnp.pad(pred_switch, ((0, 0), (tolerance, tolerance)))
  frames = pred_switch.shape[1]
  near = jnp.zeros_like(pred_switch)
  for d in range(2 * tolerance + 1):
    near = near | padded[:, d : d + frames]
  as_int = lambda x: x.sum(-1).astype(jnp.int32)
  return {
    "frame_lid_correct": as_int(known & (pred == frame_lang)),
    "frame_lid_total": as_int(known),
    "boundary_hit": as_int(ref_switch & near),
    "boundary_total": as_int(ref_switch),
  }


def expert_language_load(
  token_load: jax.Array, frame_lang: jax.Array, mask: jax.Array, num_languages: int
) -> jax.Array:
  """Per utterance, the routing weight each expert got from the frames of each language.

  Args:
    token_load: [layers, B, T, E] routing weights per frame (`token_expert_load`).
    frame_lang: int [B, T] reference language per encoder frame (-1 unknown).
    mask: bool [B, T] valid frames.
    num_languages: size of the language axis.

  Returns:
    float32 [B, layers, languages, E]; summed over E it counts each language's
    frames (frames of unknown language count nowhere).
  """
  lang = jax.nn.one_hot(jnp.where(mask, frame_lang, -1), num_languages, dtype=jnp.float32)
  return jnp.einsum("nbte,btl->bnle", token_load.astype(jnp.float32), lang)
