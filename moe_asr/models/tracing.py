"""Model construction under a trace without a quadratic cost per random draw.

Every parameter initialiser draws from an `nnx.Rngs` stream, which advances its counter
with `count[...] += 1`. Under a trace (`nnx.eval_shape`, the jitted initialisation of a
train state) flax's `Variable.set_value` then asks the new counter, a tracer, for its
`sharding`; JAX answers with an AttributeError whose message names the tracer's origin, and
building that message (`DynamicJaxprTracer._origin_msg`) walks every equation traced so far.
flax's `getattr(..., None)` discards the message, but a model with thousands of draws pays
for it quadratically: one `nnx.eval_shape` of the train state took 1.9 s for `tiny`, 2.8 s
for `demo` and 13 to 14 s for `large` (2-core CPU, jax 0.10.2, flax 0.12.8), and 0.6, 0.8
and 1.8 s without the message. A train process traces the state twice (abstract, then the
jitted init).

`quiet_tracer_origins()` leaves the message's first sentence and drops the origin
paragraph while a model is built; everything traced is the same.
"""

import contextlib

from jax._src.interpreters import partial_eval as _pe  # The one place this reaches inside JAX.

_TRACER = getattr(_pe, "DynamicJaxprTracer", None)


@contextlib.contextmanager
def quiet_tracer_origins():
  """Within: tracer error messages leave out where the tracer came from (see the module
  docstring), in every thread. Re-entrant; restores JAX's method on exit; a no-op where
  JAX's tracer class or method has moved."""
  original = vars(_TRACER).get("_origin_msg") if _TRACER is not None else None
  if original is None or original is _no_origin:
    yield
    return
  _TRACER._origin_msg = _no_origin
  try:
    yield
  finally:
    _TRACER._origin_msg = original


def _no_origin(self) -> str:
  del self
  return ""
