"""benchmarks/step_profile.py and the breakdown's classifier in benchmarks/train_step.py."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load(name: str, file: str):
  spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / file)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # Its dataclasses look their module up.
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def bench():
  # train_step.py imports step_profile as a script does: the one loaded here.
  step_profile = _load("step_profile", "step_profile.py")
  try:
    yield step_profile, _load("bench_train_step", "train_step.py")
  finally:
    sys.modules.pop("step_profile", None)
    sys.modules.pop("bench_train_step", None)


def test_profile_times_each_named_scope(bench):
  step_profile, _ = bench

  def loss(x, w):
    with jax.named_scope("alpha"):
      y = jnp.tanh(x @ w)
    with jax.named_scope("beta"):
      y = jax.lax.fori_loop(0, 3, lambda i, c: jnp.sin(c @ w), y)
    return y.sum()

  x = jnp.ones((128, 128))
  w = jnp.full((128, 128), 1 / 128)
  compiled = jax.jit(jax.grad(loss)).lower(x, w).compile()
  compiled(x, w).block_until_ready()
  module, ops = step_profile.parse_hlo(compiled.as_text())
  assert module == "jit_loss"
  scoped = [op for op in ops.values() if "alpha" in op.scopes]
  assert scoped and any(op.phase == "bwd" for op in scoped)
  assert any(name.endswith(".loss") for op in scoped for _, name in op.frames)

  def classify(op):
    part = op and step_profile.innermost(op.scopes, {"alpha": "a", "beta": "b"})
    return part or "rest", ""

  profile = step_profile.profile(compiled, lambda: compiled(x, w).block_until_ready(), classify)
  parts = profile["parts"]
  assert parts["a"]["ms"] > 0 and parts["b"]["ms"] > 0
  assert parts["a"]["fwd_ms"] > 0 and parts["a"]["bwd_ms"] > 0
  assert profile["unknown_ops"] == 0
  # Wall time is split, not double counted: the parts add up to the time some op ran.
  total = sum(p["ms"] for p in parts.values())
  assert total == pytest.approx(profile["covered_ms"], rel=1e-6)
  assert profile["covered_ms"] <= profile["step_ms"]


def test_classifier_scopes_then_frames(bench):
  step_profile, train_step = bench
  op = step_profile.Op
  models = "/repo/moe_asr/models/"
  grouped = op("fusion", "jit(train_step)/transpose(jvp(moe))/moe_grouped_matmul/dot", ())
  assert train_step.classify_train_op(grouped) == ("moe", "encoder: grouped matmul loops")
  in_decoder = op("fusion", "jit(train_step)/jvp(attention_decoder)/moe/moe_router/dot", ())
  assert train_step.classify_train_op(in_decoder) == ("moe", "decoder: router")
  ctc = op("fusion", "jit(train_step)/jvp(losses)/ctc_loss/while", ())
  assert train_step.classify_train_op(ctc)[0] == "ctc"
  # No scope of ours: the innermost frame with a rule decides (layers.py has none).
  bridge = op(
    "fusion",
    "jit(train_step)/jvp()/mul",
    ((models + "layers.py", "FeedForward.__call__"), (models + "task_heads.py", "Bridge.__call__")),
  )
  assert train_step.classify_train_op(bridge) == ("task", "")
  log_mel = op("fft", "jit(train_step)/jvp()/fft", (("/repo/moe_asr/data/features.py", "log_mel"),))
  assert train_step.classify_train_op(log_mel)[0] == "features"
  assert train_step.classify_train_op(op("copy", "", ()))[0] == "unattributed"
  assert train_step.classify_train_op(None)[0] == "unattributed"
