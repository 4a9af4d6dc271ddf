"""Conformer encoder (ESPnet / NeMo style) with mid-encoder LID and routed experts.

features -> ConvSubsampling (4x) -> ConformerBlock x num_layers
                                       |- after block `lid_layer`: FrameLidHead, UtteranceLid
                                       |- blocks above: LanguageConditioner(LID posteriors)
                                       '- blocks in `moe_layers`: FFN2 = MoeFeedForward

Padding never changes outputs on valid frames: subsampled frames are valid only
when their whole receptive field is valid input, attention masks padded keys,
relative positions do not depend on the padded length, and the convolution
module zeroes padded frames before its depthwise convolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from moe_asr.data import languages as langs_lib
from moe_asr.models import layers, partitioning
from moe_asr.models import lid as lid_lib
from moe_asr.models.moe import MoeAux, MoeFeedForward, MoeSettings

CONDITIONING = ("none", "add", "film")
_NEG_INF = -1e30  # Finite "minus infinity" for masked attention scores.
# The two stride-2, kernel-3 convolutions: output frame t reads input frames
# [4t, 4t + 6], whose centre is 4t + 3.
SUBSAMPLING = 4
_RECEPTIVE_FIELD = 7


def _lengths_after_conv(lengths):
  return (lengths - 1) // 2  # Kernel 3, stride 2, VALID.


def subsampled_lengths(lengths):
  """Valid encoder frames for `lengths` valid input frames.

  An encoder frame is valid iff its whole receptive field (7 input frames) lies
  inside the valid input, i.e. `((lengths - 1) // 2 - 1) // 2`, clipped at 0.
  Applied to the padded length it gives the output length of the convolutions.

  Args:
    lengths: int array (or int) of valid input frames.

  Returns:
    Same shape, int: valid encoder frames.
  """
  if isinstance(lengths, int | np.integer | np.ndarray):  # Static shapes stay Python/numpy.
    return np.maximum(_lengths_after_conv(_lengths_after_conv(np.asarray(lengths))), 0)
  return jnp.maximum(_lengths_after_conv(_lengths_after_conv(jnp.asarray(lengths))), 0)


def subsample_frame_targets(targets: jax.Array, out_len: int) -> jax.Array:
  """Maps 10 ms frame labels to encoder frames (label of the centre input frame).

  Args:
    targets: int [batch, frames] per feature frame (e.g. `frame_lang`), -1
      where unknown (the pipeline also sets -1 beyond the valid frames).
    out_len: static number of encoder frames.

  Returns:
    int32 [batch, out_len]: `targets[:, 4t + 3]`, -1 where that frame is beyond
    `targets`.
  """
  centres = np.arange(out_len) * SUBSAMPLING + _RECEPTIVE_FIELD // 2
  inside = centres < targets.shape[1]
  picked = jnp.take(targets, np.minimum(centres, targets.shape[1] - 1), axis=1)
  return jnp.where(inside[None, :], picked, lid_lib.NO_LABEL).astype(jnp.int32)


def _einsum(spec: str, a: jax.Array, b: jax.Array, dtype) -> jax.Array:
  """Einsum with inputs in the compute dtype and float32 accumulation."""
  return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _fan_in_uniform(fan_in: int) -> nnx.Initializer:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default bias init for convolutions.

  The subsampling convolutions need non-zero biases: SpecAugment's time masks and the
  padding give all-zero input patches, which with zero biases come out as all-zero
  vectors, and a LayerNorm of an (almost) constant vector divides by sqrt(epsilon):
  at init the gradient of the subsampling Linear's bias then had a norm of about
  9000 (0.8 without SpecAugment), which global clipping turns into a step that
  barely trains the rest. Random biases make a masked patch's output a fixed but
  well-spread vector.
  """
  bound = fan_in**-0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class ConvSubsampling(nnx.Module):
  """Two 3x3 stride-2 Conv2D + ReLU (4x in time and frequency), then a Linear.

  Each utterance's output is centred in time (zero mean over its valid frames).
  """

  def __init__(
    self,
    num_mel_bins: int,
    d_model: int,
    *,
    channels: int | None = None,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    channels = channels or d_model
    accumulate = jnp.float32 if dtype != jnp.float32 else None

    def conv(cin, cout):
      return nnx.Conv(
        cin,
        cout,
        kernel_size=(3, 3),
        strides=(2, 2),
        padding="VALID",
        dtype=dtype,
        param_dtype=param_dtype,
        preferred_element_type=accumulate,
        kernel_init=partitioning.with_axes(
          nnx.initializers.lecun_normal(), ("conv", None, None, "embed")
        ),
        bias_init=partitioning.with_axes(_fan_in_uniform(9 * cin), ("embed",)),
        rngs=rngs,
      )

    self.conv1 = conv(1, channels)
    self.conv2 = conv(channels, channels)
    freq = int(_lengths_after_conv(_lengths_after_conv(num_mel_bins)))
    if freq < 1:
      raise ValueError(f"num_mel_bins={num_mel_bins} is too small for 4x subsampling (need >= 7)")
    self.out = partitioning.dense(
      channels * freq, d_model, (None, "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )
    # conv2 and the Linear read ReLU outputs, which are all positive: the gradient
    # of every weight of a unit then has the sign of its bias gradient, so an Adam
    # step (which moves each weight by about lr) shifts the unit by about
    # lr * fan_in * mean input, the same for every frame and utterance. With
    # fan-ins in the thousands that shift swamps the input within a few steps
    # and the encoder output stops depending on the audio. Normalising (which
    # centres) the ReLU outputs before each of them removes the common sign.
    norm = lambda n: layers.layer_norm(n, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = norm(channels)
    self.norm2 = norm(channels * freq)

  @jax.named_scope("subsampling")
  def __call__(self, features: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Subsamples features.

    Args:
      features: [batch, frames, num_mel_bins].
      mask: bool [batch, frames], True on valid frames (a prefix).

    Returns:
      x [batch, frames', d_model] (0 on padded frames), mask bool [batch, frames'].
    """
    if features.shape[1] < _RECEPTIVE_FIELD:
      raise ValueError(f"{features.shape[1]} frames; 4x subsampling needs >= {_RECEPTIVE_FIELD}")
    # where() (not multiply) so NaN/inf in padding cannot leak into valid frames.
    x = jnp.where(mask[..., None], features, 0.0)[..., None]  # [batch, frames, bins, 1]
    x = self.norm1(jax.nn.relu(self.conv1(x)))
    x = jax.nn.relu(self.conv2(x))  # [batch, frames', bins', channels]
    b, t, f, c = x.shape
    x = self.out(self.norm2(x.reshape(b, t, f * c)))  # [batch, frames', d_model]
    out_mask = jnp.arange(t)[None, :] < subsampled_lengths(mask.sum(-1))[:, None]
    # Centre each utterance in time (mean over its valid frames). Whatever a loss asks
    # of the encoder at first has a part common to all frames; Adam moves every weight
    # of this wide Linear by about lr in that one direction, so its output gains an
    # offset of about lr * fan_in per step, shared by all frames, which swamps the
    # frame-to-frame variation: the blocks above then see (almost) the same vector
    # everywhere (measured: their within-utterance spread fell 10x in 20 steps at
    # lr 5e-4). Over 150 demo steps at lr 1.5e-3 the LID accuracy stayed at chance
    # (0.21) without the centring and reached 0.32 with it.
    valid = out_mask[..., None]
    count = jnp.maximum(valid.sum(1, keepdims=True), 1).astype(jnp.float32)
    mean = jnp.sum(jnp.where(valid, x, 0.0).astype(jnp.float32), 1, keepdims=True) / count
    return jnp.where(valid, x - mean.astype(x.dtype), 0.0), out_mask


def relative_position_encoding(length: int, d_model: int) -> jax.Array:
  """Sinusoidal encodings of relative positions `length - 1, ..., -(length - 1)`.

  Row k encodes relative position r = length - 1 - k (query index minus key
  index) as interleaved sin(r w_i), cos(r w_i), like ESPnet's
  RelPositionalEncoding. The value for a given r does not depend on `length`.

  Returns:
    float32 [2 * length - 1, d_model].
  """
  rel = np.arange(length - 1, -length, -1, dtype=np.float64)[:, None]
  freqs = np.exp(np.arange(0, d_model, 2) * -(math.log(10000.0) / d_model))
  pe = np.zeros((2 * length - 1, d_model))
  pe[:, 0::2] = np.sin(rel * freqs)
  pe[:, 1::2] = np.cos(rel * freqs)
  return jnp.asarray(pe, jnp.float32)


def rel_shift(x: jax.Array) -> jax.Array:
  """Transformer-XL shift: [..., T, 2T - 1] by relative index -> [..., T, T] by key.

  `out[..., i, j] = x[..., i, T - 1 - i + j]`, i.e. the score of relative
  position i - j, done with a pad and two reshapes instead of a gather.
  """
  *lead, t, p = x.shape
  x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, 0), (1, 0)])  # [..., T, 2T]
  x = x.reshape(*lead, p + 1, t)[..., 1:, :]  # [..., 2T - 1, T]
  return x.reshape(*lead, t, p)[..., :t]


class RelPositionMultiHeadAttention(nnx.Module):
  """Multi-head self-attention with Transformer-XL relative positions.

  scores[i, j] = ((q_i + u) . k_j + (q_i + v) . W_pos r_{i-j}) / sqrt(d_k), with
  learned per-head biases u, v (`pos_bias_u`, `pos_bias_v`) as in ESPnet's
  RelPositionMultiHeadedAttention.
  """

  def __init__(
    self,
    d_model: int,
    num_heads: int,
    dropout: float = 0.0,
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

    def dense(axes, use_bias=True):
      return partitioning.dense(
        d_model, d_model, axes, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs
      )

    self.linear_q = dense(("embed", "heads"))
    self.linear_k = dense(("embed", "heads"))
    self.linear_v = dense(("embed", "heads"))
    self.linear_pos = dense(("embed", "heads"), use_bias=False)
    self.linear_out = dense(("heads", "embed"))
    shape, axes = (num_heads, self.head_dim), ("heads", "kv")
    init = nnx.initializers.xavier_uniform()
    self.pos_bias_u = partitioning.param(rngs, init, shape, axes, param_dtype)
    self.pos_bias_v = partitioning.param(rngs, init, shape, axes, param_dtype)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array, pos_emb: jax.Array) -> jax.Array:
    """Self-attention over valid keys.

    Args:
      x: [batch, frames, d_model].
      mask: bool [batch, frames], True on valid frames (padded keys are masked).
      pos_emb: [2 * frames - 1, d_model] from `relative_position_encoding`.

    Returns:
      [batch, frames, d_model].
    """
    b, t, _ = x.shape
    h, dk = self.num_heads, self.head_dim
    q = self.linear_q(x).reshape(b, t, h, dk)
    k = self.linear_k(x).reshape(b, t, h, dk)
    v = self.linear_v(x).reshape(b, t, h, dk)
    p = self.linear_pos(pos_emb).reshape(2 * t - 1, h, dk)
    q_u = q + self.pos_bias_u[...].astype(q.dtype)
    q_v = q + self.pos_bias_v[...].astype(q.dtype)
    content = _einsum("bihd,bjhd->bhij", q_u, k, self.dtype)  # [batch, heads, T, T]
    position = rel_shift(_einsum("bihd,khd->bhik", q_v, p, self.dtype))  # [batch, heads, T, T]
    scores = (content + position) * dk**-0.5
    key_mask = mask[:, None, None, :]
    scores = jnp.where(key_mask, scores, _NEG_INF)
    # Zeroing after the softmax keeps rows with no valid key (empty utterances) at 0.
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1) * key_mask
    probs = self.dropout(probs)
    out = _einsum("bhij,bjhd->bihd", probs, v, self.dtype).reshape(b, t, h * dk)
    return self.linear_out(out)


class DepthwiseConv1D(nnx.Module):
  """'SAME' depthwise 1-D convolution, written as a sum of shifted, scaled copies.

  The parameters are those of `nnx.Conv(c, c, kernel_size=(k,), feature_group_count=c)`
  (kernel [k, 1, c], bias [c], drawn in the same order), and so is the result. XLA:CPU runs
  a grouped convolution with one channel per group slowly, above all its backward pass:
  on a [12, 60, 144] bfloat16 input with k = 15 the forward and backward passes took
  16 ms as `lax.conv_general_dilated`, 3.6 ms as these k multiply-adds, which XLA fuses
  into one loop (the gradients are shifts and reductions of the same kind). Inputs and
  kernel are rounded to the compute dtype as in the convolution, the products and sums
  are float32.
  """

  def __init__(
    self,
    channels: int,
    kernel_size: int,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if kernel_size % 2 != 1:
      raise ValueError(f"conv kernel_size={kernel_size} must be odd (centred 'SAME' padding)")
    self.kernel = partitioning.param(
      rngs,
      nnx.initializers.lecun_normal(),
      (kernel_size, 1, channels),
      ("conv", None, "mlp"),
      param_dtype,
    )
    self.bias = partitioning.param(
      rngs, nnx.initializers.zeros_init(), (channels,), ("mlp",), param_dtype
    )
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """[batch, frames, channels] -> float32 [batch, frames, channels]."""
    k = self.kernel.shape[0]
    frames = x.shape[1]
    x = jnp.pad(x.astype(self.dtype).astype(jnp.float32), ((0, 0), (k // 2, k // 2), (0, 0)))
    w = self.kernel[...][:, 0].astype(self.dtype).astype(jnp.float32)
    y = sum(x[:, i : i + frames] * w[i] for i in range(k))
    return y + self.bias[...].astype(self.dtype).astype(jnp.float32)


class ConvolutionModule(nnx.Module):
  """Pointwise conv + GLU -> depthwise conv -> LayerNorm -> swish -> pointwise conv.

  LayerNorm, not BatchNorm: batch statistics would mix padded frames and other
  utterances into each frame's output (so padding or batch composition would
  change valid outputs) and need running averages that differ between training
  and evaluation; LayerNorm normalises each frame on its own.
  """

  def __init__(
    self,
    d_model: int,
    kernel_size: int,
    dropout: float = 0.0,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.pointwise1 = partitioning.dense(d_model, 2 * d_model, ("embed", "mlp"), **kw)
    self.depthwise = DepthwiseConv1D(d_model, kernel_size, **kw)
    self.norm = layers.layer_norm(d_model, **kw)
    self.pointwise2 = partitioning.dense(d_model, d_model, ("mlp", "embed"), **kw)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """Convolution over valid frames.

    Args:
      x: [batch, frames, d_model].
      mask: bool [batch, frames], True on valid frames.

    Returns:
      [batch, frames, d_model]; valid frames do not depend on padded ones.
    """
    h = jax.nn.glu(self.pointwise1(x), axis=-1)  # [batch, frames, d_model]
    # Padded frames read as zeros, exactly like the conv's own 'SAME' padding,
    # so valid outputs do not depend on what (or how much) padding follows.
    h = jnp.where(mask[..., None], h, 0.0)
    h = jax.nn.swish(self.norm(self.depthwise(h)))
    return self.dropout(self.pointwise2(h))


class ConformerBlock(nnx.Module):
  """Macaron Conformer block.

  x + 0.5 FFN1(x) -> x + MHSA(x) -> x + Conv(x) -> x + 0.5 FFN2(x) -> LayerNorm,
  each sub-module pre-normalised. With `moe` settings only FFN2 is routed experts:
  it sees the context gathered by attention and convolution (a better input
  for a learned router than FFN1's purely local one), one routing per block
  keeps dispatch cost at one MoE layer, and FFN1 stays a dense path shared by
  all languages.
  """

  def __init__(
    self,
    d_model: int,
    num_heads: int,
    d_ff: int,
    conv_kernel: int,
    dropout: float = 0.0,
    *,
    moe: MoeSettings | None = None,
    num_languages: int = len(langs_lib.LANGUAGE_CODES),
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    """Builds the block; `moe` (None = a dense FFN2) are the settings of its routed experts."""
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.d_model = d_model  # The output width (a residual adapter after the block reads it).
    self.use_moe = moe is not None
    # Width of the (all-zero) MoeAux of a dense block.
    self.num_experts = max(moe.num_experts, 1) if moe is not None else 1
    self.norm_ff1 = layers.layer_norm(d_model, **kw)
    self.ff1 = layers.FeedForward(d_model, d_ff, dropout=dropout, **kw)
    self.norm_mha = layers.layer_norm(d_model, **kw)
    self.mha = RelPositionMultiHeadAttention(d_model, num_heads, dropout, **kw)
    self.norm_conv = layers.layer_norm(d_model, **kw)
    self.conv = ConvolutionModule(d_model, conv_kernel, dropout, **kw)
    self.norm_ff2 = layers.layer_norm(d_model, **kw)
    if moe is not None:
      self.ff2 = MoeFeedForward(
        d_model,
        d_ff,
        moe,
        num_languages=num_languages,
        activation="swish",
        dropout=0.0,  # The block applies its own residual dropout.
        **kw,
      )
    else:
      self.ff2 = layers.FeedForward(d_model, d_ff, dropout=dropout, **kw)
    self.norm_out = layers.layer_norm(d_model, **kw)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(
    self,
    x: jax.Array,
    mask: jax.Array,
    pos_emb: jax.Array,
    *,
    lang_probs: jax.Array | None = None,
  ) -> tuple[jax.Array, MoeAux]:
    """Applies the block.

    Args:
      x: [batch, frames, d_model].
      mask: bool [batch, frames], True on valid frames.
      pos_emb: [2 * frames - 1, d_model] relative position encodings.
      lang_probs: [batch, frames, L] language posteriors for the routed experts
        (required by the language and hybrid routers).

    Returns:
      (x [batch, frames, d_model], 0 on padded frames; MoeAux, zeros for a
      dense block).
    """
    # Named scopes (in profiles and HLO metadata): benchmarks/train_step.py --breakdown.
    with jax.named_scope("ffn"):
      x = x + 0.5 * self.dropout(self.ff1(self.norm_ff1(x)))
    with jax.named_scope("self_attention"):
      x = x + self.dropout(self.mha(self.norm_mha(x), mask, pos_emb))
    with jax.named_scope("conv_module"):
      x = x + self.dropout(self.conv(self.norm_conv(x), mask))
    with jax.named_scope("moe" if self.use_moe else "ffn"):
      h = self.norm_ff2(x)
      if self.use_moe:
        y, aux = self.ff2(h, mask, lang_probs=lang_probs)
      else:
        y, aux = self.ff2(h), MoeAux.zeros(self.num_experts)
    x = self.norm_out(x + 0.5 * self.dropout(y))
    x = jnp.where(mask[..., None], x, 0.0)
    return partitioning.constrain(x, ("batch", "length", "embed")), aux


@flax.struct.dataclass
class EncoderOutput:
  """Encoder outputs (frames are encoder frames, 4x subsampled)."""

  x: jax.Array  # [batch, frames, d_model], 0 on padded frames.
  mask: jax.Array  # bool [batch, frames].
  frame_lid_logits: jax.Array  # float32 [batch, frames, L].
  lid_ctc_logits: jax.Array  # float32 [batch, frames, L + 1], blank at 0.
  utt_lid_logits: jax.Array  # float32 [batch, L].
  lid_probs: jax.Array  # float32 [batch, frames, L] that conditioned the upper blocks.
  moe_aux: MoeAux  # Averaged over MoE blocks (zeros without any).
  expert_load: jax.Array  # float32 [num_moe_layers, num_experts].
  # float32 [num_moe_layers, batch, frames, num_experts]: each frame's routing weights.
  token_expert_load: jax.Array
  # What the `intermediate` hooks returned, in block order (e.g. intermediate CTC logits).
  intermediate: tuple = ()


class ConformerEncoder(nnx.Module):
  """Conv subsampling + Conformer blocks, LID after `lid_layer`, experts above.

  Block indices are 0-based: the LID heads read the output of block
  `lid_layer` (the utterance-level one that of block `utt_lid_layer` if given:
  it conditions nothing, so it may read the top block, which has heard more of
  the words); every later block is conditioned on the frame LID posteriors (unless
  `conditioning="none"`) and, if it is in `moe_layers`, routes its FFN2 by
  them. Posteriors are passed with `stop_gradient` by default, so the LID head
  is trained only by its own loss and not pulled towards whatever posterior
  helps the transcript (which would make it a worse language identifier).
  The experts of the blocks in `moe_layers` have the settings `moe` (`moe.MoeSettings`).
  """

  def __init__(
    self,
    num_layers: int,
    d_model: int,
    num_heads: int,
    d_ff: int,
    conv_kernel: int = 15,
    dropout: float = 0.1,
    num_mel_bins: int = 80,
    lid_layer: int = 0,
    moe_layers: Sequence[int] = (),
    moe: MoeSettings | None = None,
    num_languages: int = len(langs_lib.LANGUAGE_CODES),
    conditioning: str = "film",
    subsampling_channels: int = 0,
    utt_lid_layer: int | None = None,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    moe_layers = tuple(sorted({int(i) for i in moe_layers}))
    moe = MoeSettings() if moe is None else moe  # The experts of the blocks in moe_layers.
    if not 0 <= lid_layer < num_layers:
      raise ValueError(f"lid_layer={lid_layer} outside [0, num_layers={num_layers})")
    utt_lid_layer = lid_layer if utt_lid_layer is None else int(utt_lid_layer)
    if not -num_layers <= utt_lid_layer < num_layers:
      raise ValueError(f"utt_lid_layer={utt_lid_layer} outside [-{num_layers}, {num_layers})")
    if any(not 0 <= i < num_layers for i in moe_layers):
      raise ValueError(f"moe_layers {moe_layers} outside [0, num_layers={num_layers})")
    if moe_layers and moe.num_experts < 1:
      raise ValueError("moe_layers need num_experts >= 1")
    if moe.router != "learned" and any(i <= lid_layer for i in moe_layers):
      raise ValueError(
        f"router={moe.router!r} needs LID posteriors: moe_layers {moe_layers} must be > lid_layer"
      )
    if conditioning not in CONDITIONING:
      raise ValueError(f"conditioning must be one of {CONDITIONING}, got {conditioning!r}")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.d_model = d_model
    self.num_layers = num_layers
    self.lid_layer = lid_layer
    self.utt_lid_layer = utt_lid_layer % num_layers
    self.moe_layers = moe_layers
    self.num_experts = max(moe.num_experts, 1)
    self.num_languages = num_languages
    self.conditioning = conditioning
    self.dtype = dtype

    self.subsampling = ConvSubsampling(
      num_mel_bins, d_model, channels=subsampling_channels or None, **kw
    )
    self.input_dropout = nnx.Dropout(dropout, rngs=rngs)
    self.blocks = nnx.List(
      [
        ConformerBlock(
          d_model,
          num_heads,
          d_ff,
          conv_kernel,
          dropout,
          moe=moe if i in moe_layers else None,
          num_languages=num_languages,
          **kw,
        )
        for i in range(num_layers)
      ]
    )
    self.frame_lid = lid_lib.FrameLidHead(d_model, num_languages, **kw)
    self.utt_lid = lid_lib.UtteranceLid(d_model, num_languages, **kw)
    # One conditioner per block above lid_layer (conditioners[i] feeds block lid_layer + 1 + i).
    self.conditioners = nnx.List(
      [
        lid_lib.LanguageConditioner(conditioning, d_model, num_languages, **kw)
        for _ in range(num_layers - lid_layer - 1)
      ]
      if conditioning != "none"
      else []
    )
    self.condition_rng = rngs["condition"].fork() if "condition" in rngs else nnx.data(None)

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> ConformerEncoder:
    """Builds the encoder from a config section (e.g. `config.model.encoder`).

    Fields: num_layers, d_model, num_heads, d_ff (also the width of each
    expert), conv_kernel (odd depthwise kernel), dropout, lid_layer (0-based
    block the LID heads read), moe_layers (0-based blocks whose FFN2 is routed
    experts; must be > lid_layer unless router is "learned"), conditioning ("none" |
    "add" | "film"), num_languages, dtype ("float32" | "bfloat16", compute dtype;
    params stay float32). The experts' settings, read by `moe.MoeSettings.from_config`
    (defaults there): num_experts, router ("learned" | "language" | "hybrid"), top_k,
    capacity_factor (None = dropless), shared_expert, language_soft, grouped_matmul
    ("blocks" | "ragged" | "auto"), moe_block_size (most rows per block of the "blocks"
    grouped matmul), expert_map ("modulo" | "pairs" | one id per language). Optional:
    num_mel_bins (default 80), subsampling_channels (channels of the two subsampling
    convolutions; default 0 = d_model), utt_lid_layer (the block the utterance LID
    reads, negative from the top; default None = lid_layer).
    """
    dtype = layers.DTYPES[cfg.dtype] if isinstance(cfg.get("dtype"), str) else cfg.get("dtype")
    return cls(
      cfg.num_layers,
      cfg.d_model,
      cfg.num_heads,
      cfg.d_ff,
      conv_kernel=cfg.conv_kernel,
      dropout=cfg.dropout,
      num_mel_bins=cfg.get("num_mel_bins", 80),
      lid_layer=cfg.lid_layer,
      moe_layers=tuple(cfg.moe_layers),
      moe=MoeSettings.from_config(cfg),
      num_languages=cfg.get("num_languages", len(langs_lib.LANGUAGE_CODES)),
      conditioning=cfg.conditioning,
      subsampling_channels=cfg.get("subsampling_channels", 0),
      utt_lid_layer=cfg.get("utt_lid_layer"),
      dtype=dtype or jnp.float32,
      rngs=rngs,
    )

  def _choose_lang_probs(self, predicted, oracle, oracle_mix):
    """Per utterance: oracle posteriors with probability `oracle_mix`, else predicted."""
    if oracle is None:
      return predicted
    if isinstance(oracle_mix, int | float):
      if oracle_mix <= 0.0:
        return predicted
      if oracle_mix >= 1.0:
        return oracle.astype(jnp.float32)
    if self.condition_rng is None:
      raise ValueError("oracle_mix in (0, 1) needs a 'condition' stream in the encoder's rngs")
    use_oracle = jax.random.bernoulli(self.condition_rng(), oracle_mix, predicted.shape[:1])
    return jnp.where(use_oracle[:, None, None], oracle.astype(jnp.float32), predicted)

  def __call__(
    self,
    features: jax.Array,
    feature_mask: jax.Array,
    *,
    oracle_lang_probs: jax.Array | None = None,
    oracle_mix: float | jax.Array = 0.0,
    stop_lid_gradient: bool = True,
    intermediate: Mapping[
      int, Callable[[jax.Array, jax.Array, jax.Array | None], tuple[Any, jax.Array]]
    ]
    | None = None,
  ) -> EncoderOutput:
    """Encodes log-mel features.

    Args:
      features: [batch, frames, num_mel_bins].
      feature_mask: bool [batch, frames], True on valid frames (a prefix).
      oracle_lang_probs: optional [batch, frames', L] posteriors at encoder
        frame rate (`lid.oracle_lang_probs`) to condition on instead of the
        predicted ones.
      oracle_mix: probability per utterance of using the oracle posteriors
        (a Python float 0 or 1 needs no randomness; otherwise the `condition`
        stream is used).
      stop_lid_gradient: condition (and route) on stop_gradient(posteriors), so
        losses on the encoder output do not train the LID heads.
      intermediate: {block index: fn(x, mask, lang_probs) -> (output, x')} run on that
        block's output (`lang_probs`: the posteriors conditioning the blocks above the LID
        layer, None below it), whose `x'` the next block reads instead (intermediate and
        self-conditioned CTC); the outputs are returned in block order.

    Returns:
      An `EncoderOutput`.
    """
    x, mask = self.subsampling(features, feature_mask)  # [batch, frames', d_model]
    t = x.shape[1]
    # Input scaling as in ESPnet's RelPositionalEncoding.
    x = self.input_dropout(x * math.sqrt(self.d_model))
    x = partitioning.constrain(x, ("batch", "length", "embed"))
    pos_emb = relative_position_encoding(t, self.d_model)  # [2 frames' - 1, d_model]

    intermediate = dict(intermediate or {})
    if any(not 0 <= i < self.num_layers for i in intermediate):
      raise ValueError(f"intermediate blocks {sorted(intermediate)} outside [0, {self.num_layers})")
    taps = []
    auxes, lang_probs, cond_probs = [], None, None
    frame_logits = ctc_logits = utt_logits = None
    for i, block in enumerate(self.blocks):
      if cond_probs is not None and self.conditioners:
        x = self.conditioners[i - self.lid_layer - 1](x, cond_probs, mask)
      x, aux = block(x, mask, pos_emb, lang_probs=cond_probs)
      if i in self.moe_layers:  # (Not `block.use_moe`: adapters may wrap the block.)
        auxes.append(aux)
      if i == self.lid_layer:
        frame_logits, ctc_logits = self.frame_lid(x)  # [batch, frames', L], [.., L + 1]
        predicted = jax.nn.softmax(frame_logits, axis=-1)
        lang_probs = self._choose_lang_probs(predicted, oracle_lang_probs, oracle_mix)
        cond_probs = jax.lax.stop_gradient(lang_probs) if stop_lid_gradient else lang_probs
      if i == self.utt_lid_layer:
        utt_logits = self.utt_lid(x, mask)  # [batch, L]
      if i in intermediate:
        with jax.named_scope("inter_ctc"):
          tap, x = intermediate[i](x, mask, cond_probs)
        taps.append(tap)

    if auxes:
      moe_aux = MoeAux.mean(auxes)
      expert_load = jnp.stack([a.expert_load for a in auxes])  # [num_moe_layers, E]
      token_expert_load = jnp.stack([a.token_load for a in auxes])
    else:
      moe_aux = MoeAux.zeros(self.num_experts)
      expert_load = jnp.zeros((0, self.num_experts), jnp.float32)
      token_expert_load = jnp.zeros((0, *x.shape[:2], self.num_experts), jnp.float32)
    return EncoderOutput(
      x=x,
      mask=mask,
      frame_lid_logits=frame_logits,
      lid_ctc_logits=ctc_logits,
      utt_lid_logits=utt_logits,
      lid_probs=lang_probs,
      moe_aux=moe_aux,
      expert_load=expert_load,
      token_expert_load=token_expert_load,
      intermediate=tuple(taps),
    )
