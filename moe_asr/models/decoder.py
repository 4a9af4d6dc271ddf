"""Attention decoder whose feed-forward layers are routed experts, with a KV cache.

A pre-norm Transformer decoder: causal self-attention, cross-attention over the
encoder states, and a feed-forward layer that is a `MoeFeedForward` in the
blocks listed in `moe_layers` and a plain FFN elsewhere. The same blocks, built
without cross-attention and with plain FFNs, make the text LM (`lm.py`).

Routing by language. With the `language` (or `hybrid`) router every token needs
language posteriors:
- `token_lang_probs` [batch, length, num_languages], when given, is used as is:
  during teacher forcing, the one-hot language of the token being predicted.
- Otherwise each MoE block uses its *LID context*: its own cross-attention
  probabilities (mean over heads) times the encoder's frame LID posteriors
  `enc_lang_probs`. A token is routed by the language of the acoustic region it
  attends to, which follows code-switches inside an utterance without any
  token-level language labels at inference. The context is a routing signal,
  not a learned path: it is gradient-stopped, so router losses do not reshape
  the attention or the LID head.

Positions are sinusoidal (default) or learned. The output projection is tied
to the token embedding by default (logits = states @ embedding^T / sqrt(d_model),
as in the Flax WMT example), which saves vocab x d_model parameters and suits
small corpora; `tie_embeddings=False` gives a separate projection.

Incremental decoding keeps its state in a `DecoderCache`, a plain pytree of
arrays with an int32 position index, so `decode_step` runs inside
`jax.lax.while_loop` / `scan` (beam search reorders it with `take`). With a
dropless MoE (`MoeSettings.capacity_factor=None`) step-by-step decoding gives the logits of
the full forward pass. `decode_step(..., context=False)` runs the decoder
without acoustic context (zero cross-attention output), for internal LM
estimation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from moe_asr.data.languages import LANGUAGE_CODES
from moe_asr.models import partitioning
from moe_asr.models.layers import FeedForward, KVCache, MultiHeadAttention, layer_norm
from moe_asr.models.moe import MoeAux, MoeFeedForward, MoeSettings

_LANGUAGE_ROUTERS = ("language", "hybrid")


def sinusoidal_positions(positions: jax.Array, d_model: int) -> jax.Array:
  """Sinusoidal position encodings (sines in the first half, cosines in the second).

  Args:
    positions: integer positions of any shape.
    d_model: encoding width (even).

  Returns:
    float32 [*positions.shape, d_model].
  """
  half = d_model // 2
  inv_freq = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


@flax.struct.dataclass
class DecoderCache:
  """State of incremental decoding: a plain pytree, usable as a loop carry.

  Attributes:
    self_kv: per block, self-attention keys/values of positions < `index`.
    cross_kv: per block, cross-attention keys/values of the encoder states, when
      `init_cache` was given them (else None and they are computed each step).
    index: int32 scalar, the position of the next token.
  """

  self_kv: tuple[KVCache, ...]
  cross_kv: tuple[KVCache, ...] | None
  index: jax.Array

  def take(self, indices: jax.Array) -> DecoderCache:
    """The cache of batch rows `indices` (e.g. surviving beams), same index."""
    gather = lambda x: jnp.take(x, indices, axis=0)
    return self.replace(
      self_kv=jax.tree.map(gather, self.self_kv), cross_kv=jax.tree.map(gather, self.cross_kv)
    )


class DecoderBlock(nnx.Module):
  """Pre-norm block: causal self-attention, cross-attention (optional), FFN or MoE.

  The FFN is a `MoeFeedForward` with the settings `moe`, or a plain FFN when `moe` is
  None. Returns `(x, aux)` where `aux` is the block's `MoeAux`, or None when its FFN
  is plain.
  """

  def __init__(
    self,
    d_model: int,
    num_heads: int,
    d_ff: int,
    *,
    dropout: float = 0.0,
    cross_attention: bool = True,
    moe: MoeSettings | None = None,
    num_languages: int = len(LANGUAGE_CODES),
    activation: str = "swish",
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.moe = moe  # None: a plain FFN.
    self.self_norm = layer_norm(d_model, **kw)
    self.self_attention = MultiHeadAttention(d_model, num_heads, **kw)
    if cross_attention:
      self.cross_norm = layer_norm(d_model, **kw)
      self.cross_attention = MultiHeadAttention(d_model, num_heads, **kw)
    else:
      self.cross_norm = self.cross_attention = None
    self.ffn_norm = layer_norm(d_model, **kw)
    if moe is not None:
      self.ffn = MoeFeedForward(
        d_model,
        d_ff,
        moe,
        num_languages=num_languages,
        activation=activation,
        dropout=dropout,
        **kw,
      )
    else:
      self.ffn = FeedForward(d_model, d_ff, activation=activation, dropout=dropout, **kw)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  @property
  def needs_lang_probs(self) -> bool:
    return self.moe is not None and self.moe.router in _LANGUAGE_ROUTERS

  def __call__(
    self,
    x: jax.Array,
    mask: jax.Array,
    enc: jax.Array | None = None,
    enc_mask: jax.Array | None = None,
    *,
    lang_probs: jax.Array | None = None,
    enc_lang_probs: jax.Array | None = None,
  ) -> tuple[jax.Array, MoeAux | None]:
    """Full-sequence block.

    Args:
      x: [batch, length, d_model].
      mask: bool [batch, length].
      enc: encoder states [batch, frames, d_model] (cross-attention blocks).
      enc_mask: bool [batch, frames].
      lang_probs: routing posteriors [batch, length, num_languages], if known.
      enc_lang_probs: frame LID posteriors [batch, frames, num_languages], for
        routing by LID context when `lang_probs` is None.

    Returns:
      New x [batch, length, d_model] and the block's MoeAux (None if plain FFN).
    """
    h = self.self_norm(x)
    h, _ = self.self_attention(h, h, key_mask=mask, causal=True)
    x = x + self.dropout(h)
    cross_kv = None if self.cross_attention is None else self.cross_attention.project_kv(enc)
    return self._cross_and_ffn(x, mask, cross_kv, enc_mask, lang_probs, enc_lang_probs)

  def decode(
    self,
    x: jax.Array,
    cache: KVCache,
    index: jax.Array,
    enc: jax.Array | None,
    enc_mask: jax.Array | None,
    *,
    cross_kv: KVCache | None = None,
    lang_probs: jax.Array | None = None,
    enc_lang_probs: jax.Array | None = None,
    context: bool = True,
  ) -> tuple[jax.Array, MoeAux | None, KVCache]:
    """Incremental block on new positions `index..`; as `__call__` plus caches.

    Args:
      x: [batch, q_len, d_model], the new positions.
      cache: self-attention keys/values of earlier positions.
      index: int32 scalar, position of x[:, 0].
      enc: encoder states (unused when `cross_kv` is given).
      enc_mask: bool [batch, frames].
      cross_kv: precomputed cross-attention keys/values of `enc`.
      lang_probs: as in `__call__`, [batch, q_len, num_languages].
      enc_lang_probs: as in `__call__`.
      context: False drops the acoustic context (internal LM estimation): the
        cross-attention output is replaced by zeros, and routing by LID context
        falls back to `lang_probs` if given, else uniform language posteriors.

    Returns:
      New x, the block's MoeAux (or None) and the updated self-attention cache.
    """
    h, cache = self.self_attention.decode(self.self_norm(x), cache, index)
    x = x + self.dropout(h)
    if self.cross_attention is not None and cross_kv is None and context:
      cross_kv = self.cross_attention.project_kv(enc)
    mask = jnp.ones(x.shape[:2], bool)
    x, aux = self._cross_and_ffn(
      x, mask, cross_kv, enc_mask, lang_probs, enc_lang_probs, context=context
    )
    return x, aux, cache

  def _cross_and_ffn(
    self, x, mask, cross_kv, enc_mask, lang_probs, enc_lang_probs, *, context: bool = True
  ):
    cross_probs = None
    if self.cross_attention is not None and context:
      want_probs = self.needs_lang_probs and lang_probs is None
      allowed = enc_mask[:, None, None, :]  # [batch, 1, 1, frames]
      h, cross_probs = self.cross_attention.attend(
        self.cross_norm(x), cross_kv, allowed, return_probs=want_probs
      )
      x = x + self.dropout(h)
    h = self.ffn_norm(x)
    aux = None
    if self.moe is not None:
      if self.needs_lang_probs and lang_probs is None:
        if context:
          lang_probs = self._lid_context(cross_probs, enc_lang_probs, enc_mask)
        else:
          num_languages = self.ffn.num_languages
          lang_probs = jnp.full((*x.shape[:2], num_languages), 1.0 / num_languages, jnp.float32)
      h, aux = self.ffn(h, mask, lang_probs=lang_probs)
    else:
      h = self.ffn(h)
    x = x + self.dropout(h)
    return partitioning.constrain(x, ("batch", "length", "embed")), aux

  def _lid_context(self, cross_probs, enc_lang_probs, enc_mask) -> jax.Array:
    """Language posteriors of the attended acoustic region [batch, length, num_languages]."""
    if cross_probs is None or enc_lang_probs is None:
      raise ValueError(
        f"The {self.moe.router!r} router needs token_lang_probs, or enc_lang_probs in a "
        "block with cross-attention."
      )
    enc_lang = jnp.where(enc_mask[..., None], enc_lang_probs.astype(jnp.float32), 0.0)
    context = jnp.einsum("blt,btn->bln", cross_probs.mean(axis=1), enc_lang)
    return jax.lax.stop_gradient(context)


class TokenEmbedder(nnx.Module):
  """Token embedding + positions on the way in; output projection on the way out."""

  def __init__(
    self,
    vocab_size: int,
    d_model: int,
    max_len: int,
    *,
    positions: str = "sinusoidal",
    tie_embeddings: bool = True,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if positions not in ("sinusoidal", "learned"):
      raise ValueError(f"positions must be 'sinusoidal' or 'learned', got {positions!r}")
    self.d_model = d_model
    self.max_len = max_len
    self.dtype = dtype
    self.tie_embeddings = tie_embeddings
    self.embedding = partitioning.param(
      rngs, nnx.initializers.normal(1.0), (vocab_size, d_model), ("vocab", "embed"), param_dtype
    )
    self.positions = positions
    if positions == "learned":
      self.position_embedding = partitioning.param(
        rngs, nnx.initializers.normal(0.02), (max_len, d_model), ("length", "embed"), param_dtype
      )
    self.output = (
      None
      if tie_embeddings
      else partitioning.dense(
        d_model, vocab_size, ("embed", "vocab"), dtype=dtype, param_dtype=param_dtype, rngs=rngs
      )
    )

  def check_length(self, length: int) -> None:
    """Raises if learned positions cannot cover `length` tokens."""
    if self.positions == "learned" and length > self.max_len:
      raise ValueError(f"{length} positions exceed max_len={self.max_len} (learned positions)")

  def embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
    """Embeddings [*tokens.shape, d_model] in the compute dtype of tokens at `positions`."""
    x = jnp.take(self.embedding[...], tokens, axis=0)
    if self.positions == "sinusoidal":
      x = x + sinusoidal_positions(positions, self.d_model)
    else:
      x = x + jnp.take(self.position_embedding[...], positions, axis=0, mode="clip")
    return x.astype(self.dtype)

  def logits(self, states: jax.Array) -> jax.Array:
    """float32 logits [..., vocab] of hidden `states` [..., d_model]."""
    if self.output is not None:
      return self.output(states).astype(jnp.float32)
    table = self.embedding[...].astype(self.dtype)
    logits = jnp.einsum(
      "...d,vd->...v", states.astype(self.dtype), table, preferred_element_type=jnp.float32
    )
    return logits / jnp.sqrt(jnp.float32(self.d_model))


@flax.struct.dataclass
class DecoderOutput:
  """Outputs of `TransformerDecoder.__call__`."""

  logits: jax.Array  # [batch, length, vocab] float32
  states: jax.Array  # [batch, length, d_model] after the final norm, compute dtype
  moe_aux: MoeAux  # mean over MoE blocks (zeros without any)
  expert_load: jax.Array  # [num_moe_layers, num_experts]


class TransformerDecoder(nnx.Module):
  """Attention decoder over encoder states with routed-expert FFNs (module docstring)."""

  def __init__(
    self,
    vocab_size: int,
    d_model: int,
    num_heads: int,
    num_layers: int,
    d_ff: int,
    dropout: float = 0.1,
    max_len: int = 256,
    *,
    moe_layers: Sequence[int] = (),
    moe: MoeSettings | None = None,
    num_languages: int = len(LANGUAGE_CODES),
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    positions: str = "sinusoidal",
    tie_embeddings: bool = True,
    activation: str = "swish",
    rngs: nnx.Rngs,
  ):
    """Builds the decoder.

    Args:
      vocab_size: output vocabulary (the tokenizer's `vocab_size`).
      d_model: model width.
      num_heads: attention heads.
      num_layers: decoder blocks.
      d_ff: feed-forward width (of each expert in MoE blocks).
      dropout: residual/FFN dropout rate.
      max_len: longest token sequence (learned positions; cache default).
      moe_layers: indices of the blocks whose FFN is a `MoeFeedForward`.
      moe: the settings of those blocks' experts (`moe.MoeSettings`: num_experts, router,
        top_k, capacity_factor, shared_expert, language_soft, grouped_matmul, block_size,
        expert_map, ...; None = the defaults).
      num_languages: language posteriors' width.
      dtype: compute dtype (float32 or bfloat16).
      param_dtype: parameter dtype.
      positions: "sinusoidal" or "learned".
      tie_embeddings: output projection = token embedding transposed.
      activation: FFN activation ("swish", "gelu", "relu"), experts' included.
      rngs: parameter and dropout keys.
    """
    moe_layers = tuple(sorted(set(int(i) for i in moe_layers)))
    moe = MoeSettings() if moe is None else moe
    if any(not 0 <= i < num_layers for i in moe_layers):
      raise ValueError(f"moe_layers {moe_layers} outside [0, {num_layers})")
    if moe_layers and moe.num_experts < 1:
      raise ValueError("moe_layers need num_experts >= 1")
    self.vocab_size = vocab_size
    self.d_model = d_model
    self.num_heads = num_heads
    self.max_len = max_len
    self.moe_layers = moe_layers
    self.num_experts = moe.num_experts
    self.num_languages = num_languages
    self.dtype = dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.embedder = TokenEmbedder(
      vocab_size, d_model, max_len, positions=positions, tie_embeddings=tie_embeddings, **kw
    )
    self.embed_dropout = nnx.Dropout(dropout, rngs=rngs)
    self.blocks = nnx.List(
      [
        DecoderBlock(
          d_model,
          num_heads,
          d_ff,
          dropout=dropout,
          cross_attention=True,
          moe=moe if i in moe_layers else None,
          num_languages=num_languages,
          activation=activation,
          **kw,
        )
        for i in range(num_layers)
      ]
    )
    self.final_norm = layer_norm(d_model, **kw)

  @classmethod
  def from_config(
    cls, cfg: ml_collections.ConfigDict, *, vocab_size: int | None = None, rngs: nnx.Rngs
  ) -> TransformerDecoder:
    """Builds the decoder from a config section.

    Fields (defaults in brackets): vocab_size (unless passed as an
    argument), d_model, num_heads, num_layers, d_ff, dropout [0.1],
    max_len [256], moe_layers [()], num_languages [7], dtype ["float32" |
    "bfloat16"], param_dtype ["float32"], positions ["sinusoidal"],
    tie_embeddings [True], activation ["swish"], and the experts' settings, read by
    `moe.MoeSettings.from_config` with the encoder's defaults: num_experts, router,
    top_k, capacity_factor, shared_expert, language_soft, grouped_matmul,
    moe_block_size, expert_map.
    """
    get = cfg.get
    if vocab_size is None:
      vocab_size = cfg.vocab_size
    return cls(
      vocab_size,
      cfg.d_model,
      cfg.num_heads,
      cfg.num_layers,
      cfg.d_ff,
      get("dropout", 0.1),
      get("max_len", 256),
      moe_layers=tuple(get("moe_layers", ())),
      moe=MoeSettings.from_config(cfg),
      num_languages=get("num_languages", len(LANGUAGE_CODES)),
      dtype=jnp.dtype(get("dtype", "float32")),
      param_dtype=jnp.dtype(get("param_dtype", "float32")),
      positions=get("positions", "sinusoidal"),
      tie_embeddings=get("tie_embeddings", True),
      activation=get("activation", "swish"),
      rngs=rngs,
    )

  @jax.named_scope("attention_decoder")
  def __call__(
    self,
    tokens: jax.Array,
    token_mask: jax.Array,
    enc: jax.Array,
    enc_mask: jax.Array,
    *,
    token_lang_probs: jax.Array | None = None,
    enc_lang_probs: jax.Array | None = None,
  ) -> DecoderOutput:
    """Teacher-forced forward pass.

    Args:
      tokens: int [batch, length], inputs (bos + labels[:-1], see `shift_right`).
      token_mask: bool [batch, length].
      enc: encoder states [batch, frames, d_model].
      enc_mask: bool [batch, frames].
      token_lang_probs: [batch, length, num_languages], language of each token
        being predicted (routing); None routes by LID context.
      enc_lang_probs: frame LID posteriors [batch, frames, num_languages].

    Returns:
      A `DecoderOutput`.
    """
    self.embedder.check_length(tokens.shape[1])
    positions = jnp.arange(tokens.shape[1])[None, :]
    x = self.embed_dropout(self.embedder.embed(tokens, positions))  # [batch, length, d_model]
    x = partitioning.constrain(x, ("batch", "length", "embed"))
    auxes = []
    for block in self.blocks:
      x, aux = block(
        x,
        token_mask,
        enc,
        enc_mask,
        lang_probs=token_lang_probs,
        enc_lang_probs=enc_lang_probs,
      )
      if aux is not None:
        auxes.append(aux)
    states = self.final_norm(x)
    return DecoderOutput(
      logits=self.embedder.logits(states),
      states=states,
      moe_aux=MoeAux.mean(auxes) if auxes else MoeAux.zeros(self.num_experts),
      expert_load=self._expert_load(auxes),
    )

  def _expert_load(self, auxes: list[MoeAux]) -> jax.Array:
    if not auxes:
      return jnp.zeros((0, self.num_experts), jnp.float32)
    return jnp.stack([a.expert_load for a in auxes])

  def init_cache(
    self, batch_size: int, max_len: int | None = None, dtype=None, *, enc: jax.Array | None = None
  ) -> DecoderCache:
    """Empty cache for `decode_step`.

    Args:
      batch_size: rows decoded together (e.g. batch x beams).
      max_len: longest decoded sequence (default: the model's `max_len`).
      dtype: cache dtype (default: the compute dtype).
      enc: encoder states [batch_size, frames, d_model]; when given, their
        cross-attention keys/values are computed once here instead of per step.

    Returns:
      A `DecoderCache` at index 0.
    """
    max_len = max_len or self.max_len
    self.embedder.check_length(max_len)
    dtype = dtype or self.dtype
    shape = (batch_size, max_len, self.num_heads, self.d_model // self.num_heads)
    self_kv = tuple(
      KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype)) for _ in self.blocks
    )
    cross_kv = None
    if enc is not None:
      cross_kv = tuple(block.cross_attention.project_kv(enc) for block in self.blocks)
    return DecoderCache(self_kv=self_kv, cross_kv=cross_kv, index=jnp.zeros((), jnp.int32))

  def decode_step(
    self,
    token: jax.Array,
    cache: DecoderCache,
    enc: jax.Array | None,
    enc_mask: jax.Array,
    *,
    token_lang_probs: jax.Array | None = None,
    enc_lang_probs: jax.Array | None = None,
    context: bool = True,
  ) -> tuple[jax.Array, jax.Array, DecoderCache]:
    """One decoding step at position `cache.index`.

    Args:
      token: int [batch], the previous token (bos at the first step).
      cache: from `init_cache` or the previous step.
      enc: encoder states [batch, frames, d_model] (may be None when the cache
        holds their keys/values).
      enc_mask: bool [batch, frames].
      token_lang_probs: [batch, num_languages] routing posteriors of the token
        being predicted; None routes by LID context.
      enc_lang_probs: frame LID posteriors [batch, frames, num_languages].
      context: False runs the decoder without acoustic context, for internal
        LM estimation ("zero context" ILME): cross-attention contributes zeros
        and routing by LID context falls back to `token_lang_probs` if given,
        else uniform language posteriors. `enc` and `enc_mask` are then unused.

    Returns:
      float32 logits [batch, vocab] of the next token, final state
      [batch, d_model], and the advanced cache.
    """
    if context and enc is None and cache.cross_kv is None:
      raise ValueError("decode_step needs enc unless init_cache was given enc")
    index = cache.index
    x = self.embed_dropout(self.embedder.embed(token[:, None], index[None, None]))
    lang_probs = None if token_lang_probs is None else token_lang_probs[:, None, :]
    new_kv = []
    for i, block in enumerate(self.blocks):
      x, _, kv = block.decode(
        x,
        cache.self_kv[i],
        index,
        enc,
        enc_mask,
        cross_kv=None if cache.cross_kv is None else cache.cross_kv[i],
        lang_probs=lang_probs,
        enc_lang_probs=enc_lang_probs,
        context=context,
      )
      new_kv.append(kv)
    state = self.final_norm(x)[:, 0]  # [batch, d_model]
    cache = cache.replace(self_kv=tuple(new_kv), index=index + 1)
    return self.embedder.logits(state), state, cache


def shift_right(
  labels: jax.Array, label_mask: jax.Array, bos_id: int
) -> tuple[jax.Array, jax.Array]:
  """Teacher-forcing inputs: bos followed by labels[:-1].

  Args:
    labels: int [batch, length], targets (typically ending with eos).
    label_mask: bool [batch, length].
    bos_id: id of the start token.

  Returns:
    inputs int [batch, length] and their mask (= label_mask: input i predicts
    label i, so it is valid exactly when label i is).
  """
  bos = jnp.full_like(labels[:, :1], bos_id)
  inputs = jnp.concatenate([bos, labels[:, :-1]], axis=1)
  return jnp.where(label_mask, inputs, 0), label_mask


@jax.named_scope("att_loss")
def attention_loss(
  logits: jax.Array,
  labels: jax.Array,
  label_mask: jax.Array,
  label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
  """Cross-entropy averaged over valid tokens, in float32.

  With smoothing eps the target is (1 - eps) * one_hot + eps / vocab.

  Args:
    logits: [batch, length, vocab].
    labels: int [batch, length].
    label_mask: bool [batch, length].
    label_smoothing: eps in [0, 1).

  Returns:
    (mean loss over valid tokens, number of valid tokens), both float32 scalars.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
  if label_smoothing:
    nll = (1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean(axis=-1)
  mask = label_mask.astype(jnp.float32)
  num_tokens = mask.sum()
  return (nll * mask).sum() / jnp.maximum(num_tokens, 1.0), num_tokens
