"""Nothing silently wrong, nothing lost: a mismatched tokenizer, a busy workdir, a damaged
checkpoint, a terminated compile, a missing dataset and bad command lines each stop or warn
with a message saying what and what to do.

The command-line runs are subprocesses on copies of the tiny trained workdir (conftest), so
none of them writes into the shared one.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, TEST_XLA_FLAGS, TINY_RUN, run_cli
from sentencepiece import sentencepiece_model_pb2

from moe_asr import cli, config_lib, runtime
from moe_asr.evaluation import score
from moe_asr.training import checkpoint as checkpoint_lib
from moe_asr.training import inputs, run_lock, train

TIMEOUT = 900  # Seconds a subprocess may take on a busy 2-core machine.


def _copy(workdir: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  shutil.copytree(workdir, dst, ignore=shutil.ignore_patterns("eval"))
  return dst


def _swap_two_letters(model: bytes) -> bytes:
  """The same SentencePiece model with the pieces of two letters exchanged (same size)."""
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(model)
  letters = {p.piece: i for i, p in enumerate(proto.pieces) if p.piece in ("a", "e")}
  assert len(letters) == 2, "the tiny tokenizer has the pieces 'a' and 'e'"
  proto.pieces[letters["a"]].piece, proto.pieces[letters["e"]].piece = "e", "a"
  return proto.SerializeToString()


def _train_args(workdir: pathlib.Path, data_dir: pathlib.Path, *more: str) -> list[str]:
  """`moe-asr train` of the tiny workdir's settings (conftest.tiny_workdir)."""
  return [
    "train",
    "--config",
    str(REPO / "moe_asr" / "configs" / "tiny.py"),
    "--workdir",
    str(workdir),
    f"--config.data.data_dir={data_dir}",
    *(f"--config.{o}" for o in TINY_RUN),
    *more,
  ]


@pytest.fixture(scope="module")
def wav(tiny_workdir, tmp_path_factory) -> str:
  """A test utterance of the tiny corpus as a 16 kHz wav file (under the 3 s bucket)."""
  source = inputs.split_source(score.workdir_config(tiny_workdir), "test")
  for i in range(len(source)):
    wave = np.asarray(source[i]["audio"], np.int16)
    if 16000 < len(wave) < 3 * 16000:
      path = tmp_path_factory.mktemp("audio") / "utterance.wav"
      sf.write(path, wave, 16000, subtype="PCM_16")
      return str(path)
  raise AssertionError("no test utterance between 1 and 3 s")


# ----------------------------------------------------------------------------- tokenizer


@pytest.mark.slow
def test_a_swapped_letter_tokenizer_is_refused_by_eval_transcribe_and_resume(
  tiny_workdir, tiny_corpus, wav, tmp_path
):
  data_dir, _, _ = tiny_corpus
  workdir = _copy(tiny_workdir, tmp_path / "run")
  own = (workdir / "tokenizer.model").read_bytes()
  swapped = _swap_two_letters(own)
  assert len(swapped) == len(own) and swapped != own
  (workdir / "tokenizer.model").write_bytes(swapped)
  saved = checkpoint_lib.saved_tokenizer_id(workdir / "checkpoints")
  assert saved["sha256"] == checkpoint_lib.tokenizer_id(own)["sha256"]
  ours = checkpoint_lib.tokenizer_id(swapped)

  commands = {
    "eval": ["eval", "--workdir", str(workdir)],
    "transcribe": ["transcribe", "--workdir", str(workdir), wav],
    "resume": _train_args(workdir, data_dir, "--config.train.steps=6"),
  }
  for name, args in commands.items():
    proc = run_cli(*args, timeout=TIMEOUT)
    assert proc.returncode == 2, f"{name}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("moe-asr ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    line = errors[0]
    assert "error: The tokenizer does not match the checkpoint" in line, line
    # Both sides named: digest, size (same size: 600 pieces each) and where each comes from.
    assert f"sha256 {saved['sha256'][:12]}, 600 pieces, {len(own)} bytes" in line, line
    assert f"sha256 {ours['sha256'][:12]}, 600 pieces, {len(swapped)} bytes" in line, line
    assert f"from {workdir / 'tokenizer.model'}" in line and "checkpoint step 4" in line, line
    assert "Traceback" not in proc.stderr
  assert not (workdir / "eval").exists()
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4"]  # Nothing saved.

  # With its own tokenizer back, the workdir decodes.
  (workdir / "tokenizer.model").write_bytes(own)
  proc = run_cli("transcribe", "--workdir", str(workdir), wav, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "text" in json.loads(proc.stdout.splitlines()[-1])


# ----------------------------------------------------------------------------- workdir lock


_HOLD = """
import sys, time
from moe_asr.training import run_lock
with run_lock.WorkdirLock(sys.argv[1]):
  print("locked", flush=True)
  time.sleep(600)
"""


@pytest.mark.slow
def test_a_second_train_on_a_busy_workdir_stops_at_once_naming_the_holder(tiny_corpus, tmp_path):
  data_dir, _, _ = tiny_corpus
  workdir = tmp_path / "busy"
  holder = subprocess.Popen(
    [sys.executable, "-c", _HOLD, str(workdir)], stdout=subprocess.PIPE, text=True, cwd=REPO
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    start = time.monotonic()
    proc = run_cli(*_train_args(workdir, data_dir, "--config.train.steps=2"), timeout=TIMEOUT)
    seconds = time.monotonic() - start
  finally:
    holder.kill()
    holder.wait()
  assert proc.returncode == 2, proc.stderr[-3000:]
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith(f"moe-asr train: error: Workdir {workdir} is in use by another run: "), (
    line
  )
  assert f"pid {holder.pid} on host {socket.gethostname()}" in line, line
  # At once: before the model is built or anything is written (the interpreter and JAX's
  # imports are most of it; a run's compile alone takes longer on this machine).
  assert seconds < 60, seconds
  assert sorted(p.name for p in workdir.iterdir()) == [".moe_asr.lock"]

  # The holder was killed: its lock file names it still, and the next run takes it over.
  assert json.loads((workdir / ".moe_asr.lock").read_text())["pid"] == holder.pid
  with run_lock.WorkdirLock(workdir) as lock:
    owner = json.loads(lock.path.read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    with pytest.raises(run_lock.WorkdirBusyError, match=f"pid {os.getpid()} on host"):
      run_lock.WorkdirLock(workdir).acquire()
    # Another process of a multi-process run locks its own file.
    with run_lock.WorkdirLock(workdir, process_index=1) as other:
      assert other.path.name == ".moe_asr.lock.1"
  assert (workdir / ".moe_asr.lock").read_text() == ""  # Released cleanly.


def test_a_stale_lock_is_taken_over_with_a_warning_naming_it(tmp_path, caplog):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  stale = {"host": socket.gethostname(), "pid": dead.pid, "started": "2026-01-01T00:00:00"}
  (tmp_path / ".moe_asr.lock").write_text(json.dumps(stale))
  with (
    caplog.at_level("WARNING", logger="moe_asr.training.run_lock"),
    run_lock.WorkdirLock(tmp_path),
  ):
    pass
  assert f"left by pid {dead.pid} on host {socket.gethostname()}" in caplog.text
  assert "no longer running" in caplog.text


# ----------------------------------------------------------------------------- damaged steps


def _zero(step_dir: pathlib.Path) -> None:
  for path in step_dir.rglob("*"):
    if path.is_file():
      path.write_bytes(b"\0" * path.stat().st_size)


@pytest.mark.slow
def test_a_zeroed_newest_step_eval_and_transcribe_use_the_previous_one_and_warn(
  tiny_workdir, wav, tmp_path
):
  workdir = _copy(tiny_workdir, tmp_path / "run")
  ckpt = workdir / "checkpoints"
  shutil.copytree(ckpt / "4", ckpt / "5")  # A newer step (a copy of step 4's files)...
  _zero(ckpt / "5")  # ... whose files a failing disk zeroed.
  damaged = re.compile(rf"Checkpoint step 5 in {re.escape(str(ckpt))} is damaged")

  out = tmp_path / "eval"
  eval_args = ["eval", "--workdir", str(workdir), "--out", str(out), "--config.eval.plots=False"]
  proc = run_cli(*eval_args, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert damaged.search(proc.stderr), proc.stderr[-3000:]
  assert json.loads((out / "report.json").read_text())["model"]["step"] == 4

  proc = run_cli("transcribe", "--workdir", str(workdir), wav, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert damaged.search(proc.stderr), proc.stderr[-3000:]
  assert json.loads(proc.stdout.splitlines()[-1])["text"]

  # Asked for by number: that step, or an error naming it (one line, exit 2).
  proc = run_cli("transcribe", "--workdir", str(workdir), "--step", "5", wav, timeout=TIMEOUT)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert re.search(r"moe-asr transcribe: error: .*step 5 in ", proc.stderr), proc.stderr[-3000:]
  out4 = tmp_path / "eval4"
  proc = run_cli(*eval_args[:-3], "--out", str(out4), "--step", "4", timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not damaged.search(proc.stderr)
  assert json.loads((out4 / "report.json").read_text())["model"]["step"] == 4
  assert (ckpt / "5").is_dir()  # Readers leave the damaged step as it is.


# ----------------------------------------------------------------------------- SIGTERM


@pytest.mark.slow
def test_sigterm_during_compilation_stops_cleanly_without_a_checkpoint(tiny_corpus, tmp_path):
  data_dir, _, _ = tiny_corpus
  workdir = tmp_path / "run"
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=TEST_XLA_FLAGS)  # No cache: the compile is long.
  log = tmp_path / "train.log"
  cmd = [
    sys.executable,
    "-m",
    "moe_asr.cli",
    *_train_args(workdir, data_dir, "--config.train.steps=3"),
  ]
  cmd.append("-v")
  with log.open("w") as f:
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
  try:
    deadline = time.monotonic() + TIMEOUT
    while "Compiling the train step" not in log.read_text():
      assert proc.poll() is None, log.read_text()[-3000:]
      assert time.monotonic() < deadline
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(TIMEOUT)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  text = log.read_text()
  assert proc.returncode == 0, text[-3000:]
  assert "Termination signal while compiling: stopping at step 0 without a save" in text, text
  ckpt = workdir / "checkpoints"
  assert not ckpt.exists() or not list(ckpt.iterdir()), list(ckpt.iterdir())  # Nothing half.
  assert (workdir / ".moe_asr.lock").read_text() == ""


# ----------------------------------------------------------------------------- command line


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
  tiny = str(REPO / "moe_asr" / "configs" / "tiny.py")
  cases = {
    ("eval", "--workdir", str(tmp_path / "nope")): f"Workdir {tmp_path / 'nope'} does not exist",
    ("train", "--config", tiny, "--workdir", str(tmp_path), "--config.nosuch.x=1"): (
      "Unknown config section 'nosuch' in override nosuch.x=1; the config has "
    ),
    ("train", "--config", tiny, "--workdir", str(tmp_path), "--config.train.steps=True"): (
      "Override train.steps='True': expected int, got bool"
    ),
    ("train", "--config", tiny, "--workdir", str(tmp_path), "--config.train.steps=-5"): (
      "config.train.steps=-5 is out of range: it must be an integer >= 1"
    ),
  }
  for argv, message in cases.items():
    assert cli.main(list(argv)) == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"moe-asr {argv[0]}: error: {message}" + err[-1].split(message)[-1], err
    assert err[-1].endswith("(-v shows the traceback)") and "Traceback" not in "\n".join(err)
  assert not (tmp_path / "config.json").exists()

  # -v (before the subcommand, or the subcommand's own) shows the traceback.
  assert cli.main(["-v", *next(iter(cases))]) == 2
  assert "Traceback (most recent call last)" in capsys.readouterr().err
  # The console script itself.
  proc = run_cli("train", "--config", tiny, "--workdir", str(tmp_path), "--config.nosuch.x=1")
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
    "moe-asr train: error: Unknown config section 'nosuch'"
  ), proc.stderr[-2000:]


@pytest.mark.parametrize(
  "override, message",
  [
    ("train.steps=True", "expected int, got bool"),
    ("train.log_every=0", "train.log_every=0 is out of range: it must be an integer >= 1"),
    ("train.learning_rate=-1.0", "train.learning_rate=-1.0 is out of range"),
    ("train.b2=1.0", r"train.b2=1.0 is out of range: it must be a number in \[0, 1\)"),
    ("train.nonfinite=maybe", "must be one of 'skip', 'stop'"),
    ("data.buckets=((5.0,8),(3.0,8))", "longest last"),
    ("data.buckets=((3.0,0),)", "batch_size >= 1"),
    ("model.encoder.num_layers.x=1", "model.encoder.num_layers is a setting, not a section"),
    ("decode.beam=0", "decode.beam=0 is out of range"),
    ("eval.long_policy=cut", "must be one of 'window', 'bucket'"),
  ],
)
def test_overrides_are_type_and_range_checked(override, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.load_config(REPO / "moe_asr" / "configs" / "tiny.py", [override])


def test_in_range_overrides_and_every_shipped_config_pass():
  cfg = config_lib.load_config(
    REPO / "moe_asr" / "configs" / "tiny.py",
    ["train.steps=1", "train.eval_every=0", "train.b1=0.0", "decode.lm_weights.en=0.3"],
  )
  assert (cfg.train.steps, cfg.train.eval_every, cfg.decode.lm_weights.en) == (1, 0, 0.3)
  for path in sorted((REPO / "moe_asr" / "configs").glob("*.py")):
    if path.name != "__init__.py":
      config_lib.validate(config_lib.load_config(path))


# ----------------------------------------------------------------------------- paths


@pytest.mark.slow
def test_recorded_paths_are_absolute_and_a_missing_dataset_is_named(
  tiny_workdir, tmp_path, monkeypatch
):
  monkeypatch.chdir(tmp_path)
  cfg = config_lib.load_config(
    REPO / "moe_asr" / "configs" / "tiny.py",
    ["data.data_dir=data", "init_from=runs/a", "resume=gs://bucket/run"],
  )
  resolved = train.absolute_paths(cfg)
  assert resolved.data.data_dir == str(tmp_path / "data")
  assert resolved.init_from == str(tmp_path / "runs" / "a")
  assert resolved.resume == "gs://bucket/run" and resolved.data.tokenizer == ""
  assert cfg.data.data_dir == "data"  # The caller's config is left as it was.

  # The tiny workdir recorded its data_dir absolute; evaluated against an empty data_dir the
  # dataset is named as missing (TFDS's own error blamed the TFRECORD file format).
  assert os.path.isabs(score.workdir_config(tiny_workdir).data.data_dir)
  (tmp_path / "empty").mkdir()
  proc = run_cli(
    "eval", "--workdir", str(tiny_workdir), f"--config.data.data_dir={tmp_path / 'empty'}",
    "--out", str(tmp_path / "eval"), timeout=TIMEOUT,
  )  # fmt: skip
  assert proc.returncode == 2, proc.stderr[-3000:]
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith("moe-asr eval: error: Dataset moe_asr_synth/tiny is missing"), line
  assert str(tmp_path / "empty") in line and "TFRECORD" not in proc.stderr


# ----------------------------------------------------------------------------- peers

# Joins a 2-process job with a short peer timeout (JAX's own heartbeat far longer), then runs
# a cross-process collective every 0.2 s for two minutes.
_PEER = """
import time
import numpy as np
from jax.experimental import multihost_utils
from moe_asr.training import distributed
distributed.initialize(timeouts={"peer_timeout_s": 8, "heartbeat_timeout_s": 300})
multihost_utils.process_allgather(np.int32(1))
print("ready", flush=True)
start = time.monotonic()
while time.monotonic() - start < 120:
  multihost_utils.process_allgather(np.int32(1))
  time.sleep(0.2)
print("finished", flush=True)
"""
PEER_TIMEOUT_S = 8


@pytest.mark.slow
@pytest.mark.parametrize(
  "frozen, message",
  [
    (1, "process 1 of 2 has not been heard from for"),
    (0, "the coordination service of process 0 of 2 has not answered for"),
  ],
)
def test_a_frozen_peer_ends_the_run_within_the_timeout_naming_it(frozen, message, tmp_path):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = {k: v for k, v in os.environ.items() if not k.startswith("MOE_ASR_")}
  env.update(
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count=1 {TEST_XLA_FLAGS}",
    MOE_ASR_COORDINATOR=f"localhost:{port}",
    MOE_ASR_NUM_PROCESSES="2",
  )
  logs = [tmp_path / f"process_{i}.log" for i in range(2)]
  procs = []
  for i, log in enumerate(logs):
    with log.open("w") as f:
      procs.append(
        subprocess.Popen(
          [sys.executable, "-c", _PEER],
          stdout=f,
          stderr=subprocess.STDOUT,
          env={**env, "MOE_ASR_PROCESS_ID": str(i)},
          cwd=REPO,
        )
      )
  survivor = procs[1 - frozen]
  try:
    deadline = time.monotonic() + 300
    while not all("ready" in log.read_text() for log in logs):
      assert all(p.poll() is None for p in procs), [log.read_text()[-2000:] for log in logs]
      assert time.monotonic() < deadline, "the processes did not join"
      time.sleep(0.1)
    procs[frozen].send_signal(signal.SIGSTOP)
    start = time.monotonic()
    survivor.wait(120)
    seconds = time.monotonic() - start
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()  # SIGKILL ends a stopped process too.
      p.wait()
  text = logs[1 - frozen].read_text()
  assert survivor.returncode == 3, text[-3000:]
  assert message in text and f"Process {1 - frozen} stops (exit code 3)" in text, text[-3000:]
  assert "finished" not in text
  # Silence is counted from the peer's last answer, up to a poll (1.6 s) before the stop; the
  # report comes within the timeout and two polls, with slack for a busy machine.
  assert PEER_TIMEOUT_S - 2 <= seconds < PEER_TIMEOUT_S + 12, seconds


def test_init_from_refuses_a_source_trained_with_another_tokenizer_of_the_same_size(tmp_path):
  import types

  import jax.numpy as jnp

  model = b"a tokenizer model" * 8
  with checkpoint_lib.Checkpointer(tmp_path, async_save=False) as ckptr:
    ckptr.save(3, {"w": jnp.ones(2)}, tokenizer=model, tokenizer_source="/src/tokenizer.model")
  other = model.replace(b"a t", b"t a", 1)  # Same size, other pieces.
  run = types.SimpleNamespace(tokenizer_id=checkpoint_lib.tokenizer_id(other, "/new/tok.model"))
  with pytest.raises(checkpoint_lib.TokenizerMismatchError) as e:
    runtime._init_from(run, str(tmp_path))
  message = str(e.value)
  assert f"config.init_from={str(tmp_path)!r} (step 3) was trained with" in message, message
  assert "from /src/tokenizer.model" in message and "from /new/tok.model" in message, message


def test_an_older_runs_relative_data_dir_is_found_beside_its_workdir(tmp_path, monkeypatch):
  (tmp_path / "repo" / "data").mkdir(parents=True)
  workdir = tmp_path / "repo" / "runs" / "demo"
  workdir.mkdir(parents=True)
  monkeypatch.chdir(tmp_path)  # Elsewhere: "data" is not in the current directory.
  assert score._resolve_recorded_dir("data", workdir) == str(tmp_path / "repo" / "data")
  assert score._resolve_recorded_dir("nowhere", workdir) == str(tmp_path / "nowhere")
  assert score._resolve_recorded_dir("/abs/data", workdir) == "/abs/data"
  assert score._resolve_recorded_dir("gs://b/data", workdir) == "gs://b/data"
  (tmp_path / "data").mkdir()  # The current directory comes first.
  assert score._resolve_recorded_dir("data", workdir) == str(tmp_path / "data")
