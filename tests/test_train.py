"""The trainer end to end, through its command lines.

A tiny run learns; meshes and process counts agree; a killed run resumes exactly; a SIGTERM
saves; a checkpoint moves from 8 devices to 1; non-finite steps are skipped or stop the run;
the Flax-examples entry point trains.

Every run is a subprocess on the tiny corpus with one bucket shape, so each compiles the step
once. The runs share a persistent XLA compilation cache (`config.compilation_cache`) in a
temporary directory, so a run on a mesh compiled before skips most of its start-up. The
reference run on 8 devices (mesh data=4 x expert=2) serves several tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO, TEST_XLA_FLAGS

from moe_asr import runtime
from moe_asr.data import pipeline as pipeline_lib
from moe_asr.evaluation import score
from moe_asr.training import checkpoint as checkpoint_lib
from moe_asr.training import state as state_lib

pytestmark = pytest.mark.slow

STEPS = 30  # Length of the 8-device reference run.
SHORT = 5  # Steps of the runs compared with its beginning.
# Runs stopped from outside are this long. The learning-rate warm-up (set to LONG steps)
# outlasts every run here, so a step's learning rate does not depend on train.steps up to LONG:
# runs of different lengths take identical steps and compile the identical step function.
LONG = 200
PEAK_LR = 4e-3  # Reached at step LONG: 6e-4 at step 30, where the tiny model learns fast.
# One bucket: every train step has one shape. 84 of the tiny corpus's 96 train utterances are
# at most 3 s long (the rest are skipped), 10 batches an epoch.
BUCKET_SECONDS = 3.0
BUCKETS = f"(({BUCKET_SECONDS},8),)"
MESH_8 = "(4,1,2,1)"  # data=4 x expert=2 over the 8 devices.
RTOL_MESH = 1e-5  # float32 losses on other meshes or process counts (observed: ~1e-7).
TIMEOUT = 900  # Seconds per subprocess: generous, for a busy 2-core machine.
_RESUMED = re.compile(r"Resumed from \S+ at step (\d+)")

# Restores a workdir's newest checkpoint with build_run (on this process's devices), saves its
# state as arrays, then runs `moe-asr eval` in the same process.
_RESTORE_AND_EVAL = """
import sys
import jax
import numpy as np
from moe_asr import cli, runtime
from moe_asr.evaluation import score
from moe_asr.training import state as state_lib

workdir, arrays_path, *overrides = sys.argv[1:]
run = runtime.build_run(score.workdir_config(workdir, overrides), workdir, for_training=False)
leaves = jax.tree_util.tree_leaves_with_path(run.state)
np.savez(arrays_path, **{state_lib.path_name(p): np.asarray(x) for p, x in leaves})
run.checkpointer.close()
sys.exit(cli.main(["eval", "--workdir", workdir, *["--config." + o for o in overrides],
                   "--split", "validation"]))
"""

# Trains the tiny preset with float audio in every batch (one step executable) and the
# NAN_CALL-th batch all NaN; writes {"summary": ...} or {"error": NonFiniteError text}.
_NAN_RUN = """
import json
import sys
import numpy as np
from moe_asr import config_lib
from moe_asr.data import pipeline
from moe_asr.training import train

workdir, nan_call, result_path, *overrides = sys.argv[1:]
original = pipeline._LoadBatch.__call__
calls = 0

def load_float_audio(self, planned):
  global calls
  batch = original(self, planned)
  calls += 1
  batch["audio"] = batch["audio"].astype(np.float32) / 32768  # What the model does to int16.
  if calls == int(nan_call):
    batch["audio"][:] = np.nan
  return batch

pipeline._LoadBatch.__call__ = load_float_audio
cfg = config_lib.load_config("tiny", overrides)
try:
  result = {"summary": train.train_and_evaluate(cfg, workdir)}
except train.NonFiniteError as e:
  result = {"error": str(e)}
with open(result_path, "w") as f:
  json.dump(result, f, default=float)
"""


# ----------------------------------------------------------------------------- helpers


@dataclasses.dataclass
class Runs:
  """Where this module's runs go and what they share."""

  data_dir: pathlib.Path
  cache_dir: pathlib.Path
  root: pathlib.Path

  def env(self, devices: int) -> dict[str, str]:
    """The environment of a run (of each process of a run) on `devices` fake CPU devices."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOE_ASR_")}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"
    return env

  def settings(self, steps: int, **changes) -> list[str]:
    """`--config.*` overrides of a run: one bucket, every step logged, no validation."""
    values = {
      "data.data_dir": self.data_dir,
      "data.buckets": BUCKETS,
      "data.eval_splits": "()",
      "mesh.shape": MESH_8,
      "train.steps": steps,
      "train.warmup_steps": LONG,
      "train.learning_rate": PEAK_LR,
      "train.log_every": 1,
      "train.eval_every": 0,
      "train.checkpoint_every": 1000,
      "compilation_cache": self.cache_dir,
    }
    values.update({k.replace("__", "."): v for k, v in changes.items()})
    return [f"--config.{k}={v}" for k, v in values.items()]


def _train_cmd(workdir: pathlib.Path, settings: list[str]) -> list[str]:
  """`moe-asr train` of the tiny preset in `workdir`."""
  cli = [sys.executable, "-m", "moe_asr.cli", "train", "--config", "tiny"]
  return [*cli, "--workdir", str(workdir), *settings]


def _start(cmd: list[str], env: dict[str, str], log: pathlib.Path) -> subprocess.Popen:
  """Starts `cmd` in the repository with stdout and stderr going to `log`."""
  with log.open("w") as f:
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def _finish(proc: subprocess.Popen, log: pathlib.Path) -> tuple[int, str]:
  """Waits for `proc` (killing it after TIMEOUT); returns its exit code and output."""
  try:
    proc.wait(TIMEOUT)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
  return proc.returncode, log.read_text()


def _run(cmd: list[str], env: dict[str, str], log: pathlib.Path) -> tuple[int, str]:
  return _finish(_start(cmd, env, log), log)


def _metrics(workdir: pathlib.Path) -> list[dict]:
  """The complete lines of W/metrics.jsonl (a line being written is left out)."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  lines = path.read_text().split("\n")[:-1]  # After the last newline: not yet complete.
  return [json.loads(line) for line in lines if line.strip()]


def _losses(workdir: pathlib.Path) -> dict[int, float]:
  """{step: train/loss}; each step must be logged exactly once."""
  rows = [m for m in _metrics(workdir) if "train/loss" in m]
  steps = [m["step"] for m in rows]
  assert len(steps) == len(set(steps)), f"{workdir}/metrics.jsonl repeats steps: {steps}"
  return {m["step"]: m["train/loss"] for m in rows}


def _complete_steps(workdir: pathlib.Path) -> list[int]:
  """Finalized checkpoint steps (orbax renames a step's directory to its number when done)."""
  ckpt = workdir / "checkpoints"
  return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []


def _wait_until(ready, proc: subprocess.Popen, log: pathlib.Path, what: str) -> None:
  deadline = time.monotonic() + TIMEOUT
  while not ready():
    assert proc.poll() is None, f"the run ended before {what}:\n{log.read_text()[-3000:]}"
    assert time.monotonic() < deadline, f"no {what} after {TIMEOUT} s"
    time.sleep(0.05)


def _saved_state(workdir: pathlib.Path, step: int) -> dict[str, np.ndarray]:
  """{path: array} of a checkpoint step's train state, read as saved (no target)."""
  tree = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
  return {
    state_lib.path_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
  }


def _stop(proc: subprocess.Popen) -> None:
  """Kills `proc` if a failed test left it running."""
  if proc.poll() is None:
    proc.kill()
    proc.wait()


# ----------------------------------------------------------------------------- shared runs


@pytest.fixture(scope="module")
def runs(tiny_corpus, tmp_path_factory) -> Runs:
  data_dir, _, _ = tiny_corpus
  return Runs(data_dir, tmp_path_factory.mktemp("jax_cache"), tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def reference(runs):
  """The 8-device reference run and a 1-device run, side by side.

  The reference is `moe-asr train` for STEPS steps; the 1-device run is SHORT steps of
  `python -m moe_asr.main`. Their meshes differ, so they share no compiled step and may as well
  compile at the same time.
  """
  w8, w1 = runs.root / "ref8", runs.root / "ref1"
  log8, log1 = runs.root / "ref8.log", runs.root / "ref1.log"
  proc8 = _start(_train_cmd(w8, runs.settings(STEPS)), runs.env(8), log8)
  main_cmd = [sys.executable, "-m", "moe_asr.main", "--config=tiny", f"--workdir={w1}"]
  settings1 = runs.settings(SHORT, mesh__shape="(-1,1,1,1)", train__profile=True)
  proc1 = _start(main_cmd + settings1, runs.env(1), log1)
  rc1, out1 = _finish(proc1, log1)
  rc8, out8 = _finish(proc8, log8)
  return dict(w8=w8, rc8=rc8, out8=out8, w1=w1, rc1=rc1, out1=out1)


@pytest.fixture(scope="module")
def ref8(reference) -> pathlib.Path:
  assert reference["rc8"] == 0, reference["out8"][-5000:]
  return reference["w8"]


@pytest.fixture(scope="module")
def ref_losses(ref8) -> dict[int, float]:
  return _losses(ref8)


# ----------------------------------------------------------------------------- tests


def test_a_tiny_run_learns_with_one_compile_per_bucket(reference, ref8, ref_losses):
  assert sorted(ref_losses) == list(range(1, STEPS + 1))
  first = np.mean([ref_losses[s] for s in range(1, 6)])
  last = np.mean([ref_losses[s] for s in range(STEPS - 4, STEPS + 1)])
  # Observed: about 15.1 -> 12.7.
  assert last < first - 1.0, (first, last)
  config = json.loads((ref8 / "config.json").read_text())
  assert config["train"]["steps"] == STEPS and config["mesh"]["shape"] == [4, 1, 2, 1]
  # One bucket shape: one compiled train step, counted in every logged step and the summary.
  assert {m["train/compiles"] for m in _metrics(ref8) if "train/loss" in m} == {1.0}
  assert "compiles=1" in reference["out8"]
  assert _complete_steps(ref8) == [STEPS]  # checkpoint_every=1000: the final save only.


def test_flax_style_entry_point_trains(reference):
  assert reference["rc1"] == 0, reference["out1"][-5000:]
  w1 = reference["w1"]
  assert (w1 / "config.json").exists()
  assert sorted(_losses(w1)) == list(range(1, SHORT + 1))
  assert _complete_steps(w1) == [SHORT]
  # train.profile: a trace of steps 3 to SHORT (5) in TensorBoard's profile folder.
  (trace,) = (w1 / "plugins" / "profile").glob("*/*.xplane.pb")
  assert trace.stat().st_size > 0


def test_8_devices_data_by_expert_match_1_device(reference, ref_losses):
  assert reference["rc1"] == 0, reference["out1"][-5000:]
  one = _losses(reference["w1"])
  steps = range(1, SHORT + 1)
  np.testing.assert_allclose(
    [ref_losses[s] for s in steps], [one[s] for s in steps], rtol=RTOL_MESH, atol=0
  )


def test_2_processes_match_1_process(runs, ref_losses, tmp_path):
  workdir = runs.root / "pod"
  env = runs.env(4)  # Devices a process (the launcher keeps XLA_FLAGS when they are set).
  env.update(PYTHON=sys.executable, LOG_DIR=str(tmp_path / "logs"))
  cmd = ["bash", str(REPO / "launch" / "local_pod.sh"), "2", "train", "--config"]
  cmd += ["tiny", "--workdir", str(workdir), *runs.settings(SHORT)]
  rc, out = _run(cmd, env, tmp_path / "pod.log")
  assert rc == 0, out[-5000:]
  logs = [(tmp_path / "logs" / f"process_{i}.log").read_text() for i in range(2)]
  assert "process 1 of 2" in logs[1] and "4 local / 8 global devices" in logs[1], logs[1][-3000:]
  # Only process 0 writes metrics.jsonl: each step appears once (_losses checks it).
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, SHORT + 1))
  steps = range(1, SHORT + 1)
  np.testing.assert_allclose(
    [losses[s] for s in steps], [ref_losses[s] for s in steps], rtol=RTOL_MESH, atol=0
  )


def test_a_killed_run_resumes_exactly(runs, ref_losses, tmp_path):
  workdir = runs.root / "killed"
  # The reference run's steps (see LONG) with a checkpoint every 4; saves do not change a run.
  cmd = _train_cmd(workdir, runs.settings(LONG, train__checkpoint_every=4))
  proc = _start(cmd, runs.env(8), tmp_path / "first.log")
  try:
    _wait_until(
      lambda: max(_complete_steps(workdir), default=0) >= 8, proc, tmp_path / "first.log", "step 8"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
  finally:
    _stop(proc)
  assert proc.returncode == -signal.SIGKILL, "the first run finished before it was killed"
  resume = max(_complete_steps(workdir))  # 8, or a later step saved before the kill landed.
  end = resume + 4
  assert resume >= 8 and end <= STEPS

  cmd = _train_cmd(workdir, runs.settings(end, train__checkpoint_every=4))
  rc, out = _run(cmd, runs.env(8), tmp_path / "second.log")
  assert rc == 0, out[-5000:]
  assert [int(s) for s in _RESUMED.findall(out)] == [resume], out[-5000:]
  losses = _losses(workdir)  # Lines after the checkpoint step were rewritten by the restart.
  assert sorted(losses) == list(range(1, end + 1))
  after = range(resume + 1, end + 1)
  # Bitwise: same executable, same data position, same step-keyed randomness.
  assert [losses[s] for s in after] == [ref_losses[s] for s in after]


def test_sigterm_saves_a_checkpoint_that_resumes(runs, ref_losses, tmp_path):
  workdir = runs.root / "sigterm"
  cmd = _train_cmd(workdir, runs.settings(LONG))
  proc = _start(cmd, runs.env(8), tmp_path / "first.log")
  try:
    _wait_until(lambda: len(_losses(workdir)) >= 3, proc, tmp_path / "first.log", "3 steps")
    proc.send_signal(signal.SIGTERM)
    rc, out = _finish(proc, tmp_path / "first.log")
  finally:
    _stop(proc)
  assert rc == 0, out[-5000:]
  saved = _complete_steps(workdir)
  assert len(saved) == 1 and 3 <= saved[0] < LONG, saved  # Only the save forced by the signal.
  stopped = saved[0]
  assert max(_losses(workdir)) == stopped  # It stopped on the step it saved.
  assert stopped + 2 <= STEPS

  rc, out = _run(_train_cmd(workdir, runs.settings(stopped + 2)), runs.env(8), tmp_path / "2.log")
  assert rc == 0, out[-5000:]
  assert [int(s) for s in _RESUMED.findall(out)] == [stopped], out[-5000:]
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, stopped + 3))
  after = [stopped + 1, stopped + 2]
  assert [losses[s] for s in after] == [ref_losses[s] for s in after]
  assert _complete_steps(workdir)[-1] == stopped + 2


def test_a_checkpoint_from_8_devices_restores_and_evaluates_on_1(runs, ref8, tmp_path):
  saved = _saved_state(ref8, STEPS)
  arrays = tmp_path / "restored.npz"
  # The 8-device mesh does not fit 1 device, so the mesh is overridden; a list, as the saved
  # config comes back from JSON, where tuples are lists.
  cmd = [sys.executable, "-c", _RESTORE_AND_EVAL, str(ref8), str(arrays), "mesh.shape=[-1,1,1,1]"]
  rc, out = _run(cmd, runs.env(1), tmp_path / "eval.log")
  assert rc == 0, out[-5000:]

  # Every leaf of the state (parameters, optimizer moments, counters) comes back bit for bit.
  with np.load(arrays) as restored:
    assert sorted(restored.files) == sorted(saved)
    for name, value in saved.items():
      np.testing.assert_array_equal(restored[name], value, err_msg=name, strict=True)

  report = json.loads((ref8 / "eval" / "report.json").read_text())
  assert {"model", "decode", "splits"} <= set(report)
  assert report["devices"] == 1
  assert report["model"]["step"] == STEPS
  assert report["model"]["params_total"] >= report["model"]["params_active"] > 0
  assert list(report["splits"]) == ["validation"]
  split = report["splits"]["validation"]
  summary_keys = {"n", "wer", "cer", "mer", "lid_acc", "intent_acc", "slot_f1", "hours"}
  assert summary_keys | {"rtf", "by_language", "by_speaker", "ci"} <= set(split)
  # Every validation utterance is scored: those longer than the training bucket get an
  # evaluation bucket of their own (and the split has some).
  source = pipeline_lib.data_source("moe_asr_synth/tiny", "validation", data_dir=str(runs.data_dir))
  fits = [len(source[i]["audio"]) <= BUCKET_SECONDS * 16000 for i in range(len(source))]
  assert split["n"] == len(source) > sum(fits), (split["n"], sum(fits))
  assert split["cer"] is not None and split["wer"] is not None  # Labelled text: rates exist.


def test_a_staged_recipe_freezes_and_scales_learning_rates_and_resumes(runs, ref8, tmp_path):
  # Parameter groups (a frozen encoder, a decoder at half the learning rate) give the
  # optimizer state placeholders for the groups a parameter is not in; the state must still
  # shard, checkpoint and restore.
  w = tmp_path / "staged"
  changes = dict(
    mesh__shape="(-1,1,1,1)",
    init_from=str(ref8 / "checkpoints"),
    train__lr_multipliers='(("encoder/.*", 0.0), ("decoder/.*", 0.5))',
  )
  rc, out = _run(_train_cmd(w, runs.settings(2, **changes)), runs.env(1), tmp_path / "a.log")
  assert rc == 0, out[-5000:]
  assert "'lr=0.5'" in out and "'frozen'" in out  # The groups' sizes are logged.
  rc, out = _run(_train_cmd(w, runs.settings(4, **changes)), runs.env(1), tmp_path / "b.log")
  assert rc == 0, out[-5000:]
  assert _RESUMED.search(out).group(1) == "2"
  assert sorted(_losses(w)) == [1, 2, 3, 4]

  source, staged = _saved_state(ref8, STEPS), _saved_state(w, 4)
  encoder = [k for k in staged if k.startswith("model/encoder/")]
  decoder = [k for k in staged if k.startswith("model/decoder/")]
  assert encoder and decoder
  for name in encoder:  # Frozen: exactly the parameters it started from.
    np.testing.assert_array_equal(staged[name], source[name], err_msg=name)
  assert any(not np.array_equal(staged[k], source[k]) for k in decoder)


_NAN_STEP = 3  # The third batch is all NaN (prefetch 0, one thread: batches load in order).


def _nan_run(runs: Runs, workdir: pathlib.Path, logs: pathlib.Path, policy: str) -> dict:
  """Trains SHORT steps with a checkpoint every step and batch _NAN_STEP all NaN.

  Returns:
    {"summary": train_and_evaluate's summary} or {"error": the NonFiniteError's message}.
  """
  settings = runs.settings(
    SHORT,
    train__nonfinite=policy,
    train__checkpoint_every=1,
    train__keep_checkpoints=SHORT,
    data__num_threads=1,
    data__prefetch=0,
  )
  result = logs / f"{policy}.json"
  cmd = [sys.executable, "-c", _NAN_RUN, str(workdir), str(_NAN_STEP), str(result), *settings]
  rc, out = _run(cmd, runs.env(8), logs / f"{policy}.log")
  assert rc == 0, out[-5000:]
  return json.loads(result.read_text())


def test_a_nonfinite_step_is_skipped(runs, tmp_path):
  workdir = runs.root / "nan_skip"
  result = _nan_run(runs, workdir, tmp_path, "skip")
  assert "summary" in result, result
  rows = {m["step"]: m for m in _metrics(workdir) if "train/loss" in m}
  assert sorted(rows) == list(range(1, SHORT + 1))
  for step, m in rows.items():
    bad = step == _NAN_STEP
    assert m["train/finite"] == (0.0 if bad else 1.0), (step, m)
    assert m["train/nonfinite_steps"] == (1.0 if bad else 0.0), (step, m)
    assert (m["train/loss"] is None) == bad, (step, m)  # Non-finite values are logged as null.

  assert _complete_steps(workdir) == list(range(1, SHORT + 1))
  states = {s: _saved_state(workdir, s) for s in range(_NAN_STEP - 1, SHORT + 1)}
  for s, state in states.items():
    assert checkpoint_lib.nonfinite_leaves(state) == [], s
  before, skipped, after = (states[s] for s in (_NAN_STEP - 1, _NAN_STEP, _NAN_STEP + 1))
  counters = {"step", "nonfinite", "nonfinite_run"}
  # The skipped step changed nothing but the counters: parameters and optimizer state are equal.
  for name in set(before) - counters:
    np.testing.assert_array_equal(skipped[name], before[name], err_msg=name, strict=True)
  assert (int(skipped["step"]), int(skipped["nonfinite"]), int(skipped["nonfinite_run"])) == (
    _NAN_STEP,
    1,
    1,
  )
  # The next step trains again; the count of skipped steps stays, the run of them resets.
  changed = [
    n for n in before if n.startswith("model/") and not np.array_equal(after[n], before[n])
  ]
  assert changed, "the step after the skipped one did not update the parameters"
  assert (int(after["nonfinite"]), int(after["nonfinite_run"])) == (1, 0)
  assert int(states[SHORT]["nonfinite"]) == 1


@pytest.fixture(scope="module")
def nan_stop(runs, tmp_path_factory) -> tuple[pathlib.Path, dict]:
  """A run with train.nonfinite="stop" whose batch _NAN_STEP is all NaN."""
  workdir = runs.root / "nan_stop"
  return workdir, _nan_run(runs, workdir, tmp_path_factory.mktemp("nan_stop"), "stop")


def test_a_nonfinite_step_stops_the_run_when_configured(nan_stop):
  workdir, result = nan_stop
  assert "error" in result, result
  assert result["error"].startswith(f"Step {_NAN_STEP}:"), result["error"]
  assert "nonfinite='stop'" in result["error"]
  assert sorted(_losses(workdir)) == list(range(1, _NAN_STEP))
  # The newest complete checkpoint is finite and the trainer restores it.
  latest = _complete_steps(workdir)[-1]
  assert latest < _NAN_STEP
  # No compilation cache here: it is a process-wide setting and this is the test process.
  cfg = score.workdir_config(workdir, ["compilation_cache="])
  run = runtime.build_run(cfg, workdir, for_training=False)
  try:
    assert run.start_step == latest
    assert checkpoint_lib.nonfinite_leaves(run.state) == []
    assert int(run.state["nonfinite"][...]) == 0
  finally:
    run.checkpointer.close()


def test_the_save_in_flight_when_a_run_stops_is_completed(nan_stop):
  workdir, _ = nan_stop
  ckpt = workdir / "checkpoints"
  assert _complete_steps(workdir)[-1] == _NAN_STEP - 1
  assert not [p.name for p in ckpt.iterdir() if "orbax-checkpoint-tmp" in p.name]
