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

Slots are tagged per word (`slot_tagger="word"`, the presets' choice): the bridge's
token states of each word are pooled (mean and last piece), `WordTagger` runs
bidirectional layers over the words that also attend to the audio, and one BIO tag
is predicted per word, as end-to-end SLU taggers and text NER taggers do. Every
token of a word then carries the word's distribution, and the slot loss reads each
word once (`pipeline._LoadBatch` puts a word's tag on its last piece only). The words
of a token sequence come from the tokenizer's word-start table (`word_index`), so
the same grouping applies to references in training and to hypotheses on device.
`slot_tagger="token"` keeps the earlier design: a linear head on each causal token
state.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from moe_asr.data import languages
from moe_asr.models import layers, partitioning

SLOT_TAGGERS = ("token", "word")


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


def word_index(tokens: jax.Array, mask: jax.Array, table: jax.Array) -> jax.Array:
  """The word of each token, on device: int32 [batch, tokens], -1 for no word.

  Args:
    tokens: int [batch, tokens].
    mask: bool [batch, tokens], True = valid.
    table: int8 [vocab] from `Tokenizer.word_table` (1 starts a word, 0 continues
      one, -1 belongs to none).

  Words are numbered from 0 in order, as `Tokenizer.word_spans` groups them: a
  word-start piece opens a word, and so does a continuation piece that follows no
  word (the sequence start or a symbol).
  """
  kind = jnp.where(mask, jnp.asarray(table)[jnp.clip(tokens, 0, table.shape[0] - 1)], -1)
  previous = jnp.pad(kind[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  starts = (kind == 1) | ((kind == 0) & (previous < 0))
  words = jnp.cumsum(starts.astype(jnp.int32), axis=1) - 1
  return jnp.where(kind >= 0, words, -1).astype(jnp.int32)


def last_piece_mask(token_word: jax.Array) -> jax.Array:
  """bool [batch, tokens]: True at the last token of each word (where slot tags are read)."""
  following = jnp.pad(token_word[:, 1:], ((0, 0), (0, 1)), constant_values=-1)
  return (token_word >= 0) & (following != token_word)


def word_hashes(tokens: jax.Array, token_word: jax.Array, num_words: int, buckets: int):
  """int32 [batch, num_words]: a hash of each word's token ids, in [0, buckets).

  A polynomial hash (wrapping uint32 arithmetic) of the ids in order, so two words
  share a bucket only when their pieces are the same or by collision; words with no
  tokens (padding) hash like the empty word. `token_word` as `word_index` gives it.
  """
  batch, length = tokens.shape
  positions = jnp.arange(length)
  previous = jnp.pad(token_word[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  starts = jnp.where(token_word != previous, positions[None, :], 0)
  offset = positions[None, :] - jax.lax.cummax(starts, axis=1)  # Position within the word.
  ids = tokens.astype(jnp.uint32) + jnp.uint32(1)
  terms = ids * jnp.power(jnp.uint32(0x01000193), offset.astype(jnp.uint32))
  in_word = (token_word >= 0) & (token_word < num_words)
  segments = jnp.where(
    in_word, token_word + num_words * jnp.arange(batch)[:, None], batch * num_words
  )
  sums = jax.ops.segment_sum(
    jnp.where(in_word, terms, jnp.uint32(0)).reshape(-1),
    segments.reshape(-1),
    num_segments=batch * num_words + 1,
  )[:-1].reshape(batch, num_words)
  # Mixing (murmur3's finaliser) so the low bits depend on every id.
  h = sums ^ (sums >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  h = h ^ (h >> 16)
  return (h % jnp.uint32(buckets)).astype(jnp.int32)


class WordLayer(nnx.Module):
  """Pre-norm layer over words: bidirectional self-attention, attention to the audio, FFN."""

  def __init__(
    self, d_model: int, num_heads: int, d_ff: int, dropout: float, *, dtype, rngs: nnx.Rngs
  ):
    norm = lambda: layers.layer_norm(d_model, dtype=None, param_dtype=jnp.float32, rngs=rngs)
    self.self_norm, self.cross_norm, self.ffn_norm = norm(), norm(), norm()
    self.self_attention = layers.MultiHeadAttention(d_model, num_heads, dtype=dtype, rngs=rngs)
    self.cross_attention = layers.MultiHeadAttention(d_model, num_heads, dtype=dtype, rngs=rngs)
    self.ffn = layers.FeedForward(d_model, d_ff, activation="gelu", dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x, mask, audio, audio_mask):
    h = self.self_norm(x)
    x = x + self.dropout(self.self_attention(h, h, key_mask=mask)[0])
    x = x + self.dropout(self.cross_attention(self.cross_norm(x), audio, key_mask=audio_mask)[0])
    x = x + self.dropout(self.ffn(self.ffn_norm(x)))
    return partitioning.constrain(x, ("batch", "length", "embed"))


class WordTagger(nnx.Module):
  """Word states for slot tagging: token states pooled per word, then `WordLayer`s.

  A word's input is a projection of [mean of its token states ; its last token's
  state] plus a learned embedding of its position among the words. With `vocab_size`,
  each token state first gets an embedding of the token itself: the word's identity,
  which entity lists and context words key on, reaches the tagger directly rather than
  through decoder states trained to predict the next token. There are
  min(tokens, max_words) word positions (a word has at least one token), so shapes
  stay static; tokens of words beyond `max_words` belong to none.

  With `hash_buckets`, each word also gets an embedding of the word itself, looked up
  by a hash of its token ids (`word_hashes`; fastText-style hashing, collisions shared):
  the tagger can key a slot on the whole word from the first time it sees it, instead
  of composing its identity from character embeddings.
  """

  def __init__(
    self,
    d_model: int,
    num_heads: int,
    num_layers: int,
    d_ff: int,
    dropout: float,
    max_words: int,
    vocab_size: int = 0,
    hash_buckets: int = 0,
    hash_dim: int = 64,
    *,
    dtype,
    rngs: nnx.Rngs,
  ):
    self.hash_buckets = hash_buckets
    hashed = hash_projection = None
    if hash_buckets:
      hashed = nnx.Embed(
        hash_buckets,
        hash_dim,
        embedding_init=partitioning.with_axes(nnx.initializers.normal(1.0), ("vocab", None)),
        rngs=rngs,
      )
      hash_projection = partitioning.dense(
        hash_dim, d_model, (None, "embed"), dtype=dtype, rngs=rngs
      )
    self.word_embedding = nnx.data(hashed)
    self.word_projection = nnx.data(hash_projection)
    embedding = None
    if vocab_size:
      embedding = nnx.Embed(
        vocab_size,
        d_model,
        embedding_init=partitioning.with_axes(nnx.initializers.normal(0.02), ("vocab", "embed")),
        rngs=rngs,
      )
    self.token_embedding = nnx.data(embedding)
    self.pool = partitioning.dense(2 * d_model, d_model, ("mlp", "embed"), dtype=dtype, rngs=rngs)
    self.position_embedding = partitioning.param(
      rngs, nnx.initializers.normal(0.02), (max_words, d_model), ("length", "embed")
    )
    self.layers = nnx.List(
      [
        WordLayer(d_model, num_heads, d_ff, dropout, dtype=dtype, rngs=rngs)
        for _ in range(num_layers)
      ]
    )
    self.norm = layers.layer_norm(d_model, dtype=None, param_dtype=jnp.float32, rngs=rngs)

  def __call__(
    self, token_states, token_word, audio, audio_mask, tokens=None
  ) -> tuple[jax.Array, jax.Array]:
    """Word states [batch, words, d_model] and the float32 membership [batch, words, tokens]
    of tokens in words (words = min(tokens, max_words))."""
    positions = self.position_embedding[...]
    num_words = min(token_states.shape[1], positions.shape[0])
    words = jnp.arange(num_words)
    member = (token_word[:, None, :] == words[None, :, None]).astype(jnp.float32)  # [B, W, T]
    count = member.sum(-1, keepdims=True)
    word_mask = count[..., 0] > 0
    x = token_states.astype(jnp.float32)
    if self.token_embedding is not None:
      if tokens is None:
        raise ValueError("This word tagger embeds the tokens: pass them")
      x = x + self.token_embedding(tokens).astype(jnp.float32)
    mean = jnp.einsum("bwt,btd->bwd", member, x) / jnp.maximum(count, 1.0)
    last = member * last_piece_mask(token_word)[:, None, :].astype(jnp.float32)
    last = jnp.einsum("bwt,btd->bwd", last, x)
    x = self.pool(jnp.concatenate([mean, last], -1)).astype(jnp.float32)
    if self.word_embedding is not None:
      if tokens is None:
        raise ValueError("This word tagger embeds whole words: pass the tokens")
      hashes = word_hashes(tokens, token_word, num_words, self.hash_buckets)
      x = x + self.word_projection(self.word_embedding(hashes)).astype(jnp.float32)
    x = jnp.where(word_mask[..., None], x + positions[:num_words], 0.0)
    for layer in self.layers:
      x = layer(x, word_mask, audio, audio_mask)
    x = self.norm(x)
    return jnp.where(word_mask[..., None], x, 0.0), member


@flax.struct.dataclass
class TaskOutput:
  """Task predictions, all float32.

  Attributes:
    intent_log_probs: [batch, num_intents] log of the LID-weighted mixture.
    slot_log_probs: [batch, tokens, num_slot_tags] likewise per token.
    per_language_intent_logits: [batch, num_languages, num_intents].
  """

  intent_log_probs: jax.Array
  slot_log_probs: jax.Array | None  # None where the slots were not asked for.
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
    slot_tagger: str = "token",
    word_layers: int = 2,
    max_words: int = 128,
    vocab_size: int = 0,
    word_hash_buckets: int = 0,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if slot_tagger not in SLOT_TAGGERS:
      raise ValueError(f"slot_tagger={slot_tagger!r}; expected one of {SLOT_TAGGERS}")
    self.num_languages = num_languages
    self.dtype = dtype
    self.slot_tagger = slot_tagger
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
    tagger = None
    if slot_tagger == "word":
      tagger = WordTagger(
        d_model,
        num_heads,
        word_layers,
        d_ff or 4 * d_model,
        dropout,
        max_words,
        vocab_size,
        word_hash_buckets,
        dtype=dtype,
        rngs=rngs,
      )
    self.word_tagger = nnx.data(tagger)
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
    (their hidden width, 4 * d_model), slot_tagger ("token", or "word": `WordTagger`),
    word_layers (2: its layers), max_words (128: its positions), word_token_embedding
    (False; True with vocab_size: the tagger embeds the tokens too), word_hash_buckets
    (0; > 0: the tagger embeds whole words by hash, see `WordTagger`), dtype ("float32" |
    "bfloat16", default float32).
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
      slot_tagger=fields.get("slot_tagger", "token"),
      word_layers=fields.get("word_layers", 2),
      max_words=fields.get("max_words", 128),
      vocab_size=fields.get("vocab_size", 0) if fields.get("word_token_embedding") else 0,
      word_hash_buckets=fields.get("word_hash_buckets", 0),
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
    token_word: jax.Array | None = None,
    with_slots: bool = True,
    tokens: jax.Array | None = None,
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
      token_word: int [batch, tokens] word of each token (-1 none; `word_index`), read
        by the word tagger; None makes each valid token a word of its own.
      with_slots: False skips the slot tagger (where only the intent is read); the
        output's `slot_log_probs` is then None.
      tokens: int [batch, tokens], the token ids (a word tagger that embeds them).

    Returns:
      TaskOutput. With the word tagger, each token's slot distribution is its word's
      (tokens of no word get a uniform one).
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
    if token_lang_probs is None:
      token_lang_probs = jnp.broadcast_to(
        lang_probs[:, None, :], (*token_states.shape[:2], lang_probs.shape[-1])
      )
    if not with_slots:
      slot_log_probs = None
    elif self.word_tagger is None:
      slot_logits = self._heads(token_states, self.slot_kernel, self.slot_bias, "btd,ldc->btlc")
      slot_log_probs = _mixture_log_probs(slot_logits, token_lang_probs, lang_axis=2)
    else:
      if token_word is None:
        token_word = jnp.where(token_mask, jnp.arange(token_mask.shape[1])[None, :], -1)
      token_word = jnp.where(token_mask, token_word, -1)
      audio = jnp.where(enc_mask[..., None], enc_states, 0).astype(jnp.float32)
      if stop_gradient:
        audio = jax.lax.stop_gradient(audio)
      word_states, member = self.word_tagger(token_states, token_word, audio, enc_mask, tokens)
      token_word = jnp.where(token_word < word_states.shape[1], token_word, -1)
      word_states = self.dropout(word_states)
      word_logits = self._heads(word_states, self.slot_kernel, self.slot_bias, "bwd,ldc->bwlc")
      # A word's language: the mean of its tokens' language posteriors.
      word_lang = jnp.einsum("bwt,btl->bwl", member, token_lang_probs.astype(jnp.float32))
      count = member.sum(-1, keepdims=True)
      # Padding words get a uniform mixture, so no -inf reaches the backward pass.
      word_lang = jnp.where(
        count > 0, word_lang / jnp.maximum(count, 1.0), 1.0 / word_lang.shape[-1]
      )
      word_log_probs = _mixture_log_probs(word_logits, word_lang, lang_axis=2)  # [B, W, tags]
      slot_log_probs = jnp.take_along_axis(
        word_log_probs, jnp.maximum(token_word, 0)[..., None], axis=1
      )
      num_tags = word_log_probs.shape[-1]
      slot_log_probs = jnp.where(
        (token_word >= 0)[..., None], slot_log_probs, -jnp.log(float(num_tags))
      )
    return TaskOutput(
      intent_log_probs=_mixture_log_probs(intent_logits, lang_probs, lang_axis=1),
      slot_log_probs=slot_log_probs,
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
