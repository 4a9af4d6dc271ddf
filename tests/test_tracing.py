"""models/tracing.py: quiet tracer origins while a model is built under a trace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_asr.models import tracing


def _walks(monkeypatch) -> int:
  """How many times JAX walks the traced equations to name a tracer's origin when `.sharding`
  of a tracer is asked for inside a jit trace (what flax's `Variable.set_value` does)."""
  frame_type = type(_frame())
  walks = []
  walk = frame_type.find_progenitors

  def counted(self, tracer):
    walks.append(1)
    return walk(self, tracer)

  monkeypatch.setattr(frame_type, "find_progenitors", counted)

  def f(x):
    y = jnp.sin(x) + 1.0
    assert getattr(y, "sharding", None) is None
    return y

  jax.jit(f).lower(jnp.ones(3))
  monkeypatch.setattr(frame_type, "find_progenitors", walk)
  return len(walks)


def _frame():
  frames = []

  def f(x):
    frames.append(x._trace.frame)
    return x

  jax.jit(f).lower(1.0)
  return frames[0]


def test_origins_are_not_walked_inside_and_the_method_comes_back(monkeypatch):
  original = vars(tracing._TRACER)["_origin_msg"]
  assert _walks(monkeypatch) == 1
  with tracing.quiet_tracer_origins():
    with tracing.quiet_tracer_origins():  # Re-entrant: the inner exit restores nothing.
      pass
    assert _walks(monkeypatch) == 0
  assert vars(tracing._TRACER)["_origin_msg"] is original
  assert _walks(monkeypatch) == 1


def test_restored_after_an_exception():
  original = vars(tracing._TRACER)["_origin_msg"]
  with pytest.raises(RuntimeError), tracing.quiet_tracer_origins():
    raise RuntimeError("inside")
  assert vars(tracing._TRACER)["_origin_msg"] is original


def test_draws_under_a_trace_are_those_of_an_eager_build():
  """Many nnx.Rngs draws (the case that was quadratic) give the eager build's parameters."""

  class Stack(nnx.Module):
    @tracing.quiet_tracer_origins()
    def __init__(self, rngs):
      self.layers = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(50)])

  eager = nnx.state(Stack(nnx.Rngs(3)), nnx.Param)
  traced = nnx.state(nnx.jit(lambda: Stack(nnx.Rngs(3)))(), nnx.Param)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(traced), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
