"""benchmarks/evidence.py: the paired bootstrap it reports, and the command end to end."""

import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO

from moe_asr.evaluation import metrics
from moe_asr.evaluation.metrics import Utterance


def _records(n: int, error_every: int, seed: int = 0) -> list[Utterance]:
  """n utterances of 4 words; every `error_every`-th has one substituted word and a wrong intent."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    wrong = i % error_every == 0
    words = [f"w{rng.integers(50)}" for _ in range(4)]
    hyp = [*words[:-1], "zz"] if wrong else words
    out.append(
      Utterance(
        f"u{i}",
        " ".join(words),
        " ".join(hyp),
        ref_intent="on",
        hyp_intent="off" if wrong else "on",
      )
    )
  return out


def test_paired_bootstrap_of_a_difference():
  base = _records(200, error_every=2)  # WER 12.5%, intent 50%.
  better = _records(200, error_every=4)  # WER 6.25%, intent 75%.
  diff = metrics.summarize(better)["wer"] - metrics.summarize(base)["wer"]
  assert diff == pytest.approx(-0.0625)
  lo, hi = metrics.bootstrap_ci(better, "wer", baseline=base, seed=1)
  assert lo < diff < hi < 0.0
  # Pairing: the same records in another order give the same interval.
  assert metrics.bootstrap_ci(better, "wer", baseline=base[::-1], seed=1) == (lo, hi)
  # A system against itself: every resample's difference is exactly 0.
  assert metrics.bootstrap_ci(base, "intent_acc", baseline=base) == (0.0, 0.0)
  # Paired intervals are narrower than the difference of independent ones: the utterances'
  # shared difficulty cancels (here the second system errs on a subset of the first's errors).
  lo_a, hi_a = metrics.bootstrap_ci(better, "intent_acc")
  lo_b, hi_b = metrics.bootstrap_ci(base, "intent_acc")
  lo_d, hi_d = metrics.bootstrap_ci(better, "intent_acc", baseline=base)
  assert hi_d - lo_d < (hi_a - lo_a) + (hi_b - lo_b)
  assert lo_d > 0.0
  with pytest.raises(ValueError, match="no baseline record"):
    metrics.bootstrap_ci(better, "wer", baseline=base[:-1])


def test_bootstrap_metric_function_and_records_without_transcripts():
  recs = _records(60, error_every=3)
  recs.append(Utterance("label_only", "", "", ref_intent="on", hyp_intent="on"))

  def wer_arrays(records):
    counts = [
      metrics.edit_counts(r.ref_text, r.hyp_text, "word")
      if r.ref_text
      else metrics.EditCounts(0, 0, 0, 0)
      for r in records
    ]
    return np.array([c.errors for c in counts]), np.array([c.ref_len for c in counts])

  # A record without a transcript counts 0 of 0 and keeps its place in the resample.
  assert metrics.bootstrap_ci(recs, wer_arrays, seed=2) == metrics.bootstrap_ci(recs, "wer", seed=2)


def _evidence(out, data_dir, *extra, timeout=400, ok=True):
  # One CPU device (not the 8 fake ones of the test processes): a tiny step compiles faster.
  flags = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
  env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS=flags)
  start, cpu = time.time(), _child_cpu()
  proc = subprocess.run(
    [
      sys.executable,
      str(REPO / "benchmarks" / "evidence.py"),
      "--out",
      str(out),
      "--config",
      "tiny",
      "--data-dir",
      str(data_dir),
      "--seeds",
      "0",
      "--arms",
      "E1",
      "--splits",
      "test_noisy",
      "--max-batches",
      "1",
      "--bootstrap",
      "200",
      "--config.data.buckets=((3.0,8),)",
      "--config.data.eval_splits=()",
      "--config.train.log_every=1",
      "--config.compilation_cache=''",
      # Two encoder blocks and one decoder block: the train step compiles in half the time.
      "--config.model.encoder.num_layers=2",
      "--config.model.encoder.lid_layer=0",
      "--config.model.encoder.moe_layers=(1,)",
      "--config.model.decoder.num_layers=1",
      "--config.model.decoder.moe_layers=(0,)",
      *(extra or ("--steps", "2")),
    ],
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=REPO,
    env=env,
    check=False,
  )
  assert (proc.returncode == 0) == ok, proc.stdout[-3000:] + proc.stderr[-3000:]
  print(f"evidence.py: {time.time() - start:.0f} s wall, {_child_cpu() - cpu:.0f} s CPU")
  return proc, time.time() - start


def _child_cpu() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def test_evidence_end_to_end_and_resume(tiny_corpus, tmp_path):
  data_dir, _, _ = tiny_corpus
  out = tmp_path / "exp"
  _, first = _evidence(out, data_dir)
  result = json.loads((out / "evidence.json").read_text())
  # Two arms, each its own model trained the requested steps, scored on the same utterances.
  assert [a["id"] for a in result["arms"]] == ["E1.cascade", "E1.joint"]
  for model in ("cascade", "joint"):
    done = json.loads((out / "models" / model / "seed0" / "DONE").read_text())
    assert done["step"] == 2
    assert "model.task.stop_gradient=True" in done["key"]["overrides"] or model == "joint"
  rows = {r["metric"]: r for r in result["effects"] if r["split"] == "test_noisy"}
  assert set(rows) == {"intent_acc", "slot_f1", "wer"}
  joint = [
    metrics.Utterance.from_json(json.loads(line))
    for line in (out / "evals" / "E1.joint" / "seed0" / "hypotheses" / "test_noisy.jsonl")
    .read_text()
    .splitlines()
  ]
  cascade = [
    metrics.Utterance.from_json(json.loads(line))
    for line in (out / "evals" / "E1.cascade" / "seed0" / "hypotheses" / "test_noisy.jsonl")
    .read_text()
    .splitlines()
  ]
  assert sorted(r.id for r in joint) == sorted(r.id for r in cascade)
  wer = rows["wer"]["seeds"]["0"]
  # The effect is recomputed from the saved hypotheses and lies in its paired interval.
  assert wer["diff"] == pytest.approx(
    metrics.summarize(joint)["wer"] - metrics.summarize(cascade)["wer"], abs=1e-12
  )
  assert wer["n"] == len(joint)
  lo, hi = wer["ci"]
  assert lo <= wer["diff"] <= hi
  goal = result["goals"][0]
  assert goal["arm"] == "E1.joint" and goal["holds"] in (True, False)
  md = (out / "evidence.md").read_text()
  assert f"[{100 * lo:+.1f}, {100 * hi:+.1f}]" in md
  assert ("| holds (1 seed) |" in md) != ("| does not hold (1 seed) |" in md)
  assert (out / "effects_E1.png").stat().st_size > 0

  # Second invocation: both models and both arms are done; nothing is trained or scored.
  stamp = (out / "models" / "joint" / "seed0" / "DONE").stat().st_mtime_ns
  proc, second = _evidence(out, data_dir)
  assert "done, skipped" in proc.stderr
  assert "training" not in proc.stderr and "scoring" not in proc.stderr
  assert (out / "models" / "joint" / "seed0" / "DONE").stat().st_mtime_ns == stamp
  again = json.loads((out / "evidence.json").read_text())
  assert again["effects"] == result["effects"]
  assert second < first / 2, (first, second)
  # Other settings on the same directory: refused, not resumed from the other run's steps.
  proc, _ = _evidence(out, data_dir, "--steps", "3", ok=False)
  assert "holds a run of other settings" in proc.stderr
  assert not math.isnan(first)

  # The archive: the arms scored above are restored into a new --out, no model trained there.
  archive, fresh = tmp_path / "archive", tmp_path / "fresh"
  _evidence(out, data_dir, "--steps", "2", "--archive", str(archive))
  packed = archive / "evals" / "E1.joint" / "seed0"
  assert (packed / "hypotheses" / "test_noisy.jsonl.gz").exists()
  assert not (packed / "hypotheses" / "test_noisy.jsonl").exists()
  assert (
    json.loads((packed / "DONE").read_text())["key"]
    == json.loads((out / "evals" / "E1.joint" / "seed0" / "DONE").read_text())["key"]
  )
  proc, _ = _evidence(fresh, data_dir, "--steps", "2", "--archive", str(archive))
  assert "restored from" in proc.stderr and "training" not in proc.stderr
  assert not (fresh / "models").exists()
  assert (
    fresh / "evals" / "E1.joint" / "seed0" / "hypotheses" / "test_noisy.jsonl"
  ).read_text() == (
    out / "evals" / "E1.joint" / "seed0" / "hypotheses" / "test_noisy.jsonl"
  ).read_text()
  restored = json.loads((fresh / "evidence.json").read_text())
  assert restored["effects"] == result["effects"]
  assert json.loads((archive / "evidence.json").read_text())["effects"] == result["effects"]

  # The table alone, from the archive, on another path to the corpus and with a second seed
  # asked for that nothing has scored: nothing is trained or scored, the arms show seed 0.
  (tmp_path / "link").symlink_to(data_dir, target_is_directory=True)
  table = tmp_path / "table"
  proc, _ = _evidence(
    table,
    tmp_path / "link",
    "--steps",
    "2",
    "--archive",
    str(archive),
    "--seeds",
    "0",
    "1",
    "--table-only",
  )
  assert "restored from" in proc.stderr
  assert "training" not in proc.stderr and "scoring" not in proc.stderr
  assert not (table / "models").exists()
  only = json.loads((table / "evidence.json").read_text())
  assert [(a["id"], a["seeds_done"]) for a in only["arms"]] == [
    ("E1.cascade", [0]),
    ("E1.joint", [0]),
  ]
  assert only["effects"] == result["effects"]
  assert only["goals"][0]["seeds"] == 1
  assert "(1 seed) |" in (table / "evidence.md").read_text()


def _load_evidence():
  """benchmarks/evidence.py as a module (benchmarks/ is not on a plain `pytest`'s path)."""
  import importlib.util

  spec = importlib.util.spec_from_file_location("evidence", REPO / "benchmarks" / "evidence.py")
  evidence = importlib.util.module_from_spec(spec)
  sys.modules["evidence"] = evidence  # @dataclass looks its module up there.
  spec.loader.exec_module(evidence)
  return evidence


def test_goal_verdicts_seed_by_seed():
  evidence = _load_evidence()

  def mer(baseline, arm):
    return {"diff": arm - baseline, "baseline": baseline, "arm": arm}

  # E2's goal is -10% relative test_cs MER: seed 0 alone misses it (-9%), seed 1 makes it
  # (-15%), and their mean (-12%) does.
  seeds = {"0": mer(0.60, 0.546), "1": mer(0.60, 0.51)}
  row = {"arm": "E2.learned", "split": "test_cs", "metric": "mer", "seeds": seeds}
  row["mean"] = evidence._mean_effect(seeds)
  (both,) = evidence.goals(None, [row], evidence.select_arms("E2.learned"))
  assert both["holds"] is True and both["seeds"] == 2
  assert both["seed_holds"] == {"0": False, "1": True}
  assert evidence._goal_verdict(both) == (
    "holds (2 seeds) on the mean; 1 of 2 seeds alone (seed 0: does not hold)"
  )
  assert evidence._goal_verdict(both | {"seed_holds": {"0": True, "1": True}}) == "holds (2 seeds)"
  alone = dict(row, seeds={"1": seeds["1"]}, mean=evidence._mean_effect({"1": seeds["1"]}))
  (one,) = evidence.goals(None, [alone], evidence.select_arms("E2.learned"))
  assert evidence._goal_verdict(one) == "holds (1 seed)"


def test_arm_selection_and_done_markers(tmp_path):
  import dataclasses

  evidence = _load_evidence()

  assert [a.id for a in evidence.select_arms("E1.joint")] == ["E1.cascade", "E1.joint"]
  assert {a.experiment for a in evidence.select_arms("E2,E5")} == {"E2", "E5"}
  with pytest.raises(SystemExit, match="unknown 'E7'"):
    evidence.select_arms("E7")
  plan = evidence.Plan(
    out=tmp_path,
    config="tiny",
    seeds=(0, 1),
    steps=2,
    data_dir=None,
    overrides=(),
    splits=("test_noisy",),
    max_batches=1,
    lm_steps=5,
    bootstrap=10,
  )
  # One expert a token in every routed E2 arm, and a checkpoint halfway for E10's average.
  assert "model.encoder.top_k=1" in plan.model_overrides("router_learned", 0)
  assert "train.checkpoint_every=1" in plan.model_overrides("joint", 0)
  assert plan.arm_seeds(evidence.ARM_BY_ID["E1.joint"]) == (0, 1)
  assert plan.arm_seeds(evidence.ARM_BY_ID["E5.bias"]) == (0,)
  assert plan.model_seeds(evidence.ARM_BY_ID["E10.ensemble"]) == (0, 1)
  assert evidence.arms_scored(plan) == []
  for arm_id in ("E1.cascade", "E1.joint"):
    arm = evidence.ARM_BY_ID[arm_id]
    for seed in (0, 1):
      evidence._mark_done(plan.eval_dir(arm, seed), evidence._eval_key(plan, arm, seed))
  assert [a.id for a in evidence.arms_scored(plan)] == ["E1.cascade", "E1.joint"]
  # Markers of other settings do not count.
  assert evidence.arms_scored(dataclasses.replace(plan, steps=3)) == []
  # An arm scored on some of the seeds counts, on those seeds.
  three = dataclasses.replace(plan, seeds=(0, 1, 2))
  assert [a.id for a in evidence.arms_scored(three)] == ["E1.cascade", "E1.joint"]
  assert evidence.seeds_scored(three, evidence.ARM_BY_ID["E1.joint"]) == [0, 1]
  # Where the corpus lies is not part of a key (an archive restores on another machine);
  # the run itself still reads it from there.
  here = dataclasses.replace(plan, data_dir="/one/place")
  there = dataclasses.replace(plan, data_dir="elsewhere")
  assert "data.data_dir='/one/place'" in here.model_overrides("joint", 0)
  assert here.model_key("joint", 0) == there.model_key("joint", 0) == plan.model_key("joint", 0)
  # Decoding settings are the arm's: the model's key stays, the arm's changes.
  joint = evidence.ARM_BY_ID["E1.joint"]
  other = dataclasses.replace(plan, overrides=("decode.ctc_weight=0.5",))
  assert other.model_key("joint", 0) == plan.model_key("joint", 0)
  assert evidence._eval_key(other, joint, 0) != evidence._eval_key(plan, joint, 0)
  # Nor does a recipe changed under the same name: the key holds its resolved config's digest.
  changed = dataclasses.replace(plan, overrides=("train.learning_rate=0.5",))
  assert changed.model_key("joint", 0)["recipe"] != plan.model_key("joint", 0)["recipe"]
  assert plan.model_key("joint", 0)["recipe"] == plan.model_key("joint", 0)["recipe"]

  # The archive: scored arms go in packed and come back out, only under the same settings.
  archived = dataclasses.replace(plan, archive=tmp_path / "archive")
  arm = evidence.ARM_BY_ID["E1.joint"]
  (plan.eval_dir(arm, 0) / "hypotheses").mkdir(parents=True)
  (plan.eval_dir(arm, 0) / "report.json").write_text("{}")
  (plan.eval_dir(arm, 0) / "hypotheses" / "test_noisy.jsonl").write_text('{"id": "a"}\n')
  evidence.archive_arm(archived, arm, 0)
  fresh = dataclasses.replace(archived, out=tmp_path / "fresh")
  assert evidence.restore_archived(dataclasses.replace(fresh, steps=3), [arm]) == []
  assert evidence.restore_archived(fresh, [arm]) == ["E1.joint/seed0"]
  restored = fresh.eval_dir(arm, 0) / "hypotheses" / "test_noisy.jsonl"
  assert restored.read_text() == '{"id": "a"}\n'
  assert evidence._done(fresh.eval_dir(arm, 0), evidence._eval_key(fresh, arm, 0))


def test_the_archived_table_restores_on_this_checkout():
  """Every arm in docs/results/evidence/ has the key this checkout's plan gives it, so
  `--table-only` (and any run with `--archive docs/results/evidence`) restores it instead of
  training its models again; the demo's current recipe (no pins) would not match."""
  import dataclasses

  evidence = _load_evidence()
  archive = REPO / "docs" / "results" / "evidence"
  plan = evidence.Plan(
    out=archive,
    config="demo",
    seeds=(0, 1),
    steps=None,
    data_dir=None,
    overrides=(),
    splits=None,
    max_batches=0,
    lm_steps=1000,
    bootstrap=1000,
    archive=archive,
    pins=evidence.RECIPE_PINS["demo"],
  )
  markers = sorted(archive.glob("evals/*/seed*/DONE"))
  assert len(markers) >= 20, markers
  for marker in markers:
    arm = evidence.ARM_BY_ID[marker.parent.parent.name]
    seed = int(marker.parent.name.removeprefix("seed"))
    assert json.loads(marker.read_text())["key"] == evidence._eval_key(plan, arm, seed), marker
  current = dataclasses.replace(plan, pins=())
  joint = evidence.ARM_BY_ID["E1.joint"]
  assert evidence._eval_key(current, joint, 0) != evidence._eval_key(plan, joint, 0)
