"""Tests for the Conformer encoder (tiny dims, float32 unless stated).

Tolerances: padding invariance and reference comparisons atol 1e-5 (float32
round-off of reordered sums); identities that involve no arithmetic change are
exact.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from moe_asr.models import conformer, layers, lid
from moe_asr.models.moe import MoeAux, MoeSettings

D, HEADS, FF, MELS, LANGS, EXPERTS = 8, 2, 16, 8, 3, 3
# Most tests share these shapes so that eagerly compiled ops are reused.
T, T_PAD, LENGTHS = 32, 48, (30, 21)
T_ENC, T_ENC_PAD = 7, 11  # Encoder frames of T and T_PAD.


def _encoder(seed=0, **overrides):
  kwargs = dict(
    num_layers=2,
    d_model=D,
    num_heads=HEADS,
    d_ff=FF,
    conv_kernel=5,
    dropout=0.1,
    num_mel_bins=MELS,
    lid_layer=0,
    moe_layers=(1,),
    num_experts=EXPERTS,
    router="hybrid",
    top_k=2,
    num_languages=LANGS,
    conditioning="film",
  )
  kwargs.update(overrides)
  fields = {f.name for f in dataclasses.fields(MoeSettings)}
  kwargs["moe"] = MoeSettings(**{k: kwargs.pop(k) for k in list(kwargs) if k in fields})
  enc = conformer.ConformerEncoder(**kwargs, rngs=nnx.Rngs(params=seed, dropout=1, condition=2))
  enc.eval()
  return enc


def _activate_conditioning(enc, seed=5):
  """Random FiLM / add parameters so that conditioning visibly changes outputs."""
  keys = iter(jax.random.split(jax.random.key(seed), 3 * len(enc.conditioners)))
  for c in enc.conditioners:
    for name in ("gamma", "beta", "embedding"):
      if hasattr(c, name):
        var = getattr(c, name)
        var.value = 0.5 * jax.random.normal(next(keys), var.value.shape)


def _features(lengths, frames, seed=0, garbage=False):
  """Random features [batch, frames, MELS]; beyond each length zeros, or garbage (incl. NaN)."""
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(len(lengths), max(lengths), MELS)).astype(np.float32)
  feats = np.zeros((len(lengths), frames, MELS), np.float32)
  if garbage:
    feats[:] = 1e4 * rng.normal(size=feats.shape)
    feats[:, -1, 0] = np.nan
  mask = np.arange(frames)[None, :] < np.asarray(lengths)[:, None]
  for b, n in enumerate(lengths):
    feats[b, :n] = base[b, :n]
  return jnp.asarray(feats), jnp.asarray(mask)


# --- subsampling ------------------------------------------------------------


def test_subsampling_output_is_centred_per_utterance():
  enc = _encoder()
  feats, mask = _features(LENGTHS, T_PAD)
  x, m = enc.subsampling(feats, mask)
  x, m = np.asarray(x), np.asarray(m)
  for b in range(len(LENGTHS)):
    np.testing.assert_allclose(x[b, m[b]].mean(0), 0.0, atol=1e-5)
    assert np.abs(x[b, m[b]]).max() > 0.1  # Centred, not zeroed.
    assert not np.abs(x[b, ~m[b]]).any()  # Padding stays exactly 0.


def _subsampling_grad_norm(enc, feats, mask):
  """Global gradient norm of the subsampling parameters for a fixed readout of the output."""
  proj = jax.random.normal(jax.random.key(3), (D,))

  def loss(sub):
    x, m = sub(feats, mask)
    # A LayerNorm reads the subsampled frames, as the first block's pre-norm does.
    h = layers.layer_norm(D, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))(x)
    return jnp.sum(jnp.where(m[..., None], h, 0.0) @ proj) / m.sum()

  return float(optax.global_norm(nnx.grad(loss)(enc.subsampling)))


def test_masked_frames_do_not_blow_up_subsampling_gradients():
  # SpecAugment sets whole frames to 0; with zero conv biases such a patch comes out of
  # the subsampling as an all-zero vector, and a LayerNorm of it divides by
  # sqrt(epsilon) (a gradient thousands of times larger than without the mask).
  enc = _encoder()
  feats, mask = _features(LENGTHS, T)
  masked = feats.at[:, 4:20].set(0.0)
  plain = _subsampling_grad_norm(enc, feats, mask)
  assert _subsampling_grad_norm(enc, masked, mask) < 10 * plain


def test_subsampled_lengths_match_receptive_fields_and_output_shape():
  sub = conformer.ConvSubsampling(MELS, D, rngs=nnx.Rngs(0))
  for frames in (7, 8, 9, 10, 11, 23, 64, 101):
    shape = jax.eval_shape(sub, jnp.zeros((1, frames, MELS)), jnp.ones((1, frames), bool))
    assert shape[0].shape[1] == int(conformer.subsampled_lengths(frames)), frames
  frames = T
  feats = jnp.zeros((2, frames, MELS))
  for n in range(0, frames + 1, 2):
    lengths = np.array([n, n + 1 if n < frames else 0])
    _, out_mask = sub(feats, jnp.asarray(np.arange(frames)[None, :] < lengths[:, None]))
    # Output frame t reads input frames [4t, 4t + 6]: valid iff all of them are.
    brute = [sum(1 for t in range(out_mask.shape[1]) if 4 * t + 6 <= k - 1) for k in lengths]
    np.testing.assert_array_equal(np.asarray(out_mask.sum(-1)), brute)
    np.testing.assert_array_equal(np.asarray(conformer.subsampled_lengths(lengths)), brute)
  assert int(conformer.subsampled_lengths(0)) == 0


def test_subsample_frame_targets_picks_centre_frame():
  targets = jnp.arange(2 * 22, dtype=jnp.int32).reshape(2, 22)
  out = conformer.subsample_frame_targets(targets, 6)
  np.testing.assert_array_equal(np.asarray(out[0]), [3, 7, 11, 15, 19, -1])
  np.testing.assert_array_equal(np.asarray(out[1]), [25, 29, 33, 37, 41, -1])


# --- attention --------------------------------------------------------------


def test_rel_shift_indexes_relative_positions():
  t = 5
  x = jax.random.normal(jax.random.key(0), (2, 3, t, 2 * t - 1))
  out = np.asarray(conformer.rel_shift(x))
  expected = np.stack(
    [np.stack([np.asarray(x)[..., i, t - 1 - i + j] for j in range(t)], -1) for i in range(t)], -2
  )
  np.testing.assert_array_equal(out, expected)


def _reference_attention(mha, x, mask):
  """Explicit O(T^2) Transformer-XL attention in numpy."""
  p = lambda m: np.asarray(m[...], np.float64)
  x = np.asarray(x, np.float64)
  b, t, d = x.shape
  h, dk = mha.num_heads, mha.head_dim

  def proj(lin, inp):
    y = inp @ p(lin.kernel)
    return y + p(lin.bias) if lin.bias is not None else y

  q, k, v = (
    proj(lin, x).reshape(b, t, h, dk) for lin in (mha.linear_q, mha.linear_k, mha.linear_v)
  )
  u, vb = p(mha.pos_bias_u), p(mha.pos_bias_v)
  freqs = np.array([10000.0 ** (-2 * i / d) for i in range(d // 2)])
  scores = np.zeros((b, h, t, t))
  for i in range(t):
    for j in range(t):
      r = i - j
      pe = np.zeros(d)
      pe[0::2], pe[1::2] = np.sin(r * freqs), np.cos(r * freqs)
      pos = proj(mha.linear_pos, pe).reshape(h, dk)
      for hh in range(h):
        content = (q[:, i, hh] + u[hh]) @ k[:, j, hh].T  # [b, b]
        position = (q[:, i, hh] + vb[hh]) @ pos[hh]  # [b]
        scores[:, hh, i, j] = (np.diag(content) + position) / math.sqrt(dk)
  m = np.asarray(mask)[:, None, None, :]
  scores = np.where(m, scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs = probs / probs.sum(-1, keepdims=True)
  out = np.einsum("bhij,bjhd->bihd", probs, v).reshape(b, t, d)
  return proj(mha.linear_out, out)


def test_rel_position_attention_matches_explicit_reference():
  mha = conformer.RelPositionMultiHeadAttention(D, HEADS, rngs=nnx.Rngs(3))
  t = T_ENC
  x = jax.random.normal(jax.random.key(1), (2, t, D))
  mask = jnp.arange(t)[None, :] < jnp.array([t, 4])[:, None]
  out = mha(x, mask, conformer.relative_position_encoding(t, D))
  np.testing.assert_allclose(np.asarray(out), _reference_attention(mha, x, mask), atol=1e-5)


# --- convolution module -----------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_depthwise_conv_matches_grouped_convolution(dtype):
  # The shifted multiply-adds against flax's grouped convolution: the same parameters from
  # the same seed, the same outputs and gradients (products of the dtype-rounded inputs
  # are exact in float32, so only the summation order differs).
  k = 7
  ours = conformer.DepthwiseConv1D(D, k, dtype=dtype, rngs=nnx.Rngs(3))
  ref = nnx.Conv(
    D,
    D,
    kernel_size=(k,),
    padding="SAME",
    feature_group_count=D,
    dtype=dtype,
    preferred_element_type=jnp.float32,
    bias_init=nnx.initializers.normal(1.0),
    rngs=nnx.Rngs(3),
  )
  np.testing.assert_array_equal(np.asarray(ours.kernel[...]), np.asarray(ref.kernel[...]))
  ours.bias[...] = ref.bias[...]  # Zero at init; a non-zero bias checks that it is added.
  x = jax.random.normal(jax.random.key(0), (2, T_ENC, D))

  def loss_and_grads(module):
    def loss(m, x):
      y = m(x)
      return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape))), y

    (g_params, g_x), y = nnx.grad(loss, argnums=(0, 1), has_aux=True)(module, x)
    return y, g_x, g_params["kernel"][...], g_params["bias"][...]

  for a, b in zip(loss_and_grads(ours), loss_and_grads(ref), strict=True):
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_convolution_module_does_not_leak_across_padding():
  conv = conformer.ConvolutionModule(D, 5, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, T_ENC, D))
  lengths = jnp.array([T_ENC, 4])
  mask = jnp.arange(T_ENC)[None, :] < lengths[:, None]
  y = conv(x, mask)
  # Garbage in padding, and more of it.
  garbage = 1e3 * jax.random.normal(jax.random.key(1), (2, T_ENC_PAD, D))
  padded = jnp.pad(x, ((0, 0), (0, T_ENC_PAD - T_ENC), (0, 0)))
  mask2 = jnp.arange(T_ENC_PAD)[None, :] < lengths[:, None]
  y2 = conv(jnp.where(mask2[..., None], padded, garbage), mask2)
  np.testing.assert_allclose(np.asarray(y2[0, :T_ENC]), np.asarray(y[0]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(y2[1, :4]), np.asarray(y[1, :4]), atol=1e-5)
  # The kernel does see its valid neighbours (the test above could otherwise pass trivially).
  y3 = conv(x.at[1, 3].add(1.0), mask)
  assert float(jnp.abs(y3[1, 2] - y[1, 2]).max()) > 1e-4


# --- encoder ----------------------------------------------------------------


def test_padding_does_not_change_encoder_outputs():
  enc = _encoder()
  _activate_conditioning(enc)
  lengths = LENGTHS
  feats, mask = _features(lengths, T)
  feats2, mask2 = _features(lengths, T_PAD, garbage=True)
  out, out2 = enc(feats, mask), enc(feats2, mask2)
  n_valid = np.asarray(conformer.subsampled_lengths(np.asarray(lengths)))
  np.testing.assert_array_equal(np.asarray(out.mask.sum(-1)), n_valid)
  np.testing.assert_array_equal(np.asarray(out2.mask.sum(-1)), n_valid)
  for b, n in enumerate(n_valid):
    for name in ("x", "frame_lid_logits", "lid_ctc_logits", "lid_probs"):
      a, c = getattr(out, name)[b, :n], getattr(out2, name)[b, :n]
      np.testing.assert_allclose(np.asarray(c), np.asarray(a), atol=1e-5, err_msg=name)
  np.testing.assert_allclose(
    np.asarray(out2.utt_lid_logits), np.asarray(out.utt_lid_logits), atol=1e-5
  )
  np.testing.assert_allclose(np.asarray(out2.expert_load), np.asarray(out.expert_load), atol=1e-5)
  assert np.isfinite(np.asarray(out2.x)).all()
  assert float(jnp.abs(out2.x * ~out2.mask[..., None]).max()) == 0.0


def test_moe_blocks_report_expert_load():
  enc = _encoder(num_layers=3, moe_layers=(1, 2))
  feats, mask = _features(LENGTHS, T)
  out = enc(feats, mask)
  assert out.expert_load.shape == (2, EXPERTS)
  np.testing.assert_allclose(np.asarray(out.expert_load.sum(-1)), 1.0, atol=1e-5)
  np.testing.assert_allclose(float(out.moe_aux.expert_load.sum()), 1.0, atol=1e-5)
  assert np.isfinite(float(out.moe_aux.load_balance_loss))
  assert float(out.moe_aux.load_balance_loss) >= 1.0 - 1e-5  # 1.0 only when perfectly uniform.
  assert float(out.moe_aux.lid_alignment_loss) > 0.0  # Hybrid router aligns with LID.

  # Per frame: each valid frame's weights sum to 1, padding gets none, and the mean over
  # valid frames is the layer's expert_load.
  tl = np.asarray(out.token_expert_load)
  enc_mask = np.asarray(out.mask)
  assert tl.shape == (2, *enc_mask.shape, EXPERTS)
  np.testing.assert_allclose(tl.sum(-1), np.broadcast_to(enc_mask, tl.shape[:-1]), atol=1e-6)
  np.testing.assert_allclose(tl[:, enc_mask].mean(1), np.asarray(out.expert_load), atol=1e-6)

  dense = _encoder(moe_layers=(), num_experts=0)
  out = dense(feats, mask)
  assert out.expert_load.shape[0] == 0 and out.token_expert_load.shape[0] == 0
  assert all(float(jnp.abs(a).sum()) == 0.0 for a in jax.tree.leaves(out.moe_aux))
  assert isinstance(out.moe_aux, MoeAux)


def test_oracle_mix_selects_oracle_or_predicted_per_utterance():
  enc = _encoder()
  _activate_conditioning(enc)
  feats, mask = _features(LENGTHS, T)
  targets = jax.random.randint(jax.random.key(0), (2, T_ENC), -1, LANGS)
  oracle = lid.oracle_lang_probs(targets, jnp.ones_like(targets, bool), LANGS)

  predicted = enc(feats, mask)
  np.testing.assert_allclose(
    np.asarray(predicted.lid_probs),
    np.asarray(jax.nn.softmax(predicted.frame_lid_logits)),
    atol=1e-6,
  )
  forced = enc(feats, mask, oracle_lang_probs=oracle, oracle_mix=1.0)
  np.testing.assert_array_equal(np.asarray(forced.lid_probs), np.asarray(oracle))
  # LID heads sit below the conditioning, so only the upper blocks change.
  np.testing.assert_array_equal(
    np.asarray(forced.frame_lid_logits), np.asarray(predicted.frame_lid_logits)
  )
  assert float(jnp.abs(forced.x - predicted.x).max()) > 1e-3

  outcomes = []
  for _ in range(4):  # The `condition` stream advances on every call.
    mixed = enc(feats, mask, oracle_lang_probs=oracle, oracle_mix=jnp.float32(0.5))
    for b in range(2):
      is_oracle = bool(jnp.array_equal(mixed.lid_probs[b], oracle[b]))
      is_pred = bool(jnp.array_equal(mixed.lid_probs[b], predicted.lid_probs[b]))
      assert is_oracle != is_pred
      outcomes.append(is_oracle)
  assert any(outcomes) and not all(outcomes)  # Holds for this seed (8 fair coins).


def test_film_is_identity_at_init_and_add_acts_only_through_embedding():
  feats, mask = _features(LENGTHS, T)
  base = _encoder(conditioning="none")(feats, mask).x
  film = _encoder(conditioning="film")(feats, mask).x
  np.testing.assert_array_equal(np.asarray(film), np.asarray(base))

  add = _encoder(conditioning="add")
  assert float(jnp.abs(add(feats, mask).x - base).max()) > 1e-4
  for c in add.conditioners:
    c.embedding.value = jnp.zeros_like(c.embedding.value)
  np.testing.assert_array_equal(np.asarray(add(feats, mask).x), np.asarray(base))


@nnx.jit
def _ctc_grads(enc, feats, mask, proj, labels):
  """Parameter gradients of a CTC loss on projected encoder outputs, with and
  without stop_lid_gradient (one compilation for both)."""

  def loss_fn(model, stop):
    out = model(feats, mask, stop_lid_gradient=stop)
    logits = out.x @ proj  # [batch, frames, 5]
    paddings = (~out.mask).astype(jnp.float32)
    return optax.ctc_loss(logits, paddings, labels, (labels == 0).astype(jnp.float32)).mean()

  grad = nnx.grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param))
  return grad(enc, True), grad(enc, False)


def test_gradients_reach_subsampling_and_stop_lid_gradient():
  enc = _encoder(conditioning="add")
  feats, mask = _features(LENGTHS, T)
  proj = jax.random.normal(jax.random.key(0), (D, 5))
  labels = jnp.array([[1, 2, 3], [4, 1, 0]])
  stopped, flowing = _ctc_grads(enc, feats, mask, proj, labels)
  for grads in (stopped, flowing):
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert np.abs(np.asarray(grads["subsampling"]["conv1"]["kernel"][...])).sum() > 0
  # The LID head affects the output only through conditioning (and the router).
  head = lambda g: np.abs(np.asarray(g["frame_lid"]["lang_proj"]["kernel"][...])).sum()
  assert head(stopped) == 0.0
  assert head(flowing) > 1e-6


def test_dropout_only_in_training():
  block = conformer.ConformerBlock(D, HEADS, FF, 5, dropout=0.1, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, T_ENC, D))
  mask = jnp.ones((2, T_ENC), bool)
  pos = conformer.relative_position_encoding(T_ENC, D)
  block.eval()
  np.testing.assert_array_equal(
    np.asarray(block(x, mask, pos)[0]), np.asarray(block(x, mask, pos)[0])
  )
  block.train()
  assert float(jnp.abs(block(x, mask, pos)[0] - block(x, mask, pos)[0]).max()) > 1e-4


def test_bfloat16_runs_close_to_float32():
  feats, mask = _features(LENGTHS, T)
  out32 = _encoder()(feats, mask)
  out16 = _encoder(dtype=jnp.bfloat16)(feats, mask)
  for name in ("x", "frame_lid_logits", "utt_lid_logits", "lid_probs", "expert_load"):
    assert np.isfinite(np.asarray(getattr(out16, name), np.float32)).all(), name
  assert out16.frame_lid_logits.dtype == jnp.float32
  valid = np.asarray(out32.mask)
  diff = np.abs(np.asarray(out16.x, np.float32) - np.asarray(out32.x))[valid]
  # LayerNorm-scale outputs (~1); bfloat16 keeps ~3 significant digits.
  assert diff.mean() < 0.05, diff.mean()


def test_from_config_and_validation():
  cfg = ml_collections.ConfigDict(
    dict(
      num_layers=3,
      d_model=D,
      num_heads=HEADS,
      d_ff=FF,
      conv_kernel=3,
      dropout=0.0,
      num_mel_bins=MELS,
      lid_layer=0,
      moe_layers=(2,),
      num_experts=LANGS,
      router="language",
      top_k=1,
      capacity_factor=None,
      shared_expert=True,
      conditioning="add",
      num_languages=LANGS,
      dtype="bfloat16",
    )
  )
  enc = conformer.ConformerEncoder.from_config(cfg, rngs=nnx.Rngs(0))
  assert enc.dtype == jnp.bfloat16 and enc.num_languages == LANGS
  # Subsampling convolutions default to d_model channels; narrower ones keep the output shape.
  assert enc.subsampling.conv2.kernel.shape == (3, 3, D, D)
  cfg.subsampling_channels = 8
  narrow = conformer.ConformerEncoder.from_config(cfg, rngs=nnx.Rngs(0))
  assert narrow.subsampling.conv1.kernel.shape == (3, 3, 1, 8)
  assert narrow.subsampling.conv2.kernel.shape == (3, 3, 8, 8)
  assert narrow.subsampling.out.kernel.shape[1] == D
  assert [b.use_moe for b in enc.blocks] == [False, False, True]
  assert enc.blocks[2].ff2.expert_map == (0, 1, 2)  # "modulo" without the setting.
  cfg.expert_map = (2, 0, 1)
  mapped = conformer.ConformerEncoder.from_config(cfg, rngs=nnx.Rngs(0))
  assert mapped.blocks[2].ff2.expert_map == (2, 0, 1)
  assert len(enc.conditioners) == 2
  # Random oracle mixing needs a `condition` stream, which nnx.Rngs(0) lacks.
  feats, mask = _features(LENGTHS, T)
  oracle = jnp.full((2, T_ENC, LANGS), 1.0 / LANGS)
  with pytest.raises(ValueError, match="condition"):
    enc(feats, mask, oracle_lang_probs=oracle, oracle_mix=jnp.float32(0.5))
  with pytest.raises(ValueError, match="lid_layer"):
    _encoder(num_layers=3, moe_layers=(0, 2), router="language", lid_layer=1)
  with pytest.raises(ValueError, match="conditioning"):
    _encoder(conditioning="concat")


@pytest.mark.parametrize("utt_lid_layer", [None, -1])
def test_utterance_lid_reads_the_block_it_is_given(utt_lid_layer):
  """By default the utterance LID reads block lid_layer, as the frame LID does; with -1 it
  reads the top block, so only then do the top block's weights move its logits."""
  enc = _encoder(utt_lid_layer=utt_lid_layer)
  assert enc.utt_lid_layer == (1 if utt_lid_layer == -1 else 0)
  feats, mask = _features(LENGTHS, T)
  ref = enc(feats, mask)
  top = enc.blocks[1].ff1.up.kernel  # A weight of the top block (block 1) only.
  top.value = top.value + 0.5 * jax.random.normal(jax.random.key(9), top.value.shape)
  out = enc(feats, mask)
  # The frame LID reads block 0 either way.
  np.testing.assert_array_equal(np.asarray(out.frame_lid_logits), np.asarray(ref.frame_lid_logits))
  moved = np.abs(np.asarray(out.utt_lid_logits - ref.utt_lid_logits)).max()
  if utt_lid_layer == -1:
    assert moved > 1e-4
  else:
    assert moved == 0.0
  with pytest.raises(ValueError, match="utt_lid_layer"):
    _encoder(utt_lid_layer=2)
