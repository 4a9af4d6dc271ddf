"""End-task heads: the differentiable bridge and per-language intent + slot heads.

The bridge turns ASR states into task features without a hard transcript in
between, so the task loss trains the decoder and encoder (the joint system);
`stop_gradient=True` cuts that path to give the cascade baseline with the same
architecture. `TextTaskClassifier` is the classic cascade: a text classifier
over the recognised tokens.

Intent and slot heads are stacked on a `lang` axis, and the prediction is the
mixture of the per-language heads weighted by LID posteriors:

  log p(y | x) = log sum_l p(l | x) softmax(logits_l)(y)

so a new language adds one slice (`TaskHeads.add_language`) and leaves the
existing heads untouched.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from moe_asr.data import languages
from moe_asr.models import layers, partitioning


def _config_dtype(value) -> jnp.dtype:
  """`"bfloat16"` / `jnp.bfloat16` / None -> a jnp dtype (float32 by default)."""
  return jnp.dtype(value if value is not None else jnp.float32)


class Bridge(nnx.Module):
  """Attention pooling over decoder + encoder states, and slot-tagging states.

  Memory is the concatenation [decoder states ; encoder states] with a learned
  source embedding added to each part, normalised. `num_queries` learned
  queries attend over it; their outputs are averaged into the utterance
  vector. For slot tagging, each token state cross-attends over the encoder
  states (residually): the decoder already saw the audio through its own
  cross-attention, and this lets the task loss pick acoustic evidence (e.g.
  entity boundaries) the transcript path did not keep.

  The decoder is causal, so a token's state knows nothing of the words after it.
  `token_layers` bidirectional Transformer layers over the token states (after the
  cross-attention) give every token the whole transcript, as a text tagger has;
  the pooling then reads these states in place of the decoder's. With 0 (the
  default, and what checkpoints from before the setting have) the bridge is as
  described above.
  """

  def __init__(
    self,
    d_model: int,
    num_heads: int = 4,
    num_queries: int = 4,
    *,
    token_layers: int = 0,
    d_ff: int | None = None,
    dropout: float = 0.0,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    normal = nnx.initializers.normal(stddev=1.0)
    self.source_embedding = partitioning.param(rngs, normal, (2, d_model), (None, "embed"))
    self.queries = partitioning.param(rngs, normal, (num_queries, d_model), (None, "embed"))
    self.memory_norm = layers.layer_norm(d_model, dtype=None, param_dtype=jnp.float32, rngs=rngs)
    self.pool_attention = layers.MultiHeadAttention(d_model, num_heads, dtype=dtype, rngs=rngs)
    self.token_attention = layers.MultiHeadAttention(d_model, num_heads, dtype=dtype, rngs=rngs)
    self.pooled_norm = layers.layer_norm(d_model, dtype=None, param_dtype=jnp.float32, rngs=rngs)
    self.token_norm = layers.layer_norm(d_model, dtype=None, param_dtype=jnp.float32, rngs=rngs)
    self.token_layers = nnx.List(
      [
        TextEncoderLayer(d_model, num_heads, d_ff or 4 * d_model, dropout, dtype=dtype, rngs=rngs)
        for _ in range(token_layers)
      ]
    )

  def __call__(
    self,
    dec_states: jax.Array,
    token_mask: jax.Array,
    enc_states: jax.Array,
    enc_mask: jax.Array,
    *,
    stop_gradient: bool = False,
  ) -> tuple[jax.Array, jax.Array]:
    """Pools.

    Args:
      dec_states: [batch, tokens, d_model] decoder states.
      token_mask: [batch, tokens] bool, True = valid.
      enc_states: [batch, frames, d_model] encoder states.
      enc_mask: [batch, frames] bool, True = valid.
      stop_gradient: cut gradients into the inputs (cascade baseline).

    Returns:
      pooled [batch, d_model] and token states [batch, tokens, d_model].
    """
    if stop_gradient:
      dec_states = jax.lax.stop_gradient(dec_states)
      enc_states = jax.lax.stop_gradient(enc_states)
    # Zeroed so non-finite padding cannot leak through 0 * inf in the attention.
    dec_states = jnp.where(token_mask[..., None], dec_states, 0)
    enc_states = jnp.where(enc_mask[..., None], enc_states, 0)
    source = self.source_embedding[...]
    num_tokens = dec_states.shape[1]
    memory = jnp.concatenate(
      [dec_states.astype(jnp.float32) + source[0], enc_states.astype(jnp.float32) + source[1]],
      axis=1,
    )  # [batch, tokens + frames, d_model]
    memory = self.memory_norm(memory)
    memory_mask = jnp.concatenate([token_mask, enc_mask], axis=1)

    dec_normed, enc_normed = memory[:, :num_tokens], memory[:, num_tokens:]
    token_states = dec_normed + self.token_attention(dec_normed, enc_normed, key_mask=enc_mask)[0]
    for layer in self.token_layers:
      token_states = layer(token_states, token_mask)
    token_states = self.token_norm(token_states)  # [batch, tokens, d_model]
    token_states = partitioning.constrain(token_states, ("batch", "length", "embed"))
    if len(self.token_layers):
      # Pool over the bidirectional token states (and the audio) instead.
      token_states = jnp.where(token_mask[..., None], token_states, 0)
      memory = jnp.concatenate([token_states, enc_normed], axis=1)

    queries = jnp.broadcast_to(self.queries[...], (memory.shape[0], *self.queries.shape))
    pooled = self.pool_attention(queries, memory, key_mask=memory_mask)[0].mean(axis=1)
    pooled = partitioning.constrain(self.pooled_norm(pooled), ("batch", "embed"))
    return pooled, token_states


@flax.struct.dataclass
class TaskOutput:
  """Task predictions, all float32.

  Attributes:
    intent_log_probs: [batch, num_intents] log of the LID-weighted mixture.
    slot_log_probs: [batch, tokens, num_slot_tags] likewise per token.
    per_language_intent_logits: [batch, num_languages, num_intents].
  """

  intent_log_probs: jax.Array
  slot_log_probs: jax.Array
  per_language_intent_logits: jax.Array


def _mixture_log_probs(logits: jax.Array, lang_probs: jax.Array, lang_axis: int) -> jax.Array:
  """log sum_l p(l) softmax(logits_l), stable; zero-probability languages drop out exactly."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  weights = jnp.expand_dims(lang_probs.astype(jnp.float32), -1)
  return jax.nn.logsumexp(log_probs, axis=lang_axis, b=weights)


class TaskHeads(nnx.Module):
  """Bridge + per-language intent and slot heads mixed by LID posteriors."""

  def __init__(
    self,
    d_model: int,
    num_intents: int,
    num_slot_tags: int,
    num_languages: int = len(languages.LANGUAGE_CODES),
    num_heads: int = 4,
    num_queries: int = 4,
    dropout: float = 0.0,
    *,
    token_layers: int = 0,
    d_ff: int | None = None,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.num_languages = num_languages
    self.dtype = dtype
    self.bridge = Bridge(
      d_model,
      num_heads,
      num_queries,
      token_layers=token_layers,
      d_ff=d_ff,
      dropout=dropout,
      dtype=dtype,
      rngs=rngs,
    )
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    # Each language slice gets its own fan-in scaled init.
    kernel_init = nnx.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1, batch_axis=(0,)
    )
    zeros = nnx.initializers.zeros_init()
    lang_embed_classes = ("lang", "embed", "classes")
    self.intent_kernel = partitioning.param(
      rngs, kernel_init, (num_languages, d_model, num_intents), lang_embed_classes
    )
    self.intent_bias = partitioning.param(
      rngs, zeros, (num_languages, num_intents), ("lang", "classes")
    )
    self.slot_kernel = partitioning.param(
      rngs, kernel_init, (num_languages, d_model, num_slot_tags), lang_embed_classes
    )
    self.slot_bias = partitioning.param(
      rngs, zeros, (num_languages, num_slot_tags), ("lang", "classes")
    )

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs, **overrides):
    """Builds from a config section; `overrides` (e.g. d_model=...) take precedence.

    Fields: d_model, num_intents, num_slot_tags (required); num_languages
    (default len(LANGUAGE_CODES)), num_heads (4), num_queries (4), dropout (0.0),
    token_layers (0: bidirectional layers over the token states, see `Bridge`), d_ff
    (their hidden width, 4 * d_model), dtype ("float32" | "bfloat16", default float32).
    """
    fields = {**dict(cfg), **overrides}
    return cls(
      d_model=fields["d_model"],
      num_intents=fields["num_intents"],
      num_slot_tags=fields["num_slot_tags"],
      num_languages=fields.get("num_languages", len(languages.LANGUAGE_CODES)),
      num_heads=fields.get("num_heads", 4),
      num_queries=fields.get("num_queries", 4),
      dropout=fields.get("dropout", 0.0),
      token_layers=fields.get("token_layers", 0),
      d_ff=fields.get("d_ff"),
      dtype=_config_dtype(fields.get("dtype")),
      rngs=rngs,
    )

  def _heads(self, x: jax.Array, kernel: nnx.Param, bias: nnx.Param, spec: str) -> jax.Array:
    logits = jnp.einsum(
      spec, x.astype(self.dtype), kernel[...].astype(self.dtype), preferred_element_type=jnp.float32
    )
    return logits + bias[...].astype(jnp.float32)

  def __call__(
    self,
    dec_states: jax.Array,
    token_mask: jax.Array,
    enc_states: jax.Array,
    enc_mask: jax.Array,
    lang_probs: jax.Array,
    *,
    stop_gradient: bool = False,
    token_lang_probs: jax.Array | None = None,
  ) -> TaskOutput:
    """Predicts intent and slots.

    Args:
      dec_states: [batch, tokens, d_model] decoder states.
      token_mask: [batch, tokens] bool, True = valid.
      enc_states: [batch, frames, d_model] encoder states.
      enc_mask: [batch, frames] bool, True = valid.
      lang_probs: [batch, num_languages] utterance LID posteriors.
      stop_gradient: cut gradients into the states and LID posteriors, so the
        task loss trains only the heads (cascade baseline).
      token_lang_probs: optional [batch, tokens, num_languages] per-token
        language posteriors for slot mixing (code-switching); defaults to
        `lang_probs` for every token.

    Returns:
      TaskOutput.
    """
    if stop_gradient:
      lang_probs = jax.lax.stop_gradient(lang_probs)
      if token_lang_probs is not None:
        token_lang_probs = jax.lax.stop_gradient(token_lang_probs)
    pooled, token_states = self.bridge(
      dec_states, token_mask, enc_states, enc_mask, stop_gradient=stop_gradient
    )
    pooled = self.dropout(pooled)
    token_states = self.dropout(token_states)

    intent_logits = self._heads(pooled, self.intent_kernel, self.intent_bias, "bd,ldc->blc")
    slot_logits = self._heads(token_states, self.slot_kernel, self.slot_bias, "btd,ldc->btlc")
    if token_lang_probs is None:
      token_lang_probs = jnp.broadcast_to(
        lang_probs[:, None, :], (*token_states.shape[:2], lang_probs.shape[-1])
      )
    return TaskOutput(
      intent_log_probs=_mixture_log_probs(intent_logits, lang_probs, lang_axis=1),
      slot_log_probs=_mixture_log_probs(slot_logits, token_lang_probs, lang_axis=2),
      per_language_intent_logits=intent_logits,  # [batch, num_languages, num_intents]
    )

  def add_language(self, *, init_from: int | None = None) -> int:
    """Appends a language slice to every stacked head parameter, in place.

    Existing slices are untouched, so outputs for the other languages do not
    change. Call it before building the optimizer (its state has the old shapes).

    Args:
      init_from: index of the language to copy; None = mean of existing ones.

    Returns:
      The new language's index.
    """
    for variable in (self.intent_kernel, self.intent_bias, self.slot_kernel, self.slot_bias):
      value = variable[...]
      new = value[init_from] if init_from is not None else value.mean(axis=0)
      variable.set_value(jnp.concatenate([value, new[None]], axis=0))
    self.num_languages += 1
    return self.num_languages - 1


def _masked_nll(log_probs: jax.Array, labels: jax.Array, valid: jax.Array):
  valid = valid & (labels >= 0)
  picked = jnp.take_along_axis(
    log_probs.astype(jnp.float32), jnp.maximum(labels, 0)[..., None], axis=-1
  )[..., 0]
  count = valid.sum().astype(jnp.float32)
  loss = -jnp.where(valid, picked, 0.0).sum() / jnp.maximum(count, 1.0)
  return loss, count


def intent_loss(
  intent_log_probs: jax.Array, intent_labels: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Cross-entropy of intents.

  Args:
    intent_log_probs: [batch, num_intents].
    intent_labels: [batch] int, -1 = no label (ignored).

  Returns:
    (mean loss over labelled examples (0 if none), number of them) as float32.
  """
  return _masked_nll(intent_log_probs, intent_labels, jnp.ones_like(intent_labels, dtype=bool))


def slot_loss(
  slot_log_probs: jax.Array, slot_tags: jax.Array, token_mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Cross-entropy of slot tags.

  Args:
    slot_log_probs: [batch, tokens, num_slot_tags].
    slot_tags: [batch, tokens] int, -1 = no label (ignored).
    token_mask: [batch, tokens] bool, True = valid.

  Returns:
    (mean loss over labelled valid tokens (0 if none), number of them) as float32.
  """
  return _masked_nll(slot_log_probs, slot_tags, token_mask)


class TextEncoderLayer(nnx.Module):
  """Pre-norm bidirectional Transformer layer."""

  def __init__(
    self, d_model: int, num_heads: int, d_ff: int, dropout: float, *, dtype, rngs: nnx.Rngs
  ):
    self.attention_norm = layers.layer_norm(d_model, dtype=None, param_dtype=jnp.float32, rngs=rngs)
    self.attention = layers.MultiHeadAttention(d_model, num_heads, dtype=dtype, rngs=rngs)
    self.ffn_norm = layers.layer_norm(d_model, dtype=None, param_dtype=jnp.float32, rngs=rngs)
    self.ffn = layers.FeedForward(d_model, d_ff, activation="gelu", dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    h = self.attention_norm(x)
    x = x + self.dropout(self.attention(h, h, key_mask=mask)[0])
    x = x + self.dropout(self.ffn(self.ffn_norm(x)))
    return partitioning.constrain(x, ("batch", "length", "embed"))


class TextTaskClassifier(nnx.Module):
  """Cascade baseline: intent and slots from transcript tokens alone.

  A small bidirectional Transformer encoder; intent from the masked mean of
  its states, slot tags per token.
  """

  def __init__(
    self,
    vocab_size: int,
    d_model: int,
    num_heads: int,
    num_layers: int,
    d_ff: int,
    num_intents: int,
    num_slot_tags: int,
    max_len: int = 128,
    dropout: float = 0.0,
    *,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.max_len = max_len
    self.embed = nnx.Embed(
      vocab_size,
      d_model,
      dtype=dtype,
      embedding_init=partitioning.with_axes(nnx.initializers.normal(0.02), ("vocab", "embed")),
      rngs=rngs,
    )
    self.position_embedding = partitioning.param(
      rngs, nnx.initializers.normal(0.02), (max_len, d_model), ("length", "embed")
    )
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.layers = nnx.List(
      [
        TextEncoderLayer(d_model, num_heads, d_ff, dropout, dtype=dtype, rngs=rngs)
        for _ in range(num_layers)
      ]
    )
    self.final_norm = layers.layer_norm(d_model, dtype=None, param_dtype=jnp.float32, rngs=rngs)
    self.intent_head = partitioning.dense(
      d_model, num_intents, ("embed", "classes"), dtype=dtype, rngs=rngs
    )
    self.slot_head = partitioning.dense(
      d_model, num_slot_tags, ("embed", "classes"), dtype=dtype, rngs=rngs
    )

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs, **overrides):
    """Builds from a config section; `overrides` take precedence.

    Fields: vocab_size, d_model, num_heads, num_layers, d_ff, num_intents,
    num_slot_tags (required); max_len (128), dropout (0.0), dtype ("float32").
    """
    fields = {**dict(cfg), **overrides}
    return cls(
      vocab_size=fields["vocab_size"],
      d_model=fields["d_model"],
      num_heads=fields["num_heads"],
      num_layers=fields["num_layers"],
      d_ff=fields["d_ff"],
      num_intents=fields["num_intents"],
      num_slot_tags=fields["num_slot_tags"],
      max_len=fields.get("max_len", 128),
      dropout=fields.get("dropout", 0.0),
      dtype=_config_dtype(fields.get("dtype")),
      rngs=rngs,
    )

  def __call__(self, tokens: jax.Array, token_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Classifies.

    Args:
      tokens: [batch, tokens] int token ids.
      token_mask: [batch, tokens] bool, True = valid.

    Returns:
      intent logits [batch, num_intents] and slot logits
      [batch, tokens, num_slot_tags], float32.
    """
    length = tokens.shape[1]
    if length > self.max_len:
      raise ValueError(f"{length} tokens exceed max_len={self.max_len}")
    x = self.embed(tokens).astype(jnp.float32) + self.position_embedding[:length]
    x = self.dropout(x)  # [batch, tokens, d_model]
    for layer in self.layers:
      x = layer(x, token_mask)
    x = self.final_norm(x)
    count = token_mask.sum(axis=1, keepdims=True).astype(jnp.float32)
    pooled = jnp.where(token_mask[..., None], x, 0.0).sum(axis=1) / jnp.maximum(count, 1.0)
    intent_logits = self.intent_head(pooled).astype(jnp.float32)
    slot_logits = self.slot_head(x).astype(jnp.float32)
    return intent_logits, slot_logits
