"""Tests of the attention decoder: KV cache, padding, causality, losses, routing."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from moe_asr.models.decoder import TransformerDecoder, attention_loss, shift_right
from moe_asr.models.layers import MultiHeadAttention
from moe_asr.models.moe import MoeSettings

VOCAB, D, HEADS, LAYERS, D_FF = 40, 16, 2, 2, 32
NUM_LANG, NUM_EXPERTS = 3, 4
B, L, T = 2, 6, 7


@functools.cache
def make_decoder(router="language", dtype=jnp.float32, moe_layers=(1,)):
  """A tiny decoder in eval mode (cached: tests must not mutate it)."""
  model = TransformerDecoder(
    VOCAB,
    D,
    HEADS,
    LAYERS,
    D_FF,
    0.0,
    16,
    moe_layers=moe_layers,
    moe=MoeSettings(num_experts=NUM_EXPERTS, router=router, top_k=2),
    num_languages=NUM_LANG,
    dtype=dtype,
    rngs=nnx.Rngs(0),
  )
  model.eval()
  return model


@functools.cache
def make_inputs(seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  tokens = jax.random.randint(keys[0], (B, L), 3, VOCAB)
  enc = jax.random.normal(keys[1], (B, T, D))
  enc_lang = jax.nn.softmax(3.0 * jax.random.normal(keys[2], (B, T, NUM_LANG)))
  token_lang = jax.nn.one_hot(jax.random.randint(keys[3], (B, L), 0, NUM_LANG), NUM_LANG)
  return tokens, enc, enc_lang, token_lang


@nnx.jit
def forward(model, tokens, token_mask, enc, enc_mask, token_lang, enc_lang):
  return model(
    tokens, token_mask, enc, enc_mask, token_lang_probs=token_lang, enc_lang_probs=enc_lang
  )


@nnx.jit(static_argnums=(6,))
def incremental(model, tokens, enc, enc_mask, token_lang, enc_lang, precompute_cross):
  """Logits of every position, decoding one token at a time inside `lax.scan`."""
  cache = model.init_cache(tokens.shape[0], 10, enc=enc if precompute_cross else None)
  lang_steps = None if token_lang is None else jnp.swapaxes(token_lang, 0, 1)

  def step(cache, inputs):
    token, lang = inputs
    logits, state, cache = model.decode_step(
      token, cache, enc, enc_mask, token_lang_probs=lang, enc_lang_probs=enc_lang
    )
    return cache, (logits, state)

  cache, (logits, states) = jax.lax.scan(step, cache, (tokens.T, lang_steps))
  return jnp.swapaxes(logits, 0, 1), jnp.swapaxes(states, 0, 1), cache.index


@pytest.mark.parametrize(
  "router,use_token_lang,precompute_cross",
  [("language", False, False), ("language", True, True), ("learned", False, True)],
)
def test_incremental_decoding_matches_full_forward(router, use_token_lang, precompute_cross):
  model = make_decoder(router)
  tokens, enc, enc_lang, token_lang = make_inputs()
  token_lang = token_lang if use_token_lang else None
  enc_mask = jnp.ones((B, T), bool)
  full = forward(model, tokens, jnp.ones((B, L), bool), enc, enc_mask, token_lang, enc_lang)
  logits, states, index = incremental(
    model, tokens, enc, enc_mask, token_lang, enc_lang, precompute_cross
  )
  assert logits.dtype == jnp.float32 and full.logits.shape == (B, L, VOCAB)
  np.testing.assert_allclose(logits, full.logits, atol=1e-5, rtol=0)
  np.testing.assert_allclose(states, full.states, atol=1e-5, rtol=0)
  assert int(index) == L


@nnx.jit
def two_steps(model, tokens, enc, enc_mask, enc_lang, order):
  """Logits of step 2 after reordering the cache rows by `order` after step 1."""
  cache = model.init_cache(tokens.shape[0], 8)
  _, _, cache = model.decode_step(tokens[:, 0], cache, enc, enc_mask, enc_lang_probs=enc_lang)
  cache = cache.take(order)
  logits, _, _ = model.decode_step(
    tokens[order, 1], cache, enc[order], enc_mask[order], enc_lang_probs=enc_lang[order]
  )
  return logits


def test_cache_take_reorders_rows():
  model = make_decoder()
  tokens, enc, enc_lang, _ = make_inputs()
  enc_mask = jnp.ones((B, T), bool)
  expected = two_steps(model, tokens, enc, enc_mask, enc_lang, jnp.array([0, 1]))
  flip = jnp.array([1, 0])
  logits = two_steps(model, tokens, enc, enc_mask, enc_lang, flip)
  np.testing.assert_allclose(logits, expected[flip], atol=1e-6, rtol=0)


def test_padding_does_not_change_valid_logits():
  model = make_decoder("language")
  tokens, enc, enc_lang, _ = make_inputs()
  # Ragged batch: row 1 has 4 valid tokens and 5 valid frames.
  token_mask = jnp.arange(L)[None, :] < jnp.array([[L], [4]])
  enc_mask = jnp.arange(T)[None, :] < jnp.array([[T], [5]])
  base = forward(model, tokens, token_mask, enc, enc_mask, None, enc_lang)

  extra_l, extra_t = 3, 4
  pad_tokens = jnp.concatenate([tokens, jnp.full((B, extra_l), 7)], axis=1)
  pad_token_mask = jnp.pad(token_mask, ((0, 0), (0, extra_l)))
  garbage = 1e4 * jax.random.normal(jax.random.key(9), (B, extra_t, D))
  garbage = garbage.at[:, 0, 0].set(jnp.nan).at[:, 1, 1].set(jnp.inf)
  pad_enc = jnp.concatenate([enc, garbage], axis=1)
  pad_enc_mask = jnp.pad(enc_mask, ((0, 0), (0, extra_t)))
  pad_enc_lang = jnp.concatenate([enc_lang, jnp.full((B, extra_t, NUM_LANG), jnp.nan)], axis=1)
  # Row 1's own padded frames (5, 6) get garbage too.
  pad_enc = pad_enc.at[1, 5:T].set(1e4)
  pad_enc_lang = pad_enc_lang.at[1, 5:T].set(jnp.nan)
  padded = forward(model, pad_tokens, pad_token_mask, pad_enc, pad_enc_mask, None, pad_enc_lang)

  valid = np.asarray(token_mask)
  np.testing.assert_allclose(
    np.asarray(padded.logits[:, :L])[valid], np.asarray(base.logits)[valid], atol=1e-5, rtol=0
  )
  np.testing.assert_allclose(padded.expert_load, base.expert_load, atol=1e-6, rtol=0)
  assert np.isfinite(np.asarray(padded.logits[:, :L])[valid]).all()


def test_future_tokens_do_not_change_earlier_logits():
  model = make_decoder("language")
  tokens, enc, enc_lang, _ = make_inputs()
  mask, enc_mask = jnp.ones((B, L), bool), jnp.ones((B, T), bool)
  j = 3
  changed = tokens.at[:, j].set((tokens[:, j] + 5) % VOCAB)
  a = forward(model, tokens, mask, enc, enc_mask, None, enc_lang).logits
  b = forward(model, changed, mask, enc, enc_mask, None, enc_lang).logits
  np.testing.assert_allclose(a[:, :j], b[:, :j], atol=1e-6, rtol=0)
  assert float(jnp.abs(a[:, j:] - b[:, j:]).max()) > 1e-3


def test_attention_loss_matches_hand_computed_cross_entropy():
  logits = jnp.array([[[2.0, 0.0, -1.0], [0.5, 0.5, 1.0], [9.0, -9.0, 3.0]]])
  labels = jnp.array([[0, 2, 1]])
  mask = jnp.array([[True, True, False]])
  lp = np.log(np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(-1, keepdims=True))
  expected = -(lp[0, 0, 0] + lp[0, 1, 2]) / 2
  loss, n = attention_loss(logits, labels, mask)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert float(n) == 2.0

  eps, vocab = 0.1, 3
  smooth = 0.0
  for pos, label in ((0, 0), (1, 2)):
    target = np.full(vocab, eps / vocab)
    target[label] += 1 - eps
    smooth += -(target * lp[0, pos]).sum()
  loss, _ = attention_loss(logits, labels, mask, label_smoothing=eps)
  np.testing.assert_allclose(loss, smooth / 2, rtol=1e-6)


def test_shift_right():
  labels = jnp.array([[5, 6, 3, 0], [7, 3, 0, 0]])
  mask = labels > 0
  inputs, input_mask = shift_right(labels, mask, bos_id=2)
  np.testing.assert_array_equal(inputs, [[2, 5, 6, 0], [2, 7, 0, 0]])
  np.testing.assert_array_equal(input_mask, mask)


def test_one_hot_token_languages_route_to_matching_expert():
  model = make_decoder("language")
  tokens, enc, enc_lang, _ = make_inputs()
  mask = jnp.ones((B, L), bool).at[1, 4:].set(False)
  enc_mask = jnp.ones((B, T), bool)
  for lang in range(NUM_LANG):
    token_lang = jax.nn.one_hot(jnp.full((B, L), lang), NUM_LANG)
    out = forward(model, tokens, mask, enc, enc_mask, token_lang, enc_lang)
    expected = np.eye(NUM_EXPERTS)[lang][None]
    np.testing.assert_allclose(out.expert_load, expected, atol=1e-6)
  # Mixed languages: each expert's load is its language's share of valid tokens.
  langs = jnp.array([[0, 0, 1, 1, 2, 2], [1, 1, 1, 1, 0, 0]])
  out = forward(model, tokens, mask, enc, enc_mask, jax.nn.one_hot(langs, NUM_LANG), enc_lang)
  np.testing.assert_allclose(out.expert_load, [[0.2, 0.6, 0.2, 0.0]], atol=1e-6)
  np.testing.assert_allclose(out.moe_aux.expert_load, [0.2, 0.6, 0.2, 0.0], atol=1e-6)


def test_lid_context_routes_to_language_of_attended_frames():
  model = make_decoder("language")
  tokens, enc, _, _ = make_inputs()
  mask, enc_mask = jnp.ones((B, L), bool), jnp.ones((B, T), bool)
  for lang in range(NUM_LANG):
    enc_lang = jax.nn.one_hot(jnp.full((B, T), lang), NUM_LANG)
    out = forward(model, tokens, mask, enc, enc_mask, None, enc_lang)
    expected = np.eye(NUM_EXPERTS)[lang][None]
    np.testing.assert_allclose(out.expert_load, expected, atol=1e-6)


def test_language_router_without_language_information_raises():
  model = make_decoder("language")
  tokens, enc, _, _ = make_inputs()
  with pytest.raises(ValueError, match="token_lang_probs"):
    model(tokens, jnp.ones((B, L), bool), enc, jnp.ones((B, T), bool))


def test_without_moe_layers_aux_is_zero():
  model = make_decoder(moe_layers=())
  tokens, enc, _, _ = make_inputs()
  out = model(tokens, jnp.ones((B, L), bool), enc, jnp.ones((B, T), bool))
  assert out.expert_load.shape == (0, NUM_EXPERTS)
  assert float(out.moe_aux.load_balance_loss) == 0.0
  assert out.moe_aux.expert_load.shape == (NUM_EXPERTS,)


def test_attention_probabilities_respect_masks():
  attn = MultiHeadAttention(D, HEADS, rngs=nnx.Rngs(1))
  x = jax.random.normal(jax.random.key(0), (B, L, D))
  key_mask = jnp.arange(L)[None, :] < jnp.array([[L], [3]])
  _, probs = attn(x, x, key_mask=key_mask, causal=True, return_probs=True)
  assert probs.shape == (B, HEADS, L, L) and probs.dtype == jnp.float32
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
  allowed = np.tril(np.ones((L, L), bool))[None, None] & np.asarray(key_mask)[:, None, None, :]
  assert float(jnp.abs(jnp.where(allowed, 0.0, probs)).max()) == 0.0


def test_bfloat16_decoder_runs_close_to_float32():
  tokens, enc, enc_lang, _ = make_inputs()
  mask, enc_mask = jnp.ones((B, L), bool), jnp.ones((B, T), bool)
  f32 = forward(make_decoder("learned"), tokens, mask, enc, enc_mask, None, enc_lang)
  model = make_decoder("learned", dtype=jnp.bfloat16)
  bf16 = forward(model, tokens, mask, enc, enc_mask, None, enc_lang)
  assert bf16.logits.dtype == jnp.float32 and bool(jnp.isfinite(bf16.logits).all())
  # Same float32 parameters; bfloat16 activations keep ~3 significant digits.
  scale = float(jnp.abs(f32.logits).max())
  assert float(jnp.abs(bf16.logits - f32.logits).max()) < 0.05 * scale
  logits, _, _ = incremental(model, tokens, enc, enc_mask, None, enc_lang, True)
  assert float(jnp.abs(logits - bf16.logits).max()) < 0.05 * scale


def test_from_config_and_gradients():
  cfg = ml_collections.ConfigDict(
    dict(
      d_model=D,
      num_heads=HEADS,
      num_layers=1,
      d_ff=D_FF,
      dropout=0.1,
      moe_layers=(0,),
      num_experts=NUM_EXPERTS,
      router="hybrid",
      top_k=1,
      num_languages=NUM_LANG,
      tie_embeddings=False,
      positions="learned",
    )
  )
  cfg.vocab_size = VOCAB  # Read from the section when not passed.
  model = TransformerDecoder.from_config(cfg, rngs=nnx.Rngs(3))
  assert model.vocab_size == VOCAB
  assert model.moe_layers == (0,)
  tokens, enc, enc_lang, token_lang = make_inputs()
  mask, enc_mask = jnp.ones((B, L), bool), jnp.ones((B, T), bool)

  def loss_fn(model):
    out = model(tokens, mask, enc, enc_mask, token_lang_probs=token_lang)
    loss, _ = attention_loss(out.logits, tokens, mask)
    return loss + out.moe_aux.load_balance_loss + out.moe_aux.lid_alignment_loss

  model.train()
  loss_and_grads = nnx.jit(nnx.value_and_grad(loss_fn))
  loss_a, grads = loss_and_grads(model)
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads.embedder.output.kernel[...]).sum()) > 0
  # Training mode: the dropout stream advances, so a second call differs.
  loss_b, _ = loss_and_grads(model)
  assert abs(float(loss_a) - float(loss_b)) > 1e-4
