"""The decode step's table of searches (`decode.SEARCHES`) and its method lookup."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from moe_asr.decoding import decode
from moe_asr.decoding.nbest import NBest


def test_registry_lists_the_three_searches():
  assert set(decode.SEARCHES) == {"greedy", "ctc_beam", "joint"}
  assert tuple(decode.SEARCHES) == decode.METHODS
  for method, search in decode.SEARCHES.items():
    assert callable(search)
    assert decode.search_for(method) is search


def test_unknown_method_raises_a_clear_error():
  cfg = decode.default_config()
  cfg.method = "viterbi"
  with pytest.raises(ValueError, match="'viterbi'") as error:
    decode.make_decode_fn(cfg, decoder_max_len=16)
  for method in ("greedy", "ctc_beam", "joint"):
    assert method in str(error.value)
  with pytest.raises(ValueError, match="expected one of"):
    decode.search_for("viterbi")
  cfg = decode.default_config()
  cfg.method, cfg.pre_beam_score = "joint", "ctc"
  with pytest.raises(ValueError, match="decode.pre_beam_score='ctc'; expected one of"):
    decode.make_decode_fn(cfg, decoder_max_len=16)


def test_greedy_search_returns_a_one_best_nbest():
  # Frames: a a - b b - (blank 0); the second utterance has 3 valid frames.
  best = np.array([[1, 1, 0, 2, 2, 0], [3, 0, 3, 0, 0, 0]])
  logits = jnp.asarray(np.eye(4)[best] * 5.0, jnp.float32)
  mask = jnp.asarray(np.arange(6)[None, :] < np.array([[6], [3]]))
  encoded = types.SimpleNamespace(ctc_mask=mask)
  encoding = decode.Encoding(
    members=(None,),
    encodeds=(encoded,),
    log_probs=jnp.log(jnp.exp(logits) / jnp.exp(logits).sum(-1, keepdims=True)),
    greedy_logits=logits,
    lid_probs=None,
    utt_lid_logits=None,
  )
  settings = decode.SearchSettings(cfg=decode.default_config())
  nbest = decode.SEARCHES["greedy"](settings, encoding, {}, 4)
  assert isinstance(nbest, NBest)
  assert nbest.tokens.shape == (2, 1, 4) and nbest.token_frames.shape == (2, 1, 4)
  np.testing.assert_array_equal(nbest.lengths[:, 0], [2, 2])
  np.testing.assert_array_equal(nbest.tokens[:, 0, :2], [[1, 2], [3, 3]])
  np.testing.assert_array_equal(nbest.token_frames[:, 0], [[0, 3, -1, -1], [0, 2, -1, -1]])
  np.testing.assert_array_equal(nbest.confidence, nbest.scores)
