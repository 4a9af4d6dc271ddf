"""MoeAsr end to end: presets build, padding is invisible, the task loss trains the ASR."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_cli
from flax import nnx

from moe_asr import config_lib
from moe_asr.data import features
from moe_asr.decoding import decode as decode_lib
from moe_asr.models import greedy, info, moe, task_heads
from moe_asr.models import model as model_lib
from moe_asr.training import losses, train
from moe_asr.training import state as state_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "moe_asr" / "configs"
VOCAB, INTENTS, SLOT_TAGS = 60, 5, 7


def _model(overrides=(), seed=0):
  cfg = config_lib.load_config(CONFIGS / "tiny.py", overrides)
  model = model_lib.MoeAsr(
    cfg.model,
    vocab_size=VOCAB,
    num_intents=INTENTS,
    num_slot_tags=SLOT_TAGS,
    rngs=nnx.Rngs(seed, specaug=1, condition=2, dropout=3),
  )
  model.eval()
  return model


def _batch(samples, tokens, *, valid_samples=(12000, 9000), valid_tokens=(9, 6), garbage=False):
  """A batch whose valid part is the same whatever the padded sizes."""
  rng = np.random.default_rng(0)
  b = len(valid_samples)
  audio = (
    rng.integers(-2000, 2000, (b, samples)).astype(np.int16)
    if garbage
    else np.zeros((b, samples), np.int16)
  )
  valid_audio = np.random.default_rng(1).integers(-3000, 3000, (b, max(valid_samples)))
  toks = (
    rng.integers(4, VOCAB, (b, tokens)).astype(np.int32)
    if garbage
    else np.zeros((b, tokens), np.int32)
  )
  valid_toks = np.random.default_rng(2).integers(4, VOCAB, (b, max(valid_tokens)))
  audio_mask = np.zeros((b, samples), bool)
  token_mask = np.zeros((b, tokens), bool)
  for i, (n, t) in enumerate(zip(valid_samples, valid_tokens, strict=True)):
    audio[i, :n] = valid_audio[i, :n]
    audio_mask[i, :n] = True
    toks[i, :t] = valid_toks[i, :t]
    token_mask[i, :t] = True
  frames = int(features.num_frames(samples))
  frame_lang = np.full((b, frames), -1, np.int32)
  frame_lang[0, : int(features.num_frames(valid_samples[0]))] = 1
  token_lang = np.where(token_mask, np.array([[1], [4]]), -1).astype(np.int32)
  return {
    "audio": audio,
    "audio_mask": audio_mask,
    "tokens": toks,
    "token_mask": token_mask,
    "token_lang": token_lang,
    "frame_lang": frame_lang,
    "intent": np.array([1, 3], np.int32),
    "slot_tags": np.where(token_mask, 0, -1).astype(np.int32),
  }


@nnx.jit
def _forward(model, batch):
  return model(batch)


def test_tiny_forward_shapes():
  model = _model()
  batch = _batch(16000, 12)
  out = _forward(model, batch)
  frames = out.enc_mask.shape[1]
  assert out.ctc_logits.shape == (2, frames, VOCAB) and out.ctc_logits.dtype == jnp.float32
  # The decoder predicts the 12 tokens, then eos.
  assert out.decoder_logits.shape == (2, 13, VOCAB)
  assert out.decoder_labels.shape == (2, 13) and out.decoder_mask.shape == (2, 13)
  assert out.intent_log_probs.shape == (2, INTENTS)
  assert out.slot_log_probs.shape == (2, 12, SLOT_TAGS)
  assert out.utt_lid_logits.shape == (2, 7) and out.lid_probs.shape == (2, frames, 7)
  np.testing.assert_allclose(jnp.exp(out.intent_log_probs).sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(out.encoder_expert_load.sum(-1), 1.0, atol=1e-5)
  # Encoder frames: 12000 valid samples -> 73 feature frames -> 17 encoder frames.
  assert int(out.enc_mask[0].sum()) == 17


def test_padding_does_not_change_valid_outputs():
  model = _model()
  small = _forward(model, _batch(16000, 12))
  big = _forward(model, _batch(32000, 20, garbage=True))
  for i in range(2):
    f = int(small.enc_mask[i].sum())
    assert int(big.enc_mask[i].sum()) == f
    t = int(_batch(16000, 12)["token_mask"][i].sum())
    # Float32 throughout: differences come only from summation order (stated tolerance 1e-4).
    np.testing.assert_allclose(big.ctc_logits[i, :f], small.ctc_logits[i, :f], atol=1e-4)
    np.testing.assert_allclose(big.lid_probs[i, :f], small.lid_probs[i, :f], atol=1e-4)
    np.testing.assert_allclose(
      big.decoder_logits[i, : t + 1], small.decoder_logits[i, : t + 1], atol=1e-4
    )
    np.testing.assert_allclose(big.slot_log_probs[i, :t], small.slot_log_probs[i, :t], atol=1e-4)
  np.testing.assert_allclose(big.utt_lid_logits, small.utt_lid_logits, atol=1e-4)
  np.testing.assert_allclose(big.intent_log_probs, small.intent_log_probs, atol=1e-4)
  np.testing.assert_allclose(big.encoder_expert_load, small.encoder_expert_load, atol=1e-5)


@nnx.jit
def _task_grads(model, batch):
  def loss_fn(model):
    out = model(batch)
    intent, _ = task_heads.intent_loss(out.intent_log_probs, batch["intent"])
    slots, _ = task_heads.slot_loss(out.slot_log_probs, batch["slot_tags"], batch["token_mask"])
    return intent + slots

  return nnx.grad(loss_fn)(model)


def _max_abs(tree) -> float:
  return max(float(jnp.abs(x).max()) for x in jax.tree.leaves(tree))


def test_task_loss_trains_the_encoder_unless_cascade():
  batch = _batch(16000, 12)
  joint = _task_grads(_model(), batch)
  assert _max_abs(joint["encoder"]["subsampling"]) > 1e-6
  assert _max_abs(joint["decoder"]) > 1e-6
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(joint))

  cascade = _task_grads(_model(["model.task.stop_gradient=True"]), batch)
  assert _max_abs(cascade["encoder"]) == 0.0  # Exactly zero: stop_gradient at the bridge.
  assert _max_abs(cascade["decoder"]) == 0.0
  assert _max_abs(cascade["task_heads"]) > 1e-6


@nnx.jit
def _hypothesis_task(model, batch):
  def loss_fn(model):
    out = model(batch, hypothesis_task=True)
    return task_heads.intent_loss(out.hyp_intent_log_probs, batch["intent"])[0], out

  (_, out), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  # What inference does: the task heads on the greedy CTC hypothesis, LID-routed decoder.
  encoded = model.encode(batch)
  hyp, lengths, _ = greedy.ctc_greedy(encoded.ctc_logits, encoded.enc.mask)
  max_len = min(hyp.shape[1], model.decoder.max_len - 1)
  mask = greedy.token_mask(jnp.minimum(lengths, max_len), max_len)
  _, task = model.decode_tokens(encoded, hyp[:, :max_len], mask)
  return out, grads, task.intent_log_probs, lengths


def test_hypothesis_task_reads_the_greedy_hypothesis_and_trains_the_encoder():
  model = _model()
  batch = _batch(16000, 12)
  out, grads, inference_intent, lengths = _hypothesis_task(model, batch)
  assert int(lengths.max()) > 0  # A non-empty hypothesis: the decoder path is exercised.
  # Float32 throughout; the same computation up to fusion order (stated tolerance 1e-5).
  np.testing.assert_allclose(out.hyp_intent_log_probs, inference_intent, atol=1e-5)
  # The hypothesis is discrete, but the decoder's cross-attention and the bridge read the
  # encoder: the intent on the hypothesis trains it.
  assert _max_abs(grads["encoder"]["subsampling"]) > 1e-6
  assert _max_abs(grads["decoder"]) > 1e-6
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(grads))
  assert _forward(model, batch).hyp_intent_log_probs is None  # Off by default.


@nnx.jit
def _gated_hypothesis_task(model, batch, run_it):
  def loss_fn(model):
    out = model(batch, hypothesis_task=run_it)
    return task_heads.intent_loss(out.hyp_intent_log_probs, batch["intent"])[0], out

  (_, out), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  return out.hyp_intent_log_probs, grads


def test_hypothesis_task_gated_by_a_traced_flag():
  # The training step passes "the task_hyp term is on at this step" as a traced bool.
  model = _model()
  batch = _batch(16000, 12)
  static_out, static_grads, _, _ = _hypothesis_task(model, batch)
  on, on_grads = _gated_hypothesis_task(model, batch, jnp.asarray(True))
  # The same computation inside a cond (float32; stated tolerance 1e-5).
  np.testing.assert_allclose(on, static_out.hyp_intent_log_probs, atol=1e-5)
  for a, b in zip(jax.tree.leaves(on_grads), jax.tree.leaves(static_grads), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)
  off, off_grads = _gated_hypothesis_task(model, batch, jnp.asarray(False))
  num_intents = off.shape[-1]
  np.testing.assert_allclose(off, np.full(off.shape, -np.log(num_intents)), rtol=1e-6)
  assert _max_abs(off_grads) == 0.0  # Skipped: nothing trains through it.


def _moe_layers(model) -> list:
  return [m for _, m in nnx.iter_graph(model) if isinstance(m, moe.MoeFeedForward)]


def test_ragged_grouped_matmul_gives_the_same_model():
  # The experts' grouped matmul as `jax.lax.ragged_dot` instead of padded row blocks, or with
  # 8-row blocks: the same parameters (same seed) give the same outputs and task-loss
  # gradients, encoder and decoder.
  batch = _batch(16000, 12)
  blocks, ragged = _model(), _model(["model.encoder.grouped_matmul='ragged'"])
  small_blocks = _model(["model.encoder.moe_block_size=8"])
  assert len(_moe_layers(ragged)) == 3  # 2 encoder blocks + 1 decoder block
  assert all(m.grouped_matmul == "ragged" for m in _moe_layers(ragged))
  assert all(m.block_size == 8 for m in _moe_layers(small_blocks))
  out_b = _forward(blocks, batch)
  # float32, logits of order 1: the same products summed in a different order.
  for other in (_forward(ragged, batch), _forward(small_blocks, batch)):
    for name in ("ctc_logits", "decoder_logits", "intent_log_probs", "utt_lid_logits"):
      np.testing.assert_allclose(
        getattr(other, name), getattr(out_b, name), atol=1e-4, err_msg=name
      )
  g_b, g_r = _task_grads(blocks, batch), _task_grads(ragged, batch)
  for path in (("encoder", "blocks", 2, "ff2", "w_up"), ("decoder", "blocks", 1, "ffn", "w_down")):
    gb, gr = g_b, g_r
    for key in path:
      gb, gr = gb[key], gr[key]
    assert _max_abs(gb) > 1e-6, path
    np.testing.assert_allclose(gr[...], gb[...], atol=1e-6, err_msg=str(path))


def test_specaugment_only_in_training():
  model = _model()
  batch = _batch(16000, 12)
  eval_out = _forward(model, batch)
  np.testing.assert_array_equal(_forward(model, batch).ctc_logits, eval_out.ctc_logits)
  model.train()
  train_out = _forward(model, batch)
  assert not np.allclose(train_out.ctc_logits, eval_out.ctc_logits, atol=1e-3)


@pytest.mark.parametrize("preset", ["demo", "small", "large"])
def test_presets_build_abstractly(preset):
  cfg = config_lib.load_config(CONFIGS / f"{preset}.py")
  sizes = info.model_info(cfg)
  assert sizes["params_active"] < sizes["params_total"]  # Routed experts are sparse.
  minimum = {"demo": 2e6, "small": 2e7, "large": 3e8}[preset]
  assert sizes["params_total"] > minimum


def test_active_params_follow_the_router():
  cfg = config_lib.load_config(
    CONFIGS / "tiny.py", ["model.encoder.router=learned", "model.encoder.top_k=1"]
  )
  top1 = info.model_info(cfg)["components"]["encoder"]
  cfg2 = config_lib.load_config(
    CONFIGS / "tiny.py", ["model.encoder.router=learned", "model.encoder.top_k=2"]
  )
  top2 = info.model_info(cfg2)["components"]["encoder"]
  assert top1["total"] == top2["total"]
  d, ff, layers = (
    cfg.model.encoder.d_model,
    cfg.model.encoder.d_ff,
    len(cfg.model.encoder.moe_layers),
  )
  # One more SwiGLU expert (3 matrices) per MoE layer is active with top-2.
  assert top2["active"] - top1["active"] == layers * 3 * d * ff


def test_model_info_cli(tmp_path):
  out = tmp_path / "info.json"
  proc = run_cli("model-info", "--config", str(CONFIGS / "large.py"), "--json", str(out))
  assert proc.returncode == 0, proc.stderr
  assert "active/token" in proc.stdout and "encoder" in proc.stdout
  sizes = json.loads(out.read_text())
  assert sizes["params_total"] > 3e8


def test_adapters_on_the_model_start_as_identity_and_train_alone():
  import optax

  from moe_asr.models import adapters

  model = _model()
  batch = _batch(16000, 12)
  before = _forward(model, batch)
  rngs = nnx.Rngs(7)
  n_lora = adapters.add_lora(
    model, rank=4, alpha=8.0, target=r"(encoder|decoder)/.*/(linear_[qv]|query|value)$", rngs=rngs
  )
  cfg = config_lib.load_config(CONFIGS / "tiny.py")
  n_res = adapters.add_residual_adapters(
    model,
    target=r"encoder/blocks/\d+$",
    bottleneck=8,
    d_model=cfg.model.encoder.d_model,
    rngs=rngs,
  )
  assert n_lora >= 2 * cfg.model.encoder.num_layers  # q and v of every encoder block at least.
  assert n_res == cfg.model.encoder.num_layers
  after = _forward(model, batch)
  # The same function at initialisation (B and up-projections are zero); the
  # wrapped model compiles to a different XLA program, so float32 results agree
  # to rounding (stated tolerance 1e-5 on logits of order 1), not bit for bit.
  np.testing.assert_allclose(after.ctc_logits, before.ctc_logits, atol=1e-5)
  np.testing.assert_allclose(after.intent_log_probs, before.intent_log_probs, atol=1e-5)

  trainable = adapters.trainable_filter()
  n_train, n_frozen = adapters.freeze_report(model, trainable)
  assert 0 < n_train < n_frozen
  frozen_before = nnx.state(model, nnx.All(nnx.Param, nnx.Not(trainable)))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=trainable)

  @nnx.jit
  def step(model, optimizer, batch):
    def loss_fn(model):
      out = model(batch)
      return task_heads.intent_loss(out.intent_log_probs, batch["intent"])[0]

    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, trainable))(model)
    optimizer.update(model, grads)
    return loss

  step(model, optimizer, batch)
  frozen_after = nnx.state(model, nnx.All(nnx.Param, nnx.Not(trainable)))
  for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(frozen_after), strict=True):
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(_forward(model, batch).intent_log_probs, before.intent_log_probs)


def test_with_eos_places_eos_after_the_last_token():
  tokens = jnp.array([[5, 6, 7], [8, 0, 0], [0, 0, 0]])
  mask = jnp.array([[True, True, True], [True, False, False], [False, False, False]])
  labels, label_mask = model_lib.with_eos(tokens, mask, eos_id=3)
  np.testing.assert_array_equal(labels, [[5, 6, 7, 3], [8, 3, 0, 0], [3, 0, 0, 0]])
  np.testing.assert_array_equal(label_mask, [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])


def _loss_batch():
  batch = _batch(16000, 12)
  batch.update(
    example_mask=np.ones(2, bool),
    language=np.array([1, 4], np.int32),
    lang_runs=np.full((2, 4), -1, np.int32),
  )
  return batch


def test_joint_loss_adds_the_hypothesis_intent_term():
  model = _model()
  batch = _loss_batch()
  out = nnx.jit(lambda m, b: m(b, hypothesis_task=True))(model, batch)
  cfg = losses.loss_config()
  cfg.task_hyp = 0.5
  with_hyp, metrics = losses.joint_loss(out, batch, cfg.to_dict())
  # By hand: the mean NLL of the labelled intents under the hypothesis-path posteriors.
  by_hand = -np.mean(np.asarray(out.hyp_intent_log_probs)[[0, 1], batch["intent"]])
  np.testing.assert_allclose(metrics["task_hyp"], by_hand, rtol=1e-6)
  cfg.task_hyp = 0.0
  without, _ = losses.joint_loss(out, batch, cfg.to_dict())
  np.testing.assert_allclose(with_hyp - without, 0.5 * by_hand, rtol=1e-5)


def test_a_ctc_only_model_builds_its_train_step_with_the_hypothesis_term_configured():
  # No decoder, so no task heads: task_hyp (on in the demo preset) has nothing to read. The
  # step must still trace without the hypothesis metric; traced
  # abstractly, since compiling it on the 8 test devices would take a minute.
  cfg = config_lib.load_config(
    CONFIGS / "tiny.py", ["model.decoder.num_layers=0", "train.loss.task_hyp=0.5"]
  )
  kwargs = dict(vocab_size=VOCAB, num_intents=INTENTS, num_slot_tags=SLOT_TAGS)
  ts = nnx.eval_shape(lambda: state_lib.make_train_state(cfg, **kwargs))
  graphdef, rng_state, state = nnx.split(ts, nnx.RngState, ...)
  batch = _loss_batch()
  new_state, metrics = jax.eval_shape(train.make_train_step(cfg, graphdef), state, rng_state, batch)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert "hyp_intent_acc" not in metrics and metrics["task_hyp"].shape == ()
  assert {"loss", "ctc", "finite"} <= metrics.keys()


def _block_output(model, batch, block):
  """The encoder's block `block` output on `batch` (eval mode), through a pass-through tap."""
  feats, mask = features.log_mel(batch["audio"], batch["audio_mask"], model.feature_cfg)
  feats = features.normalize_features(feats, mask)
  enc = model.encoder(feats, mask, intermediate={block: lambda x, m, p: (x, x)})
  return enc.intermediate[0]


@nnx.jit
def _inter_ctc_pass(model, batch, weights):
  """One compile per model: (grads of the weighted joint loss, its metrics, the model's
  output, the CTC head on block 1's output)."""

  def loss_fn(model):
    cfg = losses.loss_config().to_dict()
    cfg.update({"ctc": 0.0, "att": 0.0, "lid": 0.0, "task": 0.0, "aux": 0.0, **weights})
    out = model(batch)
    loss, metrics = losses.joint_loss(out, batch, cfg)
    return loss, (metrics, out)

  grads, (metrics, out) = nnx.grad(loss_fn, has_aux=True)(model)
  return grads, metrics, out, model.ctc_head(_block_output(model, batch, 1))


def test_intermediate_ctc_taps_a_block_and_self_conditions_the_next():
  batch = _loss_batch()
  ref = _forward(_model(), _batch(16000, 12))
  model = _model(["model.inter_ctc.layers=(1,)", "model.inter_ctc.self_condition=True"])
  grads, metrics, out, by_hand = _inter_ctc_pass(model, batch, {"ctc": 0.0, "inter_ctc": 1.0})
  # The tap is the shared CTC head on block 1's output (float32; 1e-5).
  (tap,) = out.inter_ctc_logits
  assert tap.shape == out.ctc_logits.shape and tap.dtype == jnp.float32
  np.testing.assert_allclose(tap, by_hand, atol=1e-5)
  # Its loss is the CTC loss of the tap, and trains the blocks up to the tap only.
  mask, tokens = batch["token_mask"], batch["tokens"]
  expected = losses.ctc_loss(tap, out.ctc_mask, tokens, mask, batch["example_mask"])[0]
  np.testing.assert_allclose(metrics["inter_ctc"], expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
  blocks = grads["encoder"]["blocks"]
  assert _max_abs(blocks[0]) > 1e-6 and _max_abs(blocks[1]) > 1e-6
  assert _max_abs(blocks[2]) == 0.0 and _max_abs(blocks[3]) == 0.0
  assert _max_abs(grads["ctc_head"]) > 1e-6
  # Self-conditioning: block 2 reads x + Linear(tap posteriors), and the final CTC loss
  # trains that projection.
  assert _max_abs(out.ctc_logits - ref.ctc_logits) > 1e-3
  grads = _inter_ctc_pass(model, batch, {"ctc": 1.0, "inter_ctc": 0.0})[0]
  assert _max_abs(grads["inter_ctc_conditioner"]) > 1e-6
  # A zero projection adds nothing: the encoder is then the unconditioned one.
  conditioner = nnx.state(model.inter_ctc_conditioner, nnx.Param)
  nnx.update(model.inter_ctc_conditioner, jax.tree.map(jnp.zeros_like, conditioner))
  zeroed = _inter_ctc_pass(model, batch, {"ctc": 1.0, "inter_ctc": 0.0})[2]
  np.testing.assert_allclose(zeroed.ctc_logits, ref.ctc_logits, atol=1e-5)


@nnx.jit
def _upsampled_tap(model, batch):
  """One program: (the model's output, the upsampled CTC head on block 1's output)."""
  return model(batch), model._ctc_logits(_block_output(model, batch, 1))


def test_intermediate_ctc_on_upsampled_ctc_frames():
  """With ctc_upsample=2 a tap has two CTC frames per encoder frame (frames 2t and 2t+1
  belong to encoder frame t), and the next block reads the mean posterior of each pair."""
  model = _model(
    ["model.inter_ctc.layers=(1,)", "model.inter_ctc.self_condition=True", "model.ctc_upsample=2"]
  )
  out, by_hand = _upsampled_tap(model, _batch(16000, 12))
  (tap,) = out.inter_ctc_logits
  assert tap.shape == out.ctc_logits.shape == (2, 2 * out.enc_mask.shape[1], VOCAB)
  # The tap is the upsampled CTC head on block 1's output (float32; 1e-5).
  np.testing.assert_allclose(tap, by_hand, atol=1e-5)
  # The conditioning, by hand on random states: padded frames are left alone.
  width = model.inter_ctc_conditioner.out_features
  x = jax.random.normal(jax.random.key(0), (2, 5, width))
  mask = jnp.array([[True, True, True, False, False], [True] * 5])
  logits, conditioned = model._inter_ctc(x, mask)
  assert logits.shape == (2, 10, VOCAB)
  probs = jax.nn.softmax(logits, axis=-1)
  pooled = 0.5 * (probs[:, 0::2] + probs[:, 1::2])
  expected = jnp.where(mask[..., None], x + model.inter_ctc_conditioner(pooled), x)
  np.testing.assert_allclose(conditioned, expected, atol=1e-5)
  np.testing.assert_array_equal(conditioned[0, 3:], x[0, 3:])


@pytest.mark.parametrize("layers", ["(3,)", "(-1,)"])
def test_intermediate_ctc_layers_must_be_below_the_last_block(layers):
  with pytest.raises(ValueError, match="inter_ctc.layers"):
    _model([f"model.inter_ctc.layers={layers}"])


def test_ctc_upsampling_doubles_the_ctc_frames_only():
  model = _model(["--config.model.ctc_upsample=2"])
  small = _forward(model, _batch(16000, 12))
  big = _forward(model, _batch(32000, 20, garbage=True))
  frames = small.enc_mask.shape[1]
  assert small.ctc_logits.shape == (2, 2 * frames, VOCAB)
  assert small.lid_probs.shape[1] == frames  # LID and the decoder stay at the encoder rate.
  np.testing.assert_array_equal(small.ctc_mask, np.repeat(small.enc_mask, 2, axis=1))
  for i in range(2):
    f = 2 * int(small.enc_mask[i].sum())
    assert int(big.ctc_mask[i].sum()) == f
    # Float32 throughout: only summation order differs (stated tolerance 1e-4).
    np.testing.assert_allclose(big.ctc_logits[i, :f], small.ctc_logits[i, :f], atol=1e-4)
  with pytest.raises(ValueError, match="ctc_upsample=0"):
    _model(["--config.model.ctc_upsample=0"])


def test_ctc_upsampling_makes_fast_speech_feasible():
  """17 encoder frames cannot align 20 tokens; 34 CTC frames can, and CTC then trains."""
  batch = _batch(16000, 24, valid_samples=(12000, 12000), valid_tokens=(20, 8))
  batch.update(
    example_mask=np.ones(2, bool),
    language=np.array([1, 4], np.int32),
    lang_runs=np.full((2, 4), -1, np.int32),
  )
  cfg = losses.loss_config().to_dict()
  infeasible = {}
  for upsample in (1, 2):
    model = _model([f"--config.model.ctc_upsample={upsample}"])
    out = _forward(model, batch)
    assert int(out.enc_mask[0].sum()) == 17
    _, metrics = losses.joint_loss(out, batch, cfg)
    infeasible[upsample] = float(metrics["ctc_infeasible"])
    # Both rows' tokens count only where an alignment exists.
    assert float(metrics["tokens"]) == (8.0 if upsample == 1 else 28.0)
  assert infeasible == {1: 1.0, 2: 0.0}

  model = _model(["--config.model.ctc_upsample=2"])

  @nnx.jit
  def ctc_grads(model, batch):
    def loss_fn(model):
      out = model(batch)
      return losses.ctc_loss(
        out.ctc_logits, out.ctc_mask, batch["tokens"], batch["token_mask"], batch["example_mask"]
      )[0]

    return nnx.grad(loss_fn)(model)

  grads = ctc_grads(model, batch)
  assert np.isfinite(_max_abs(grads))
  assert _max_abs(grads.ctc_upsampler) > 0 and _max_abs(grads.encoder) > 0


def test_greedy_decoding_on_upsampled_ctc_frames():
  model = _model(["--config.model.ctc_upsample=2"])
  batch = _batch(16000, 12)
  cfg = decode_lib.default_config()
  # Every fourth piece starts a word, for the word-level slot tagger.
  word_table = (np.arange(VOCAB) % 4 == 1).astype(np.int8)
  decode = decode_lib.make_decode_fn(
    cfg, decoder_max_len=model.decoder.max_len, word_table=word_table
  )
  out = nnx.jit(decode)(model, batch)
  with pytest.raises(ValueError, match="word_table"):
    nnx.jit(decode_lib.make_decode_fn(cfg, decoder_max_len=model.decoder.max_len))(model, batch)
  encoded = nnx.jit(lambda m, b: m.encode(b))(model, batch)
  tokens, lengths, _ = greedy.ctc_greedy(encoded.ctc_logits, encoded.ctc_mask)
  n = np.minimum(np.asarray(lengths), out["tokens"].shape[1])
  frame_lang = np.asarray(jnp.argmax(encoded.enc.lid_probs, -1))
  for i in range(2):
    np.testing.assert_array_equal(out["tokens"][i, : n[i]], tokens[i, : n[i]])
    frames = np.asarray(out["token_frames"][i, : n[i]])
    # Emission frames count CTC frames (strictly increasing, inside the valid ones) and
    # the token's language is the frame LID of the encoder frame holding that CTC frame.
    assert np.all(np.diff(frames) > 0) and frames.max() < int(encoded.ctc_mask[i].sum())
    np.testing.assert_array_equal(out["token_lang"][i, : n[i]], frame_lang[i, frames // 2])


@nnx.jit
def _oracle_forward(model, batch):
  return model(batch, oracle_mix=1.0)


def test_language_gated_tokens_are_emitted_only_where_the_lid_says_their_language():
  """`model.token_languages`: the range's CTC logits, final and intermediate (a tap at the
  LID layer), get log p(language | frame) added; other tokens, and the model's parameters,
  are those of the ungated model."""
  # (Without self-conditioning, which would carry the tap's gate into the blocks above.)
  taps = ["model.inter_ctc.layers=(1,)", "model.inter_ctc.self_condition=False"]
  plain = _model(taps)
  gated = _model([*taps, "model.token_languages=((50,60,'es'),)"])
  assert gated.token_languages == ((50, 60, 1),)
  for x, y in zip(
    jax.tree.leaves(nnx.state(gated, nnx.Param)),
    jax.tree.leaves(nnx.state(plain, nnx.Param)),
    strict=True,
  ):
    np.testing.assert_array_equal(x, y)
  batch = _batch(16000, 12)  # Utterance 0's frames are labelled language 1 (es).
  batch["frame_lang"][1, :40] = 3  # Utterance 1's first frames: language 3.
  a, b = _oracle_forward(plain, batch), _oracle_forward(gated, batch)
  np.testing.assert_allclose(b.lid_probs, a.lid_probs, atol=1e-6)
  for ungated, out in (
    (a.ctc_logits, b.ctc_logits),
    (a.inter_ctc_logits[0], b.inter_ctc_logits[0]),
  ):
    np.testing.assert_allclose(out[..., :50], ungated[..., :50], atol=1e-5)
    expected = ungated[..., 50:] + np.log(np.maximum(np.asarray(a.lid_probs[..., 1:2]), 1e-6))
    np.testing.assert_allclose(out[..., 50:], expected, atol=1e-4)
  # The oracle posteriors: es frames keep the range's logits, frames of language 3 lose
  # 13.8 nats on it.
  es = np.asarray(a.lid_probs[0, :, 1]) == 1.0
  other = np.asarray(a.lid_probs[1, :, 3]) == 1.0
  assert es.sum() >= 10 and other.sum() >= 5
  np.testing.assert_allclose(b.ctc_logits[0][es], a.ctc_logits[0][es], atol=1e-5)
  drop = np.asarray(a.ctc_logits[1][other][:, 50:] - b.ctc_logits[1][other][:, 50:])
  np.testing.assert_allclose(drop, -np.log(1e-6), atol=1e-3)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    _model(["model.token_languages=((50,61,'es'),)"])
  with pytest.raises(ValueError, match="Unknown language code"):
    _model(["model.token_languages=((50,60,'xx'),)"])
