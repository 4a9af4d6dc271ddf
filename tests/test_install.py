"""The package installs like one: a wheel in a fresh virtual environment works from any directory.

The wheel is built from the package's own files (pyproject.toml, README.md, moe_asr/) and
installed without its dependencies into a fresh virtual environment that also sees this
interpreter's packages (jax and the rest come from there, nothing is downloaded). The commands then
run from a directory that holds no checkout, so the presets must come from the wheel.
"""

import json
import os
import pathlib
import shutil
import site
import subprocess
import sys
import sysconfig
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, TINY_RUN

pytestmark = pytest.mark.slow
LIBS = ("purelib", "platlib")


def _run(cmd, cwd, env, timeout=600) -> subprocess.CompletedProcess:
  proc = subprocess.run(
    [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
  )
  assert proc.returncode == 0, (cmd, proc.stdout[-3000:], proc.stderr[-3000:])
  return proc


def _venv_bin(venv: pathlib.Path) -> pathlib.Path:
  return venv / ("Scripts" if os.name == "nt" else "bin")


def test_the_wheel_installs_and_runs_from_any_directory(tiny_workdir, tmp_path):
  """Corpus build, training, eval and transcribe through the installed `moe-asr`.

  `tiny_workdir` is not read: it trains the same model on the same corpus with the same
  settings first, so the session's persistent compilation cache holds the training
  programs and this test measures the install, not a second compilation.
  """
  del tiny_workdir
  times = {}
  start = time.time()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
  # The package's files only: the wheel must not need anything else from the checkout.
  src = tmp_path / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(REPO / name, src / name)
  shutil.copytree(
    REPO / "moe_asr", src / "moe_asr", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
  )
  wheels = tmp_path / "wheels"
  pip = [sys.executable, "-m", "pip"]
  _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, src], tmp_path, env)
  (wheel,) = wheels.glob("moe_asr-*.whl")
  times["wheel"] = time.time() - start

  # A fresh environment that sees this interpreter's packages (jax, TensorFlow, ...) through a
  # .pth file: whether this interpreter is a system one or itself a virtual environment (as in
  # CI), `--system-site-packages` would not. Its own site-packages come first on sys.path, and
  # the checkout's editable install (a .pth file in the directories listed) is not activated:
  # directories a .pth file lists are added as they are, their own .pth files not run.
  venv = tmp_path / "venv"
  _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
  python = _venv_bin(venv) / "python"
  purelib = _run(
    [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env
  ).stdout.strip()
  ours = dict.fromkeys([*site.getsitepackages(), *(sysconfig.get_paths()[k] for k in LIBS)])
  pathlib.Path(purelib, "moe_asr_test_parent.pth").write_text("\n".join(ours) + "\n")
  _run(
    [*pip, "--python", python, "install", "--no-deps", "--no-index", wheel],
    tmp_path,
    env,
  )
  times["install"] = time.time() - start - times["wheel"]

  work = tmp_path / "elsewhere"  # No checkout here: nothing to find configs/ beside.
  work.mkdir()
  where = _run(
    [
      python,
      "-c",
      "import json, moe_asr; from moe_asr import config_lib; "
      "print(json.dumps([moe_asr.__file__, str(config_lib.config_dir()), config_lib.presets()]))",
    ],
    work,
    env,
  )
  module_file, config_dir, presets = json.loads(where.stdout.strip().splitlines()[-1])
  root = pathlib.Path(venv).resolve()
  assert pathlib.Path(module_file).resolve().is_relative_to(root), module_file
  assert pathlib.Path(config_dir).resolve().is_relative_to(root), config_dir
  assert (pathlib.Path(config_dir) / "corpus" / "tiny.py").is_file()
  assert presets == ["demo", "fleurs_large", "large", "small", "tiny", "transfer"]

  cli = _venv_bin(venv) / "moe-asr"
  step = time.time()
  built = _run([cli, "corpus", "build", "--config", "tiny", "--data-dir", "data"], work, env)
  assert "Built moe_asr_synth/tiny" in built.stdout, built.stdout
  times["corpus"] = time.time() - step

  step = time.time()
  _run(
    [
      cli,
      "train",
      "--config",
      "tiny",
      "--workdir",
      "run",
      "--config.data.data_dir=data",
      "--config.train.steps=4",
      *(f"--config.{o}" for o in TINY_RUN),
    ],
    work,
    env,
  )
  metrics = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
  assert max(m["step"] for m in metrics) == 4
  assert all(np.isfinite(m["train/loss"]) for m in metrics if "train/loss" in m)
  times["train"] = time.time() - step

  step = time.time()
  _run(
    [cli, "eval", "--workdir", "run", "--split", "test", "--config.eval.max_batches=1"], work, env
  )
  report = json.loads((work / "run" / "eval" / "report.json").read_text())
  test = report["splits"]["test"]
  assert test["n"] > 0 and 0.0 <= test["lid_acc"] <= 1.0 and test["cer"] >= 0.0
  times["eval"] = time.time() - step

  # One utterance of the corpus it built, as a file of the user's.
  step = time.time()
  import tensorflow_datasets as tfds

  import moe_asr.data.builders  # noqa: F401

  source = tfds.builder("moe_asr_synth/tiny", data_dir=str(work / "data")).as_data_source(
    split="test"
  )
  audio = np.asarray(source[0]["audio"], np.int16)
  sf.write(work / "mine.wav", audio, 16000, subtype="PCM_16")
  out = _run([cli, "transcribe", "--workdir", "run", "mine.wav"], work, env)
  (record,) = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  assert record["file"].endswith("mine.wav") and "error" not in record, record
  assert isinstance(record["text"], str) and record["language"] is not None
  times["transcribe"] = time.time() - step
  print("install test seconds:", {k: round(v, 1) for k, v in times.items()})
