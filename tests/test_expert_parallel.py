"""Expert-parallel MoE dispatch on 8 fake CPU devices (conftest sets the device count).

The expert-parallel layer (tokens to the devices holding their experts and back by
all-to-all) gives the single-device layer's outputs and gradients; with a capacity factor it
drops what the single-device layer drops on each token shard alone; its compiled step moves
tokens (all-to-all), never gathers the expert weights, and keeps 1/8 of them on each device; a
tiny model trains expert-parallel, resumes exactly and restores on one device.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_asr import config_lib, runtime
from moe_asr.data import features
from moe_asr.data import pipeline as pipeline_lib
from moe_asr.models import moe
from moe_asr.models import partitioning as pt
from moe_asr.training import checkpoint as ckpt
from moe_asr.training import memory as memory_lib
from moe_asr.training import sharding, train
from moe_asr.training import state as state_lib

D_MODEL, D_FF = 16, 32
BATCH, LENGTH = 8, 12
LENGTHS = (12, 10, 12, 5, 12, 12, 3, 12)
NUM_LANGUAGES = 7
# float32, the same products summed in another order (observed: 2e-7 outputs, 6e-6 gradients
# of magnitude ~10).
ATOL = 1e-5
GRAD_RTOL = 1e-5
AXES = ("data", "fsdp", "expert", "tensor")
# The rules of runs made before the batch was split over the expert axis.
OLD_RULES = tuple(r if r[0] != "batch" else ("batch", ("data", "fsdp")) for r in pt.DEFAULT_RULES)


def _mesh(shape) -> jax.sharding.Mesh:
  return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)


def _inputs(seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(BATCH, LENGTH, D_MODEL)).astype(np.float32)
  mask = np.arange(LENGTH)[None, :] < np.asarray(LENGTHS)[:, None]
  logits = 3.0 * rng.normal(size=(BATCH, LENGTH, NUM_LANGUAGES))
  lang_probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  return jnp.asarray(x), jnp.asarray(mask), jnp.asarray(lang_probs, jnp.float32)


def _layer(num_experts=8, **kwargs) -> moe.MoeFeedForward:
  """A layer; `kwargs` are `MoeSettings` fields and `MoeFeedForward` arguments."""
  fields = {f.name for f in dataclasses.fields(moe.MoeSettings)}
  settings = moe.MoeSettings(
    num_experts=num_experts, **{k: v for k, v in kwargs.items() if k in fields}
  )
  rest = {k: v for k, v in kwargs.items() if k not in fields}
  return moe.MoeFeedForward(
    D_MODEL, D_FF, settings, num_languages=NUM_LANGUAGES, rngs=nnx.Rngs(0), **rest
  )


def _step(layer, mesh, rules):
  """(run, compile) of (loss, (y, aux)), grads of the layer's parameters and input, under
  `rules`, with the parameters placed by their logical axes (the expert weights split)."""
  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
  params = jax.device_put(params, sharding.state_shardings(params, mesh, rules))

  def loss(params, x, mask, lang_probs):
    m = nnx.merge(graphdef, params, rest)
    with pt.axis_rules(rules, mesh):
      y, aux = m(x, mask, lang_probs=lang_probs)
    # Output, router losses: the gradient reaches the router through gates and losses.
    scalar = (y * jnp.cos(x)).sum() + aux.load_balance_loss + aux.router_z_loss
    return scalar + aux.lid_alignment_loss, (y, aux)

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  return lambda *args: fn(params, *args), lambda *args: fn.lower(params, *args).compile()


def _assert_grads_close(got, want):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    scale = float(np.abs(np.asarray(w)).max())
    np.testing.assert_allclose(g, w, rtol=GRAD_RTOL, atol=GRAD_RTOL * scale)


@pytest.mark.parametrize(
  "mesh_shape, rules, kwargs",
  [
    ((1, 1, 8, 1), pt.DEFAULT_RULES, dict(router="learned", top_k=2)),
    ((2, 1, 4, 1), pt.DEFAULT_RULES, dict(router="hybrid", top_k=2, shared_expert=True)),
    ((2, 1, 2, 2), OLD_RULES, dict(router="language", num_experts=4, gated=False)),
    ((1, 1, 8, 1), pt.DEFAULT_RULES, dict(router="learned", top_k=1, grouped_matmul="ragged")),
  ],
  ids=["learned-e8", "hybrid-shared-data2", "language-batch-not-on-expert", "ragged-top1"],
)
def test_dropless_matches_the_single_device_layer(mesh_shape, rules, kwargs):
  mesh = _mesh(mesh_shape)
  x, mask, lang_probs = _inputs()
  parallel = _layer(**kwargs)
  with pt.axis_rules(rules, mesh):
    plan = parallel.expert_parallel_plan(BATCH * LENGTH)
  assert plan is not None and plan.expert_size == mesh.shape["expert"]
  (loss, (y, aux)), grads = _step(parallel, mesh, rules)[0](x, mask, lang_probs)
  reference = _layer(expert_parallel="off", **kwargs)
  (loss_ref, (y_ref, aux_ref)), grads_ref = _step(reference, mesh, rules)[0](x, mask, lang_probs)

  np.testing.assert_allclose(y, y_ref, atol=ATOL)
  assert np.all(np.asarray(y)[~np.asarray(mask)] == 0)
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
  for field in ("load_balance_loss", "router_z_loss", "lid_alignment_loss", "expert_load"):
    np.testing.assert_allclose(getattr(aux, field), getattr(aux_ref, field), atol=1e-6)
  assert float(aux.dropped_fraction) == 0.0
  _assert_grads_close(grads, grads_ref)


def test_capacity_drops_what_each_token_shard_drops_alone():
  """With a capacity factor, each device's token shard (here one example) keeps what the
  single-device layer keeps of it alone; the dropped assignments are counted alike."""
  mesh = _mesh((1, 1, 8, 1))
  x, mask, _ = _inputs(1)
  kwargs = dict(router="learned", top_k=2, capacity_factor=1.0)
  parallel = _layer(**kwargs)
  (_, (y, aux)), _ = _step(parallel, mesh, pt.DEFAULT_RULES)[0](x, mask, None)
  single = nnx.jit(lambda m, x, mask: m(x, mask))
  reference = _layer(expert_parallel="off", **kwargs)
  dropped = 0.0
  for i in range(BATCH):
    y_i, aux_i = single(reference, x[i : i + 1], mask[i : i + 1])
    np.testing.assert_allclose(y[i : i + 1], y_i, atol=ATOL)
    dropped += float(aux_i.dropped_fraction) * LENGTHS[i] * 2
  routed = sum(LENGTHS) * 2
  assert dropped > 0  # The case drops something.
  np.testing.assert_allclose(float(aux.dropped_fraction) * routed, dropped, atol=1e-3)


_COLLECTIVE = re.compile(r"= (.*?) (all-gather|all-to-all)(?:-start)?\(")


def _collectives(hlo: str) -> dict[str, list[tuple[int, ...]]]:
  """{op: [result shapes]} of the all-gathers and all-to-alls of an HLO module's text (a
  tuple-shaped op, as XLA:CPU's all-to-all, gives each element's shape)."""
  found: dict[str, list[tuple[int, ...]]] = {"all-gather": [], "all-to-all": []}
  for line in hlo.splitlines():
    match = _COLLECTIVE.search(line)
    if match:
      for dims in re.findall(r"\w+\[([\d,]*)\]", match.group(1)):
        found[match.group(2)].append(tuple(int(d) for d in dims.split(",") if d))
  return found


def test_the_compiled_step_moves_tokens_not_expert_weights():
  mesh = _mesh((1, 1, 8, 1))
  x, mask, _ = _inputs()
  weight_shapes = {(8, D_MODEL, D_FF), (8, D_FF, D_MODEL)}
  parallel = _step(_layer(router="learned", top_k=2), mesh, pt.DEFAULT_RULES)[1](x, mask, None)
  found = _collectives(parallel.as_text())
  # Tokens ([rows, d_model] pieces) go out and come back, forward and backward.
  assert sum(shape[-1:] == (D_MODEL,) for shape in found["all-to-all"]) >= 4 * 8, found
  assert not weight_shapes & set(found["all-gather"]), found
  # The single-device layer on the same mesh gathers every expert's weights onto each device.
  gathered = _step(_layer(router="learned", top_k=2, expert_parallel="off"), mesh, pt.DEFAULT_RULES)
  found = _collectives(gathered[1](x, mask, None).as_text())
  assert weight_shapes & set(found["all-gather"]), found
  assert not any(shape[-1:] == (D_MODEL,) for shape in found["all-to-all"]), found


def test_each_device_holds_an_eighth_of_the_expert_weights():
  mesh = _mesh((1, 1, 8, 1))
  layer = _layer(router="learned", top_k=2)
  state = nnx.state(layer, nnx.Param)
  shardings = sharding.state_shardings(state, mesh, pt.DEFAULT_RULES)
  placed = jax.device_put(state, shardings)
  for name in ("w_gate", "w_up", "w_down"):
    array = placed[name].get_value()
    per_device = {s.device: s.data.nbytes for s in array.addressable_shards}
    assert len(per_device) == 8 and set(per_device.values()) == {array.nbytes // 8}, name


def test_plan_falls_back_where_the_mesh_does_not_allow_it():
  layer = _layer(router="learned", top_k=2)
  assert layer.expert_parallel_plan(96) is None  # No mesh active.
  with pt.axis_rules(pt.DEFAULT_RULES, _mesh((8, 1, 1, 1))):
    assert layer.expert_parallel_plan(96) is None  # Expert axis of 1.
  with pt.axis_rules(pt.DEFAULT_RULES, _mesh((1, 1, 8, 1))):
    assert layer.expert_parallel_plan(90) is None  # 90 tokens over 8 shards.
    assert _layer(num_experts=4).expert_parallel_plan(96) is None  # 4 experts on 8 devices.
    plan = _layer(capacity_factor=1.25).expert_parallel_plan(96)
    assert plan.capacity == 4 and plan.groups == 8  # ceil(1.25 * 12 * 2 / 8).
    with pytest.raises(ValueError, match="do not split"):
      _layer(expert_parallel="on").expert_parallel_plan(90)


# ----------------------------------------------------------------------------- a tiny model

TINY_OVERRIDES = (
  "model.encoder.num_layers=2",
  "model.encoder.lid_layer=0",
  "model.encoder.moe_layers=(1,)",
  "model.decoder.num_layers=0",  # CTC only: the step compiles in half the time.
  "model.decoder.moe_layers=()",
  "train.warmup_steps=1",
  "train.learning_rate=3e-3",
  "data.buckets=((0.5,8),)",
)
SIZES = dict(vocab_size=40, num_intents=4, num_slot_tags=5)


def _batch(cfg) -> dict[str, np.ndarray]:
  """A synthetic batch of the config's one bucket, with the arrays the pipeline yields."""
  pcfg = pipeline_lib.PipelineConfig.from_config(cfg.data)
  (bucket,) = pipeline_lib.make_buckets(
    pcfg, features.FeatureConfig.from_config(cfg.model.features)
  )
  batch = pipeline_lib.device_arrays(
    pipeline_lib.empty_batch(bucket, bucket.batch_size, pcfg.max_lang_runs)
  )
  rng = np.random.default_rng(0)
  rows, samples = batch["audio"].shape
  batch["audio_mask"][:] = (
    np.arange(samples)[None] < rng.integers(samples // 2, samples, rows)[:, None]
  )
  batch["audio"][:] = rng.normal(0, 3000, (rows, samples)) * batch["audio_mask"]
  batch["example_mask"][:] = True
  tokens = batch["tokens"].shape[1]
  batch["token_mask"][:] = np.arange(tokens)[None] < rng.integers(3, tokens, rows)[:, None]
  language = rng.integers(0, 2, rows)
  batch["tokens"][:] = np.where(
    batch["token_mask"], rng.integers(4, SIZES["vocab_size"], (rows, tokens)), 0
  )
  batch["token_lang"][:] = np.where(batch["token_mask"], language[:, None], -1)
  batch["frame_lang"][:] = language[:, None]
  batch["language"][:] = language
  batch["intent"][:] = rng.integers(0, SIZES["num_intents"], rows)
  return batch


def _leaves(state) -> dict[str, np.ndarray]:
  return {
    state_lib.path_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(state)
  }


def test_a_tiny_model_trains_expert_parallel_resumes_exactly_and_restores_on_one_device(
  tmp_path,
):
  """model-info's memory per device (its compile also serves the training below, through
  the compilation cache: the same program), then 4 steps, a resume, a restore on one device."""
  cfg = config_lib.load_config("tiny", [*TINY_OVERRIDES, "mesh.shape=(4,1,2,1)"])
  memory = memory_lib.train_memory(cfg, "data=4,expert=2", **SIZES)
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules(cfg.mesh)
  graphdef, state, rng_state, state_sh = runtime.init_state(cfg, mesh, rules, **SIZES)

  # Parameters per device: the expert weights halved (2 of 4 experts), the rest replicated.
  params = _leaves(state["model"])
  expert = sum(v.nbytes for k, v in params.items() if re.search(r"/ff2/w_(gate|up|down)$", k))
  total = sum(v.nbytes for v in params.values())
  assert memory["total"]["params"] == total
  assert memory["per_device"]["params"] == total - expert // 2
  assert memory["per_device"]["arguments"] >= sum(
    memory["per_device"][k] for k in ("params", "optimizer")
  )
  assert memory["per_device"]["temporaries"] > 0

  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rng_sh = jax.tree.map(lambda _: replicated, rng_state)
  host_batch = _batch(cfg)
  batch_sh = sharding.batch_shardings(mesh, host_batch)
  batch = sharding.put_batch(host_batch, batch_sh)
  step_fn = jax.jit(
    train.make_train_step(cfg, graphdef),
    in_shardings=(state_sh, rng_sh, batch_sh),
    out_shardings=(state_sh, replicated),
    donate_argnums=(0,),  # As model-info compiles it.
  )
  with mesh, pt.axis_rules(rules, mesh):
    step = step_fn.lower(state, rng_state, batch).compile()
  # The MoE layer (4 experts, 2 a device) exchanges tokens: out and back, forward and backward.
  d_model = cfg.model.encoder.d_model
  tokens = [s for s in _collectives(step.as_text())["all-to-all"] if s[-1:] == (d_model,)]
  assert len(tokens) >= 4 * 2, tokens
  expert_w = state["model"]["encoder"]["blocks"][1]["ff2"]["w_up"].get_value()
  assert {s.data.shape[0] for s in expert_w.addressable_shards} == {2}

  losses, saved = [], {}
  with ckpt.Checkpointer(tmp_path / "ckpt", async_save=False) as saver:
    for i in range(1, 5):
      state, metrics = step(state, rng_state, batch)  # The old state is donated.
      losses.append(float(metrics["loss"]))
      if i == 2:
        saver.save(2, state)
        saved = _leaves(state)
  final = _leaves(state)
  assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses

  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, state_sh
  )
  with ckpt.Checkpointer(tmp_path / "ckpt") as loader:
    resumed = loader.restore(abstract).state
  for i in (2, 3):
    resumed, metrics = step(resumed, rng_state, batch)
    assert float(metrics["loss"]) == losses[i]
  got = _leaves(resumed)
  assert got.keys() == final.keys()
  for name in final:
    np.testing.assert_array_equal(got[name], final[name], err_msg=name)

  # The expert-parallel checkpoint on one device: every array as saved.
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ckpt.Checkpointer(tmp_path / "ckpt") as loader:
    on_one = loader.restore(jax.tree.map(lambda a: a.update(sharding=one), abstract)).state
  for name, value in _leaves(on_one).items():
    np.testing.assert_array_equal(value, saved[name], err_msg=name)
  assert on_one["model"]["encoder"]["blocks"][1]["ff2"]["w_up"].get_value().sharding == one
