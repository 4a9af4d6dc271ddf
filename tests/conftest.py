"""Shared fixtures: the tiny embedded corpus and a tiny trained run, built once per test run.

`pytest` runs the tests in parallel worker processes (pytest-xdist; `-n auto` in
pyproject.toml, sized by `pytest_xdist_auto_num_workers` below; `pytest -n 0` runs them in
this process). The workers share one compilation cache and build the session fixtures once
between them.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

# XLA flags of every test process and of the runs they start. Compilation, not execution,
# is most of the suite's time (the tiny model's train step compiles in about 40 s on 2 cores
# and then runs 30 steps in 7), so the CPU backend's code generation runs at LLVM's lowest
# optimisation level: the HLO programs are the same, their machine code is less optimised.
# Measured on tests/test_model.py and tests/test_conformer.py: 475 s of CPU against 639 s;
# one tiny `moe-asr train` of 30 steps: a 26 s compile against 40 s, steps at half the speed.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
# Tests that shard use 8 fake CPU devices; the flags must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Float32 matmuls at full precision on every backend: GPUs default to TF32 (10-bit
# mantissa), which breaks the stated 1e-5-level tolerances of the reference comparisons
# (on an H200, 18 of them failed by up to 1e-3 relative; all pass with this). No effect on CPU.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import atexit  # noqa: E402
import collections.abc  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

try:
  import fcntl
except ImportError:  # Not POSIX: each worker builds its own session fixtures.
  fcntl = None

# One persistent XLA compilation cache for the session: this process and every subprocess it
# starts (the CLI runs inherit the environment) compile a given program once, e.g. the tiny
# model's initialisation and steps, which many command-line tests run again. A run whose
# config names its own `compilation_cache` uses that instead.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="moe_asr_test_xla_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "moe_asr" / "configs" / "corpus" / "tiny.py"
# The shared tiny run's settings (`tiny_workdir`, trained for 4 steps) as `a.b=value`
# overrides of the tiny preset; tests that train the same model repeat them, so the session's
# compilation cache serves their programs. One bucket: decoding tests compile a single shape.
# Language-routed encoder experts, so that the run is also the transfer tests' source (a new
# language gets an expert of its own).
TINY_RUN = (
  "train.log_every=2",
  "data.buckets=((3.0,8),)",
  "model.encoder.router=language",
  "eval.splits=('test',)",
  "compilation_cache=''",
)


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
  """Runs `moe-asr ARGS` in a subprocess (the real console entry point)."""
  return subprocess.run(
    [sys.executable, "-m", "moe_asr.cli", *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=REPO,
    check=False,
  )


def pytest_xdist_auto_num_workers(config) -> int:
  """Workers for `-n auto`: one a core, at most one per 8 GiB of memory (a worker and the
  training run it starts can hold about that), and at most 4 (beyond that the longest test
  module, test_train.py, sets the pace)."""
  del config
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  try:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (AttributeError, ValueError, OSError):
    memory = 16 << 30
  return max(1, min(cores or 1, memory // (8 << 30), 4))


# Seconds each slow module took in one CI run (setup included). The workers take modules
# longest first (`--no-loadscope-reorder` in pyproject.toml keeps this order), so no long
# module starts last while the other worker sits idle; modules not listed follow in file order.
MODULE_SECONDS = {
  "test_train.py": 610,
  "test_transfer.py": 400,
  "test_run_safety.py": 270,
  "test_notebooks.py": 250,
  "test_model.py": 210,
  "test_decode_eval.py": 150,
  "test_data_import.py": 125,
  "test_evidence.py": 105,
  "test_longform.py": 100,
  "test_install.py": 95,
  "test_conformer.py": 75,
  "test_ensemble.py": 70,
  "test_slots.py": 60,
  "test_selftrain.py": 60,
  "test_averaging.py": 50,
  "test_expert_parallel.py": 45,
  "test_demo.py": 45,
  "test_transcribe.py": 35,
}


def pytest_collection_modifyitems(config, items) -> None:
  """Orders modules longest first (stable: tests keep their order within a module)."""
  del config
  items.sort(key=lambda item: -MODULE_SECONDS.get(item.path.name, 0))


def build_once(
  tmp_path_factory, name: str, build: collections.abc.Callable[[pathlib.Path], object]
):
  """Runs `build(directory)` once per test run; returns (directory, its JSON-able result).

  Alone, the directory is this session's own. Under pytest-xdist the workers share the run's
  base temporary directory: the first to take the lock builds, the others wait and read the
  result it wrote. A failed build writes no result, so the next worker tries (and reports)
  again.
  """
  if os.environ.get("PYTEST_XDIST_WORKER") is None or fcntl is None:
    directory = tmp_path_factory.mktemp(name)
    return directory, build(directory)
  root = tmp_path_factory.getbasetemp().parent
  directory, result = root / name, root / f"{name}.json"
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not result.exists():
      shutil.rmtree(directory, ignore_errors=True)
      directory.mkdir()
      result.write_text(json.dumps(build(directory)))
    return directory, json.loads(result.read_text())


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
  """Builds the tiny corpus preset with `moe-asr corpus build`.

  Returns:
    (data_dir, build seconds, stdout of the build).
  """

  def build(data_dir):
    start = time.time()
    proc = run_cli("corpus", "build", "--config", "tiny", "--data-dir", str(data_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return time.time() - start, proc.stdout

  data_dir, (seconds, stdout) = build_once(tmp_path_factory, "data", build)
  return data_dir, seconds, stdout


@pytest.fixture(scope="session")
def tiny_workdir(tiny_corpus, tmp_path_factory):
  """A tiny run trained for 4 steps on the 8 test devices (a real orbax checkpoint), for
  decoding and transfer tests, with the settings `TINY_RUN`.

  Tests must not write into it except under their own subdirectories (copy it to change it).
  """
  data_dir, _, _ = tiny_corpus

  def build(directory):
    workdir = directory / "run"
    proc = run_cli(
      "train",
      "--config",
      "tiny",
      "--workdir",
      str(workdir),
      f"--config.data.data_dir={data_dir}",
      "--config.train.steps=4",
      *(f"--config.{o}" for o in TINY_RUN),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

  directory, _ = build_once(tmp_path_factory, "tiny_run", build)
  return directory / "run"
