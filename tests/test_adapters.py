"""LoRA and residual adapters: identity at init, regex targeting, training only what is meant."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from moe_asr.models import adapters

D, FF = 8, 16
TARGET = r".*(query|key|value|out|ffn).*"


class ToyAttention(nnx.Module):
  def __init__(self, d: int, rngs: nnx.Rngs):
    self.query = nnx.Linear(d, d, rngs=rngs)
    self.key = nnx.Linear(d, d, rngs=rngs)
    self.value = nnx.Linear(d, d, rngs=rngs)
    self.out = nnx.Linear(d, d, rngs=rngs)

  def __call__(self, x):
    scores = self.query(x) @ self.key(x).swapaxes(-1, -2) / np.sqrt(x.shape[-1])
    return self.out(jax.nn.softmax(scores, axis=-1) @ self.value(x))


class ToyFeedForward(nnx.Module):
  def __init__(self, d: int, d_ff: int, rngs: nnx.Rngs):
    self.up = nnx.Linear(d, d_ff, rngs=rngs)
    self.down = nnx.Linear(d_ff, d, rngs=rngs)

  def __call__(self, x):
    return self.down(jax.nn.gelu(self.up(x)))


class ToyBlock(nnx.Module):
  """Returns (states, aux) like the real blocks that report MoE statistics."""

  def __init__(self, d: int, rngs: nnx.Rngs):
    self.d_model = d
    self.norm = nnx.LayerNorm(d, rngs=rngs)
    self.attention = ToyAttention(d, rngs)
    self.ffn = ToyFeedForward(d, FF, rngs)

  def __call__(self, x):
    x = x + self.attention(self.norm(x))
    x = x + self.ffn(x)
    return x, jnp.mean(x**2)


class ToyModel(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.blocks = nnx.List([ToyBlock(D, rngs), ToyBlock(D, rngs)])
    self.classifier = nnx.Linear(D, 3, rngs=rngs)

  def __call__(self, x):
    aux = []
    for block in self.blocks:
      x, a = block(x)
      aux.append(a)
    return self.classifier(x), jnp.stack(aux)


def _x():
  return jax.random.normal(jax.random.key(1), (2, 5, D))


def _params(model) -> dict:
  return {
    adapters.module_path(path): np.asarray(v[...])
    for path, v in nnx.state(model, nnx.Param).flat_state()
  }


def _num_params(model) -> int:
  return sum(v.size for v in _params(model).values())


def test_add_lora_wraps_matching_linears_and_is_identity_at_init():
  model = ToyModel(nnx.Rngs(0))
  x = _x()
  before = model(x)
  assert adapters.add_lora(model, rank=2, alpha=4.0, target=TARGET) == 12  # 2 x (4 attn + 2 ffn)
  assert isinstance(model.blocks[0].attention.query, adapters.LoRALinear)
  assert isinstance(model.blocks[1].ffn.down, adapters.LoRALinear)
  assert type(model.classifier) is nnx.Linear
  after = model(x)
  np.testing.assert_array_equal(after[0], before[0])
  np.testing.assert_array_equal(after[1], before[1])
  # Running again wraps nothing more (bases are skipped).
  assert adapters.add_lora(model, rank=2, alpha=4.0, target=TARGET) == 0


def test_add_lora_regex_selects_subset():
  model = ToyModel(nnx.Rngs(0))
  assert adapters.add_lora(model, rank=2, alpha=2.0, target=r"attention/(query|value)$") == 4
  assert isinstance(model.blocks[1].attention.value, adapters.LoRALinear)
  assert type(model.blocks[1].attention.key) is nnx.Linear
  assert adapters.add_lora(model, rank=2, alpha=2.0, target=r"^blocks/1/ffn/up$") == 1


def test_lora_update_is_scaled_low_rank_product():
  base = nnx.Linear(D, 4, rngs=nnx.Rngs(0))
  x = _x()
  reference = base(x)
  lora = adapters.LoRALinear(base, rank=3, alpha=6.0, rngs=nnx.Rngs(1))
  lora.lora_b[...] = jax.random.normal(jax.random.key(2), (3, 4))
  expected = reference + 2.0 * (x @ lora.lora_a[...]) @ lora.lora_b[...]
  np.testing.assert_allclose(lora(x), expected, rtol=1e-5, atol=1e-5)
  assert lora.kernel is base.kernel


def test_lora_inherits_logical_axes_of_base_kernel():
  from moe_asr.models import partitioning

  base = partitioning.dense(D, FF, ("embed", "mlp"), rngs=nnx.Rngs(0))
  lora = adapters.LoRALinear(base, rank=2, alpha=2.0, rngs=nnx.Rngs(0))
  assert lora.lora_a.get_metadata()["out_sharding"] == ("embed", None)
  assert lora.lora_b.get_metadata()["out_sharding"] == (None, "mlp")
  assert isinstance(lora.lora_a, nnx.LoRAParam)


def test_shared_linear_stays_shared():
  model = ToyModel(nnx.Rngs(0))
  model.blocks[1].attention.key = model.blocks[0].attention.key
  assert adapters.add_lora(model, rank=2, alpha=2.0, target=r"key") == 1
  assert model.blocks[0].attention.key is model.blocks[1].attention.key
  assert isinstance(model.blocks[1].attention.key, adapters.LoRALinear)


def test_residual_adapters_identity_at_init_and_tuple_outputs():
  model = ToyModel(nnx.Rngs(0))
  x = _x()
  before = model(x)
  assert adapters.add_residual_adapters(model, target=r"^blocks/\d+$", bottleneck=4) == 2
  assert isinstance(model.blocks[0], adapters.AdaptedModule)
  assert model.blocks[0].inner.d_model == D
  after = model(x)
  np.testing.assert_array_equal(after[0], before[0])
  np.testing.assert_array_equal(after[1], before[1])
  # No double wrapping, and adapters on a plain (non-tuple) output.
  assert adapters.add_residual_adapters(model, target=r"^blocks/\d+$", bottleneck=4) == 0
  assert adapters.add_residual_adapters(model, target=r"classifier$", bottleneck=2) == 1
  np.testing.assert_array_equal(model(x)[0], before[0])


def test_residual_adapter_is_bottleneck_mlp_once_trained():
  adapter = adapters.ResidualAdapter(D, 3, rngs=nnx.Rngs(0))
  adapter.up_kernel[...] = jax.random.normal(jax.random.key(3), (3, D))
  x = _x()
  mean = x.mean(-1, keepdims=True)
  normed = (x - mean) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-6)
  expected = x + jax.nn.relu(normed @ adapter.down_kernel[...]) @ adapter.up_kernel[...]
  np.testing.assert_allclose(adapter(x), expected, rtol=1e-5, atol=1e-5)


def test_cannot_infer_width_raises():
  model = ToyModel(nnx.Rngs(0))
  with pytest.raises(ValueError, match="d_model"):
    adapters.add_residual_adapters(model, target=r"blocks/0/attention$", bottleneck=2)
  assert (
    adapters.add_residual_adapters(model, target=r"blocks/0/attention$", bottleneck=2, d_model=D)
    == 1
  )


def test_freeze_report_counts():
  model = ToyModel(nnx.Rngs(0))
  base_count = _num_params(model)
  rank, bottleneck = 2, 4
  adapters.add_lora(model, rank=rank, alpha=4.0, target=TARGET)
  adapters.add_residual_adapters(model, target=r"^blocks/\d+$", bottleneck=bottleneck)
  lora_count = 2 * (4 * rank * (D + D) + rank * (D + FF) + rank * (FF + D))
  adapter_count = 2 * (2 * D + D * bottleneck + bottleneck + bottleneck * D + D)
  trainable, frozen = adapters.freeze_report(model, adapters.trainable_filter())
  assert trainable == lora_count + adapter_count
  assert frozen == base_count
  classifier_count = D * 3 + 3
  trainable, frozen = adapters.freeze_report(model, adapters.trainable_filter("classifier"))
  assert trainable == lora_count + adapter_count + classifier_count
  assert frozen == base_count - classifier_count


@pytest.mark.parametrize("extra", [(), ("classifier",)])
def test_optimizer_step_updates_only_trainable_params(extra):
  model = ToyModel(nnx.Rngs(0))
  adapters.add_lora(model, rank=2, alpha=4.0, target=TARGET)
  adapters.add_residual_adapters(model, target=r"^blocks/\d+$", bottleneck=4)
  wrt = adapters.trainable_filter(*extra)
  optimizer = nnx.Optimizer(model, optax.adamw(1e-2, weight_decay=0.1), wrt=wrt)
  trainable_paths = {
    adapters.module_path(path) for path, _ in nnx.state(model, nnx.All(nnx.Param, wrt)).flat_state()
  }
  before = _params(model)
  x, labels = _x(), jnp.array([[0, 1, 2, 0, 1], [2, 2, 1, 0, 0]])

  def loss_fn(model):
    logits, aux = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean() + aux.mean()

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model)
    optimizer.update(model, grads)

  step(model, optimizer)
  after = _params(model)
  assert before.keys() == after.keys()
  changed = {path for path in before if not np.array_equal(before[path], after[path])}
  frozen = set(before) - trainable_paths
  assert not changed & frozen  # every frozen parameter is bit-identical
  assert changed <= trainable_paths
  # The zero-initialised halves get gradients at once (A and `down` only once B/`up` are non-zero).
  must_move = {p for p in trainable_paths if p.endswith(("lora_b", "up_kernel", "up_bias"))}
  assert len(must_move) == 12 + 2 * 2 and must_move <= changed
  assert ("classifier/kernel" in changed) == bool(extra)


@pytest.mark.parametrize("method", ["adapters", "ungated_adapters", "lora"])
def test_a_transfer_wraps_the_real_model_and_starts_as_the_identity(method):
  """`transfer.add_modules` on the tiny preset's model: an adapter after each encoder block
  above the LID layer, gated by the language (or after every block, ungated; or LoRA on the
  targeted linears), and the encoder's output unchanged at initialisation."""
  from moe_asr import config_lib
  from moe_asr.training import state as state_lib
  from moe_asr.training import transfer

  cfg = config_lib.load_config("tiny")
  kwargs = dict(vocab_size=40, num_intents=3, num_slot_tags=5)
  plain = state_lib.make_model(cfg, **kwargs)
  with cfg.unlocked():
    cfg.transfer = transfer.config_section()
  cfg.transfer.method = "adapters" if "adapters" in method else method
  cfg.transfer.adapter_gate = "none" if method == "ungated_adapters" else "language"
  cfg.transfer.language = "es"
  cfg.transfer.source = "a-source-run"  # Read only by the growth, not by add_modules.
  wrapped = state_lib.make_model(cfg, **kwargs)
  blocks = wrapped.encoder.blocks
  lid_layer = cfg.model.encoder.lid_layer
  if method == "adapters":
    assert 0 <= lid_layer < len(blocks) - 1
    for i, block in enumerate(blocks):
      assert isinstance(block, adapters.AdaptedModule) == (i > lid_layer), i
    assert blocks[-1].gate_language == 1
    assert blocks[-1].adapter.up_kernel.shape[-1] == cfg.model.encoder.d_model
  elif method == "ungated_adapters":
    assert all(isinstance(b, adapters.AdaptedModule) for b in blocks)
    assert blocks[0].gate_language is None
  else:
    assert any(isinstance(m, adapters.LoRALinear) for _, m in nnx.iter_modules(wrapped))
  feats = jax.random.normal(jax.random.key(0), (2, 40, cfg.model.encoder.num_mel_bins))
  mask = jnp.arange(40)[None] < jnp.array([[40], [31]])
  plain.eval(), wrapped.eval()
  a = plain.encoder(feats, mask)
  b = wrapped.encoder(feats, mask)
  np.testing.assert_allclose(np.asarray(b.x), np.asarray(a.x), rtol=0, atol=1e-6)


class LanguageBlock(ToyBlock):
  """A block called with per-frame language posteriors, as conformer blocks above the LID are."""

  def __call__(self, x, lang_probs=None):
    del lang_probs
    return super().__call__(x)


def test_language_gated_adapter_scales_its_residual_by_the_language_posterior():
  model = nnx.Dict(block=LanguageBlock(D, nnx.Rngs(0)))
  inner = model["block"]
  assert adapters.add_residual_adapters(model, target="^block$", bottleneck=4, gate_language=1) == 1
  wrapped = model["block"]
  assert wrapped.inner is inner and wrapped.gate_language == 1
  # A trained adapter (the zero-initialised up-projection would make it an identity).
  up = wrapped.adapter.up_kernel
  up[...] = jax.random.normal(jax.random.key(3), up[...].shape)
  x = _x()  # [2, 5, D]
  # Frame posteriors of three languages: language 1 with 1, 0, 0.5, 0, 1 over the frames.
  p1 = jnp.array([1.0, 0.0, 0.5, 0.0, 1.0])
  probs = jnp.stack([(1 - p1) / 2, p1, (1 - p1) / 2], axis=-1)
  probs = jnp.broadcast_to(probs, (2, 5, 3))
  out, aux = wrapped(x, lang_probs=probs)
  base, base_aux = inner(x)
  residual = wrapped.adapter.residual(base)
  assert float(jnp.abs(residual).min(axis=-1).max()) > 0  # Every frame's residual is nonzero.
  np.testing.assert_array_equal(aux, base_aux)
  other = p1 == 0.0
  np.testing.assert_array_equal(out[:, other], base[:, other])  # Other languages: untouched.
  np.testing.assert_allclose(out, base + p1[None, :, None] * residual, rtol=1e-6, atol=1e-6)
  ungated, _ = adapters.AdaptedModule(inner, wrapped.adapter)(x, lang_probs=probs)
  np.testing.assert_allclose(out[:, p1 == 1.0], ungated[:, p1 == 1.0], rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="without lang_probs"):
    wrapped(x)


def test_transfer_adapters_wrap_only_the_blocks_above_the_lid_layer():
  import re

  from moe_asr.data import languages
  from moe_asr.training import transfer

  cfg = __import__("ml_collections").ConfigDict(
    {
      "transfer": {"adapter_gate": "language", "language": "ru"},
      "model": {"num_languages": 7, "encoder": {"lid_layer": 2, "num_layers": 6}},
    }
  )
  target, gate = transfer.adapter_target(cfg)
  assert gate == languages.language_index("ru")
  wrapped = [i for i in range(8) if re.search(target, f"encoder/blocks/{i}")]
  assert wrapped == [3, 4, 5]
  assert not re.search(target, "encoder/blocks/4/mha")
  cfg.transfer.adapter_gate = "none"
  assert transfer.adapter_target(cfg) == (transfer.ADAPTER_TARGET, None)
  cfg.transfer.adapter_gate = "language"
  cfg.model.num_languages = 6
  with pytest.raises(ValueError, match="no LID class"):
    transfer.adapter_target(cfg)
  cfg.model.encoder.lid_layer = 5
  with pytest.raises(ValueError, match="above the LID layer"):
    transfer.adapter_target(cfg)
