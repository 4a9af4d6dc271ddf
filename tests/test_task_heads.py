"""Task heads: bridge gradients, LID mixture, padding, add_language, losses, cascade classifier."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from moe_asr.models import task_heads

D, INTENTS, TAGS, LANGS = 16, 5, 6, 3
B, L, T = 3, 5, 7


@nnx.jit(static_argnames=("stop_gradient",))
def _apply(module, *args, stop_gradient=False, **kwargs):
  """One compiled call (tests are dominated by eager per-op compiles otherwise)."""
  if stop_gradient:
    return module(*args, stop_gradient=True, **kwargs)
  return module(*args, **kwargs)


def _heads(seed: int = 0, dtype=jnp.float32, token_layers: int = 0) -> task_heads.TaskHeads:
  heads = task_heads.TaskHeads(
    D, INTENTS, TAGS, num_languages=LANGS, num_heads=2, num_queries=3, dtype=dtype,
    token_layers=token_layers, d_ff=2 * D, rngs=nnx.Rngs(seed),
  )  # fmt: skip
  heads.eval()
  return heads


def _inputs(seed: int = 0):
  keys = jax.random.split(jax.random.key(seed), 4)
  dec = jax.random.normal(keys[0], (B, L, D))
  enc = jax.random.normal(keys[1], (B, T, D))
  token_lengths = jnp.array([5, 3, 1])
  frame_lengths = jnp.array([7, 4, 2])
  token_mask = jnp.arange(L)[None] < token_lengths[:, None]
  enc_mask = jnp.arange(T)[None] < frame_lengths[:, None]
  lang_probs = jax.nn.softmax(jax.random.normal(keys[2], (B, LANGS)))
  return dec, token_mask, enc, enc_mask, lang_probs


@pytest.mark.parametrize("token_layers", [0, 1])
@pytest.mark.parametrize("stop_gradient", [False, True])
def test_stop_gradient_cuts_task_loss_into_asr_states(stop_gradient, token_layers):
  heads = _heads(token_layers=token_layers)
  dec, token_mask, enc, enc_mask, lang_probs = _inputs()
  labels = jnp.array([0, 3, 1])
  tags = jnp.array([[0, 1, 2, 3, 4], [1, 1, 0, -1, -1], [2, -1, -1, -1, -1]])

  def loss_fn(heads, dec, enc, lang_probs):
    out = heads(dec, token_mask, enc, enc_mask, lang_probs, stop_gradient=stop_gradient)
    intent, _ = task_heads.intent_loss(out.intent_log_probs, labels)
    slots, _ = task_heads.slot_loss(out.slot_log_probs, tags, token_mask)
    return intent + slots

  head_grads, *input_grads = nnx.jit(nnx.grad(loss_fn, argnums=(0, 1, 2, 3)))(
    heads, dec, enc, lang_probs
  )
  for grad in input_grads:
    if stop_gradient:
      assert np.all(np.asarray(grad) == 0.0)
    else:
      assert np.max(np.abs(grad)) > 1e-4
  # The heads themselves still learn in the cascade setting.
  assert np.max(np.abs(head_grads["intent_kernel"][...])) > 1e-4


def test_mixture_one_hot_and_uniform():
  heads = _heads()
  dec, token_mask, enc, enc_mask, _ = _inputs()
  for lang in range(LANGS):
    one_hot = jax.nn.one_hot(jnp.full((B,), lang), LANGS)
    out = _apply(heads, dec, token_mask, enc, enc_mask, one_hot)
    expected = jax.nn.log_softmax(out.per_language_intent_logits[:, lang], axis=-1)
    np.testing.assert_allclose(out.intent_log_probs, expected, atol=1e-6)
    assert np.all(np.isfinite(out.slot_log_probs))

  uniform = jnp.full((B, LANGS), 1.0 / LANGS)
  out = _apply(heads, dec, token_mask, enc, enc_mask, uniform)
  probs = jax.nn.softmax(out.per_language_intent_logits, axis=-1).mean(axis=1)
  np.testing.assert_allclose(out.intent_log_probs, np.log(probs), atol=1e-5)


def test_slot_mixture_matches_explicit_sum_and_token_level_posteriors():
  heads = _heads()
  dec, token_mask, enc, enc_mask, lang_probs = _inputs()
  out = _apply(heads, dec, token_mask, enc, enc_mask, lang_probs)
  # Recompute the per-language slot logits from the bridge and heads.
  _, token_states = _apply(heads.bridge, dec, token_mask, enc, enc_mask)
  slot_logits = (
    jnp.einsum("btd,ldc->btlc", token_states, heads.slot_kernel[...]) + heads.slot_bias[...]
  )
  probs = jnp.einsum("bl,btlc->btc", lang_probs, jax.nn.softmax(slot_logits, axis=-1))
  np.testing.assert_allclose(out.slot_log_probs, np.log(probs), atol=1e-5)

  # Per-token posteriors: a token tagged with language 1 uses head 1 only.
  token_lang = jax.nn.one_hot(jnp.ones((B, L), jnp.int32), LANGS)
  out = _apply(heads, dec, token_mask, enc, enc_mask, lang_probs, token_lang_probs=token_lang)
  np.testing.assert_allclose(
    out.slot_log_probs, jax.nn.log_softmax(slot_logits[:, :, 1], axis=-1), atol=1e-5
  )


@pytest.mark.parametrize("token_layers", [0, 1])
def test_padding_does_not_change_valid_outputs(token_layers):
  heads = _heads(token_layers=token_layers)
  dec, token_mask, enc, enc_mask, lang_probs = _inputs()
  ref = _apply(heads, dec, token_mask, enc, enc_mask, lang_probs)

  # Garbage in existing padding plus 3 extra padded tokens and 5 extra frames.
  keys = jax.random.split(jax.random.key(7), 2)
  dec_pad = jnp.concatenate([dec, jnp.zeros((B, 3, D))], axis=1)
  enc_pad = jnp.concatenate([enc, jnp.zeros((B, 5, D))], axis=1)
  token_mask_pad = jnp.pad(token_mask, ((0, 0), (0, 3)))
  enc_mask_pad = jnp.pad(enc_mask, ((0, 0), (0, 5)))
  dec_pad = jnp.where(
    token_mask_pad[..., None], dec_pad, 100 * jax.random.normal(keys[0], dec_pad.shape)
  )
  enc_pad = jnp.where(
    enc_mask_pad[..., None], enc_pad, 100 * jax.random.normal(keys[1], enc_pad.shape)
  )
  enc_pad = enc_pad.at[0, -1, 0].set(jnp.inf)  # even non-finite padding
  out = _apply(heads, dec_pad, token_mask_pad, enc_pad, enc_mask_pad, lang_probs)

  np.testing.assert_allclose(out.intent_log_probs, ref.intent_log_probs, atol=1e-5)
  np.testing.assert_allclose(
    out.per_language_intent_logits, ref.per_language_intent_logits, atol=1e-5
  )
  valid = np.asarray(token_mask)
  np.testing.assert_allclose(
    np.asarray(out.slot_log_probs)[:, :L][valid], np.asarray(ref.slot_log_probs)[valid], atol=1e-5
  )


@pytest.mark.parametrize("token_layers", [0, 1])
def test_token_layers_let_a_token_read_the_words_after_it(token_layers):
  """The decoder's states are causal; with bidirectional token layers the first token's slot
  posteriors change when only the last token's state does, without them they cannot."""
  heads = _heads(token_layers=token_layers)
  dec, token_mask, enc, enc_mask, lang_probs = _inputs()
  ref = _apply(heads, dec, token_mask, enc, enc_mask, lang_probs)
  changed = dec.at[0, 4].add(3.0 * jax.random.normal(jax.random.key(3), (D,)))  # Row 0: 5 tokens.
  out = _apply(heads, changed, token_mask, enc, enc_mask, lang_probs)
  first = np.abs(np.asarray(out.slot_log_probs[0, :4] - ref.slot_log_probs[0, :4])).max()
  if token_layers:
    assert first > 1e-3
  else:
    assert first == 0.0
  # Other utterances never see it.
  np.testing.assert_allclose(out.slot_log_probs[1:], ref.slot_log_probs[1:], atol=1e-6)
  np.testing.assert_allclose(out.intent_log_probs[1:], ref.intent_log_probs[1:], atol=1e-6)


@pytest.mark.parametrize("init_from", [1, None])
def test_add_language_keeps_existing_heads(init_from):
  heads = _heads()
  dec, token_mask, enc, enc_mask, lang_probs = _inputs()
  before = _apply(heads, dec, token_mask, enc, enc_mask, lang_probs)
  old_kernel = np.asarray(heads.intent_kernel[...])

  new_index = heads.add_language(init_from=init_from)
  assert new_index == LANGS and heads.num_languages == LANGS + 1
  assert heads.intent_kernel.shape == (LANGS + 1, D, INTENTS)
  assert heads.slot_bias.shape == (LANGS + 1, TAGS)
  assert heads.intent_kernel.get_metadata()["out_sharding"] == ("lang", "embed", "classes")

  padded_probs = jnp.pad(lang_probs, ((0, 0), (0, 1)))  # the new language gets p = 0
  after = _apply(heads, dec, token_mask, enc, enc_mask, padded_probs)
  # Equal up to float32 rounding (the head matmul has a different shape now).
  np.testing.assert_allclose(
    after.per_language_intent_logits[:, :LANGS], before.per_language_intent_logits, atol=1e-6
  )
  np.testing.assert_allclose(after.intent_log_probs, before.intent_log_probs, atol=1e-6)
  np.testing.assert_allclose(after.slot_log_probs, before.slot_log_probs, atol=1e-6)
  if init_from is None:
    np.testing.assert_allclose(heads.intent_kernel[LANGS], old_kernel.mean(0), atol=1e-7)
  else:
    np.testing.assert_array_equal(heads.slot_kernel[LANGS], heads.slot_kernel[init_from])
    np.testing.assert_allclose(
      after.per_language_intent_logits[:, LANGS],
      after.per_language_intent_logits[:, init_from],
      atol=1e-6,
    )
    # All weight on the new language reproduces the copied head exactly.
    only_new = jax.nn.one_hot(jnp.full((B,), LANGS), LANGS + 1)
    copied = jax.nn.one_hot(jnp.full((B,), init_from), LANGS + 1)
    np.testing.assert_allclose(
      _apply(heads, dec, token_mask, enc, enc_mask, only_new).slot_log_probs,
      _apply(heads, dec, token_mask, enc, enc_mask, copied).slot_log_probs,
      atol=1e-6,
    )


def test_losses_match_hand_computed_cross_entropy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, INTENTS))
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  labels = np.array([2, -1, 0, 4])
  loss, count = task_heads.intent_loss(jnp.asarray(log_probs), jnp.asarray(labels))
  expected = -(log_probs[0, 2] + log_probs[2, 0] + log_probs[3, 4]) / 3
  assert float(count) == 3
  np.testing.assert_allclose(loss, expected, rtol=1e-6)

  slot_logits = rng.normal(size=(2, 3, TAGS))
  slot_log_probs = slot_logits - np.log(np.exp(slot_logits).sum(-1, keepdims=True))
  tags = np.array([[1, -1, 5], [0, 2, 3]])
  mask = np.array([[True, True, True], [True, False, False]])
  loss, count = task_heads.slot_loss(
    jnp.asarray(slot_log_probs), jnp.asarray(tags), jnp.asarray(mask)
  )
  expected = -(slot_log_probs[0, 0, 1] + slot_log_probs[0, 2, 5] + slot_log_probs[1, 0, 0]) / 3
  assert float(count) == 3
  np.testing.assert_allclose(loss, expected, rtol=1e-6)

  loss, count = task_heads.intent_loss(jnp.asarray(log_probs), jnp.full((4,), -1))
  assert float(loss) == 0.0 and float(count) == 0


def test_bfloat16_heads_close_to_float32_and_jittable():
  dec, token_mask, enc, enc_mask, lang_probs = _inputs()
  ref = _apply(_heads(seed=3), dec, token_mask, enc, enc_mask, lang_probs)
  heads_bf16 = _heads(seed=3, dtype=jnp.bfloat16)
  out = _apply(heads_bf16, dec, token_mask, enc, enc_mask, lang_probs)
  assert out.intent_log_probs.dtype == jnp.float32
  assert out.slot_log_probs.dtype == jnp.float32
  np.testing.assert_allclose(out.intent_log_probs, ref.intent_log_probs, atol=0.1)
  np.testing.assert_allclose(out.slot_log_probs, ref.slot_log_probs, atol=0.1)


def test_from_config_and_logical_axes():
  cfg = ml_collections.ConfigDict(
    dict(d_model=D, num_intents=INTENTS, num_slot_tags=TAGS, num_heads=2, num_queries=2)
  )
  heads = task_heads.TaskHeads.from_config(cfg, rngs=nnx.Rngs(0))
  assert heads.num_languages == 7  # default: every language in the registry
  assert heads.slot_kernel.shape == (7, D, TAGS)
  params = nnx.state(heads, nnx.Param)
  for path, variable in params.flat_state():
    axes = variable.get_metadata().get("out_sharding")
    assert axes is not None and len(axes) == variable[...].ndim, path

  text_cfg = ml_collections.ConfigDict(
    dict(vocab_size=11, d_model=D, num_heads=2, num_layers=1, d_ff=32, num_intents=INTENTS,
         num_slot_tags=TAGS, max_len=9, dtype="bfloat16")
  )  # fmt: skip
  classifier = task_heads.TextTaskClassifier.from_config(text_cfg, rngs=nnx.Rngs(0))
  assert len(classifier.layers) == 1
  intent, slots = nnx.eval_shape(
    lambda m, x, mask: m(x, mask), classifier, jnp.ones((2, 9), jnp.int32), jnp.ones((2, 9), bool)
  )
  assert intent.shape == (2, INTENTS) and slots.shape == (2, 9, TAGS)
  assert intent.dtype == jnp.float32
  with pytest.raises(ValueError, match="max_len"):
    _apply(classifier, jnp.ones((2, 10), jnp.int32), jnp.ones((2, 10), bool))


def _toy_task(rng: np.random.Generator, n: int, length: int = 8):
  """Intent = which keyword (ids 1..3) occurs; slot tag = 1 on digits (ids 4..6), else 0."""
  lengths = rng.integers(3, length + 1, size=n)
  tokens = rng.integers(7, 16, size=(n, length))  # filler words
  intents = rng.integers(0, 3, size=n)
  for i in range(n):
    positions = rng.permutation(lengths[i])
    tokens[i, positions[0]] = 1 + intents[i]
    tokens[i, positions[1]] = rng.integers(4, 7)
  mask = np.arange(length)[None] < lengths[:, None]
  tokens = np.where(mask, tokens, 0)
  tags = np.where(mask, ((tokens >= 4) & (tokens <= 6)).astype(np.int32), -1)
  return jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(intents), jnp.asarray(tags)


def test_text_classifier_learns_toy_task_and_ignores_padding():
  rng = np.random.default_rng(0)
  tokens, mask, intents, tags = _toy_task(rng, 64)
  model = task_heads.TextTaskClassifier(
    16, 32, num_heads=2, num_layers=1, d_ff=64, num_intents=3, num_slot_tags=2, max_len=12,
    rngs=nnx.Rngs(0),
  )  # fmt: skip
  model.eval()
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  def loss_fn(model):
    intent_logits, slot_logits = model(tokens, mask)
    intent, _ = task_heads.intent_loss(jax.nn.log_softmax(intent_logits), intents)
    slots, _ = task_heads.slot_loss(jax.nn.log_softmax(slot_logits), tags, mask)
    return intent + slots

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(40)]
  assert losses[-1] < 0.25 * losses[0], losses

  test_tokens, test_mask, test_intents, _ = _toy_task(np.random.default_rng(1), 64)
  intent_logits, _ = _apply(model, test_tokens, test_mask)
  assert float((intent_logits.argmax(-1) == test_intents).mean()) >= 0.9

  # Extra padded positions holding real token ids change nothing at valid positions.
  padded_mask = jnp.pad(test_mask, ((0, 0), (0, 4)))
  garbage = jnp.asarray(np.random.default_rng(2).integers(1, 16, size=(64, 12)))
  padded_tokens = jnp.where(padded_mask, jnp.pad(test_tokens, ((0, 0), (0, 4))), garbage)
  intent_pad, slots_pad = _apply(model, padded_tokens, padded_mask)
  _, slots_ref = _apply(model, test_tokens, test_mask)
  np.testing.assert_allclose(intent_pad, intent_logits, atol=1e-5)
  valid = np.asarray(test_mask)
  np.testing.assert_allclose(
    np.asarray(slots_pad)[:, :8][valid], np.asarray(slots_ref)[valid], atol=1e-5
  )
