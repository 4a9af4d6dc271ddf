"""Parameter-efficient transfer: LoRA, residual adapters, and what to train.

Both kinds are inserted in place into an already built (and usually restored)
model and are exact identities at initialisation (LoRA's B and the adapter's
up-projection start at zero), so a transferred model starts from the same
outputs as the source model. Their parameters have their own Variable types
(`nnx.LoRAParam`, `AdapterParam`, both `nnx.Param` subclasses) so that
`trainable_filter` can select them for `nnx.Optimizer(..., wrt=...)`:

  add_lora(model, rank=8, alpha=16, target=r".*(query|key|value|out|ffn).*")
  add_residual_adapters(model, target=r"encoder/blocks/\\d+$", bottleneck=64)
  wrt = trainable_filter("task_heads")
  optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=wrt)
  grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model, batch)
  optimizer.update(model, grads)

Module paths are the `/`-joined attribute path from the root (list items by
index), e.g. `decoder/layers/3/attention/query`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

LoRAParam = nnx.LoRAParam


class AdapterParam(nnx.Param):
  """Parameters of residual adapters (trainable during transfer)."""


def module_path(path: Iterable) -> str:
  """`("decoder", "layers", 0, "query")` -> `"decoder/layers/0/query"`."""
  return "/".join(str(part) for part in path)


def _axes(variable: nnx.Variable, index: int) -> str | None:
  """Logical name of one dimension of `variable`, or None when it has none."""
  axes = variable.get_metadata().get("out_sharding")
  return axes[index] if axes else None


def _adapter_variable(cls, rngs, init, shape, axes):
  value = init(rngs.params(), shape, jnp.float32)
  return cls(value, out_sharding=tuple(axes), eager_sharding=False)


class LoRALinear(nnx.Module):
  """y = base(x) + (alpha / rank) * x A B, with `base` an existing `nnx.Linear`.

  A [in, rank] is random, B [rank, out] zero, so the output is unchanged at
  init. A and B are `nnx.LoRAParam`; A inherits the logical name of the base
  kernel's input axis and B of its output axis.
  """

  def __init__(self, base: nnx.Linear, *, rank: int, alpha: float, rngs: nnx.Rngs):
    self.base = base
    self.in_features = base.in_features
    self.out_features = base.out_features
    self.rank = rank
    self.scale = alpha / rank
    self.lora_a = _adapter_variable(
      LoRAParam,
      rngs,
      nnx.initializers.he_uniform(),
      (base.in_features, rank),
      (_axes(base.kernel, 0), None),
    )
    self.lora_b = _adapter_variable(
      LoRAParam,
      rngs,
      nnx.initializers.zeros_init(),
      (rank, base.out_features),
      (None, _axes(base.kernel, 1)),
    )

  @property
  def kernel(self) -> nnx.Param:
    """The frozen base kernel, for code that reads `layer.kernel`."""
    return self.base.kernel

  @property
  def bias(self) -> nnx.Param | None:
    return self.base.bias

  def __call__(self, x: jax.Array, **kwargs) -> jax.Array:
    y = self.base(x, **kwargs)
    dtype = self.base.dtype or x.dtype
    h = jnp.dot(
      x.astype(dtype), self.lora_a[...].astype(dtype), preferred_element_type=jnp.float32
    )  # [..., rank]
    delta = jnp.dot(
      h.astype(dtype), self.lora_b[...].astype(dtype), preferred_element_type=jnp.float32
    )
    return y + (self.scale * delta).astype(y.dtype)


class ResidualAdapter(nnx.Module):
  """x + up(relu(down(LayerNorm(x)))), with `up` zero-initialised (identity at init)."""

  def __init__(self, d_model: int, bottleneck: int, *, rngs: nnx.Rngs):
    ones, zeros = nnx.initializers.ones_init(), nnx.initializers.zeros_init()
    new = lambda init, shape, axes: _adapter_variable(AdapterParam, rngs, init, shape, axes)
    self.norm_scale = new(ones, (d_model,), ("norm",))
    self.norm_bias = new(zeros, (d_model,), ("norm",))
    self.down_kernel = new(nnx.initializers.lecun_normal(), (d_model, bottleneck), ("embed", "mlp"))
    self.down_bias = new(zeros, (bottleneck,), ("mlp",))
    self.up_kernel = new(zeros, (bottleneck, d_model), ("mlp", "embed"))
    self.up_bias = new(zeros, (d_model,), ("embed",))

  def residual(self, x: jax.Array) -> jax.Array:
    """What the adapter adds to `x` (float32)."""
    h = x.astype(jnp.float32)  # [..., d_model]
    mean = h.mean(axis=-1, keepdims=True)
    var = jnp.square(h - mean).mean(axis=-1, keepdims=True)
    h = (h - mean) * jax.lax.rsqrt(var + 1e-6) * self.norm_scale[...] + self.norm_bias[...]
    h = jax.nn.relu(h @ self.down_kernel[...] + self.down_bias[...])  # [..., bottleneck]
    return h @ self.up_kernel[...] + self.up_bias[...]

  def __call__(self, x: jax.Array, gate: jax.Array | None = None) -> jax.Array:
    """x + residual(x), the residual scaled by `gate` ([..., 1], broadcast) where given."""
    r = self.residual(x)
    if gate is not None:
      r = r * gate.astype(r.dtype)
    return x + r.astype(x.dtype)


class AdaptedModule(nnx.Module):
  """Calls `inner` and applies `adapter` to its output (first element of a tuple).

  With `gate_language` set the adapter is gated by language: its residual is scaled, frame
  by frame, by that language's posterior in the `lang_probs` [batch, frames, L] the wrapped
  block is called with (a conformer block above the LID layer gets them), so frames of
  other languages pass as if the adapter were not there.
  """

  def __init__(self, inner: nnx.Module, adapter: ResidualAdapter, gate_language: int | None = None):
    self.inner = inner
    self.adapter = adapter
    self.gate_language = gate_language

  def __call__(self, *args, **kwargs):
    out = self.inner(*args, **kwargs)
    gate = None
    if self.gate_language is not None:
      probs = kwargs.get("lang_probs")
      if probs is None:
        raise ValueError(
          "a language-gated adapter wraps a module called without lang_probs (a block at or "
          "below the LID layer)"
        )
      gate = probs[..., self.gate_language, None]  # [batch, frames, 1]
    if isinstance(out, tuple):
      return (self.adapter(out[0], gate), *out[1:])
    return self.adapter(out, gate)


def _child(parent, key):
  if isinstance(key, int) or isinstance(parent, Mapping):
    return parent[key]
  return getattr(parent, key)


def _replace_everywhere(model: nnx.Module, replacements: dict[int, nnx.Module]) -> None:
  """Points every reference to a replaced module (by identity) at its replacement.

  Walking all parents, not only the first path, keeps shared submodules shared.
  """
  # Snapshot first: the new wrappers (not yet in the graph) must keep their inner modules.
  parents = [module for _, module in nnx.iter_modules(model)]
  for parent in parents:
    for key, child in list(nnx.iter_children(parent)):
      if id(child) not in replacements:
        continue
      if isinstance(key, int) or isinstance(parent, Mapping):
        parent[key] = replacements[id(child)]
      else:
        setattr(parent, key, replacements[id(child)])


def _parents(model: nnx.Module, path: tuple) -> list[nnx.Module]:
  """The modules along `path` from the root, excluding the module at `path`."""
  nodes, node = [], model
  for key in path[:-1]:
    nodes.append(node)
    node = _child(node, key)
  nodes.append(node)
  return nodes


def add_lora(
  model: nnx.Module,
  *,
  rank: int,
  alpha: float,
  target: str,
  rngs: nnx.Rngs | None = None,
) -> int:
  """Wraps every `nnx.Linear` whose path matches `target` in a `LoRALinear`, in place.

  Linear layers already wrapped (the `base` of a `LoRALinear`) are skipped, so
  calling it twice does not stack LoRA.

  Args:
    model: the model to modify.
    rank: LoRA rank r.
    alpha: scale numerator; the update is scaled by alpha / r.
    target: regex searched (`re.search`) in each module path.
    rngs: initialises A; default `nnx.Rngs(0)`.

  Returns:
    Number of Linear modules wrapped.
  """
  pattern = re.compile(target)
  rngs = rngs if rngs is not None else nnx.Rngs(0)
  replacements = {}
  for path, module in list(nnx.iter_modules(model)):
    if not path or not isinstance(module, nnx.Linear) or isinstance(module, nnx.LoRALinear):
      continue
    if not pattern.search(module_path(path)):
      continue
    if isinstance(_parents(model, path)[-1], LoRALinear):
      continue
    replacements[id(module)] = LoRALinear(module, rank=rank, alpha=alpha, rngs=rngs)
  _replace_everywhere(model, replacements)
  return len(replacements)


def _width(module: nnx.Module) -> int | None:
  for name in ("d_model", "out_features", "num_features"):
    value = getattr(module, name, None)
    if isinstance(value, int):
      return value
  return None


def add_residual_adapters(
  model: nnx.Module,
  *,
  target: str,
  bottleneck: int,
  d_model: int | None = None,
  rngs: nnx.Rngs | None = None,
  gate_language: int | None = None,
) -> int:
  """Wraps every submodule whose path matches `target` in an `AdaptedModule`, in place.

  Containers (`nnx.List`, `nnx.Dict`), adapters and modules already wrapped
  are skipped. Wrapped modules' other attributes are reached through `.inner`.

  Args:
    model: the model to modify (the root itself is never wrapped).
    target: regex searched (`re.search`) in each module path, e.g.
      r"encoder/blocks/\\d+$".
    bottleneck: adapter hidden width.
    d_model: width of the wrapped modules' outputs; default: each module's
      `d_model` (or `out_features`) attribute.
    rngs: initialises the adapters; default `nnx.Rngs(0)`.
    gate_language: gate each adapter by this language's posterior in the `lang_probs`
      the wrapped module is called with (`AdaptedModule`); None: ungated.

  Returns:
    Number of modules wrapped.
  """
  pattern = re.compile(target)
  rngs = rngs if rngs is not None else nnx.Rngs(0)
  skip = (AdaptedModule, ResidualAdapter, nnx.List, nnx.Dict)
  replacements = {}
  for path, module in list(nnx.iter_modules(model)):
    if not path or isinstance(module, skip) or not pattern.search(module_path(path)):
      continue
    parents = _parents(model, path)
    if isinstance(parents[-1], AdaptedModule) or any(
      isinstance(p, ResidualAdapter) for p in parents
    ):
      continue
    width = d_model or _width(module)
    if width is None:
      raise ValueError(f"cannot infer the output width of {module_path(path)}; pass d_model")
    adapter = ResidualAdapter(width, bottleneck, rngs=rngs)
    replacements[id(module)] = AdaptedModule(module, adapter, gate_language)
  _replace_everywhere(model, replacements)
  return len(replacements)


@dataclasses.dataclass(frozen=True)
class PathRegex:
  """Filter: `nnx.Param`s whose `/`-joined path matches `pattern` (`re.search`)."""

  pattern: str

  def __call__(self, path, value) -> bool:
    return isinstance(value, nnx.Param) and re.search(self.pattern, module_path(path)) is not None


def trainable_filter(*extra: str | nnx.filterlib.Filter) -> nnx.filterlib.Filter:
  """The parameters to train during transfer.

  Args:
    *extra: more to train besides LoRA and residual adapter parameters:
      strings are regexes (or plain substrings) searched in parameter paths
      and select only `nnx.Param`s, e.g. "task_heads", r"experts"; anything
      else is an nnx filter used as is.

  Returns:
    An nnx filter for `nnx.Optimizer(wrt=...)`, `nnx.DiffState` or `nnx.state`.
  """
  filters = [LoRAParam, AdapterParam]
  filters += [PathRegex(f) if isinstance(f, str) else f for f in extra]
  return nnx.Any(*filters)


def freeze_report(model: nnx.Module, filter: nnx.filterlib.Filter) -> tuple[int, int]:
  """Counts scalar parameters (`nnx.Param` entries) trained and frozen under `filter`.

  Returns:
    (trainable_count, frozen_count).
  """
  trainable, frozen = nnx.state(model, nnx.All(nnx.Param, filter), nnx.Param)
  count = lambda state: sum(int(x.size) for x in jax.tree.leaves(state))
  return count(trainable), count(frozen)
