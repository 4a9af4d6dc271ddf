"""Tests of the text LM: KV cache, padding, causality, scoring and training."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from moe_asr.data.tokenizer import Tokenizer
from moe_asr.models.lm import TransformerLM, lm_loss
from moe_asr.training.text_lm import encode_texts, read_text_file, train_lm

VOCAB, D, HEADS, LAYERS, D_FF = 50, 16, 2, 2, 32
B, L = 2, 7

CORPUS = [
  "turn on the light in the kitchen",
  "turn off the light in the bedroom",
  "play some music in the living room",
  "set an alarm for seven in the morning",
  "what is the weather like today",
  "call my mother on the phone",
  "pon la canción en la cocina",
  "apaga la luz del dormitorio",
]


@functools.cache
def make_lm(dtype=jnp.float32):
  model = TransformerLM(VOCAB, D, HEADS, LAYERS, D_FF, 0.0, 16, dtype, rngs=nnx.Rngs(0))
  model.eval()
  return model


def tokens_and_mask():
  tokens = jax.random.randint(jax.random.key(0), (B, L), 3, VOCAB)
  mask = jnp.arange(L)[None, :] < jnp.array([[L], [4]])
  return tokens, mask


@pytest.fixture(scope="module")
def tokenizer():
  return Tokenizer.train(CORPUS * 4, vocab_size=300)


@nnx.jit
def forward(model, tokens, mask):
  return model(tokens, mask)


@nnx.jit
def incremental(model, tokens):
  """Logits of every position, one token at a time inside `lax.scan`."""

  def step(cache, token):
    logits, state, cache = model.decode_step(token, cache)
    return cache, logits

  cache, logits = jax.lax.scan(step, model.init_cache(tokens.shape[0], 10), tokens.T)
  return jnp.swapaxes(logits, 0, 1), cache.index


@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 1e-5), (jnp.bfloat16, 0.1)])
def test_incremental_decoding_matches_full_forward(dtype, atol):
  model = make_lm(dtype)
  tokens, _ = tokens_and_mask()
  full = forward(model, tokens, jnp.ones((B, L), bool))
  logits, index = incremental(model, tokens)
  assert full.dtype == logits.dtype == jnp.float32 and full.shape == (B, L, VOCAB)
  assert bool(jnp.isfinite(full).all())
  # bfloat16: ~3 significant digits on logits of magnitude ~5.
  np.testing.assert_allclose(logits, full, atol=atol, rtol=0)
  assert int(index) == L


def test_padding_and_future_tokens_do_not_change_valid_logits():
  model = make_lm()
  tokens, mask = tokens_and_mask()
  base = forward(model, tokens, mask)
  padded = forward(
    model,
    jnp.concatenate([tokens, jnp.full((B, 3), 9)], axis=1),
    jnp.pad(mask, ((0, 0), (0, 3))),
  )
  valid = np.asarray(mask)
  np.testing.assert_allclose(
    np.asarray(padded[:, :L])[valid], np.asarray(base)[valid], atol=1e-5, rtol=0
  )
  j = 2
  changed = forward(model, tokens.at[:, j].set((tokens[:, j] + 1) % VOCAB), mask)
  np.testing.assert_allclose(changed[:, :j], base[:, :j], atol=1e-6, rtol=0)
  assert float(jnp.abs(changed[:, j:] - base[:, j:]).max()) > 1e-3


def test_score_is_sum_of_token_log_probs():
  model = make_lm()
  tokens, mask = tokens_and_mask()
  scores = model.score(tokens, mask)
  loss, n = lm_loss(model, tokens, mask)
  np.testing.assert_allclose(-scores.sum() / n, loss, rtol=1e-5)
  # By hand: incremental log-probs from bos.
  inputs = jnp.concatenate([jnp.full((B, 1), model.bos_id), tokens[:, :-1]], axis=1)
  step_logits, _ = incremental(model, inputs)
  lp = jax.nn.log_softmax(step_logits)
  token_lp = jnp.take_along_axis(lp, tokens[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(scores, jnp.where(mask, token_lp, 0).sum(-1), atol=1e-4, rtol=0)


def test_read_text_file_normalises_and_skips_empty_lines(tmp_path):
  path = tmp_path / "extra.txt"
  path.write_text("Turn ON the Light!\n\n  ...  \nPon la canción, por favor.\n", encoding="utf-8")
  assert read_text_file(path) == ["turn on the light", "pon la canción por favor"]


def test_train_lm_learns_the_corpus(tmp_path, tokenizer):
  extra = tmp_path / "extra.txt"
  extra.write_text("Turn on the light in the garden.\n", encoding="utf-8")
  texts = CORPUS + read_text_file(extra)
  cfg = ml_collections.ConfigDict(
    dict(
      steps=100,
      batch_size=8,
      learning_rate=1e-2,
      warmup_steps=10,
      max_len=32,
      seed=0,
      d_model=32,
      num_heads=2,
      num_layers=1,
      d_ff=64,
      dropout=0.0,
    )
  )
  model, metrics = train_lm(texts, tokenizer, cfg=cfg)
  assert [m["step"] for m in metrics] == list(range(1, 101))
  losses = [m["loss"] for m in metrics]
  assert all(np.isfinite(losses))
  first, last = losses[0], float(np.mean(losses[-10:]))
  assert last < 0.5 * first, (first, last)
  assert model.vocab_size == tokenizer.vocab_size

  in_corpus = "turn on the light in the kitchen"
  shuffled = "kitchen the in light the on turn"
  labels, mask = encode_texts([in_corpus, shuffled], tokenizer, 32)
  scores = model.score(jnp.asarray(labels), jnp.asarray(mask))
  assert float(scores[0]) > float(scores[1]) + 5.0, scores


def test_encode_texts_appends_eos_and_pads(tokenizer):
  labels, mask = encode_texts(["turn on the light", "x" * 50], tokenizer, 20)
  ids = tokenizer.encode("turn on the light") + [tokenizer.eos_id]
  np.testing.assert_array_equal(labels[0, : len(ids)], ids)
  assert mask[0].sum() == len(ids) and (labels[0, len(ids) :] == tokenizer.pad_id).all()
  assert mask[1].all()  # Cut at max_len.
