"""Multi-process start-up: how a process finds its job, a real 2-process run, launch scripts."""

import json
import os
import shlex
import subprocess
import sys
import time

import pytest
from conftest import REPO, run_cli

from moe_asr.training import distributed

LAUNCH = REPO / "launch"
# Environment variables the launch scripts read; the tests set them explicitly.
_LAUNCH_SETTINGS = (
  *("XLA_FLAGS", "JAX_PLATFORMS", "PYTHON", "LOCAL_DEVICES", "LOG_DIR", "PORT"),
  *("PROJECT", "REPO_URL", "REF", "REMOTE_DIR"),
)


def _script_env(tmp_path, **extra: str) -> dict[str, str]:
  """The test process's environment without its XLA_FLAGS (8 devices) and launch settings.

  A `fake_bin` directory first on PATH holds `gcloud`, `srun` and `python3` stand-ins that
  leave a mark in `tmp_path/ran` when called, so a dry run that runs something is caught.
  """
  fake_bin = tmp_path / "fake_bin"
  fake_bin.mkdir(exist_ok=True)
  for name in ("gcloud", "srun", "python3"):
    tool = fake_bin / name
    tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "{tmp_path / "ran"}"\n')
    tool.chmod(0o755)
  env = {
    k: v
    for k, v in os.environ.items()
    if k not in _LAUNCH_SETTINGS and not k.startswith("MOE_ASR_")
  }
  env["PATH"] = f"{fake_bin}:{env['PATH']}"
  env.update(extra)
  return env


def _run_script(name: str, *args: str, env: dict[str, str], cwd, timeout: float = 120):
  return subprocess.run(
    ["bash", str(LAUNCH / name), *args],
    capture_output=True,
    text=True,
    env=env,
    cwd=cwd,
    timeout=timeout,
    check=False,
  )


# ----------------------------------------------------------------------------- planning


def test_plan_reads_the_local_pod_environment():
  env = {"MOE_ASR_COORDINATOR": "localhost:1234", "MOE_ASR_NUM_PROCESSES": "4"}
  plan = distributed._plan(None, None, None, {**env, "MOE_ASR_PROCESS_ID": "3"})
  assert (plan.kind, plan.coordinator_address, plan.num_processes, plan.process_id) == (
    "explicit",
    "localhost:1234",
    4,
    3,
  )
  # An argument wins over its environment variable.
  plan = distributed._plan("host:99", None, 1, {**env, "MOE_ASR_PROCESS_ID": "3"})
  assert (plan.coordinator_address, plan.num_processes, plan.process_id) == ("host:99", 4, 1)


@pytest.mark.parametrize(
  "env, message",
  [
    ({"MOE_ASR_COORDINATOR": "localhost:1234"}, "MOE_ASR_NUM_PROCESSES, MOE_ASR_PROCESS_ID"),
    (
      {"MOE_ASR_COORDINATOR": "h:1", "MOE_ASR_NUM_PROCESSES": "two", "MOE_ASR_PROCESS_ID": "0"},
      "MOE_ASR_NUM_PROCESSES must be an integer, got 'two'",
    ),
    (
      {"MOE_ASR_COORDINATOR": "h:1", "MOE_ASR_NUM_PROCESSES": "2", "MOE_ASR_PROCESS_ID": "2"},
      "process id 2 of 2",
    ),
    (
      {"MOE_ASR_COORDINATOR": "h", "MOE_ASR_NUM_PROCESSES": "2", "MOE_ASR_PROCESS_ID": "0"},
      "host:port, got 'h'",
    ),
    ({"MOE_ASR_DISTRIBUTED": "yes"}, "MOE_ASR_DISTRIBUTED must be 'auto' or 'off', got 'yes'"),
    ({"SLURM_NTASKS": "8x"}, "SLURM_NTASKS must be an integer"),
  ],
)
def test_plan_names_the_bad_setting(env, message):
  with pytest.raises(ValueError, match=message):
    distributed._plan(None, None, None, env)


@pytest.mark.parametrize(
  "env, kind",
  [
    ({}, "single"),
    ({"TPU_WORKER_HOSTNAMES": "t1v-0,t1v-1,t1v-2,t1v-3"}, "auto"),
    ({"TPU_WORKER_HOSTNAMES": "t1v-0"}, "single"),  # A single-host slice needs no coordinator.
    ({"CLOUD_TPU_TASK_ID": "0"}, "auto"),
    ({"SLURM_NTASKS": "16"}, "auto"),
    ({"SLURM_NTASKS": "1"}, "single"),
    ({"SLURM_NTASKS": "16", "MOE_ASR_DISTRIBUTED": "off"}, "single"),
    ({"MOE_ASR_DISTRIBUTED": "auto"}, "auto"),
  ],
)
def test_plan_detects_pods_and_slurm_jobs(env, kind):
  assert distributed._plan(None, None, None, env).kind == kind


def test_initialize_without_settings_is_a_single_process(tmp_path):
  code = (
    "import jax\n"
    "from moe_asr.training import distributed\n"
    "print(distributed.initialize(), distributed.initialize(), distributed.is_primary(),"
    " jax.distributed.is_initialized())\n"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"},
    cwd=tmp_path,
    timeout=120,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "(0, 1) (0, 1) True False"


# ----------------------------------------------------------------------------- real runs


def test_devices_in_one_process_sees_the_8_test_devices(tmp_path):
  out = tmp_path / "devices.json"
  proc = run_cli("devices", "--json", str(out), timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "process 0/1: 8 local / 8 global cpu devices, all-reduce 8 == 8 ok" in proc.stdout
  # Every device holds its process index + 1 = 1, so the sum over 8 devices is 8.
  assert json.loads(out.read_text()) == {
    "process_index": 0,
    "process_count": 1,
    "local_devices": 8,
    "global_devices": 8,
    "platform": "cpu",
    "allreduce": 8,
    "expected": 8,
  }


def test_local_pod_runs_two_processes_with_gloo(tmp_path):
  env = _script_env(tmp_path, PYTHON=sys.executable, LOCAL_DEVICES="2", LOG_DIR=str(tmp_path))
  out = tmp_path / "devices_{process}.json"
  proc = _run_script("local_pod.sh", "2", "devices", "--json", str(out), env=env, cwd=tmp_path)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  # Process 0's output is streamed; process 1's only goes to its log.
  assert "process 0/2: 2 local / 4 global cpu devices, all-reduce 6 == 6 ok" in proc.stdout
  assert "process 1/2" in (tmp_path / "process_1.log").read_text()
  for i in range(2):
    report = json.loads((tmp_path / f"devices_{i}.json").read_text())
    # Two devices of process 0 hold 1 and two of process 1 hold 2: 1 + 1 + 2 + 2 = 6.
    assert report == {
      "process_index": i,
      "process_count": 2,
      "local_devices": 2,
      "global_devices": 4,
      "platform": "cpu",
      "allreduce": 6,
      "expected": 6,
    }


def test_local_pod_passes_on_a_failing_exit_code(tmp_path):
  env = _script_env(tmp_path, PYTHON=sys.executable, LOCAL_DEVICES="1", LOG_DIR=str(tmp_path))
  proc = _run_script("local_pod.sh", "2", "no-such-command", env=env, cwd=tmp_path)
  assert proc.returncode == 2  # argparse's code for a bad command line.
  assert "exited with status 2" in proc.stderr
  assert "invalid choice: 'no-such-command'" in proc.stderr  # The tail of the failed log.


def test_local_pod_stops_the_others_when_one_fails(tmp_path):
  # Process 1 quits at once; process 0 would wait for it to join for minutes unless stopped.
  wrapper = tmp_path / "python_wrapper.sh"
  wrapper.write_text(
    f'#!/bin/sh\n[ "$MOE_ASR_PROCESS_ID" = 1 ] && exit 7\nexec {sys.executable} "$@"\n'
  )
  wrapper.chmod(0o755)
  env = _script_env(tmp_path, PYTHON=str(wrapper), LOCAL_DEVICES="1", LOG_DIR=str(tmp_path))
  start = time.time()
  proc = _run_script("local_pod.sh", "2", "devices", env=env, cwd=tmp_path, timeout=60)
  assert proc.returncode == 7
  assert "process_1 exited with status 7" in proc.stderr
  assert time.time() - start < 30


def test_local_pod_rejects_a_bad_process_count(tmp_path):
  proc = _run_script("local_pod.sh", "two", "devices", env=_script_env(tmp_path), cwd=tmp_path)
  assert proc.returncode == 2
  assert "N must be a positive integer (number of processes), got 'two'" in proc.stderr


# ----------------------------------------------------------------------------- dry runs


def test_local_pod_dry_run_prints_one_command_per_process(tmp_path):
  env = _script_env(tmp_path, PORT="12345", LOCAL_DEVICES="3", LOG_DIR=str(tmp_path / "logs"))
  proc = _run_script("local_pod.sh", "--dry-run", "2", "devices", env=env, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  commands = [shlex.split(line) for line in proc.stdout.splitlines() if not line.startswith("#")]
  for i, words in enumerate(commands):
    assert words[0] == "env"
    assert words[-4:] == ["python3", "-m", "moe_asr.cli", "devices"]
    assert "MOE_ASR_COORDINATOR=localhost:12345" in words
    assert "MOE_ASR_NUM_PROCESSES=2" in words
    assert f"MOE_ASR_PROCESS_ID={i}" in words
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=3" in words
    assert "JAX_PLATFORMS=cpu" in words
  assert len(commands) == 2
  assert not (tmp_path / "ran").exists() and not (tmp_path / "logs").exists()

  # A device count already in XLA_FLAGS is kept.
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=5"
  proc = _run_script("local_pod.sh", "--dry-run", "1", "devices", env=env, cwd=tmp_path)
  assert "XLA_FLAGS=--xla_force_host_platform_device_count=5" in proc.stdout


def _dry_run_lines(proc) -> list[list[str]]:
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert all(line.startswith("+ ") for line in lines), proc.stdout
  return [shlex.split(line[2:]) for line in lines]


def test_tpu_pod_dry_run_copies_installs_runs_and_collects(tmp_path):
  proc = _run_script(
    "tpu_pod.sh",
    "--dry-run",
    "my-tpu",
    "us-central2-b",
    *("train", "--config", "large", "--workdir", "gs://bucket/run1"),
    env=_script_env(tmp_path),
    cwd=tmp_path,
  )
  commands = _dry_run_lines(proc)
  assert "pip install -e '.[tpu]'" in proc.stdout
  gcloud = [c for c in commands if c[0] == "gcloud"]
  assert len(gcloud) == 5  # copy, unpack, install, run, collect.
  for words in gcloud:
    assert words[1:4] == ["compute", "tpus", "tpu-vm"]
    assert "my-tpu" in " ".join(words)
    assert "--worker=all" in words and words[words.index("--zone") + 1] == "us-central2-b"
  ssh = {c[c.index("--command") + 1] for c in gcloud if c[4] == "ssh"}
  assert "set -e; cd moe_asr && python3 -m pip install -e '.[tpu]'" in ssh
  (run,) = [c for c in ssh if "moe_asr.cli" in c]
  assert run.startswith("cd moe_asr && ")
  assert (
    "MOE_ASR_DISTRIBUTED=auto python3 -m moe_asr.cli train --config large "
    "--workdir gs://bucket/run1 > tpu_logs/"
  ) in run
  assert "/$(hostname).log" in run
  collect = gcloud[-1]
  assert collect[4:6] == ["scp", "--recurse"]
  assert collect[6].startswith("my-tpu:moe_asr/tpu_logs/") and collect[7] == "tpu_logs/my-tpu/"
  assert not (tmp_path / "ran").exists() and not (tmp_path / "tpu_logs").exists()


def test_tpu_pod_dry_run_clones_a_repository_when_given_one(tmp_path):
  env = _script_env(
    tmp_path, REPO_URL="https://example.com/moe_asr.git", REF="v1.2", PROJECT="my-proj"
  )
  env["REMOTE_DIR"] = "code"
  proc = _run_script("tpu_pod.sh", "--dry-run", "t", "z", "devices", env=env, cwd=tmp_path)
  commands = _dry_run_lines(proc)
  assert all(c[0] != "tar" for c in commands)  # No local copy when the workers clone.
  first = commands[0][commands[0].index("--command") + 1]
  assert "git clone --no-checkout https://example.com/moe_asr.git code" in first
  assert "git fetch --depth=1 origin v1.2 && git checkout --force FETCH_HEAD" in first
  for words in commands:
    if words[0] == "gcloud":
      assert words[words.index("--project") + 1] == "my-proj"
  assert not (tmp_path / "ran").exists()


def test_gpu_slurm_dry_run_prints_srun(tmp_path):
  proc = _run_script(
    "gpu_slurm.sbatch",
    "--dry-run",
    *("train", "--config", "large", "--workdir", "W"),
    env=_script_env(tmp_path),
    cwd=tmp_path,
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == [
    "export MOE_ASR_DISTRIBUTED=auto",
    "srun --kill-on-bad-exit=1 python3 -m moe_asr.cli train --config large --workdir W",
  ]
  assert not (tmp_path / "ran").exists()
  # The job geometry sbatch reads: one task per GPU on 8-GPU nodes.
  header = (LAUNCH / "gpu_slurm.sbatch").read_text()
  for line in ("--nodes=1", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task="):
    assert f"#SBATCH {line}" in header
