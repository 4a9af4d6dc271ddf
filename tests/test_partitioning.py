"""Logical axis names on parameters map to mesh shardings through the config's rules."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from moe_asr.models import partitioning as pt


class _Toy(nnx.Module):
  def __init__(self, rngs):
    self.proj = pt.dense(8, 16, ("embed", "mlp"), rngs=rngs)
    self.experts = pt.param(rngs, nnx.initializers.normal(), (4, 8, 16), ("expert", "embed", "mlp"))

  def __call__(self, x):
    y = self.proj(x)
    return pt.constrain(y, ("batch", "mlp"))


def test_params_carry_logical_names_and_map_to_mesh_axes():
  model = _Toy(nnx.Rngs(0))
  logical = nnx.get_partition_spec(nnx.state(model))
  assert logical["proj"]["kernel"].get_value() == P("embed", "mlp")
  assert logical["experts"].get_value() == P("expert", "embed", "mlp")
  specs = pt.logical_to_mesh_specs(nnx.state(model), pt.DEFAULT_RULES)
  assert specs["proj"]["kernel"].get_value() == P("fsdp", "tensor")
  assert specs["proj"]["bias"].get_value() == P("tensor")
  assert specs["experts"].get_value() == P("expert", "fsdp", "tensor")


def test_abstract_model_has_names_without_allocating():
  abstract = nnx.eval_shape(lambda: _Toy(nnx.Rngs(0)))
  state = nnx.state(abstract)
  assert isinstance(state["experts"].get_value(), jax.ShapeDtypeStruct)
  assert pt.logical_to_mesh_specs(state, pt.DEFAULT_RULES)["experts"].get_value() == P(
    "expert", "fsdp", "tensor"
  )


def test_constrain_shards_activations_on_a_mesh():
  devices = np.array(jax.devices()[:8]).reshape(2, 1, 1, 4)  # conftest fakes 8 CPU devices.
  mesh = jax.sharding.Mesh(devices, ("data", "fsdp", "expert", "tensor"))
  model = _Toy(nnx.Rngs(0))
  x = jnp.ones((4, 8))
  expected = model(x)  # No rules active: constrain is the identity.

  @nnx.jit
  def run(model, x):
    with pt.axis_rules(pt.DEFAULT_RULES, mesh):
      return model(x)

  y = run(model, x)
  np.testing.assert_allclose(y, expected, rtol=1e-6)
  want = jax.sharding.NamedSharding(mesh, P(("data", "fsdp"), "tensor"))
  assert y.sharding.is_equivalent_to(want, y.ndim)
  assert len(y.addressable_shards) == 8 and y.addressable_shards[0].data.shape == (2, 4)


def test_bfloat16_dense_accumulates_in_float32():
  layer = pt.dense(64, 8, ("embed", "mlp"), rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(1), (4, 64))
  y = layer(x)
  assert y.dtype == jnp.float32 and layer.kernel.get_value().dtype == jnp.float32
  ref = x @ layer.kernel.get_value()
  np.testing.assert_allclose(y, ref, atol=5e-2)  # bfloat16 inputs, float32 accumulation.
