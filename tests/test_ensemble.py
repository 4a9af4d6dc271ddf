"""Ensembles of runs (`moe-asr eval --ensemble`): training/ensemble.py and decode.mix."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_asr.decoding import decode
from moe_asr.evaluation import score
from moe_asr.training import ensemble


def test_member_weights(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  for w, cer in ((a, 0.2), (b, 0.4)):
    w.mkdir()
    lines = [
      {"step": 1, "val/cer": 0.9},
      {"step": 2, "train/loss": 1.0},
      {"step": 3, "val/cer": cer},
    ]
    (w / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
  assert ensemble.member_weights([a, b], "equal") == [0.5, 0.5]
  # 1 / CER of the last validation: 5 and 2.5.
  assert ensemble.member_weights([a, b], "validation") == pytest.approx([2 / 3, 1 / 3])
  assert ensemble.member_weights([a, b], "3,1") == pytest.approx([0.75, 0.25])
  with pytest.raises(ValueError, match="need 2 numbers"):
    ensemble.member_weights([a, b], [1.0])
  with pytest.raises(ValueError, match="no validation CER"):
    ensemble.member_weights([a, tmp_path], "validation")


def test_mix_is_the_weighted_mean_of_posteriors():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
  w = np.array([0.3, 0.7])
  got = decode.mix([jnp.asarray(x), jnp.asarray(y)], jnp.log(jnp.asarray(w, jnp.float32)))
  px, py = jax.nn.softmax(x, -1), jax.nn.softmax(y, -1)
  np.testing.assert_allclose(np.exp(got), 0.3 * px + 0.7 * py, rtol=1e-5, atol=1e-7)
  same = decode.mix([jnp.asarray(x)] * 2, jnp.log(jnp.asarray([0.5, 0.5], jnp.float32)))
  np.testing.assert_allclose(same, jax.nn.log_softmax(x, -1), atol=1e-6)


def _hyps(out_dir):
  path = out_dir / "hypotheses" / "test.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_ensemble_of_a_model_with_itself_is_the_model(tiny_workdir, tmp_path):
  overrides = ["eval.max_batches=1", "eval.plots=False", "eval.bootstrap_samples=10"]
  single = score.evaluate_workdir(
    tiny_workdir, splits=("test",), overrides=overrides, out_dir=tmp_path / "single"
  )
  double = score.evaluate_workdir(
    tiny_workdir,
    splits=("test",),
    overrides=overrides,
    out_dir=tmp_path / "double",
    ensemble=[tiny_workdir],
    ensemble_weights="1,3",
  )
  assert double["decode"]["ensemble"]["weights"] == [0.25, 0.75]
  assert "ensemble" not in single["decode"]
  a, b = _hyps(tmp_path / "single"), _hyps(tmp_path / "double")
  assert len(a) == len(b) > 0
  for ra, rb in zip(a, b, strict=True):
    for key in ("id", "hyp_text", "hyp_language", "hyp_intent", "hyp_slots", "tf_intent"):
      assert ra[key] == rb[key], (key, ra[key], rb[key])
    for key in ("confidence", "intent_confidence"):
      if ra[key] is None:
        assert rb[key] is None
      else:
        assert math.isclose(ra[key], rb[key], rel_tol=1e-5, abs_tol=1e-6), (key, ra, rb)
  for metric in ("wer", "cer", "intent_acc", "lid_acc"):
    assert single["splits"]["test"][metric] == double["splits"]["test"][metric], metric


def test_ensemble_refuses_the_joint_search_naming_the_override(tiny_workdir, tmp_path):
  # Each message names the setting at fault and only the override that mends it.
  method_fix, rescore_fix = "--config.decode.method=ctc_beam", "--config.decode.rescore=False"
  both = [method_fix, rescore_fix]
  for extra, named, fixes in (
    (["decode.method=joint"], "decode.method='joint'", [method_fix]),
    (["decode.method=greedy", "decode.rescore=True"], "decode.rescore=True", [rescore_fix]),
    (["decode.method=joint", "decode.rescore=True"], "and decode.rescore", both),
  ):
    with pytest.raises(ValueError, match="an ensemble decodes with greedy or ctc_beam") as err:
      score.evaluate_workdir(
        tiny_workdir,
        splits=("test",),
        overrides=["eval.max_batches=1", *extra],
        out_dir=tmp_path / "x",
        ensemble=[tiny_workdir],
      )
    message = str(err.value)
    assert named in message and str(tiny_workdir) in message, message
    for fix in both:
      assert (fix in message) == (fix in fixes), (fix, message)
  cfg = score.workdir_config(tiny_workdir, ["decode.method=ctc_beam"])
  decode.check_ensemble_search(cfg.decode)  # A search an ensemble runs: no error.


def test_transcribe_ensemble_and_average_last_one(tiny_workdir, tmp_path):
  import soundfile as sf

  from moe_asr import transcribe
  from moe_asr.training import inputs

  source = inputs.split_source(score.workdir_config(tiny_workdir), "test")
  wave = next(
    np.asarray(source[i]["audio"], np.int16)
    for i in range(len(source))
    if len(source[i]["audio"]) < 3 * 16000  # The tiny run's only bucket is 3 s.
  )
  path = tmp_path / "a.wav"
  sf.write(path, wave, 16000, subtype="PCM_16")
  plain = transcribe.transcribe_files(tiny_workdir, [path])[0]
  both = transcribe.transcribe_files(tiny_workdir, [path], ensemble=[tiny_workdir], average_last=1)[
    0
  ]
  assert "error" not in plain
  for key in ("text", "language", "intent", "slots"):
    assert plain.get(key) == both.get(key), key
  assert [w["word"] for w in plain["words"]] == [w["word"] for w in both["words"]]
