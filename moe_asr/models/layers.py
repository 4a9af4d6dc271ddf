"""Building blocks shared by the encoder, decoder, LM and task heads.

Layer norm and feed-forward layers with logically named parameters, and
multi-head attention with a KV cache (the decoder and LM decode step by step;
the task-head bridge and the text classifier use it over whole sequences).
"""

from __future__ import annotations

from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from moe_asr.models import partitioning

# Config names of compute dtypes.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "swish": jax.nn.silu,
  "silu": jax.nn.silu,
  "gelu": jax.nn.gelu,
  "relu": jax.nn.relu,
}


def layer_norm(d_model: int, *, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """`nnx.LayerNorm` with logically named scale and bias."""
  return nnx.LayerNorm(
    d_model,
    dtype=dtype,
    param_dtype=param_dtype,
    scale_init=partitioning.with_axes(nnx.initializers.ones_init(), ("norm",)),
    bias_init=partitioning.with_axes(nnx.initializers.zeros_init(), ("norm",)),
    rngs=rngs,
  )


@flax.struct.dataclass
class KVCache:
  """Keys and values of one attention layer."""

  k: jax.Array  # [batch, max_len, heads, head_dim]
  v: jax.Array  # [batch, max_len, heads, head_dim]


class MultiHeadAttention(nnx.Module):
  """Scaled dot-product attention with separate q/k/v/o projections.

  Scores and softmax are float32 whatever the compute dtype. Masked keys get
  exactly zero probability, and their values are zeroed, so padding (even
  non-finite) never reaches valid outputs.
  """

  def __init__(
    self,
    d_model: int,
    num_heads: int,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if d_model % num_heads:
      raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
    self.num_heads = num_heads
    self.head_dim = d_model // num_heads
    self.dtype = dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.query = partitioning.dense(d_model, d_model, ("embed", "heads"), **kw)
    self.key = partitioning.dense(d_model, d_model, ("embed", "heads"), **kw)
    self.value = partitioning.dense(d_model, d_model, ("embed", "heads"), **kw)
    self.out = partitioning.dense(d_model, d_model, ("heads", "embed"), **kw)

  def _split_heads(self, x: jax.Array) -> jax.Array:
    return x.reshape(*x.shape[:-1], self.num_heads, self.head_dim).astype(self.dtype)

  def project_kv(self, key_value: jax.Array) -> KVCache:
    """Keys and values [batch, length, heads, head_dim] of `key_value` [batch, length, d_model]."""
    return KVCache(
      k=self._split_heads(self.key(key_value)), v=self._split_heads(self.value(key_value))
    )

  def attend(
    self,
    query: jax.Array,
    kv: KVCache,
    allowed: jax.Array,
    *,
    return_probs: bool = False,
  ) -> tuple[jax.Array, jax.Array | None]:
    """Attention of `query` over projected keys/values.

    Args:
      query: [batch, q_len, d_model].
      kv: keys/values [batch, k_len, heads, head_dim].
      allowed: bool, broadcastable to [batch, heads, q_len, k_len].
      return_probs: also return the attention probabilities.

    Returns:
      Output [batch, q_len, d_model] and float32 probabilities
      [batch, heads, q_len, k_len] (or None).
    """
    q = self._split_heads(self.query(query)) / jnp.sqrt(self.head_dim).astype(self.dtype)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, kv.k, preferred_element_type=jnp.float32)
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)  # [batch, heads, q_len, k_len]
    probs = jnp.where(allowed, probs, 0.0)
    # A key masked for every query (padding) has its value zeroed, so that a
    # non-finite padded frame cannot turn 0 * value into NaN.
    key_valid = jnp.any(allowed, axis=(1, 2))[:, :, None, None]  # [batch, k_len, 1, 1]
    v = jnp.where(key_valid, kv.v, 0)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)
    out = self.out(out.reshape(*out.shape[:2], -1))  # [batch, q_len, d_model]
    return out, (probs if return_probs else None)

  def __call__(
    self,
    query: jax.Array,
    key_value: jax.Array,
    *,
    key_mask: jax.Array | None = None,
    causal: bool = False,
    return_probs: bool = False,
  ) -> tuple[jax.Array, jax.Array | None]:
    """Full-sequence attention.

    Args:
      query: [batch, q_len, d_model].
      key_value: [batch, k_len, d_model].
      key_mask: bool [batch, k_len], True = valid key.
      causal: query i sees keys <= i (self-attention).
      return_probs: also return the attention probabilities.

    Returns:
      Output [batch, q_len, d_model] and probabilities [batch, heads, q_len, k_len] or None.
    """
    batch, q_len, k_len = query.shape[0], query.shape[1], key_value.shape[1]
    allowed = jnp.ones((batch, 1, q_len, k_len), bool)
    if key_mask is not None:
      allowed = allowed & key_mask[:, None, None, :]
    if causal:
      allowed = allowed & (jnp.arange(k_len)[None, :] <= jnp.arange(q_len)[:, None])
    return self.attend(query, self.project_kv(key_value), allowed, return_probs=return_probs)

  def decode(self, query: jax.Array, cache: KVCache, index: jax.Array) -> tuple[jax.Array, KVCache]:
    """Causal self-attention of new positions `index..index+q_len-1` with a cache.

    Args:
      query: [batch, q_len, d_model], the new positions.
      cache: keys/values [batch, max_len, heads, head_dim] of positions < index.
      index: int32 scalar, position of the first new token.

    Returns:
      Output [batch, q_len, d_model] and the cache with the new keys/values written.
    """
    new = self.project_kv(query)
    start = (0, index, 0, 0)
    cache = KVCache(
      k=jax.lax.dynamic_update_slice(cache.k, new.k.astype(cache.k.dtype), start),
      v=jax.lax.dynamic_update_slice(cache.v, new.v.astype(cache.v.dtype), start),
    )
    q_pos = index + jnp.arange(query.shape[1])
    allowed = jnp.arange(cache.k.shape[1])[None, :] <= q_pos[:, None]  # [q_len, max_len]
    out, _ = self.attend(
      query, cache, jnp.broadcast_to(allowed, (query.shape[0], 1, *allowed.shape))
    )
    return out, cache


class FeedForward(nnx.Module):
  """Position-wise feed-forward layer: dense -> activation -> dropout -> dense."""

  def __init__(
    self,
    d_model: int,
    d_ff: int,
    *,
    activation: str = "swish",
    dropout: float = 0.0,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.up = partitioning.dense(d_model, d_ff, ("embed", "mlp"), **kw)
    self.down = partitioning.dense(d_ff, d_model, ("mlp", "embed"), **kw)
    self.activation = ACTIVATIONS[activation]
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(self.dropout(self.activation(self.up(x))))
