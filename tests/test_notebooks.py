"""The Colab notebooks run top to bottom in a real Jupyter kernel, at their smallest sizes.

Each test executes `colab/NN_*.ipynb` with nbclient after a cell that sets the notebook's
parameters (injected after the cell tagged `parameters`, as papermill does), then reads back
what the notebook computed (its `RESULTS`) through a last cell that writes it as JSON. A
failing cell fails the test. The kernel starts in a temporary directory and inherits the
session's environment (8 fake CPU devices, the shared compilation cache); the notebooks reuse
the session's tiny corpus and tiny run, whose settings their parameters repeat so that their
programs are already compiled.
"""

import json
import math
import pathlib
import time

import pytest
from conftest import REPO, TINY_RUN

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.slow

# Notebooks that train repeat the tiny run's settings (conftest.TINY_RUN): the same programs,
# compiled once.


def run_notebook(name: str, cwd: pathlib.Path, **parameters) -> tuple[dict, float]:
  """Executes colab/NAME with `parameters`; returns (its RESULTS, seconds)."""
  nb = nbformat.read(REPO / "colab" / name, as_version=4)
  (at,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
  injected = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
  nb.cells.insert(at + 1, nbformat.v4.new_code_cell(injected))
  out = cwd / "results.json"
  nb.cells.append(
    nbformat.v4.new_code_cell(
      f"import json\nopen({str(out)!r}, 'w').write(json.dumps(RESULTS, default=str))"
    )
  )
  start = time.time()
  client = nbclient.NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
  )
  client.execute()
  return json.loads(out.read_text()), time.time() - start


def _outputs_stripped(path: pathlib.Path) -> bool:
  nb = nbformat.read(path, as_version=4)
  return all(
    not c.get("outputs") and c.get("execution_count") is None
    for c in nb.cells
    if c.cell_type == "code"
  )


def test_notebooks_are_stored_without_outputs_and_install_first():
  names = sorted(p.name for p in (REPO / "colab").glob("*.ipynb"))
  assert names == [
    "01_quickstart.ipynb",
    "02_transfer_new_language.ipynb",
    "03_task_aware_decoding.ipynb",
    "04_scaling.ipynb",
  ]
  for name in names:
    path = REPO / "colab" / name
    assert _outputs_stripped(path), name
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "pip" in code[0].source and "jax.default_backend()" in code[0].source, name
    assert "parameters" in code[1].metadata.get("tags", []), name


def test_quickstart(tiny_corpus, tiny_workdir, tmp_path):
  data_dir, _, _ = tiny_corpus
  results, seconds = run_notebook(
    "01_quickstart.ipynb",
    tmp_path,
    CORPUS="tiny",
    STEPS=4,
    DATA_DIR=str(data_dir),
    WORKDIR=str(tmp_path / "run"),
    OVERRIDES=list(TINY_RUN),
    EVAL_SPLITS=("test",),
    MAX_BATCHES=1,
    LISTEN=2,
  )
  print(f"01_quickstart: {seconds:.0f} s")
  assert results["step"] == 4
  assert results["corpus_stats"]["name"].startswith("moe_asr_synth/tiny")
  test = results["report"]["splits"]["test"]
  assert test["n"] == 8  # One batch of the 3-second bucket.
  for key in ("cer", "wer", "lid_acc", "intent_acc"):
    assert 0.0 <= test[key] <= (math.inf if key in ("cer", "wer") else 1.0), key
  assert "per_language_cer.png" in results["plots"]
  assert (tmp_path / "run" / "eval" / "per_language_cer.png").stat().st_size > 1000
  assert len(results["heard"]) == 2
  for item in results["heard"]:
    assert item["segments"] and all(start < end for _, start, end in item["segments"])
  (record,) = results["transcribed"]
  assert record["file"].endswith("mine.wav") and "error" not in record
  assert isinstance(record["text"], str) and record["language"]


def test_transfer_new_language(tiny_corpus, tiny_workdir, tmp_path):
  data_dir, _, _ = tiny_corpus
  results, seconds = run_notebook(
    "02_transfer_new_language.ipynb",
    tmp_path,
    SOURCE_RUN=str(tiny_workdir),
    STEPS=2,
    METHODS=("expert",),
    DATA_DIR=str(data_dir),
    WORKDIR=str(tmp_path / "transfer"),
    OVERRIDES=[
      "train.log_every=1",
      "data.buckets=((3.0,8),)",
      "compilation_cache=''",
      "transfer.old_splits=('test',)",
      "eval.max_batches=1",
    ],
  )
  print(f"02_transfer_new_language: {seconds:.0f} s")
  r = results["expert"]
  assert (r["language"], r["method"]) == ("ru", "expert")
  assert r["new_splits"] == ["heldout_test"] and r["old_splits"] == ["test"]
  assert 0.0 < r["trained_share"] < 0.5  # Only the new rows, expert, LID and task slices.
  for split in ("heldout_test", "test"):
    assert r["transfer"][split]["cer"] >= 0.0
    change = r["change"][split]["cer"]
    assert math.isclose(change, r["transfer"][split]["cer"] - r["source"][split]["cer"])
  assert (tmp_path / "transfer" / "expert" / "transfer" / "report.md").exists()


def test_task_aware_decoding(tiny_workdir, tmp_path):
  results, seconds = run_notebook(
    "03_task_aware_decoding.ipynb",
    tmp_path,
    SOURCE_RUN=str(tiny_workdir),
    LM_STEPS=5,
    BEAM=2,
    SPLITS=("test",),
    MAX_BATCHES=1,
    LM_WEIGHTS=(0.0, 0.3),
    SETTINGS=("greedy", "beam + LM + bias"),
    WORKDIR=str(tmp_path / "run"),
  )
  print(f"03_task_aware_decoding: {seconds:.0f} s")
  assert results["tuned"]["decode"]["lm_weight"] in (0.0, 0.3)
  fit = results["tuned"]["calibration_fit"]
  assert 0.0 <= fit["coverage_at_threshold"] <= 1.0
  reports = results["reports"]
  assert set(reports) == {"greedy", "beam + LM + bias"}
  assert reports["greedy"]["decode"]["method"] == "greedy"
  biased = reports["beam + LM + bias"]["decode"]
  assert biased["method"] == "ctc_beam" and biased["beam"] == 2 and biased["bias_file"] == "corpus"
  assert reports["greedy"]["splits"]["test"]["n"] == 8
  assert any(name.startswith("reliability_") for name in results["curves"])
  assert results["by_language"]["test"] and results["lm"]["sentences"] > 0


def test_scaling(tiny_corpus, tmp_path):
  data_dir, _, _ = tiny_corpus
  results, seconds = run_notebook(
    "04_scaling.ipynb",
    tmp_path,
    TRAIN_MESH=(4, 1, 2, 1),
    STEPS=2,
    DATA_DIR=str(data_dir),
    WORKDIR=str(tmp_path / "sharded"),
    # A smaller model (CTC only, 2 encoder blocks, one routed): the step for 8 devices
    # compiles in half the time, and its experts still split over the expert axis.
    OVERRIDES=[
      *TINY_RUN,
      "model.encoder.num_layers=2",
      "model.encoder.lid_layer=0",
      "model.encoder.moe_layers=(1,)",
      "model.decoder.num_layers=0",
      "model.decoder.moe_layers=()",
    ],
  )
  print(f"04_scaling: {seconds:.0f} s")
  assert results["devices"] == 8
  assert results["mesh"] == {"data": 4, "fsdp": 1, "expert": 2, "tensor": 1}
  assert results["summary"]["step"] == 2
  assert results["sizes"]["params_total"] > 5e8 > results["sizes"]["params_active"] > 0
  assert any(logical == "expert" for logical, _ in results["rules"])
  assert (
    "gcloud compute tpus tpu-vm" in results["dry_run"] and "--config large" in results["dry_run"]
  )
