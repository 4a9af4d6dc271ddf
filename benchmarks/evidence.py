"""The research table: does each idea of this codebase pay on the task?

Trains the arms of each comparison (issue 28's E1..E10) on one recipe with the same data
order, seeds and steps, scores every arm with `moe-asr eval`'s code (per-utterance
hypotheses kept), and writes `evidence.md`, `evidence.json` and plots with paired bootstrap
intervals (`metrics.bootstrap_ci` with a baseline) of each effect, and whether each of the
issue's goals holds as measured.

  python benchmarks/evidence.py --out runs/evidence --data-dir data            # demo recipe
  python benchmarks/evidence.py --out runs/ev --config tiny --steps 20 --arms E1 --seeds 0

Layout of `--out`: `models/<model>/seed<k>/` (a training workdir each; several arms share
one model when they differ only in decoding), `evals/<arm>/seed<k>/` (report.json and
hypotheses/<split>.jsonl), `views/<arm>/seed<k>/` (a workdir of links to a model's files
with its own decoding.json / calibration.json, for arms that tune), then the tables. Each
piece of work writes a `DONE` marker (atomically, last): a second invocation skips what is
done and resumes what is not (training resumes from its last checkpoint). Arguments after
the options that start with `--config.` override every arm's config (`--config.data.buckets=
((3.0,8),)`); they are part of what the markers record, so a different override set retrains.

`--archive DIR` keeps what is scored beyond `--out` (the demo's table is sixteen models of
about 18 minutes each on two cores, more than one machine's day): every scored arm is copied
there (`evals/<arm>/seed<k>/`: DONE, report.json, hypotheses/<split>.jsonl.gz), and an arm
found there under the same settings is restored into `--out` instead of being scored again,
so its model is not trained again either. The table (evidence.md, evidence.json, plots) is
also written there. The settings a marker records include a digest of each model's resolved
config, so a changed recipe scores again; the commit each arm was scored at is in its DONE.
Where the corpus lies (`--data-dir`) is not a setting: the archive restores on any checkout.

  python benchmarks/evidence.py --out runs/evidence --archive docs/results/evidence \\
      --data-dir data --arms E1 --seeds 0                                  # one piece a day

`--table-only` trains and scores nothing: the table of every arm scored so far (in `--out`
or the archive), each on the seeds it has, which the goals' verdicts count.

  python benchmarks/evidence.py --out runs/evidence --archive docs/results/evidence \\
      --seeds 0 1 --table-only
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import hashlib
import json
import logging
import math
import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

_LOG = logging.getLogger("evidence")


# --- The arms -------------------------------------------------------------------------------

# Models: config overrides on the recipe. Arms that differ only in decoding share a model.
MODELS: dict[str, tuple[str, ...]] = {
  # The recipe as it is: joint task training, hybrid router (top 2), FiLM LID conditioning
  # trained with oracle LID mixed in early (`train.oracle_mix`).
  "joint": (),
  # E1: the cascade; the task loss does not reach the recogniser (stop-gradient bridge).
  "cascade": ("model.task.stop_gradient=True",),
  # E2: experts at equal active parameters (one expert a token) against a dense encoder.
  "dense": ("model.encoder.moe_layers=()",),
  "router_language": ("model.encoder.router='language'",),
  "router_learned": ("model.encoder.router='learned'", "model.encoder.top_k=1"),
  "router_hybrid": ("model.encoder.router='hybrid'", "model.encoder.top_k=1"),
  # E3: LID conditioning of the upper blocks: none, or on predicted LID only.
  "lid_none": ("model.encoder.conditioning='none'",),
  "lid_predicted": ("train.oracle_mix=0.0",),
}

# The research table was measured on the demo recipe as it stood before its learning rate
# rose to 3e-3 (docs/results/demo.md, "Learning rate"). These settings keep that recipe for
# every arm, so the archived arms restore and the table stays comparable across its seeds;
# they are in each model's digest, not in its override list. `--current-recipe` drops them:
# every model of the table is trained again on the recipe as it is now.
RECIPE_PINS: dict[str, tuple[str, ...]] = {
  "demo": (
    "train.learning_rate=0.001",
    "train.lr_multipliers=(('encoder/blocks/.*/(down|linear_out|pointwise2)/.*', 0.25),)",
  ),
}

GREEDY = ("decode.method='greedy'",)
CTC_BEAM = ("decode.method='ctc_beam'", "decode.beam=8")
JOINT = ("decode.method='joint'", "decode.beam=4")


@dataclasses.dataclass(frozen=True)
class Arm:
  """One row of the table: a model, decode settings, and the arm it is compared with."""

  id: str
  experiment: str
  model: str
  decode: tuple[str, ...] = GREEDY
  baseline: str | None = None  # Arm id; None: the experiment's reference arm.
  needs_lm: bool = False  # Decoding reads the model's text LM (`moe-asr train-lm`).
  calibrate: bool = False  # `moe-asr tune-decoding` fits a calibration first.
  all_seeds: bool = True  # Else only the first seed (arms of one model's decoding).
  average_last: int = 0  # Score the mean parameters of the last N saved checkpoints.
  ensemble: bool = False  # Score the first seed's model with the other seeds' as one ensemble.


ARMS: tuple[Arm, ...] = (
  Arm("E1.cascade", "E1", "cascade"),
  Arm("E1.joint", "E1", "joint", baseline="E1.cascade"),
  Arm("E2.dense", "E2", "dense"),
  Arm("E2.language", "E2", "router_language", baseline="E2.dense"),
  Arm("E2.learned", "E2", "router_learned", baseline="E2.dense"),
  Arm("E2.hybrid", "E2", "router_hybrid", baseline="E2.dense"),
  Arm("E3.none", "E3", "lid_none"),
  Arm("E3.predicted", "E3", "lid_predicted", baseline="E3.none"),
  Arm("E3.oracle_mixed", "E3", "joint", baseline="E3.none"),
  Arm("E4.no_lm", "E4", "joint", JOINT, all_seeds=False),
  Arm(
    "E4.lm",
    "E4",
    "joint",
    (*JOINT, "decode.lm_weight=0.3"),
    baseline="E4.no_lm",
    needs_lm=True,
    all_seeds=False,
  ),
  Arm(
    "E4.lm_ilm",
    "E4",
    "joint",
    (*JOINT, "decode.lm_weight=0.3", "decode.ilm_weight=0.1"),
    baseline="E4.no_lm",
    needs_lm=True,
    all_seeds=False,
  ),
  Arm("E5.no_bias", "E5", "joint", CTC_BEAM, all_seeds=False),
  Arm(
    "E5.bias",
    "E5",
    "joint",
    (*CTC_BEAM, "decode.bias_file='corpus'"),
    baseline="E5.no_bias",
    all_seeds=False,
  ),
  # E6 compares within one arm: ECE before and after calibration, intent accuracy on all
  # utterances and on those kept when the least confident 10% are deferred.
  Arm("E6.calibrated", "E6", "joint", CTC_BEAM, needs_lm=True, calibrate=True, all_seeds=False),
  Arm("E9.no_rescore", "E9", "joint", (*CTC_BEAM, "decode.nbest=8"), all_seeds=False),
  Arm(
    "E9.rescore",
    "E9",
    "joint",
    (
      *CTC_BEAM,
      "decode.nbest=8",
      "decode.rescore=True",
      "decode.rescore_weights.att=0.3",
      "decode.rescore_weights.task=0.5",
    ),
    baseline="E9.no_rescore",
    all_seeds=False,
  ),
)
ARMS += (
  Arm("E10.single", "E10", "joint", all_seeds=False),
  Arm("E10.average_last2", "E10", "joint", baseline="E10.single", all_seeds=False, average_last=2),
  Arm("E10.ensemble", "E10", "joint", baseline="E10.single", all_seeds=False, ensemble=True),
)
ARM_BY_ID = {a.id: a for a in ARMS}


@dataclasses.dataclass(frozen=True)
class Goal:
  """A claim of the issue, checked on the seed mean of an effect."""

  text: str
  check: Callable[[dict], bool | None]  # On {metric: effect summary}; None: not measurable.


@dataclasses.dataclass(frozen=True)
class Experiment:
  title: str
  splits: tuple[str, ...]
  metrics: tuple[str, ...]  # Effects reported (ratio metrics, or "b_wer"/"u_wer").
  goal_split: str = "test"
  goal: Goal | None = None


def _rel(effect: dict | None) -> float | None:
  """The relative change (arm - baseline) / baseline of a seed-mean effect."""
  if not effect or effect.get("baseline") in (None, 0):
    return None
  return effect["diff"] / effect["baseline"]


def _all(*values):
  return None if any(v is None for v in values) else all(values)


def _goal_e1(e):
  intent, wer = e.get("intent_acc"), _rel(e.get("wer"))
  return _all(intent and intent["diff"] >= 0.03, None if wer is None else wer <= 0.05)


def _goal_rel(metric: str, limit: float):
  def check(e):
    rel = _rel(e.get(metric))
    return None if rel is None else rel <= limit

  return check


def _goal_e5(e):
  b, u = _rel(e.get("b_wer")), _rel(e.get("u_wer"))
  return _all(None if b is None else b <= -0.30, None if u is None else u <= 0.02)


EXPERIMENTS: dict[str, Experiment] = {
  "E1": Experiment(
    "joint task training vs the cascade (stop-gradient bridge)",
    ("test", "test_noisy", "test_cs"),
    ("intent_acc", "slot_f1", "wer"),
    "test_noisy",
    Goal("+3 points intent on test_noisy, WER within +5% relative", _goal_e1),
  ),
  "E2": Experiment(
    "routed experts (language, learned, hybrid; one expert a token) vs a dense encoder",
    ("test_cs", "test"),
    ("mer", "cer"),
    "test_cs",
    Goal("-10% relative test_cs MER", _goal_rel("mer", -0.10)),
  ),
  "E3": Experiment(
    "LID conditioning (predicted, oracle-mixed in training) vs none",
    ("test_cs", "test"),
    ("wer", "cer", "mer", "frame_lid_acc"),
    "test_cs",
    Goal("-5% relative WER on test_cs", _goal_rel("wer", -0.05)),
  ),
  "E4": Experiment(
    "LM fusion, with and without internal-LM subtraction, vs none (joint search, one model)",
    ("test", "test_cs"),
    ("wer", "mer"),
    "test",
    Goal("-5% relative WER on test", _goal_rel("wer", -0.05)),
  ),
  "E5": Experiment(
    "contextual biasing (the corpus's phrase list) vs none (CTC beam)",
    ("test_bias", "test"),
    ("b_wer", "u_wer", "wer"),
    "test_bias",
    Goal("-30% relative B-WER on test_bias, U-WER within +2% relative", _goal_e5),
  ),
  "E6": Experiment(
    "calibration and deferral (calibration fitted on validation)",
    ("test", "test_noisy"),
    ("intent_acc",),
    "test",
    None,  # Its goals are checked in `calibration_rows`.
  ),
  "E9": Experiment(
    "task rescoring of the n-best (CTC + attention + task heads) vs none",
    ("test", "test_noisy"),
    ("intent_acc", "slot_f1", "wer"),
    "test",
    None,
  ),
  "E10": Experiment(
    "the seeds' models as one ensemble (CTC and task posteriors averaged, weights from "
    "validation) and the mean of the last 2 checkpoints, vs one model (greedy)",
    ("test", "test_noisy"),
    ("wer", "intent_acc", "ece_intent"),
    "test",
    None,
  ),
}
DEFER_FRACTION = 0.10


# --- Running ----------------------------------------------------------------------------


def _atomic_json(path: pathlib.Path, value) -> None:
  from moe_asr.evaluation import report as report_lib

  report_lib.write_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _done(directory: pathlib.Path, key: dict) -> bool:
  marker = directory / "DONE"
  if not marker.exists():
    return False
  try:
    return json.loads(marker.read_text()).get("key") == key
  except (OSError, json.JSONDecodeError):
    return False


def _mark_done(directory: pathlib.Path, key: dict, **extra) -> None:
  _atomic_json(directory / "DONE", {"key": key, **extra})


def _config_path(name: str) -> pathlib.Path:
  """A preset's file (`demo`, `tiny`) or a config file of the user's."""
  from moe_asr import config_lib

  try:
    return config_lib.resolve_config(name)[0]
  except FileNotFoundError as e:
    raise SystemExit(f"--config {name}: {e}") from None


@functools.cache
def _recipe_digest(config: str, overrides: tuple[str, ...], part: str = "model") -> str:
  """A digest of a resolved config: a recipe changed since a marker was written does not
  match it. `part`: "model" (all but the `decode` section: what training reads) or
  "decode" (that section: what scoring reads besides the model)."""
  from moe_asr import config_lib

  resolved = config_lib.load_config(_config_path(config), list(overrides)).to_dict()
  if part == "decode":
    resolved = resolved["decode"]
  else:
    resolved.pop("decode", None)
  text = json.dumps(resolved, sort_keys=True, default=repr)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _portable(overrides: Sequence[str]) -> list[str]:
  """The overrides without `data.data_dir` (a path on one machine)."""
  return [o for o in overrides if not o.startswith("data.data_dir=")]


def _commit() -> str | None:
  """The git commit of this checkout, when it is one."""
  try:
    proc = subprocess.run(
      ["git", "rev-parse", "HEAD"],
      cwd=pathlib.Path(__file__).parent,
      capture_output=True,
      text=True,
      check=False,
    )
  except OSError:
    return None
  return proc.stdout.strip() or None


@dataclasses.dataclass
class Plan:
  out: pathlib.Path
  config: str
  seeds: tuple[int, ...]
  steps: int | None
  data_dir: str | None
  overrides: tuple[str, ...]
  splits: tuple[str, ...] | None
  max_batches: int
  lm_steps: int
  bootstrap: int
  archive: pathlib.Path | None = None
  pins: tuple[str, ...] = ()  # RECIPE_PINS of the config: first, under every other override.

  def model_dir(self, model: str, seed: int) -> pathlib.Path:
    return self.out / "models" / model / f"seed{seed}"

  def eval_dir(self, arm: Arm, seed: int) -> pathlib.Path:
    return self.out / "evals" / arm.id / f"seed{seed}"

  def model_overrides(self, model: str, seed: int) -> list[str]:
    extra = [f"seed={seed}"]
    # Two saved checkpoints at least, for the checkpoint average (E10).
    cadence = [f"train.checkpoint_every={max(1, self.steps // 2)}"] if self.steps else []
    if self.steps is not None:
      extra.append(f"train.steps={self.steps}")
    if self.data_dir is not None:
      extra.append(f"data.data_dir={os.path.abspath(self.data_dir)!r}")
    return [*self.pins, *MODELS[model], *cadence, *self.overrides, *extra]

  def model_key(self, model: str, seed: int) -> dict:
    """What a trained model depends on. Not the decoding (an arm's key holds that), nor
    where the corpus lies: the data dir is left out (the corpus is named by `data.name` in
    the resolved config), so an archive restores on another machine or checkout."""
    overrides = [
      o for o in _portable(self.model_overrides(model, seed)) if not o.startswith("decode.")
    ]
    return {
      "config": self.config,
      "overrides": [o for o in overrides if o not in self.pins],  # In the digest.
      "recipe": _recipe_digest(self.config, tuple(overrides)),
    }

  def arm_seeds(self, arm: Arm) -> tuple[int, ...]:
    """The seeds an arm is scored on (an ensemble: once, on the first; none without two)."""
    if arm.ensemble:
      return self.seeds[:1] if len(self.seeds) > 1 else ()
    return self.seeds if arm.all_seeds else self.seeds[:1]

  def model_seeds(self, arm: Arm) -> tuple[int, ...]:
    """The seeds of the models an arm needs trained."""
    return self.seeds if arm.ensemble and len(self.seeds) > 1 else self.arm_seeds(arm)

  def arm_splits(self, arm: Arm) -> tuple[str, ...]:
    wanted = EXPERIMENTS[arm.experiment].splits
    return tuple(s for s in wanted if self.splits is None or s in self.splits)


def train_model(plan: Plan, model: str, seed: int) -> None:
  """Trains one model (resuming a run cut short) unless its DONE marker matches."""
  from moe_asr import config_lib
  from moe_asr.training import train

  workdir = plan.model_dir(model, seed)
  key = plan.model_key(model, seed)
  if _done(workdir, key):
    _LOG.info("model %s seed %d: done, skipped", model, seed)
    return
  # A workdir started with other settings would be resumed under the wrong ones: refuse.
  started = workdir / "STARTED"
  if started.exists() and json.loads(started.read_text()).get("key") != key:
    raise SystemExit(
      f"{workdir} holds a run of other settings ({started}); use another --out or remove it"
    )
  cfg = config_lib.load_config(_config_path(plan.config), plan.model_overrides(model, seed))
  workdir.mkdir(parents=True, exist_ok=True)
  _atomic_json(started, {"key": key})
  _LOG.info("model %s seed %d: training %d steps in %s", model, seed, cfg.train.steps, workdir)
  start = time.time()
  summary = train.train_and_evaluate(cfg, workdir)
  if summary.get("preempted"):
    raise SystemExit(f"training {workdir} was stopped; run again to resume")
  _mark_done(workdir, key, seconds=time.time() - start, step=summary.get("step"))


def train_lm(plan: Plan, model: str, seed: int) -> None:
  from moe_asr.evaluation import score
  from moe_asr.training import text_lm

  workdir = plan.model_dir(model, seed)
  marker_dir = workdir / "lm"
  key = {**plan.model_key(model, seed), "lm_steps": plan.lm_steps}
  if _done(marker_dir, key):
    return
  cfg = score.workdir_config(workdir)
  text_lm.train_workdir_lm(cfg, workdir, steps=plan.lm_steps)
  _mark_done(marker_dir, key)


# Files of a model's workdir that an arm's view does not share (each arm tunes its own).
_VIEW_OWN = {"decoding.json", "calibration.json", "eval", "DONE", "STARTED"}


def _view(plan: Plan, arm: Arm, seed: int) -> pathlib.Path:
  """A workdir of links to the model's files, with the arm's own decoding/calibration."""
  source = plan.model_dir(arm.model, seed).absolute()
  view = plan.out.absolute() / "views" / arm.id / f"seed{seed}"
  view.mkdir(parents=True, exist_ok=True)
  for entry in source.iterdir():
    link = view / entry.name
    if entry.name in _VIEW_OWN or entry.name.startswith("."):
      continue
    if link.is_symlink():
      link.unlink()
    link.symlink_to(entry, target_is_directory=entry.is_dir())
  return view


def _eval_key(plan: Plan, arm: Arm, seed: int) -> dict:
  """What an arm's DONE marker records: every setting its scores depend on."""
  key = {
    **plan.model_key(arm.model, seed),
    "decode": list(arm.decode),
    "decode_recipe": _recipe_digest(plan.config, _decode_overrides(plan, arm, seed), "decode"),
    "splits": list(plan.arm_splits(arm)),
    "max_batches": plan.max_batches,
    "calibrate": arm.calibrate,
    "lm_steps": plan.lm_steps if arm.needs_lm or arm.calibrate else None,
    "average_last": arm.average_last,
  }
  if arm.ensemble:
    key["ensemble"] = {"members": [plan.model_key(arm.model, s) for s in _members(plan, seed)]}
  return key


def _decode_overrides(plan: Plan, arm: Arm, seed: int) -> tuple[str, ...]:
  """The overrides an arm's `decode` section resolves from (its key digests that section)."""
  return (*_portable(plan.model_overrides(arm.model, seed)), *arm.decode)


def _decode_section(plan: Plan, arm: Arm, seed: int):
  """The resolved `decode` section an arm scores with (the recipe's, the arm's settings)."""
  from moe_asr import config_lib

  overrides = list(_decode_overrides(plan, arm, seed))
  return config_lib.load_config(_config_path(plan.config), overrides).decode


def _members(plan: Plan, seed: int) -> list[int]:
  """The seeds of the other models of an ensemble scored on `seed`'s."""
  return [s for s in plan.seeds if s != seed]


def _ensemble_weights(workdirs: Sequence[pathlib.Path]) -> str:
  """By validation CER where every member logged one, else equal."""
  from moe_asr.training import ensemble

  if all(ensemble.last_validation_cer(w) is not None for w in workdirs):
    return "validation"
  return "equal"


def seeds_scored(plan: Plan, arm: Arm) -> list[int]:
  """The seeds of an arm scored under the plan's settings."""
  return [s for s in plan.arm_seeds(arm) if _done(plan.eval_dir(arm, s), _eval_key(plan, arm, s))]


def arms_scored(plan: Plan) -> list[Arm]:
  """The arms with a seed scored under the plan's settings (here or by an earlier --arms)."""
  return [arm for arm in ARMS if seeds_scored(plan, arm)]


def evaluate_arm(plan: Plan, arm: Arm, seed: int) -> None:
  """Scores one arm's model with its decode settings; hypotheses under evals/<arm>/seed<k>."""
  from moe_asr.evaluation import score

  out_dir = plan.eval_dir(arm, seed)
  splits = plan.arm_splits(arm)
  key = _eval_key(plan, arm, seed)
  if _done(out_dir, key):
    _LOG.info("arm %s seed %d: done, skipped", arm.id, seed)
    return
  if not splits:
    return
  if arm.needs_lm or arm.calibrate:
    train_lm(plan, arm.model, seed)
  overrides = [*arm.decode, "eval.plots=False", f"eval.max_batches={plan.max_batches}"]
  workdir = plan.model_dir(arm.model, seed)
  members = [plan.model_dir(arm.model, s) for s in _members(plan, seed)] if arm.ensemble else []
  weights = _ensemble_weights([workdir, *members])
  if arm.calibrate:
    workdir = _view(plan, arm, seed)
    # The fusion grid is one point (no LM): only the calibration is fitted.
    score.tune_decoding(
      workdir, lm_weights=(0.0,), overrides=list(arm.decode), max_batches=plan.max_batches
    )
  _LOG.info("arm %s seed %d: scoring %s", arm.id, seed, ", ".join(splits))
  start = time.time()
  cfg = score.workdir_config(workdir, overrides)
  # The decoding the arm's key names: the recipe's as it is now, with the arm's settings,
  # not the one saved with the checkpoint when the model was trained.
  cfg.decode = _decode_section(plan, arm, seed)
  score.evaluate_workdir(
    workdir,
    splits=splits,
    overrides=overrides,
    cfg=cfg,
    out_dir=out_dir,
    average_last=arm.average_last,
    ensemble=members,
    ensemble_weights=weights,
  )
  trained = json.loads((plan.model_dir(arm.model, seed) / "DONE").read_text())
  _atomic_json(out_dir / "bias_phrases.json", _bias_phrases(plan))
  _mark_done(
    out_dir,
    key,
    seconds=time.time() - start,
    train_seconds=trained.get("seconds"),
    ensemble_weights=weights if arm.ensemble else None,
    commit=_commit(),
    written=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    machine=_machine(),
  )
  archive_arm(plan, arm, seed)


# --- The archive ------------------------------------------------------------------------


def _archive_dir(plan: Plan, arm: Arm, seed: int) -> pathlib.Path:
  assert plan.archive is not None
  return plan.archive / "evals" / arm.id / f"seed{seed}"


def _copy_eval(source: pathlib.Path, target: pathlib.Path, *, pack: bool) -> None:
  """An arm's scores from one eval directory to another, whole or not at all.

  `pack`: hypotheses/*.jsonl are gzipped on the way (else unpacked). Written to a
  temporary directory renamed into place, the DONE marker copied last before the rename.
  """
  tmp = target.with_name(target.name + ".partial")
  shutil.rmtree(tmp, ignore_errors=True)
  (tmp / "hypotheses").mkdir(parents=True)
  for name in ("report.json", "bias_phrases.json"):
    if (source / name).exists():
      shutil.copy2(source / name, tmp / name)
  for path in sorted((source / "hypotheses").iterdir()):
    if pack and path.suffix == ".jsonl":
      with (
        path.open("rb") as f,
        gzip.GzipFile(tmp / "hypotheses" / (path.name + ".gz"), "wb", mtime=0) as g,
      ):
        shutil.copyfileobj(f, g)
    elif not pack and path.name.endswith(".jsonl.gz"):
      with gzip.open(path, "rb") as f, (tmp / "hypotheses" / path.name[:-3]).open("wb") as g:
        shutil.copyfileobj(f, g)
  shutil.copy2(source / "DONE", tmp / "DONE")
  shutil.rmtree(target, ignore_errors=True)
  tmp.rename(target)


def archive_arm(plan: Plan, arm: Arm, seed: int) -> None:
  """Copies a scored arm into the archive (nothing without --archive)."""
  if plan.archive is not None:
    target = _archive_dir(plan, arm, seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    _copy_eval(plan.eval_dir(arm, seed), target, pack=True)


def restore_archived(plan: Plan, arms: Sequence[Arm]) -> list[str]:
  """Arms scored earlier under the plan's settings, from the archive into --out."""
  restored = []
  if plan.archive is None:
    return restored
  for arm in arms:
    for seed in plan.arm_seeds(arm):
      key, out_dir = _eval_key(plan, arm, seed), plan.eval_dir(arm, seed)
      if _done(out_dir, key) or not _done(_archive_dir(plan, arm, seed), key):
        continue
      out_dir.parent.mkdir(parents=True, exist_ok=True)
      _copy_eval(_archive_dir(plan, arm, seed), out_dir, pack=False)
      restored.append(f"{arm.id}/seed{seed}")
  if restored:
    _LOG.info("restored from %s: %s", plan.archive, ", ".join(restored))
  return restored


# --- The table --------------------------------------------------------------------------


def load_records(plan: Plan, arm: Arm, seed: int, split: str):
  from moe_asr.evaluation import metrics as metrics_lib

  path = plan.eval_dir(arm, seed) / "hypotheses" / f"{split}.jsonl"
  if not path.exists():
    return None
  return [metrics_lib.Utterance.from_json(json.loads(line)) for line in path.open() if line]


def _bias_phrases(plan: Plan) -> list[str]:
  """The corpus's bias phrases (normalised), from the first model's run data."""
  from moe_asr.data import text as text_lib

  for path in sorted((plan.out / "models").glob("*/seed*/run_data.json")):
    data = json.loads(path.read_text())
    meta = data.get("metadata") or {}
    phrases = meta.get("bias_phrases") or data.get("bias_phrases")
    if phrases:
      return [text_lib.normalize(p if isinstance(p, str) else p[0]) for p in phrases]
  # Arms restored from an archive have no model here: their scoring kept the phrases.
  for path in sorted((plan.out / "evals").glob("*/seed*/bias_phrases.json")):
    return json.loads(path.read_text())
  return []


def _metric_fn(metric: str, phrases: Sequence[str]):
  """A `bootstrap_ci` metric: a ratio-metric name, or B-WER / U-WER against the phrases."""
  from moe_asr.evaluation import metrics as metrics_lib

  if metric not in ("b_wer", "u_wer"):
    return metric
  which = 0 if metric == "b_wer" else 1

  def arrays(records):
    counts = [
      metrics_lib.biased_edit_counts(r.ref_text, r.hyp_text, phrases)[which]
      if r.ref_text.strip()
      else metrics_lib.EditCounts(0, 0, 0, 0)
      for r in records
    ]
    return (
      np.array([c.errors for c in counts], np.float64),
      np.array([c.ref_len for c in counts], np.float64),
    )

  return arrays


def _value(records, metric) -> float | None:
  if isinstance(metric, str):
    from moe_asr.evaluation import metrics as metrics_lib

    value = metrics_lib.summarize(records).get(metric)
    return None if value is None else float(value)
  num, den = metric(records)
  return float(num.sum() / den.sum()) if den.sum() else None


def paired_effect(records, base_records, metric, *, samples: int, seed: int = 0) -> dict:
  """Arm and baseline values on the utterances both scored, and the paired 95% CI."""
  from moe_asr.evaluation import metrics as metrics_lib

  base_ids = {r.id for r in base_records}
  records = [r for r in records if r.id in base_ids]
  ids = {r.id for r in records}
  base_records = [r for r in base_records if r.id in ids]
  arm, base = _value(records, metric), _value(base_records, metric)
  lo = hi = math.nan
  if not isinstance(metric, str) or metric in metrics_lib.RATIO_METRICS:  # Else no interval.
    lo, hi = metrics_lib.bootstrap_ci(
      records, metric, baseline=base_records, num_samples=samples, seed=seed
    )
  return {
    "n": len(records),
    "arm": arm,
    "baseline": base,
    "diff": None if arm is None or base is None else arm - base,
    "ci": None if math.isnan(lo) else [lo, hi],
  }


def _mean_effect(per_seed: dict[int, dict]) -> dict | None:
  """The seed mean of an effect, with the spread of the per-seed differences."""
  diffs = [e["diff"] for e in per_seed.values() if e["diff"] is not None]
  if not diffs:
    return None
  bases = [e["baseline"] for e in per_seed.values() if e["baseline"] is not None]
  arms = [e["arm"] for e in per_seed.values() if e["arm"] is not None]
  return {
    "diff": float(np.mean(diffs)),
    "baseline": float(np.mean(bases)) if bases else None,
    "arm": float(np.mean(arms)) if arms else None,
    "seed_min": float(min(diffs)),
    "seed_max": float(max(diffs)),
    "seeds": len(diffs),
  }


def comparisons(plan: Plan, arms: Sequence[Arm]) -> list[dict]:
  """Every (arm vs its baseline, split, metric) effect, per seed and on the seed mean."""
  phrases = _bias_phrases(plan)
  rows = []
  for arm in arms:
    if arm.baseline is None:
      continue
    base = ARM_BY_ID[arm.baseline]
    exp = EXPERIMENTS[arm.experiment]
    base_seeds = seeds_scored(plan, base)
    seeds = [s for s in seeds_scored(plan, arm) if s in base_seeds]
    for split in plan.arm_splits(arm):
      for metric in exp.metrics:
        if metric in ("b_wer", "u_wer") and not phrases:
          continue
        fn = _metric_fn(metric, phrases)
        per_seed = {}
        for seed in seeds:
          recs, base_recs = (
            load_records(plan, arm, seed, split),
            load_records(plan, base, seed, split),
          )
          if recs is None or base_recs is None:
            continue
          effect = paired_effect(recs, base_recs, fn, samples=plan.bootstrap, seed=seed)
          if effect["diff"] is not None:
            per_seed[seed] = effect
        if per_seed:
          rows.append(
            {
              "experiment": arm.experiment,
              "arm": arm.id,
              "baseline": base.id,
              "split": split,
              "metric": metric,
              "seeds": {str(k): v for k, v in per_seed.items()},
              "mean": _mean_effect(per_seed),
            }
          )
  return rows


def _deferral(records, fraction: float) -> tuple[list, list]:
  """(records with the least confident `fraction` by intent confidence unlabelled, records).

  The deferred utterances get no reference intent, so intent accuracy on the first list is
  that of the kept ones; the pair goes to the paired bootstrap as they are."""
  conf = np.array([r.intent_confidence for r in records], np.float64)
  finite = np.isfinite(conf)
  if not finite.any():
    return records, records
  threshold = np.quantile(conf[finite], fraction)
  kept = [
    r
    if (np.isfinite(r.intent_confidence) and r.intent_confidence > threshold)
    else dataclasses.replace(r, ref_intent="")
    for r in records
  ]
  return kept, records


def calibration_rows(plan: Plan, arms: Sequence[Arm]) -> list[dict]:
  """E6: ECE before and after calibration; intent accuracy with 10% deferred vs none."""
  from moe_asr.evaluation import metrics as metrics_lib

  rows = []
  for arm in arms:
    if not arm.calibrate:
      continue
    for split in plan.arm_splits(arm):
      for seed in seeds_scored(plan, arm):
        recs = load_records(plan, arm, seed, split)
        if recs is None:
          continue
        summary = metrics_lib.summarize(recs)
        kept, all_recs = _deferral(recs, DEFER_FRACTION)
        effect = paired_effect(kept, all_recs, "intent_acc", samples=plan.bootstrap, seed=seed)
        ece_after = summary.get("ece_intent")
        rows.append(
          {
            "experiment": arm.experiment,
            "arm": arm.id,
            "split": split,
            "seed": seed,
            "ece_intent_before": summary.get("ece_intent_raw"),
            "ece_intent_after": ece_after,
            "intent_acc": effect["baseline"],
            "intent_acc_deferred": effect["arm"],
            "deferral_gain": effect["diff"],
            "deferral_ci": effect["ci"],
            "holds": _all(
              None if ece_after is None else ece_after <= 0.03,
              None if effect["diff"] is None else effect["diff"] >= 0.03,
            ),
          }
        )
  return rows


def goals(plan: Plan, rows: Sequence[dict], arms: Sequence[Arm]) -> list[dict]:
  """Each arm's verdict on its experiment's goal, from the seed-mean effects, and the same
  check seed by seed (`seed_holds`: seed -> verdict), so a mean carried by one seed shows."""
  out = []
  for arm in arms:
    exp = EXPERIMENTS[arm.experiment]
    if arm.baseline is None or exp.goal is None:
      continue
    mine = [r for r in rows if r["arm"] == arm.id and r["split"] == exp.goal_split and r["mean"]]
    effects = {r["metric"]: r["mean"] for r in mine}
    by_seed: dict[str, dict] = {}
    for r in mine:
      for seed, effect in r["seeds"].items():
        by_seed.setdefault(seed, {})[r["metric"]] = effect
    verdict = exp.goal.check(effects) if effects else None
    out.append(
      {
        "experiment": arm.experiment,
        "arm": arm.id,
        "baseline": arm.baseline,
        "goal": exp.goal.text,
        "split": exp.goal_split,
        "holds": verdict,
        "seeds": max((e["seeds"] for e in effects.values()), default=0),
        "seed_holds": {seed: exp.goal.check(e) for seed, e in sorted(by_seed.items())},
      }
    )
  return out


def _pts(x: float | None, scale: float = 100.0, signed: bool = False) -> str:
  if x is None:
    return "n/a"
  return f"{scale * x:+.1f}" if signed else f"{scale * x:.1f}"


def _verdict(v: bool | None) -> str:
  return "not measured" if v is None else ("holds" if v else "does not hold")


def _seed_count(n: int) -> str:
  return f" ({n} seed{'s' if n != 1 else ''})" if n else ""


def _goal_verdict(goal: dict) -> str:
  """The verdict cell: "holds (2 seeds)", or that with the seeds that disagree named."""
  text = _verdict(goal["holds"]) + _seed_count(goal.get("seeds", 0))
  per_seed = goal.get("seed_holds") or {}
  if goal["holds"] is None or len(per_seed) < 2 or set(per_seed.values()) == {goal["holds"]}:
    return text
  agree = sum(v == goal["holds"] for v in per_seed.values())
  rest = ", ".join(f"seed {s}: {_verdict(v)}" for s, v in per_seed.items() if v != goal["holds"])
  return f"{text} on the mean; {agree} of {len(per_seed)} seeds alone ({rest})"


def _scored(arm: dict) -> str:
  """When, at which commit and in how many minutes each seed of an arm was scored."""
  out = []
  for seed, when in (arm.get("scored") or {}).items():
    took = arm["seconds"].get(seed) or {}
    minutes = "+".join(
      f"{took[k] / 60:.1f}" if isinstance(took.get(k), int | float) else "?"
      for k in ("train", "score")
    )
    commit = (when.get("commit") or "?")[:8]
    out.append(f"seed {seed}: {when.get('written') or '?'}, {commit}, {minutes}")
  return "; ".join(out) or "n/a"


def format_markdown(result: dict) -> str:
  lines = ["# Evidence: does each idea pay on the task?", ""]
  meta = result["meta"]
  lines += [
    f"Config `{meta['config']}`, seeds {', '.join(map(str, meta['seeds']))}, "
    f"steps {meta['steps'] if meta['steps'] is not None else 'as the config'}, "
    f"{meta['bootstrap']} bootstrap resamples; written {meta['written']} on {meta['machine']}.",
    "",
    "Values in % (points). Effect = arm - baseline on the same utterances, seed mean; "
    "`95% CI` is the paired bootstrap interval of each seed (utterances resampled together "
    "for both systems; n/a for ECE, which is not a ratio of per-utterance sums); `seeds` is "
    "the range of the per-seed effects. Lower is better for "
    "error rates (WER, CER, MER, B-WER, U-WER), higher for accuracies and F1.",
    "",
    "## Goals",
    "",
    "| exp | arm | vs | goal | split | verdict |",
    "|---|---|---|---|---|---|",
  ]
  for g in result["goals"]:
    lines.append(
      f"| {g['experiment']} | {g['arm']} | {g['baseline']} | {g['goal']} | `{g['split']}` | "
      f"{_goal_verdict(g)} |"
    )
  for row in result["calibration"]:
    lines.append(
      f"| {row['experiment']} | {row['arm']} | (itself) | ECE <= 0.03 after calibration, "
      f"+3 points intent at 10% deferred | `{row['split']}` seed {row['seed']} | "
      f"{_verdict(row['holds'])} |"
    )
  lines += ["", "## Effects", ""]
  for exp_id, exp in EXPERIMENTS.items():
    rows = [r for r in result["effects"] if r["experiment"] == exp_id]
    if not rows:
      continue
    lines += [f"### {exp_id}: {exp.title}", ""]
    lines += [
      "| arm | vs | split | metric | baseline | arm value | effect | 95% CI (per seed) | seeds |",
      "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
      m = r["mean"]
      cis = "; ".join(
        f"[{_pts(e['ci'][0], signed=True)}, {_pts(e['ci'][1], signed=True)}]" if e["ci"] else "n/a"
        for e in r["seeds"].values()
      )
      spread = f"{_pts(m['seed_min'], signed=True)} .. {_pts(m['seed_max'], signed=True)}"
      lines.append(
        f"| {r['arm']} | {r['baseline']} | `{r['split']}` | {r['metric']} | "
        f"{_pts(m['baseline'])} | {_pts(m['arm'])} | {_pts(m['diff'], signed=True)} | {cis} | "
        f"{spread} ({m['seeds']}) |"
      )
    lines.append("")
  if result["calibration"]:
    lines += [f"### E6: {EXPERIMENTS['E6'].title}", ""]
    lines += [
      "| split | seed | intent ECE before | after | intent acc | kept after deferring 10% | "
      "gain | 95% CI |",
      "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["calibration"]:
      ci = r["deferral_ci"]
      lines.append(
        f"| `{r['split']}` | {r['seed']} | {_pts(r['ece_intent_before'])} | "
        f"{_pts(r['ece_intent_after'])} | {_pts(r['intent_acc'])} | "
        f"{_pts(r['intent_acc_deferred'])} | {_pts(r['deferral_gain'], signed=True)} | "
        + (f"[{_pts(ci[0], signed=True)}, {_pts(ci[1], signed=True)}]" if ci else "n/a")
        + " |"
      )
    lines.append("")
  lines += ["## Arms", ""]
  lines += ["| arm | model | decode | seeds | params active / total | scored (train + score min) |"]
  lines += ["|---|---|---|---|---|---|"]
  for a in result["arms"]:
    lines.append(
      f"| {a['id']} | {a['model']} `{' '.join(a['model_overrides']) or '(recipe)'}` | "
      f"`{' '.join(a['decode'])}` | {', '.join(map(str, a['seeds_done']))} | "
      f"{a.get('params_active', 'n/a')} / {a.get('params_total', 'n/a')} | "
      f"{_scored(a)} |"
    )
  if result.get("plots"):
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({name})" for name in result["plots"]]
  return "\n".join(lines) + "\n"


def write_plots(out: pathlib.Path, result: dict, plan: Plan, arms: Sequence[Arm]) -> list[str]:
  """Effect sizes with intervals per experiment; E2's expert load by language."""
  from matplotlib.figure import Figure

  from moe_asr.evaluation import plots as plots_lib

  written = []
  for exp_id in EXPERIMENTS:
    rows = [r for r in result["effects"] if r["experiment"] == exp_id]
    if not rows:
      continue
    fig = Figure(figsize=(7, 0.45 * len(rows) + 1.5))
    ax = fig.subplots()
    for i, r in enumerate(rows):
      for k, e in enumerate(r["seeds"].values()):
        y = i + 0.15 * (k - (len(r["seeds"]) - 1) / 2)
        ax.plot([100 * e["diff"]], [y], "o", color=f"C{k}")
        if e["ci"]:
          ax.plot([100 * e["ci"][0], 100 * e["ci"][1]], [y, y], "-", color=f"C{k}")
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.set_yticks(
      range(len(rows)), [f"{r['arm']} {r['metric']} {r['split']}" for r in rows], fontsize=7
    )
    ax.set_xlabel("effect vs baseline (points), paired 95% CI, one colour a seed")
    ax.set_title(f"{exp_id}: {EXPERIMENTS[exp_id].title}", fontsize=8)
    name = f"effects_{exp_id}.png"
    fig.tight_layout()
    fig.savefig(out / name, dpi=100)
    written.append(name)
  for arm in arms:
    if arm.experiment != "E2":
      continue
    seed = plan.arm_seeds(arm)[0]
    path = plan.eval_dir(arm, seed) / "report.json"
    if not path.exists():
      continue
    split = plan.arm_splits(arm)[0] if plan.arm_splits(arm) else None
    load = json.loads(path.read_text())["splits"].get(split, {}).get("expert_load")
    if not load or not load.get("by_language"):
      continue
    rows = [
      (lang, i, layer) for i, layer in enumerate(load["layers"]) for lang in load["by_language"]
    ]
    name = f"expert_load_{arm.id}.png"
    plots_lib.expert_utilisation(
      np.asarray([load["by_language"][lang][i] for lang, i, _ in rows]),
      [f"{lang} (block {layer})" for lang, _, layer in rows],
      out / name,
      title=f"{arm.id} seed {seed}, {split}: encoder expert load by language",
    )
    written.append(name)
  return written


def _machine() -> str:
  import platform

  cpu = platform.processor() or platform.machine()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return f"{cpu}, {len(os.sched_getaffinity(0))} cores"


def summarize_experiment(plan: Plan, arms: Sequence[Arm]) -> dict:
  rows = comparisons(plan, arms)
  result = {
    "meta": {
      "config": plan.config,
      "seeds": list(plan.seeds),
      "steps": plan.steps,
      "overrides": list(plan.overrides),
      "bootstrap": plan.bootstrap,
      "machine": _machine(),
      "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    },
    "effects": rows,
    "calibration": calibration_rows(plan, arms),
    "goals": goals(plan, rows, arms),
    "arms": [],
  }
  for arm in arms:
    entry = {
      "id": arm.id,
      "experiment": arm.experiment,
      "model": arm.model,
      "model_overrides": list(MODELS[arm.model]),
      "decode": list(arm.decode)
      + ([f"--average-last {arm.average_last}"] if arm.average_last else [])
      + (["--ensemble (the other seeds' models)"] if arm.ensemble else []),
      "baseline": arm.baseline,
      "seeds_done": seeds_scored(plan, arm),
      "seconds": {},
    }
    for seed in entry["seeds_done"]:
      report = json.loads((plan.eval_dir(arm, seed) / "report.json").read_text())
      entry["params_active"] = report["model"]["params_active"]
      entry["params_total"] = report["model"]["params_total"]
      done = json.loads((plan.eval_dir(arm, seed) / "DONE").read_text())
      entry["seconds"][str(seed)] = {"train": done.get("train_seconds"), "score": done["seconds"]}
      entry.setdefault("scored", {})[str(seed)] = {
        k: done.get(k) for k in ("written", "commit", "machine")
      }
    result["arms"].append(entry)
  return result


def select_arms(spec: str | None) -> list[Arm]:
  """Arms named by experiment ids or arm ids (comma-separated), with their baselines."""
  if not spec:
    return list(ARMS)
  names = [s.strip() for s in spec.split(",") if s.strip()]
  chosen = set()
  for name in names:
    hits = [a.id for a in ARMS if a.id == name or a.experiment == name]
    if not hits:
      known = sorted({a.experiment for a in ARMS}) + [a.id for a in ARMS]
      raise SystemExit(f"--arms: unknown {name!r}; known: {', '.join(known)}")
    chosen.update(hits)
  for arm_id in list(chosen):  # An arm needs its baseline.
    base = ARM_BY_ID[arm_id].baseline
    if base:
      chosen.add(base)
  return [a for a in ARMS if a.id in chosen]


def run(plan: Plan, arms: Sequence[Arm], *, table_only: bool = False) -> dict:
  """Trains and scores what is not done yet, then writes the table; returns its JSON.

  `table_only`: nothing is trained or scored; the table is written from the arms scored
  so far (here or in the archive), each on the seeds it has."""
  plan.out.mkdir(parents=True, exist_ok=True)
  start = time.time()
  restore_archived(plan, ARMS)
  needed = {}  # The (model, seed) pairs of the arm seeds not scored yet, in order.
  for a in () if table_only else arms:
    for s in plan.arm_seeds(a):
      if not _done(plan.eval_dir(a, s), _eval_key(plan, a, s)):
        needed.update(
          dict.fromkeys((a.model, k) for k in (plan.model_seeds(a) if a.ensemble else (s,)))
        )
  for seed in plan.seeds:  # Models first (seed by seed), so a cut-short run has whole models.
    for model in dict.fromkeys(m for m, k in needed if k == seed):
      train_model(plan, model, seed)
  for arm in () if table_only else arms:
    for seed in plan.arm_seeds(arm):
      evaluate_arm(plan, arm, seed)
  scored = arms_scored(plan)
  if plan.archive is not None:  # Arms scored before the archive was named go in too.
    for arm in scored:
      for seed in seeds_scored(plan, arm):
        if not _done(_archive_dir(plan, arm, seed), _eval_key(plan, arm, seed)):
          archive_arm(plan, arm, seed)
  # The table holds every arm scored under these settings, this invocation's and earlier ones'.
  chosen = (
    {a.id for a in scored} & {a.id for a in arms}
    if table_only
    else {a.id for a in (*scored, *arms)}
  )
  arms = [a for a in ARMS if a.id in chosen]
  result = summarize_experiment(plan, arms)
  result["plots"] = write_plots(plan.out, result, plan, arms)
  result["meta"]["wall_seconds_this_invocation"] = time.time() - start
  from moe_asr.evaluation import report as report_lib

  for directory in (plan.out, plan.archive):
    if directory is None:
      continue
    if directory != plan.out:
      for name in result["plots"]:
        shutil.copy2(plan.out / name, directory / name)
    _atomic_json(directory / "evidence.json", result)
    report_lib.write_atomic(directory / "evidence.md", format_markdown(result))
  return result


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--out", default="runs/evidence", help="experiment directory")
  p.add_argument("--config", default="demo", help="preset name or config file")
  p.add_argument("--data-dir", default=None, help="TFDS data dir (default: the config's)")
  p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
  p.add_argument("--arms", default=None, help="experiments or arms, e.g. E1,E2 or E5.bias")
  p.add_argument("--splits", nargs="+", default=None, help="only these test splits")
  p.add_argument("--max-batches", type=int, default=0, help="batches scored per split (0: all)")
  p.add_argument("--lm-steps", type=int, default=1000, help="text LM steps (E4, E6)")
  p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
  p.add_argument(
    "--archive", default=None, help="kept scores: arms restored from and copied to it, the table"
  )
  p.add_argument(
    "--table-only",
    action="store_true",
    help="train and score nothing: the table from the arms scored so far (and the archive)",
  )
  p.add_argument(
    "--current-recipe",
    action="store_true",
    help="the config as it is now, without the settings RECIPE_PINS keeps for the table",
  )
  p.add_argument("--list", action="store_true", help="print the arms and exit")
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides = [a.removeprefix("--config.") for a in argv if a.startswith("--config.")]
  args = p.parse_args([a for a in argv if not a.startswith("--config.")])
  return args, overrides


def main(argv: Sequence[str] | None = None) -> int:
  args, overrides = parse_args(argv)
  if args.list:
    for a in ARMS:
      print(
        f"{a.id:18s} {a.model:16s} {' '.join(MODELS[a.model]) or '(recipe)'} | "
        f"{' '.join(a.decode)}"
        + (f" --average-last {a.average_last}" if a.average_last else "")
        + (" --ensemble (the other seeds)" if a.ensemble else "")
        + (" (LM)" if a.needs_lm else "")
        + (" (calibrated)" if a.calibrate else "")
        + (f" | vs {a.baseline}" if a.baseline else "")
      )
    return 0
  logging.basicConfig(
    level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
  )
  logging.getLogger("moe_asr").setLevel(logging.INFO)
  _LOG.setLevel(logging.INFO)
  plan = Plan(
    out=pathlib.Path(args.out),
    config=args.config,
    seeds=tuple(args.seeds),
    steps=args.steps,
    data_dir=args.data_dir,
    overrides=tuple(overrides),
    splits=tuple(args.splits) if args.splits else None,
    max_batches=args.max_batches,
    lm_steps=args.lm_steps,
    bootstrap=args.bootstrap,
    archive=pathlib.Path(args.archive) if args.archive else None,
    pins=() if args.current_recipe else RECIPE_PINS.get(args.config, ()),
  )
  result = run(plan, select_arms(args.arms), table_only=args.table_only)
  print((plan.out / "evidence.md").read_text())
  print(
    f"Wrote {plan.out / 'evidence.md'} and evidence.json "
    f"in {result['meta']['wall_seconds_this_invocation']:.0f} s"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
