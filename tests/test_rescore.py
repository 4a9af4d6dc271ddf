"""N-best rescoring with decoder, task-head and LM scores on the tiny model."""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_asr import config_lib
from moe_asr.decoding import nbest as nbest_lib
from moe_asr.decoding import rescore
from moe_asr.models import lm as lm_lib
from moe_asr.models import model as model_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "moe_asr" / "configs"
VOCAB, INTENTS, SLOT_TAGS = 60, 5, 7
MAX_LEN = 7
# Every score is recomputed in float32 by the same layers; batching differs, so compare with
# the tolerance the model's own padding test states.
ATOL = 1e-4


@functools.cache
def _model():
  cfg = config_lib.load_config(CONFIGS / "tiny.py")
  model = model_lib.MoeAsr(
    cfg.model,
    vocab_size=VOCAB,
    num_intents=INTENTS,
    num_slot_tags=SLOT_TAGS,
    rngs=nnx.Rngs(0, specaug=1, condition=2, dropout=3),
  )
  model.eval()
  return model


@functools.cache
def _lm():
  lm = lm_lib.TransformerLM(VOCAB, 16, 2, 1, 32, 0.0, 16, rngs=nnx.Rngs(5))
  lm.eval()
  return lm


def _audio():
  rng = np.random.default_rng(0)
  audio = rng.integers(-3000, 3000, (2, 12000)).astype(np.int16)
  mask = np.ones((2, 12000), bool)
  mask[1, 9000:] = False
  audio[1, 9000:] = 0
  return {"audio": audio, "audio_mask": mask}


def _candidates():
  """Six hypotheses per utterance: int32 [2, 6, MAX_LEN] tokens and [2, 6] lengths."""
  rng = np.random.default_rng(1)
  lengths = rng.integers(2, MAX_LEN + 1, (2, 6)).astype(np.int32)
  tokens = rng.integers(4, VOCAB, (2, 6, MAX_LEN)).astype(np.int32)
  tokens = np.where(np.arange(MAX_LEN) < lengths[..., None], tokens, 0)
  return tokens, lengths


@nnx.jit
def _encode(model, batch):
  return model.encode(batch)


@nnx.jit
def _decode(model, encoded, tokens, mask):
  dec, task = model.decode_tokens(encoded, tokens, mask)
  return jax.nn.log_softmax(dec.logits, -1), task.intent_log_probs, task.slot_log_probs


@nnx.jit
def _lm_log_probs(lm, inputs, mask):
  return jax.nn.log_softmax(lm(inputs, mask), -1)


@functools.cache
def _encoded():
  return _encode(_model(), _audio())


@functools.cache
def _reference():
  """Candidate k of both utterances decoded as one batch: att, task, intent, slots and lm."""
  model, lm, encoded = _model(), _lm(), _encoded()
  tokens, lengths = _candidates()
  out = {k: np.zeros((2, 6)) for k in ("att", "task", "lm")}
  out["intent"] = np.zeros((2, 6, INTENTS))
  out["slots"] = np.zeros((2, 6, MAX_LEN, SLOT_TAGS))
  for k in range(6):
    mask = np.arange(MAX_LEN)[None] < lengths[:, k, None]
    log_probs, intent, slots = map(np.asarray, _decode(model, encoded, tokens[:, k], mask))
    inputs = np.zeros((2, MAX_LEN + 1), np.int32)
    for b in range(2):
      n = int(lengths[b, k])
      labels = [*tokens[b, k, :n].tolist(), model.eos_id]
      out["att"][b, k] = sum(log_probs[b, i, t] for i, t in enumerate(labels))
      inputs[b, : n + 1] = [lm.bos_id, *labels[:-1]]
    lm_mask = np.arange(MAX_LEN + 1)[None] <= lengths[:, k, None]
    lm_log_probs = np.asarray(_lm_log_probs(lm, inputs, lm_mask))
    for b in range(2):
      n = int(lengths[b, k])
      labels = [*tokens[b, k, :n].tolist(), model.eos_id]
      out["lm"][b, k] = sum(lm_log_probs[b, i, t] for i, t in enumerate(labels))
    out["intent"][:, k] = intent
    out["task"][:, k] = intent.max(-1)
    out["slots"][:, k] = slots
  return out


def _nbest(pick, ctc):
  """NBest of the candidates `pick` [2, n] with ctc scores [2, n] (-inf = empty slot)."""
  tokens, lengths = _candidates()
  rows = np.arange(2)[:, None]
  ctc = np.asarray(ctc, np.float32)
  empty = ~np.isfinite(ctc)
  return nbest_lib.NBest(
    tokens=jnp.asarray(np.where(empty[..., None], 0, tokens[rows, pick])),
    lengths=jnp.asarray(np.where(empty, 0, lengths[rows, pick])),
    scores=jnp.asarray(ctc),
    parts={"ctc": jnp.asarray(ctc), "length": jnp.asarray(lengths[rows, pick], jnp.float32)},
  )


@nnx.jit
def _rescore(model, lm, encoded, nbest, weights):
  # Weights are traced here: one compilation serves every value of them.
  return rescore.rescore_nbest(model, encoded, nbest, weights=weights, lm=lm)


def _run(nbest, weights, lm=None):
  return _rescore(_model(), lm, _encoded(), nbest, weights)


def test_task_head_flips_the_first_best():
  ref = _reference()
  # Per utterance: the candidate the intent head is least and most sure about.
  low, high = ref["task"].argmin(1), ref["task"].argmax(1)
  gap = ref["task"][np.arange(2), high] - ref["task"][np.arange(2), low]
  assert (gap > 1e-3).all(), gap
  pick = np.stack([low, high], 1)
  ctc = np.array([[-10.0, -10.5], [-20.0, -20.5]])  # The acoustics slightly prefer `low`.
  nbest = _nbest(pick, ctc)

  # ctc alone: order and scores unchanged.
  kept, _ = _run(nbest, {"ctc": 1.0, "task": 0.0, "att": 0.0})
  np.testing.assert_array_equal(kept.tokens, nbest.tokens)
  np.testing.assert_array_equal(kept.scores, ctc.astype(np.float32))

  # A task weight making 1 nat of task confidence outweigh 0.5 nat of ctc flips both.
  task_weight = 2.0 / float(gap.min())
  flipped, out = _run(nbest, {"ctc": 1.0, "task": task_weight, "att": 0.0})
  rows = np.arange(2)[:, None]
  order = np.array([[1, 0], [1, 0]])
  np.testing.assert_array_equal(flipped.tokens, np.asarray(nbest.tokens)[rows, order])
  np.testing.assert_array_equal(flipped.lengths, np.asarray(nbest.lengths)[rows, order])
  np.testing.assert_array_equal(flipped.parts["ctc"], ctc[rows, order].astype(np.float32))
  expected = ctc + task_weight * ref["task"][rows, pick]
  np.testing.assert_allclose(flipped.scores, expected[rows, order], atol=ATOL * task_weight)
  np.testing.assert_allclose(flipped.parts["task"], ref["task"][rows, pick][rows, order], atol=ATOL)
  np.testing.assert_allclose(flipped.parts["att"], ref["att"][rows, pick][rows, order], atol=ATOL)
  np.testing.assert_allclose(
    out.intent_log_probs, ref["intent"][rows, pick][rows, order], atol=ATOL
  )
  np.testing.assert_allclose(out.slot_log_probs, ref["slots"][rows, pick][rows, order], atol=ATOL)
  # The marginal intent posterior: softmax of the new scores over the heads' posteriors.
  post = np.exp(expected - expected.max(1, keepdims=True))
  post /= post.sum(1, keepdims=True)
  marginal = np.einsum("bn,bni->bi", post, np.exp(ref["intent"][rows, pick]))
  np.testing.assert_allclose(out.intent_posterior, marginal, atol=1e-3)
  np.testing.assert_allclose(out.intent_posterior.sum(-1), 1.0, atol=1e-5)


def test_att_and_lm_parts_and_empty_slots():
  ref = _reference()
  pick = np.array([[0, 1, 2, 3], [4, 5, 0, 1]])
  ctc = np.array([[-3.0, -4.0, -5.0, -6.0], [-1.0, -2.0, -np.inf, -np.inf]])
  nbest = _nbest(pick, ctc)
  weights = {"att": 1.0, "lm": 0.5, "length": 0.1}
  rescored, out = _run(nbest, weights, lm=_lm())
  rows = np.arange(2)[:, None]
  expected = (
    ref["att"][rows, pick] + 0.5 * ref["lm"][rows, pick] + 0.1 * np.asarray(nbest.parts["length"])
  )
  expected = np.where(np.isfinite(ctc), expected, -np.inf)
  order = np.argsort(-expected, axis=1, kind="stable")
  np.testing.assert_allclose(rescored.scores, expected[rows, order], atol=ATOL)
  np.testing.assert_array_equal(rescored.tokens, np.asarray(nbest.tokens)[rows, order])
  # Row 1's empty slots stay last, with -inf in the recomputed parts too.
  assert np.isneginf(rescored.scores[1, 2:]).all()
  assert all(np.isneginf(rescored.parts[p][1, 2:]).all() for p in ("att", "lm", "task"))
  np.testing.assert_allclose(rescored.parts["lm"][0], ref["lm"][0, pick[0]][order[0]], atol=ATOL)
  # Empty slots get no posterior mass.
  np.testing.assert_allclose(out.intent_posterior.sum(-1), 1.0, atol=1e-5)
  valid_intents = ref["intent"][1, pick[1, :2]][order[1, :2]]
  np.testing.assert_allclose(out.intent_log_probs[1, :2], valid_intents, atol=ATOL)


def test_unknown_weight_is_refused():
  nbest = _nbest(np.array([[0, 1], [0, 1]]), np.zeros((2, 2)))
  with pytest.raises(ValueError, match="lm"):
    rescore.rescore_nbest(
      _model(), _encoded(), nbest, weights={"ctc": 1.0, "lm": 1.0}
    )  # No LM given and no "lm" part in the n-best.
