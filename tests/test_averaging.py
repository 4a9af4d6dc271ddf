"""Checkpoint averaging (`--average-last N`): training/averaging.py on a real tiny run."""

import shutil

import jax
import numpy as np
import pytest

from moe_asr import runtime
from moe_asr.evaluation import score
from moe_asr.training import averaging
from moe_asr.training import checkpoint as checkpoint_lib
from moe_asr.training import state as state_lib


def test_average_params_and_steps():
  a = {"w": np.array([1.0, 2.0], np.float32), "count": np.array(3, np.int32)}
  b = {"w": np.array([2.0, 5.0], np.float32), "count": np.array(7, np.int32)}
  out = averaging.average_params([a, b])
  np.testing.assert_array_equal(out["w"], np.array([1.5, 3.5], np.float32))
  assert out["w"].dtype == np.float32
  assert int(out["count"]) == 7  # Integer leaves: the newest value.
  assert averaging.steps_to_average([4, 2, 6], 2) == [4, 6]
  assert averaging.steps_to_average([2, 4, 6], 2, up_to=4) == [2, 4]
  with pytest.raises(ValueError, match="only 1 saved steps"):
    averaging.steps_to_average([2, 4, 6], 2, up_to=3)
  with pytest.raises(ValueError, match="differ"):
    averaging.average_params([a, {"w": a["w"]}])


def _params(run) -> dict[str, np.ndarray]:
  return {
    state_lib.path_name(path): np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(run.state["model"])
  }


@pytest.fixture(scope="module")
def two_step_workdir(tiny_workdir, tmp_path_factory):
  """A copy of the tiny run with a second checkpoint (step 5): step 4's parameters x 0.5 + 0.25."""
  work = tmp_path_factory.mktemp("avg") / "run"
  shutil.copytree(tiny_workdir, work, ignore=shutil.ignore_patterns("eval", ".moe_asr.lock"))
  ckpt = work / "checkpoints"
  cfg = score.workdir_config(work)
  run = runtime.build_run(cfg, work, for_training=False)
  assert run.start_step == 4
  state = run.state
  state["model"] = jax.tree.map(
    lambda x: x * 0.5 + 0.25 if jax.numpy.issubdtype(x.dtype, jax.numpy.floating) else x,
    state["model"],
  )
  run.checkpointer.save(
    5,
    state,
    tokenizer=checkpoint_lib.read_tokenizer(ckpt, 4),
    config=checkpoint_lib.read_config(ckpt, 4),
    force=True,
  )
  run.checkpointer.close()
  return work


def test_average_last_one_is_the_checkpoint_and_two_the_mean(two_step_workdir):
  cfg = score.workdir_config(two_step_workdir)
  plain = runtime.build_run(cfg, two_step_workdir, for_training=False)
  assert plain.start_step == 5
  p5 = _params(plain)
  assert averaging.average_last(plain, 1) == [5]
  for name, value in _params(plain).items():
    np.testing.assert_array_equal(value, p5[name], err_msg=name)
  plain.checkpointer.close()

  at4 = runtime.build_run(cfg, two_step_workdir, for_training=False, step=4)
  p4 = _params(at4)
  assert averaging.average_last(at4, 1, step=4) == [4]  # Up to --step.
  at4.checkpointer.close()

  run = runtime.build_run(cfg, two_step_workdir, for_training=False)
  assert averaging.average_last(run, 2) == [4, 5]
  averaged = _params(run)
  floats = 0
  for name, value in averaged.items():
    if np.issubdtype(value.dtype, np.floating):
      floats += 1
      # By hand: (a + b) / 2 in float32; the averaging sums in float64, so one rounding apart.
      expected = (p4[name] + p5[name]) / np.float32(2)
      np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-7, err_msg=name)
      # And it is neither checkpoint (every step-5 float differs from step 4 by 0.5 x + 0.25).
      assert not np.array_equal(value, p5[name]) or np.all(p4[name] == 0.5)
    else:
      np.testing.assert_array_equal(value, p5[name])
  assert floats > 10
  run.checkpointer.close()


def test_eval_reports_the_averaged_steps(two_step_workdir, tmp_path):
  report = score.evaluate_workdir(
    two_step_workdir,
    splits=("test",),
    overrides=["eval.max_batches=1", "eval.plots=False", "eval.bootstrap_samples=10"],
    out_dir=tmp_path / "eval",
    average_last=2,
  )
  assert report["model"]["averaged_steps"] == [4, 5]
  assert report["model"]["step"] == 5
  assert (tmp_path / "eval" / "hypotheses" / "test.jsonl").exists()
