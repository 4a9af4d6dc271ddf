"""Text language model for shallow fusion and n-best rescoring.

A causal Transformer built from the decoder's blocks without cross-attention
(`DecoderBlock(cross_attention=False)`, plain FFNs), with the decoder's
incremental API (`init_cache` / `decode_step`), so beam search drives both the
same way. `train_lm` trains one on normalised text (the corpus transcripts plus
any extra text file) with AdamW.

Sequences are scored as `<s> w1 .. wn </s>`: the model sees `<s> w1 .. wn` and
predicts `w1 .. wn </s>`; `score` gives log P(labels) given `<s>`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from flax import nnx

from moe_asr.data.text import normalize
from moe_asr.data.tokenizer import Tokenizer
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


def read_text_file(path: str | epath.PathLike) -> list[str]:
  """Normalised non-empty lines of a UTF-8 text file (local or any `epath` path)."""
  lines = (normalize(line) for line in epath.Path(path).read_text(encoding="utf-8").splitlines())
  return [line for line in lines if line]


def encode_texts(
  texts: Sequence[str], tokenizer: Tokenizer, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
  """Labels `ids + [eos]` of each text, cut to `max_len` and padded with pad_id.

  Args:
    texts: normalised texts.
    tokenizer: the shared tokenizer.
    max_len: label length (longer texts lose their end, eos included).

  Returns:
    labels int32 [n, max_len] and mask bool [n, max_len].
  """
  labels = np.full((len(texts), max_len), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(texts), max_len), bool)
  for i, text in enumerate(texts):
    ids = (tokenizer.encode(text) + [tokenizer.eos_id])[:max_len]
    labels[i, : len(ids)] = ids
    mask[i, : len(ids)] = True
  return labels, mask


def default_lm_config() -> ml_collections.ConfigDict:
  """Defaults of `train_lm`: model fields (see `from_config`) and training fields."""
  cfg = ml_collections.ConfigDict()
  cfg.d_model = 128  # Model width.
  cfg.num_heads = 4  # Attention heads.
  cfg.num_layers = 2  # Blocks.
  cfg.d_ff = 512  # Feed-forward width.
  cfg.dropout = 0.1  # Residual/FFN dropout.
  cfg.dtype = "float32"  # Compute dtype.
  cfg.steps = 1000  # Optimiser steps.
  cfg.batch_size = 32  # Sentences per step.
  cfg.learning_rate = 1e-3  # Peak AdamW learning rate.
  cfg.warmup_steps = 100  # Linear warm-up, then cosine decay to 10% of the peak.
  cfg.weight_decay = 0.01  # AdamW decay (matrices only, not norms or biases).
  cfg.grad_clip = 1.0  # Global-norm gradient clipping.
  cfg.label_smoothing = 0.0  # Target smoothing of the training loss.
  cfg.max_len = 64  # Tokens per sentence, eos included (longer ones are cut).
  cfg.seed = 0  # Parameters, dropout and shuffling.
  return cfg


def train_lm(
  texts: Sequence[str],
  tokenizer: Tokenizer,
  *,
  cfg: ml_collections.ConfigDict,
  model: TransformerLM | None = None,
) -> tuple[TransformerLM, list[dict[str, float]]]:
  """Trains a text LM with AdamW on `texts`.

  Sentences are shuffled deterministically by `cfg.seed` (a new permutation
  each epoch) and batched at a fixed shape [batch_size, max_len], so the step
  compiles once.

  Args:
    texts: normalised sentences (e.g. corpus transcripts + `read_text_file`).
    tokenizer: the shared tokenizer.
    cfg: fields of `default_lm_config` (steps, batch_size, learning_rate,
      max_len and seed required; the rest default as there).
    model: an LM to continue training; built from `cfg` when None.

  Returns:
    The trained model (in eval mode) and one metrics dict per step
    (`step`, `loss`, `learning_rate`).
  """
  defaults = default_lm_config()
  get = lambda key: cfg.get(key, defaults[key])
  texts = [t for t in texts if t]
  if not texts:
    raise ValueError("train_lm needs at least one non-empty text")
  labels, mask = encode_texts(texts, tokenizer, cfg.max_len)
  if model is None:
    model_cfg = ml_collections.ConfigDict(
      {k: get(k) for k in ("d_model", "num_heads", "num_layers", "d_ff", "dropout", "dtype")}
    )
    model_cfg.max_len = cfg.max_len
    model_cfg.bos_id = tokenizer.bos_id
    model = TransformerLM.from_config(
      model_cfg, vocab_size=tokenizer.vocab_size, rngs=nnx.Rngs(cfg.seed)
    )

  steps = cfg.steps
  schedule = optax.warmup_cosine_decay_schedule(
    0.0,
    cfg.learning_rate,
    warmup_steps=min(get("warmup_steps"), max(steps - 1, 1)),
    decay_steps=max(steps, 2),
    end_value=0.1 * cfg.learning_rate,
  )
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  tx = optax.chain(
    optax.clip_by_global_norm(get("grad_clip")),
    optax.adamw(schedule, weight_decay=get("weight_decay"), mask=decay_mask),
  )
  model.train()
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  smoothing = get("label_smoothing")

  @jax.jit
  def train_step(state, batch_labels, batch_mask):
    model, optimizer = nnx.merge(graphdef, state)
    loss_fn = lambda m: lm_loss(m, batch_labels, batch_mask, label_smoothing=smoothing)[0]
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss

  # Deterministic order: consecutive permutations of the sentences.
  rng = np.random.default_rng(cfg.seed)
  needed = steps * cfg.batch_size
  order = np.concatenate(
    [rng.permutation(len(texts)) for _ in range(math.ceil(needed / len(texts)))]
  )
  losses = []
  for step in range(steps):
    idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
    state, loss = train_step(state, jnp.asarray(labels[idx]), jnp.asarray(mask[idx]))
    losses.append(loss)
  nnx.update((model, optimizer), state)
  model.eval()
  rates = np.asarray(jax.vmap(schedule)(jnp.arange(steps)))
  metrics = [
    {"step": step + 1, "loss": float(loss), "learning_rate": float(rate)}
    for step, (loss, rate) in enumerate(zip(jax.device_get(losses), rates, strict=True))
  ]
  return model, metrics
