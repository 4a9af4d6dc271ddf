"""Tests of the MoE feed-forward block: routers, dispatch, aux losses, padding."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from moe_asr.data import languages
from moe_asr.data.synth import grammar
from moe_asr.models import moe

D_MODEL, D_FF = 8, 16
BATCH, LENGTH = 2, 6
NUM_LANGUAGES = 7
# float32 sparse vs dense: the same products summed in a different order.
ATOL_F32 = 1e-5


def _inputs(seed: int = 0, length: int = LENGTH, lengths=(6, 4)):
  """x [batch, length, d_model], mask [batch, length], lang_probs [batch, length, 7]."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(BATCH, length, D_MODEL)).astype(np.float32)
  mask = np.arange(length)[None, :] < np.asarray(lengths)[:, None]
  logits = 3.0 * rng.normal(size=(BATCH, length, NUM_LANGUAGES))
  lang_probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  return jnp.asarray(x), jnp.asarray(mask), jnp.asarray(lang_probs, jnp.float32)


def _layer(num_experts: int = 4, **kwargs) -> moe.MoeFeedForward:
  """A layer; `kwargs` are `MoeSettings` fields and `MoeFeedForward` arguments."""
  fields = {f.name for f in dataclasses.fields(moe.MoeSettings)}
  settings = moe.MoeSettings(
    num_experts=num_experts, **{k: v for k, v in kwargs.items() if k in fields}
  )
  rest = {k: v for k, v in kwargs.items() if k not in fields}
  return moe.MoeFeedForward(
    D_MODEL, D_FF, settings, num_languages=NUM_LANGUAGES, rngs=nnx.Rngs(0), **rest
  )


@nnx.jit(static_argnames="dense")
def _apply(layer, x, mask, lang_probs=None, dense=False):
  """One compiled call per layer configuration keeps the tests fast."""
  return layer(x, mask, lang_probs=lang_probs, dense=dense)


@nnx.jit
def _sparse_and_dense(layer, x, mask, lang_probs=None):
  """Both paths in one compiled call: ((y, aux) sparse, (y, aux) dense)."""
  return (
    layer(x, mask, lang_probs=lang_probs),
    layer(x, mask, lang_probs=lang_probs, dense=True),
  )


def _expert_ffn(layer: moe.MoeFeedForward, e: int, x) -> np.ndarray:
  """Expert e applied directly (SwiGLU), written out independently in numpy."""
  x = np.asarray(x, np.float64)
  w_gate, w_up, w_down = (
    np.asarray(w[...][e], np.float64) for w in (layer.w_gate, layer.w_up, layer.w_down)
  )
  gate = x @ w_gate
  return (gate / (1.0 + np.exp(-gate)) * (x @ w_up)) @ w_down


def _assert_aux_close(a: moe.MoeAux, b: moe.MoeAux, atol: float = 1e-6):
  for name in ("load_balance_loss", "router_z_loss", "lid_alignment_loss", "expert_load"):
    np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=atol, err_msg=name)
  np.testing.assert_allclose(a.dropped_fraction, b.dropped_fraction, atol=atol)


@pytest.mark.parametrize("shared_expert", [False, True])
@pytest.mark.parametrize(
  "router,top_k,language_soft",
  [
    ("learned", 1, False),
    ("learned", 2, False),
    ("hybrid", 1, False),
    ("hybrid", 2, False),
    # The language router ignores top_k: 1 expert when hard, all with mass when soft.
    ("language", 1, False),
    ("language", 1, True),
  ],
)
def test_sparse_matches_dense(router, top_k, language_soft, shared_expert):
  layer = _layer(
    router=router, top_k=top_k, shared_expert=shared_expert, language_soft=language_soft
  )
  x, mask, lang_probs = _inputs()
  (y_sparse, aux_sparse), (y_dense, aux_dense) = _sparse_and_dense(layer, x, mask, lang_probs)
  assert y_sparse.shape == x.shape
  np.testing.assert_allclose(y_sparse, y_dense, atol=ATOL_F32)
  assert float(jnp.abs(y_sparse).max()) > 0.1  # the comparison is not between zeros
  _assert_aux_close(aux_sparse, aux_dense)
  assert float(aux_sparse.dropped_fraction) == 0.0
  np.testing.assert_allclose(aux_sparse.expert_load.sum(), 1.0, atol=1e-6)


@pytest.mark.parametrize("grouped_matmul", ["blocks", "ragged"])
def test_sparse_matches_dense_plain_ffn_and_many_experts(grouped_matmul):
  # 16 experts for 20 valid assignments: many experts get no block at all (empty
  # inner loops, empty ragged groups), the others one partly filled block.
  layer = _layer(
    num_experts=16, top_k=2, gated=False, activation="gelu", grouped_matmul=grouped_matmul
  )
  x, mask, _ = _inputs(seed=3)
  (y_sparse, _), (y_dense, _) = _sparse_and_dense(layer, x, mask)
  np.testing.assert_allclose(y_sparse, y_dense, atol=ATOL_F32)


@pytest.mark.parametrize(
  "kwargs",
  [
    # Dropped assignments: they join the last ragged group as zero rows.
    {"router": "learned", "top_k": 2, "capacity_factor": 0.75},
    # Experts without posterior mass are not dispatched.
    {"router": "language", "language_soft": True},
    {"router": "hybrid", "top_k": 1, "shared_expert": True},
  ],
)
def test_ragged_grouped_matmul_matches_dense(kwargs):
  layer = _layer(grouped_matmul="ragged", **kwargs)
  x, mask, lang_probs = _inputs(seed=5)
  (y_sparse, aux_sparse), (y_dense, aux_dense) = _sparse_and_dense(layer, x, mask, lang_probs)
  np.testing.assert_allclose(y_sparse, y_dense, atol=ATOL_F32)
  assert float(jnp.abs(y_sparse).max()) > 0.1
  assert float(jnp.abs(y_sparse[~mask]).max()) == 0.0
  _assert_aux_close(aux_sparse, aux_dense)


def test_grouped_matmul_auto_picks_by_backend_and_unknown_is_rejected():
  expected = "ragged" if jax.default_backend() == "gpu" else "blocks"
  assert _layer().grouped_matmul == expected
  assert _layer(grouped_matmul="auto").grouped_matmul == expected
  assert moe.resolve_grouped_matmul("auto", "gpu") == "ragged"
  assert moe.resolve_grouped_matmul("auto", "cpu") == "blocks"
  assert moe.resolve_grouped_matmul("auto", "tpu") == "blocks"
  assert moe.resolve_grouped_matmul("ragged", "cpu") == "ragged"
  with pytest.raises(ValueError, match="grouped_matmul"):
    _layer(grouped_matmul="megablox")


@pytest.mark.parametrize("top_k", [1, 2])
def test_load_balance_loss_uniform_and_collapsed(top_k):
  # LB = E * sum_e f_e * P_e. Zero router weights give P_e = 1/E for every
  # expert, so LB = sum_e f_e = 1 whatever the top-k choice; z-loss is log(E)^2.
  e = 4
  layer = _layer(num_experts=e, top_k=top_k)
  layer.w_router[...] = jnp.zeros_like(layer.w_router[...])
  x, mask, _ = _inputs()
  _, aux = _apply(layer, x, mask)
  np.testing.assert_allclose(aux.load_balance_loss, 1.0, atol=1e-6)
  np.testing.assert_allclose(aux.router_z_loss, math.log(e) ** 2, rtol=1e-6)
  assert float(aux.lid_alignment_loss) == 0.0

  # Collapsed: every token strongly prefers expert 0, so P_0 ~ 1 and f_0 = 1/top_k.
  layer.w_router[...] = jnp.zeros_like(layer.w_router[...]).at[0, 0].set(50.0)
  x_pos = jnp.abs(x).at[..., 0].set(1.0)
  _, aux = _apply(layer, x_pos, mask)
  np.testing.assert_allclose(aux.load_balance_loss, e / top_k, rtol=1e-3)
  assert float(aux.load_balance_loss) > 1.5
  np.testing.assert_allclose(aux.expert_load[0], 1.0 / top_k, atol=1e-6)


@pytest.mark.parametrize("num_experts", [7, 4])
def test_language_router_hard_sends_language_to_its_expert(num_experts):
  layer = _layer(num_experts=num_experts, router="language")
  x, _, _ = _inputs()
  mask = jnp.ones((BATCH, LENGTH), bool)
  for lang in (0, 5):
    expert = lang % num_experts
    # A confident but not exactly one-hot posterior: argmax decides.
    lang_probs = jnp.full((BATCH, LENGTH, NUM_LANGUAGES), 0.02).at[..., lang].set(0.88)
    y, aux = _apply(layer, x, mask, lang_probs=lang_probs)
    expected_load = np.eye(num_experts)[expert]
    np.testing.assert_allclose(aux.expert_load, expected_load, atol=1e-6)
    np.testing.assert_allclose(y, _expert_ffn(layer, expert, x), atol=ATOL_F32)
    assert float(aux.router_z_loss) == 0.0


def test_language_router_soft_is_posterior_weighted_mixture():
  # E = 4 < 7 languages: languages l and l + 4 share expert l % 4 and add up.
  layer = _layer(num_experts=4, router="language", language_soft=True)
  x, _, lang_probs = _inputs(seed=1)
  mask = jnp.ones((BATCH, LENGTH), bool)
  y, aux = _apply(layer, x, mask, lang_probs=lang_probs)
  expected = sum(
    lang_probs[..., lang : lang + 1] * _expert_ffn(layer, lang % 4, x) for lang in range(7)
  )
  np.testing.assert_allclose(y, expected, atol=ATOL_F32)
  mapped = np.zeros(4)
  for lang in range(7):
    mapped[lang % 4] += float(lang_probs[..., lang].mean())
  np.testing.assert_allclose(aux.expert_load, mapped, atol=1e-6)

  # A one-language posterior dispatches that expert only.
  one_hot = jax.nn.one_hot(jnp.full((BATCH, LENGTH), 2), NUM_LANGUAGES)
  y, aux = _apply(layer, x, mask, lang_probs=one_hot)
  np.testing.assert_allclose(y, _expert_ffn(layer, 2, x), atol=ATOL_F32)
  np.testing.assert_allclose(aux.expert_load, np.eye(4)[2], atol=1e-6)


CODES = languages.LANGUAGE_CODES
PAIRS = [(CODES.index(a), CODES.index(b)) for a, b in grammar.CODE_SWITCH_PAIRS]


@pytest.mark.parametrize("num_experts", [2, 3, 4, 5, 6])
def test_pairs_map_keeps_code_switch_pairs_apart_and_balanced(num_experts):
  assert len(CODES) == NUM_LANGUAGES
  expert_map = moe.resolve_expert_map("pairs", NUM_LANGUAGES, num_experts)
  assert expert_map == moe.resolve_expert_map("pairs", NUM_LANGUAGES, num_experts)
  for a, b in PAIRS:
    assert expert_map[a] != expert_map[b], (CODES[a], CODES[b], expert_map)
  counts = np.bincount(expert_map, minlength=num_experts)
  assert counts.max() == math.ceil(NUM_LANGUAGES / num_experts), counts
  assert counts.min() >= NUM_LANGUAGES // num_experts, counts


def test_modulo_map_shares_a_code_switch_pair_on_4_experts_and_pairs_does_not():
  en, hi = CODES.index("en"), CODES.index("hi")
  modulo = moe.resolve_expert_map("modulo", NUM_LANGUAGES, 4)
  assert modulo == tuple(lang % 4 for lang in range(NUM_LANGUAGES))
  assert modulo[en] == modulo[hi]
  # The demo encoder's map: en 0, es 1, de 2, fr 3, hi 1, cmn 2, ru 0.
  assert moe.resolve_expert_map("pairs", NUM_LANGUAGES, 4) == (0, 1, 2, 3, 1, 2, 0)


@pytest.mark.parametrize("num_experts", [7, 8, 12])
def test_pairs_map_gives_each_language_its_own_expert_when_there_are_enough(num_experts):
  assert moe.resolve_expert_map("pairs", NUM_LANGUAGES, num_experts) == tuple(range(7))


def test_pairs_map_without_a_colouring_shares_fewest_pairs():
  assert moe.pairs_expert_map(NUM_LANGUAGES, 1) == (0,) * NUM_LANGUAGES
  # en, es and de pairwise switching cannot sit on two experts apart: one pair shares.
  triangle = [("en", "es"), ("es", "de"), ("de", "en")]
  expert_map = moe.pairs_expert_map(NUM_LANGUAGES, 2, triangle)
  assert expert_map == moe.pairs_expert_map(NUM_LANGUAGES, 2, triangle)
  shared = sum(expert_map[CODES.index(a)] == expert_map[CODES.index(b)] for a, b in triangle)
  assert shared == 1
  # Pairs with a language outside the posterior are ignored.
  assert moe.pairs_expert_map(2, 1, [("en", "hi")]) == (0, 0)


def test_explicit_map_is_validated():
  assert moe.resolve_expert_map((3, 2, 1, 0, 0, 1, 2), NUM_LANGUAGES, 4) == (3, 2, 1, 0, 0, 1, 2)
  assert moe.resolve_expert_map([0, 1, 2, 3, 1, 2, np.int64(0)], 7, 4) == (0, 1, 2, 3, 1, 2, 0)
  # The string form a config override holds.
  assert moe.resolve_expert_map("0,1,2,3,1,2,0", 7, 4) == (0, 1, 2, 3, 1, 2, 0)
  assert moe.resolve_expert_map("0 1 2 3 1 2 0", 7, 4) == (0, 1, 2, 3, 1, 2, 0)
  with pytest.raises(ValueError, match="6 entries; it needs one expert id per language, 7"):
    moe.resolve_expert_map((0, 1, 2, 3, 0, 1), NUM_LANGUAGES, 4)
  with pytest.raises(ValueError, match=r"sends hi to expert 4; .*\[0, num_experts=4\)"):
    moe.resolve_expert_map((0, 1, 2, 3, 4, 1, 2), NUM_LANGUAGES, 4)
  with pytest.raises(ValueError, match="sends en to expert -1"):
    moe.resolve_expert_map((-1, 1, 2, 3, 0, 1, 2), NUM_LANGUAGES, 4)
  with pytest.raises(ValueError, match="sends es to expert 1.0"):
    moe.resolve_expert_map((0, 1.0, 2, 3, 0, 1, 2), NUM_LANGUAGES, 4)
  with pytest.raises(ValueError, match="expert_map must be one of"):
    moe.resolve_expert_map("by_pairs", NUM_LANGUAGES, 4)
  with pytest.raises(ValueError, match="one expert id per language"):
    _layer(num_experts=4, router="language", expert_map=(0, 1, 2))


def _en_hi_posteriors(hindi_first: jax.Array) -> jax.Array:
  """[batch, length, 7] posteriors of an en-hi switch: 0.55 / 0.40 between the two."""
  en, hi = CODES.index("en"), CODES.index("hi")
  probs = jnp.full((BATCH, LENGTH, NUM_LANGUAGES), 0.01)
  first = jnp.where(hindi_first[..., None], hi, en)
  second = jnp.where(hindi_first[..., None], en, hi)
  probs = jnp.where(jnp.arange(NUM_LANGUAGES) == first, 0.55, probs)
  return jnp.where(jnp.arange(NUM_LANGUAGES) == second, 0.40, probs)


def test_language_router_sends_en_hi_frames_to_the_mapped_experts():
  layer = _layer(num_experts=4, router="language", expert_map="pairs")
  en_expert, hi_expert = layer.expert_map[CODES.index("en")], layer.expert_map[CODES.index("hi")]
  assert en_expert != hi_expert
  x, _, _ = _inputs(seed=3)
  mask = jnp.ones((BATCH, LENGTH), bool)
  hindi_first = jnp.arange(LENGTH)[None, :] >= jnp.array([[3], [1]])  # The switch point.
  lang_probs = _en_hi_posteriors(hindi_first)
  y, aux = _apply(layer, x, mask, lang_probs=lang_probs)
  expert = np.where(np.asarray(hindi_first), hi_expert, en_expert)
  np.testing.assert_allclose(aux.token_load, np.eye(4)[expert], atol=1e-6)
  expected = np.where(
    np.asarray(hindi_first)[..., None],
    _expert_ffn(layer, hi_expert, x),
    _expert_ffn(layer, en_expert, x),
  )
  np.testing.assert_allclose(y, expected, atol=ATOL_F32)

  # Soft routing splits each frame between the two experts by the posterior.
  soft = _layer(num_experts=4, router="language", expert_map="pairs", language_soft=True)
  y, aux = _apply(soft, x, mask, lang_probs=lang_probs)
  mapped = np.asarray(lang_probs) @ np.eye(4)[list(soft.expert_map)]  # [batch, length, 4]
  np.testing.assert_allclose(aux.token_load, mapped, atol=1e-6)
  assert (mapped[..., en_expert] > 0.5).sum() and (mapped[..., hi_expert] > 0.5).sum()
  expected = sum(mapped[..., e : e + 1] * _expert_ffn(soft, e, x) for e in range(4))
  np.testing.assert_allclose(y, expected, atol=ATOL_F32)

  # The same frames under "modulo": English and Hindi share expert 0.
  modulo = _layer(num_experts=4, router="language")
  _, aux = _apply(modulo, x, mask, lang_probs=lang_probs)
  np.testing.assert_allclose(aux.expert_load, np.eye(4)[0], atol=1e-6)


def test_hybrid_alignment_target_follows_the_expert_map():
  expert_map = (3, 2, 1, 0, 0, 1, 2)
  layer = _layer(num_experts=4, router="hybrid", top_k=1, expert_map=expert_map)
  x, mask, lang_probs = _inputs(seed=4)
  _, aux = _apply(layer, x, mask, lang_probs=lang_probs)
  logits = np.asarray(x, np.float64) @ np.asarray(layer.w_router[...], np.float64)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  target = np.asarray(lang_probs, np.float64) @ np.eye(4)[list(expert_map)]
  ce = -(target * log_p).sum(-1)
  np.testing.assert_allclose(aux.lid_alignment_loss, ce[np.asarray(mask)].mean(), rtol=1e-5)


def _two_expert_case(top_k: int, capacity_factor: float):
  """8 valid tokens: 6 prefer expert 0 (feature 0 = +1), 2 prefer expert 1."""
  layer = _layer(num_experts=2, top_k=top_k, capacity_factor=capacity_factor)
  layer.w_router[...] = jnp.zeros((D_MODEL, 2)).at[0].set(jnp.array([3.0, -3.0]))
  sign = jnp.array([[1, 1, -1, 1, 1, 0], [-1, 1, 1, 0, 0, 0]], jnp.float32)
  x, _, _ = _inputs(seed=2)
  x = x.at[..., 0].set(sign)
  mask = sign != 0
  return layer, x, mask


def _gate(layer, x_token, e):
  """Top-2 of 2 experts: the renormalised gate is the router probability itself."""
  return jax.nn.softmax(x_token @ layer.w_router[...])[e]


def test_capacity_factor_drops_top1_hand_count():
  # Flat valid order: expert 0 gets tokens (0,0) (0,1) (0,3) (0,4) (1,1) (1,2), expert 1
  # gets (0,2) (1,0). capacity = ceil(1.0 * 8 * 1 / 2) = 4, so (1,1) and (1,2) drop: 2/8.
  layer, x, mask = _two_expert_case(top_k=1, capacity_factor=1.0)
  (y, aux), (y_dense, aux_dense) = _sparse_and_dense(layer, x, mask)
  np.testing.assert_allclose(aux.dropped_fraction, 2 / 8, atol=1e-7)
  np.testing.assert_allclose(aux.expert_load, [6 / 8, 2 / 8], atol=1e-7)
  dropped = np.zeros((BATCH, LENGTH), bool)
  dropped[1, 1] = dropped[1, 2] = True
  np.testing.assert_array_equal(np.abs(np.asarray(y)).max(-1) == 0, dropped | ~np.asarray(mask))
  np.testing.assert_allclose(y, y_dense, atol=ATOL_F32)
  _assert_aux_close(aux, aux_dense)

  # Without a capacity factor nothing drops.
  layer.capacity_factor = None
  y_free, aux_free = _apply(layer, x, mask)
  assert float(aux_free.dropped_fraction) == 0.0
  assert (np.abs(np.asarray(y_free)).max(-1) > 0)[np.asarray(mask)].all()


def test_capacity_factor_top2_first_choices_take_priority():
  # 16 assignments, capacity = ceil(0.5 * 8 * 2 / 2) = 4 per expert. Expert 0: 6 first
  # choices + 2 second -> keeps the first 4 first choices, drops (1,1) (1,2) and both
  # second choices. Expert 1: 2 first + 6 second -> keeps 2 first + the second choices
  # of (0,0) (0,1), drops 4. Dropped 8/16.
  layer, x, mask = _two_expert_case(top_k=2, capacity_factor=0.5)
  (y, aux), (y_dense, _) = _sparse_and_dense(layer, x, mask)
  np.testing.assert_allclose(aux.dropped_fraction, 0.5, atol=1e-7)
  np.testing.assert_allclose(y, y_dense, atol=ATOL_F32)
  # Tokens (1,1) (1,2) lose both choices; (0,3) keeps only its first, (0,0) both.
  lost = np.abs(np.asarray(y)).max(-1) == 0
  np.testing.assert_array_equal(
    lost, ~np.asarray(mask) | (np.arange(LENGTH) == [[9], [1]]) | (np.arange(LENGTH) == [[9], [2]])
  )
  np.testing.assert_allclose(
    y[0, 3], _expert_ffn(layer, 0, x[0, 3]) * _gate(layer, x[0, 3], 0), atol=ATOL_F32
  )
  np.testing.assert_allclose(
    y[0, 0],
    _expert_ffn(layer, 0, x[0, 0]) * _gate(layer, x[0, 0], 0)
    + _expert_ffn(layer, 1, x[0, 0]) * _gate(layer, x[0, 0], 1),
    atol=ATOL_F32,
  )


@pytest.mark.parametrize(
  "kwargs",
  [
    {"router": "learned", "top_k": 2, "capacity_factor": 0.75},
    {"router": "hybrid", "top_k": 1, "shared_expert": True},
    {"router": "language"},
    {"router": "language", "language_soft": True},
  ],
)
def test_padding_invariance(kwargs):
  layer = _layer(**kwargs)
  x, mask, lang_probs = _inputs(seed=4)
  y, aux = _apply(layer, x, mask, lang_probs=lang_probs)
  y, m = np.asarray(y), np.asarray(mask)
  assert np.abs(y[~m]).max() == 0.0

  # Three more positions of junk, all masked.
  extra = 3
  junk = 100.0 * np.random.default_rng(9).normal(size=(BATCH, extra, D_MODEL))
  x_long = jnp.concatenate([x, jnp.asarray(junk, jnp.float32)], axis=1)
  mask_long = jnp.concatenate([mask, jnp.zeros((BATCH, extra), bool)], axis=1)
  lp_long = jnp.concatenate([lang_probs, jnp.full((BATCH, extra, NUM_LANGUAGES), 1 / 7)], axis=1)
  y_long, aux_long = _apply(layer, x_long, mask_long, lang_probs=lp_long)
  y_long = np.asarray(y_long)
  np.testing.assert_allclose(y_long[:, :LENGTH][m], y[m], atol=ATOL_F32)
  assert np.abs(y_long[:, LENGTH:]).max() == 0.0
  _assert_aux_close(aux, aux_long)


@pytest.mark.parametrize("grouped_matmul", ["blocks", "ragged"])
@pytest.mark.parametrize(
  "kwargs",
  [
    {"router": "learned", "top_k": 2, "shared_expert": True},
    {"router": "hybrid", "top_k": 1, "gated": False, "activation": "gelu"},
    {"router": "learned", "top_k": 2, "capacity_factor": 0.75},
  ],
)
def test_gradients_reach_router_and_experts_and_match_dense(kwargs, grouped_matmul):
  # The blocks path has a hand-written backward pass, the ragged one autodiff of
  # `jax.lax.ragged_dot`; autodiff of the dense einsum path is the reference.
  layer = _layer(grouped_matmul=grouped_matmul, **kwargs)
  x, mask, lang_probs = _inputs()

  def loss(model, x, dense):
    y, aux = model(x, mask, lang_probs=lang_probs, dense=dense)
    return (
      jnp.mean(y**2)
      + 0.01 * aux.load_balance_loss
      + 0.001 * aux.router_z_loss
      + 0.1 * aux.lid_alignment_loss
    )

  @nnx.jit
  def grads(model, x):
    return tuple(nnx.grad(loss, argnums=(0, 1))(model, x, dense) for dense in (False, True))

  (g_model, g_x), (g_model_dense, g_x_dense) = grads(layer, x)
  names = ["w_router", "w_up", "w_down"] + (["w_gate"] if layer.gated else [])
  names += ["shared_w_up"] if layer.shared_expert else []
  for name in names:
    g = np.asarray(getattr(g_model, name)[...])
    assert np.isfinite(g).all(), name
    assert np.abs(g).max() > 0, name
    # float32, gradients of order 0.1: same products, different summation order.
    np.testing.assert_allclose(g, getattr(g_model_dense, name)[...], atol=1e-6, err_msg=name)
  np.testing.assert_allclose(g_x, g_x_dense, atol=1e-6)
  assert float(jnp.abs(g_x[~mask]).max()) == 0.0  # padding gets no gradient


def test_soft_language_router_passes_gradient_to_posteriors():
  layer = _layer(router="language", language_soft=True)
  x, mask, lang_probs = _inputs()

  @nnx.jit
  def grad_lang_probs(layer, lp):
    return jax.grad(lambda lp: jnp.sum(layer(x, mask, lang_probs=lp)[0] ** 2))(lp)

  g = grad_lang_probs(layer, lang_probs)
  assert np.isfinite(np.asarray(g)).all()
  assert float(jnp.abs(g).max()) > 0


def test_expert_params_carry_expert_axis():
  layer = _layer(router="hybrid", shared_expert=True)
  specs = nnx.get_partition_spec(nnx.state(layer, nnx.Param))
  P = jax.sharding.PartitionSpec
  assert specs["w_gate"].get_value() == P("expert", "embed", "mlp")
  assert specs["w_up"].get_value() == P("expert", "embed", "mlp")
  assert specs["w_down"].get_value() == P("expert", "mlp", "embed")
  assert specs["w_router"].get_value() == P("embed", None)
  assert specs["shared_w_down"].get_value() == P("mlp", "embed")


def test_jit_forms_agree():
  # The training step jits a pure function of the split state; nnx.jit wraps the module.
  layer = _layer(router="hybrid", top_k=2)
  x, mask, lang_probs = _inputs()
  graphdef, state = nnx.split(layer)

  @jax.jit
  def pure(state, x, mask, lang_probs):
    return nnx.merge(graphdef, state)(x, mask, lang_probs=lang_probs)

  y_pure, aux_pure = pure(state, x, mask, lang_probs)
  y_nnx, aux_nnx = _apply(layer, x, mask, lang_probs=lang_probs)
  np.testing.assert_allclose(y_pure, y_nnx, atol=1e-6)
  _assert_aux_close(aux_pure, aux_nnx)
  # Eager (op by op) on the cheap dense path against its jitted form.
  y_eager, _ = layer(x, mask, lang_probs=lang_probs, dense=True)
  y_dense, _ = _apply(layer, x, mask, lang_probs=lang_probs, dense=True)
  np.testing.assert_allclose(y_eager, y_dense, atol=1e-6)
  np.testing.assert_allclose(y_pure, y_dense, atol=ATOL_F32)


def test_bfloat16_close_to_float32():
  x, mask, _ = _inputs()
  layer32 = _layer(top_k=2)
  layer16 = _layer(top_k=2, dtype=jnp.bfloat16)  # same seed -> same float32 params
  scale = float(jnp.abs(_apply(layer32, x, mask)[0]).max())
  for (y32, aux32), (y16, aux16) in zip(
    _sparse_and_dense(layer32, x, mask), _sparse_and_dense(layer16, x, mask), strict=True
  ):
    assert y16.dtype == jnp.bfloat16
    # bfloat16 keeps 8 significant bits (relative step 2^-8 ~ 0.4%); through three
    # matmuls with float32 accumulation the error stays within 3% of the output scale.
    np.testing.assert_allclose(np.asarray(y16, np.float32), y32, atol=0.03 * scale)
    # The router runs in float32 either way, so routing and losses agree closely.
    _assert_aux_close(aux16, aux32, atol=1e-5)


def test_hybrid_lid_alignment_lower_when_router_matches_lid():
  layer = _layer(num_experts=7, router="hybrid", top_k=2)
  w = np.asarray(layer.w_router[...])
  layer.w_router[...] = jnp.asarray(2.0 * w / np.abs(w).max())
  x, mask, _ = _inputs()
  logits = np.asarray(x, np.float64) @ np.asarray(layer.w_router[...], np.float64)
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)  # language l = expert l
  m = np.asarray(mask)

  _, aux_match = _apply(layer, x, mask, lang_probs=jnp.asarray(probs, jnp.float32))
  least = np.eye(7, dtype=np.float32)[probs.argmin(-1)]
  _, aux_miss = _apply(layer, x, mask, lang_probs=jnp.asarray(least))
  # CE(t, p) = -sum t log p: the entropy of p when t = p, -log min(p) for the one-hot.
  entropy = -(probs * np.log(probs)).sum(-1)[m].mean()
  np.testing.assert_allclose(aux_match.lid_alignment_loss, entropy, rtol=1e-5)
  np.testing.assert_allclose(
    aux_miss.lid_alignment_loss, -np.log(probs.min(-1))[m].mean(), rtol=1e-5
  )
  assert float(aux_match.lid_alignment_loss) < float(aux_miss.lid_alignment_loss) - 0.1


def test_routers_need_lang_probs():
  layer = _layer(router="language")
  x, mask, _ = _inputs()
  with pytest.raises(ValueError, match="lang_probs"):
    layer(x, mask)


def test_dropout_only_in_train_mode():
  layer = _layer(dropout=0.5)
  x, mask, _ = _inputs()
  layer.eval()
  # Dropout acts on the block output, the same after either path; dense compiles faster.
  y1, _ = _apply(layer, x, mask, dense=True)
  y2, _ = _apply(layer, x, mask, dense=True)
  np.testing.assert_array_equal(y1, y2)
  layer.train()
  y3, _ = _apply(layer, x, mask, dense=True)
  dropped = (y3 == 0) & mask[..., None]
  assert 0.2 < float(dropped.mean() / mask.mean()) < 0.8


def test_aux_zeros_and_mean():
  a = moe.MoeAux.zeros(4)
  assert a.expert_load.shape == (4,)
  b = moe.MoeAux(
    load_balance_loss=jnp.float32(2.0),
    router_z_loss=jnp.float32(1.0),
    lid_alignment_loss=jnp.float32(0.5),
    expert_load=jnp.array([1.0, 0.0, 0.0, 0.0]),
    dropped_fraction=jnp.float32(0.25),
    token_load=jnp.array([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]),
  )
  m = moe.MoeAux.mean([a, b])
  np.testing.assert_allclose(m.token_load, [[[0.5, 0, 0, 0], [0, 0, 0, 0]]])
  np.testing.assert_allclose(m.load_balance_loss, 1.0)
  np.testing.assert_allclose(m.expert_load, [0.5, 0, 0, 0])
  np.testing.assert_allclose(m.dropped_fraction, 0.125)


def test_from_config_and_param_counts():
  cfg = ml_collections.ConfigDict(
    {
      "num_experts": 4,
      "router": "hybrid",
      "top_k": 1,
      "shared_expert": True,
      "grouped_matmul": "ragged",
    }
  )
  layer = moe.MoeFeedForward.from_config(cfg, d_model=D_MODEL, d_ff=D_FF, rngs=nnx.Rngs(0))
  assert (layer.router, layer.top_k, layer.num_experts) == ("hybrid", 1, 4)
  assert layer.grouped_matmul == "ragged"
  router, expert = D_MODEL * 4, 3 * D_MODEL * D_FF  # SwiGLU: w_gate, w_up, w_down
  # Total: router + 4 experts + shared; active: router + 1 expert + shared.
  assert layer.param_counts() == (router + 5 * expert, router + 2 * expert)
  hard = _layer(num_experts=4, router="language")
  assert hard.param_counts() == (4 * expert, expert)
  assert hard.expert_map == (0, 1, 2, 3, 0, 1, 2)  # "modulo" by default.
  cfg.expert_map = "pairs"
  layer = moe.MoeFeedForward.from_config(cfg, d_model=D_MODEL, d_ff=D_FF, rngs=nnx.Rngs(0))
  assert layer.expert_map == moe.pairs_expert_map(NUM_LANGUAGES, 4)
  # Soft routing runs the experts the map uses: two here.
  soft = _layer(num_experts=4, router="language", language_soft=True, expert_map="0 0 0 1 1 1 1")
  assert soft.param_counts() == (4 * expert, 2 * expert)


def test_settings_from_config():
  # The encoder section's names: moe_block_size is block_size; missing keys take the
  # defaults; a list map becomes a tuple (the settings are hashable).
  cfg = ml_collections.ConfigDict(
    {"num_experts": 4, "router": "language", "moe_block_size": 64, "expert_map": [0, 1, 2, 3]}
  )
  settings = moe.MoeSettings.from_config(cfg)
  assert settings == moe.MoeSettings(
    num_experts=4, router="language", block_size=64, expert_map=(0, 1, 2, 3)
  )
  assert hash(settings) == hash(moe.MoeSettings.from_config(cfg))
  assert moe.MoeSettings.from_config(ml_collections.ConfigDict()) == moe.MoeSettings()
  with pytest.raises(ValueError, match="router"):
    moe.MoeSettings(router="random")
