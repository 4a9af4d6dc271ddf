"""Text language model for shallow fusion and n-best rescoring.

A causal Transformer built from the decoder's blocks without cross-attention
(`DecoderBlock(cross_attention=False)`, plain FFNs), with the decoder's
incremental API (`init_cache` / `decode_step`), so beam search drives both the
same way. `training.text_lm.train_lm` trains one on normalised text (the corpus
transcripts plus any extra text file) with AdamW.

Sequences are scored as `<s> w1 .. wn </s>`: the model sees `<s> w1 .. wn` and
predicts `w1 .. wn </s>`; `score` gives log P(labels) given `<s>`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from moe_asr.models import partitioning
from moe_asr.models.decoder import (
  DecoderBlock,
  DecoderCache,
  TokenEmbedder,
  attention_loss,
  shift_right,
)
from moe_asr.models.layers import KVCache, layer_norm

BOS_ID = 2  # The tokenizer's `<s>`.


class TransformerLM(nnx.Module):
  """Causal Transformer LM over the shared vocabulary."""

  def __init__(
    self,
    vocab_size: int,
    d_model: int,
    num_heads: int,
    num_layers: int,
    d_ff: int,
    dropout: float = 0.1,
    max_len: int = 128,
    dtype=jnp.float32,
    *,
    param_dtype=jnp.float32,
    bos_id: int = BOS_ID,
    positions: str = "sinusoidal",
    tie_embeddings: bool = True,
    activation: str = "swish",
    rngs: nnx.Rngs,
  ):
    """Builds the LM.

    Args:
      vocab_size: vocabulary (the tokenizer's `vocab_size`).
      d_model: model width.
      num_heads: attention heads.
      num_layers: blocks.
      d_ff: feed-forward width.
      dropout: residual/FFN dropout rate.
      max_len: longest sequence (learned positions; cache default).
      dtype: compute dtype (float32 or bfloat16).
      param_dtype: parameter dtype.
      bos_id: start token prepended by `score` and `lm_loss`.
      positions: "sinusoidal" or "learned".
      tie_embeddings: output projection = token embedding transposed.
      activation: FFN activation.
      rngs: parameter and dropout keys.
    """
    self.vocab_size = vocab_size
    self.d_model = d_model
    self.num_heads = num_heads
    self.max_len = max_len
    self.bos_id = bos_id
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
          cross_attention=False,
          activation=activation,
          **kw,
        )
        for _ in range(num_layers)
      ]
    )
    self.final_norm = layer_norm(d_model, **kw)

  @classmethod
  def from_config(
    cls, cfg: ml_collections.ConfigDict, *, vocab_size: int | None = None, rngs: nnx.Rngs
  ) -> TransformerLM:
    """Builds the LM from a config section.

    Fields (defaults in brackets): vocab_size (unless passed as an
    argument), d_model, num_heads, num_layers, d_ff, dropout [0.1],
    max_len [128], dtype ["float32"], param_dtype ["float32"], bos_id [2],
    positions ["sinusoidal"], tie_embeddings [True], activation ["swish"].
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
      get("max_len", 128),
      jnp.dtype(get("dtype", "float32")),
      param_dtype=jnp.dtype(get("param_dtype", "float32")),
      bos_id=get("bos_id", BOS_ID),
      positions=get("positions", "sinusoidal"),
      tie_embeddings=get("tie_embeddings", True),
      activation=get("activation", "swish"),
      rngs=rngs,
    )

  def __call__(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Next-token logits.

    Args:
      tokens: int [batch, length] inputs (starting with bos).
      mask: bool [batch, length].

    Returns:
      float32 logits [batch, length, vocab]; row i predicts token i + 1.
    """
    self.embedder.check_length(tokens.shape[1])
    positions = jnp.arange(tokens.shape[1])[None, :]
    x = self.embed_dropout(self.embedder.embed(tokens, positions))  # [batch, length, d_model]
    x = partitioning.constrain(x, ("batch", "length", "embed"))
    for block in self.blocks:
      x, _ = block(x, mask)
    return self.embedder.logits(self.final_norm(x))

  def score(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Log-probability of each sequence given bos (for n-best rescoring).

    Args:
      tokens: int [batch, length], the scored tokens (append eos to score
        sentence ends), without bos.
      mask: bool [batch, length].

    Returns:
      float32 [batch], sum over valid tokens of log P(token | bos, earlier tokens).
    """
    inputs, input_mask = shift_right(tokens, mask, self.bos_id)
    log_probs = jax.nn.log_softmax(self(inputs, input_mask), axis=-1)
    token_lp = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
    return jnp.where(mask, token_lp, 0.0).sum(axis=-1)

  def init_cache(self, batch_size: int, max_len: int | None = None, dtype=None) -> DecoderCache:
    """Empty cache for `decode_step` (see `TransformerDecoder.init_cache`)."""
    max_len = max_len or self.max_len
    self.embedder.check_length(max_len)
    dtype = dtype or self.dtype
    shape = (batch_size, max_len, self.num_heads, self.d_model // self.num_heads)
    self_kv = tuple(
      KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype)) for _ in self.blocks
    )
    return DecoderCache(self_kv=self_kv, cross_kv=None, index=jnp.zeros((), jnp.int32))

  def decode_step(
    self, token: jax.Array, cache: DecoderCache
  ) -> tuple[jax.Array, jax.Array, DecoderCache]:
    """One step at position `cache.index`.

    Args:
      token: int [batch], the previous token (bos at the first step).
      cache: from `init_cache` or the previous step.

    Returns:
      float32 logits [batch, vocab] of the next token, final state
      [batch, d_model], and the advanced cache.
    """
    index = cache.index
    x = self.embed_dropout(self.embedder.embed(token[:, None], index[None, None]))
    new_kv = []
    for block, kv in zip(self.blocks, cache.self_kv, strict=True):
      x, _, kv = block.decode(x, kv, index, None, None)
      new_kv.append(kv)
    state = self.final_norm(x)[:, 0]  # [batch, d_model]
    cache = cache.replace(self_kv=tuple(new_kv), index=index + 1)
    return self.embedder.logits(state), state, cache


def lm_loss(
  model: TransformerLM,
  labels: jax.Array,
  label_mask: jax.Array,
  *,
  label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
  """Mean next-token cross-entropy of `labels` given bos.

  Args:
    model: the LM.
    labels: int [batch, length], e.g. `w1 .. wn </s>` padded.
    label_mask: bool [batch, length].
    label_smoothing: as in `attention_loss`.

  Returns:
    (mean loss over valid tokens, number of valid tokens), float32 scalars.
  """
  inputs, input_mask = shift_right(labels, label_mask, model.bos_id)
  return attention_loss(model(inputs, input_mask), labels, label_mask, label_smoothing)
