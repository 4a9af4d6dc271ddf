"""`moe-asr eval`: restore a workdir's model, decode splits, write the report.

Writes `W/eval/report.json` (docs/design.md §7), `report.md`, per-utterance
hypotheses and plots, and returns the report.

Every utterance of a split is scored, whatever its length: with `eval.long_policy="window"`
(the default) one longer than the last training bucket is decoded in windows cut at pauses
and stitched (`evaluate.decode_long_examples`), in the training buckets' shapes; the
report's `long_form` counts them. `eval.long_policy="bucket"` decodes such utterances whole
in one more bucket sized to the longest (what validation during training does).
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from moe_asr import config_lib, runtime
from moe_asr.data import languages as langs_lib
from moe_asr.decoding import confidence as confidence_lib
from moe_asr.decoding import decode as decode_lib
from moe_asr.evaluation import evaluate
from moe_asr.evaluation import metrics as metrics_lib
from moe_asr.evaluation import report as report_lib
from moe_asr.models import info as info_lib
from moe_asr.models import partitioning
from moe_asr.training import averaging, distributed, text_lm
from moe_asr.training import checkpoint as checkpoint_lib
from moe_asr.training import ensemble as ensemble_lib

_LOG = logging.getLogger(__name__)


# `eval.long_policy`: how `moe-asr eval` decodes utterances longer than the last bucket.
EVAL_LONG_POLICIES = ("window", "bucket")
DECODING_FILE = "decoding.json"  # Tuned decoding settings (`moe-asr tune-decoding`).
CALIBRATION_FILE = "calibration.json"  # Fitted calibration (`confidence.Calibration`).


def workdir_config(
  workdir: str | pathlib.Path, overrides: Sequence[str] = (), *, step: int | None = None
) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (from a checkpoint), with overrides.

  The config of checkpoint `step`, else of the newest step whose config reads back. The
  `decode` section starts from the defaults, then the checkpoint's, then the tuned
  settings of `W/decoding.json`, then `overrides`.
  """
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise FileNotFoundError(f"Workdir {workdir} does not exist; check the --workdir path.")
  ckpt_dir = workdir / "checkpoints"
  saved = checkpoint_lib.read_config(ckpt_dir, step) if ckpt_dir.exists() else None
  if saved is None:
    raise FileNotFoundError(
      f"No checkpoint with a config in {ckpt_dir}; train first (moe-asr train --workdir {workdir})."
    )
  cfg = ml_collections.ConfigDict(saved)
  cfg.data.data_dir = _resolve_recorded_dir(cfg.data.get("data_dir", ""), workdir)
  # Settings added since the run was trained get their defaults.
  defaults = config_lib.load_config("base")
  for section in ("eval", "lm_train"):
    if section not in cfg:
      cfg[section] = defaults[section]
    for key, value in defaults[section].items():
      if key not in cfg[section]:
        cfg[section][key] = value
  if "long_policy" not in cfg.eval:
    cfg.eval.long_policy = "window"
  decode_cfg = decode_lib.default_config()
  decode_cfg.update(cfg.get("decode") or {})
  tuned = workdir / DECODING_FILE
  if tuned.exists():
    decode_cfg.update(json.loads(tuned.read_text())["decode"])
  cfg.decode = decode_cfg
  config_lib.apply_overrides(cfg, overrides)
  return cfg


def _resolve_recorded_dir(path: str, workdir: pathlib.Path) -> str:
  """A folder a workdir recorded, made absolute.

  Runs record absolute paths; an older run's relative one meant a folder relative to where it
  was started, unknown now: the current directory, the workdir and the two folders above it
  are tried, in that order (the demo's `data` beside `runs/demo`); else the current directory.
  """
  if not isinstance(path, str) or not path or "://" in path or os.path.isabs(path):
    return path
  for base in (pathlib.Path.cwd(), workdir, *workdir.resolve().parents[:2]):
    if (base / path).is_dir():
      return str((base / path).resolve())
  return os.path.abspath(path)


def load_calibration(workdir: str | pathlib.Path) -> confidence_lib.Calibration | None:
  """The workdir's fitted calibration, or None."""
  path = pathlib.Path(workdir) / CALIBRATION_FILE
  return confidence_lib.Calibration.load(path) if path.exists() else None


def make_decoder(
  run: runtime.Run, workdir: str | pathlib.Path, *, tunable: bool = False, ensemble_weights=None
):
  """(compiled eval steps, description) for the run's `decode` settings.

  `run` may be an ensemble (`ensemble.combine`) decoded with `ensemble_weights`.

  Loads the text LM (`W/lm`) when the settings fuse or rescore with it and the
  bias phrase list when one is named.
  """
  dcfg = run.config.decode
  lm = None
  if decode_lib.uses_lm(dcfg) or tunable:
    lm = text_lm.load_lm(workdir, run.data.tokenizer)
    if lm is None:
      raise FileNotFoundError(
        f"decode settings use the text LM but {text_lm.lm_dir(workdir)} has none; run "
        f"`moe-asr train-lm --workdir {workdir}` first"
      )
  bias = decode_lib.load_bias(dcfg, run.data.tokenizer, run.data.metadata)
  extra = {"lm": str(text_lm.lm_dir(workdir)) if lm is not None else None}
  if bias is not None:
    extra["bias_phrases"] = int(bias.num_phrases)
  steps = evaluate.make_eval_steps(
    run, dcfg, lm=lm, bias=bias, tunable=tunable, ensemble_weights=ensemble_weights
  )
  return steps, decode_lib.describe(dcfg, extra)


def with_ensemble(
  run: runtime.Run,
  workdir: str | pathlib.Path,
  ensemble: Sequence[str | pathlib.Path],
  ensemble_weights: str | Sequence[float] = "equal",
  *,
  overrides: Sequence[str] = (),
  average_last: int = 0,
) -> tuple[runtime.Run, list[pathlib.Path], list[float] | None]:
  """(run, member workdirs, weights): `run` with the `ensemble` workdirs' models added.

  Each member restores its newest checkpoint (the mean of its last `average_last` with
  `average_last`) under its own config with `overrides`; without `ensemble`, `run` as it is
  and no weights.
  """
  members = [pathlib.Path(workdir), *(pathlib.Path(w) for w in ensemble)]
  if not ensemble:
    return run, members, None
  decode_lib.check_ensemble_search(run.config.decode, workdir)  # Before loading members.
  weights = ensemble_lib.member_weights(members, ensemble_weights)
  runs = [run]
  for member in members[1:]:
    member_run = runtime.build_run(workdir_config(member, overrides), member, for_training=False)
    if average_last:
      averaging.average_last(member_run, average_last)
    member_run.checkpointer.close()
    runs.append(member_run)
  return ensemble_lib.combine(runs), members, weights


def decode_split(
  run: runtime.Run,
  eval_steps,
  split: str,
  *,
  max_batches: int = 0,
  calibration: confidence_lib.Calibration | None = None,
) -> tuple[list, dict]:
  """(records, info) of `split` decoded by `moe-asr eval` (see the module docstring).

  With `eval.long_policy="window"` the pipeline keeps the training buckets and lists the
  longer utterances for windowed decoding; with "bucket", `evaluate.validate`'s pipeline.
  """
  policy = run.config.eval.get("long_policy", "window")
  if policy not in EVAL_LONG_POLICIES:
    raise config_lib.ConfigError(
      f"config.eval.long_policy={policy!r} is out of range: it must be one of "
      + ", ".join(map(repr, EVAL_LONG_POLICIES))
    )
  if policy == "bucket":
    _, recs, info = evaluate.validate(run, eval_steps, split, max_batches, calibration=calibration)
    return recs, info
  buckets = tuple(tuple(b) for b in run.config.data.buckets)
  _, recs, info = evaluate.validate(
    run,
    eval_steps,
    split,
    max_batches,
    overrides={"buckets": buckets, "long_policy": "window"},
    calibration=calibration,
    seconds_per_frame=evaluate.seconds_per_ctc_frame(run.config),
  )
  return recs, info


def evaluate_workdir(
  workdir: str | pathlib.Path,
  *,
  splits: Sequence[str] | None = None,
  overrides: Sequence[str] = (),
  out_dir: str | pathlib.Path | None = None,
  cfg: ml_collections.ConfigDict | None = None,
  step: int | None = None,
  average_last: int = 0,
  ensemble: Sequence[str | pathlib.Path] = (),
  ensemble_weights: str | Sequence[float] = "equal",
) -> dict:
  """Scores the newest intact checkpoint of `workdir` (or `step`) on `splits`; writes the report.

  Args:
    workdir: a training workdir.
    splits: dataset splits (default `config.eval.splits`).
    overrides: `a.b=value` config overrides (e.g. `data.data_dir=...`).
    out_dir: where the report goes (default `W/eval`).
    cfg: use this config instead of the checkpoint's.
    step: the checkpoint step to score (default: the newest that reads back).
    average_last: > 0: score the mean parameters of the last this many saved steps (up to
      `step`), see `averaging`; the report's model section names them (`averaged_steps`).
    ensemble: more workdirs decoded together with `workdir` (their newest checkpoints, each
      averaged as `average_last` says), see `ensemble`; the report's decode section names
      the members and their weights.
    ensemble_weights: "equal", "validation" or one number a member (`workdir` first).

  Returns:
    The report dict (also written to `out_dir/report.json`).
  """
  distributed.initialize()
  workdir = pathlib.Path(workdir)
  cfg = cfg if cfg is not None else workdir_config(workdir, overrides, step=step)
  splits = tuple(splits or cfg.eval.splits)
  run = runtime.build_run(cfg, workdir, for_training=False, step=step)
  averaged = averaging.average_last(run, average_last, step) if average_last else None
  run, members, weights = with_ensemble(
    run, workdir, ensemble, ensemble_weights, overrides=overrides, average_last=average_last
  )
  sizes = info_lib.model_info(
    cfg,
    vocab_size=run.data.tokenizer.vocab_size,
    num_intents=max(run.data.num_intents, 1),
    num_slot_tags=max(run.data.num_slot_tags, 1),
  )
  split_reports, records = {}, {}
  calibration = load_calibration(workdir) if cfg.eval.get("calibrate", True) else None
  # B-WER / U-WER against the decode's bias list, or else the dataset's (biasing off).
  source = cfg.decode.get("bias_file") or (
    decode_lib.CORPUS_PHRASES if (run.data.metadata or {}).get("bias_phrases") else ""
  )
  phrases = (
    decode_lib.bias_phrase_texts(decode_lib.bias_phrases(source, run.data.metadata))
    if source
    else []
  )
  with run.mesh, partitioning.axis_rules(run.rules, run.mesh):
    eval_steps, described = make_decoder(run, workdir, ensemble_weights=weights)
    if ensemble:
      described["ensemble"] = {"workdirs": [str(w) for w in members], "weights": weights}
    described["calibration"] = None if calibration is None else calibration.to_dict()
    for split in splits:
      _LOG.info("Decoding %s", split)
      recs, info = decode_split(
        run,
        eval_steps,
        split,
        max_batches=int(cfg.eval.get("max_batches", 0)),
        calibration=calibration,
      )
      records[split] = recs
      split_reports[split] = report_lib.split_report(
        recs,
        rtf=info["rtf"],
        bootstrap_samples=int(cfg.eval.get("bootstrap_samples", 1000)),
        bias_phrases=phrases,
      )
      split_reports[split]["latency_p50"] = info["latency_p50"]
      split_reports[split]["latency_p95"] = info["latency_p95"]
      split_reports[split]["skipped"] = info["skipped"]
      split_reports[split]["long_form"] = info.get("long_form")
      if "expert_load" in info:
        load = info["expert_load"]
        codes = list(langs_lib.LANGUAGE_CODES)
        codes += [f"language{i}" for i in range(len(codes), load.shape[1])]
        split_reports[split]["expert_load"] = report_lib.expert_load_report(
          load, cfg.model.encoder.moe_layers, codes[: load.shape[1]]
        )
  report = report_lib.build_report(
    model={
      "params_total": int(sizes["params_total"]),
      "params_active": int(sizes["params_active"]),
      "step": int(run.start_step),
      **({"averaged_steps": averaged} if averaged else {}),
    },
    decode=described,
    splits=split_reports,
    extra={"compiles": eval_steps.compiles, "devices": jax.device_count()},
  )
  if jax.process_index() == 0:
    out_dir = pathlib.Path(out_dir or workdir / "eval")
    metrics_path = workdir / "metrics.jsonl"
    report_lib.write_report(
      report,
      out_dir,
      records=records,
      plots=bool(cfg.eval.get("plots", True)),
      metrics_path=metrics_path if metrics_path.exists() else None,
    )
  run.checkpointer.close()
  return report


def tune_decoding(
  workdir: str | pathlib.Path,
  *,
  split: str | None = None,
  lm_weights: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.5),
  ilm_weights: Sequence[float] = (0.0,),
  overrides: Sequence[str] = (),
  max_batches: int = 0,
  target_accuracy: float = 0.95,
  bias_boosts: Sequence[float] = (),
  max_u_wer_increase: float = 0.02,
) -> dict:
  """Grid-searches the fusion weights on a held-out split; fits the calibration.

  Every grid point decodes `split` with one compiled step (the weights travel in
  the batch). The point with the lowest MER wins (then the higher intent accuracy);
  its settings go to `W/decoding.json`, which `eval` and `transcribe` read. On the
  winner's outputs the intent and LID temperatures, the Platt scaling of the
  transcript confidence and a defer threshold (the lowest that keeps intent accuracy
  >= `target_accuracy` on the kept utterances) are fitted and written to
  `W/calibration.json`.

  With `bias_boosts`, the bias boost (per character, `decode.bias_boost`) is then searched
  at the chosen weights with the phrase list of `decode.bias_file` (default: the corpus's
  own, `corpus`); the fusion grid itself runs without biasing. Each boost compiles its own
  step. The boost is chosen by `choose_bias_boost`: U-WER (words outside the phrases) may
  grow by at most `max_u_wer_increase` relative to no biasing; among the boosts that keep
  to it, the lowest B-WER wins, or the largest boost where the split has too few phrase
  words to measure B-WER.

  Args:
    workdir: a trained workdir with a text LM (`moe-asr train-lm`).
    split: held-out split (default: the first of `config.data.eval_splits`).
    lm_weights, ilm_weights: the grid (ILM only for the joint search).
    overrides: config overrides (`decode.method=joint`, `decode.beam=4`, ...).
    max_batches: decode at most this many batches per point (0 = all).
    target_accuracy: intent accuracy the defer threshold aims for.
    bias_boosts: per-character bias boosts to try (empty: no bias search).
    max_u_wer_increase: the U-WER constraint of the bias search, relative.

  Returns:
    The summary written to `W/decoding.json`.
  """
  distributed.initialize()
  workdir = pathlib.Path(workdir)
  cfg = workdir_config(workdir, overrides)
  if cfg.decode.method == "greedy":
    cfg.decode.method = "ctc_beam"
  if cfg.decode.method != "joint":
    ilm_weights = (0.0,)
  split = split or (cfg.data.get("eval_splits") or ("validation",))[0]
  bias_source = cfg.decode.get("bias_file") or decode_lib.CORPUS_PHRASES
  if bias_boosts:
    cfg.decode.bias_file = ""  # The fusion weights are tuned without biasing.
  run = runtime.build_run(cfg, workdir, for_training=False)
  results, best, best_outputs, best_records = [], None, None, None
  with run.mesh, partitioning.axis_rules(run.rules, run.mesh):
    eval_steps, _ = make_decoder(run, workdir, tunable=True)
    for lm_w in lm_weights:
      for ilm_w in ilm_weights:
        summary, recs, info = evaluate.validate(
          run,
          eval_steps,
          split,
          max_batches,
          knobs={"lm_weight": lm_w, "ilm_weight": ilm_w},
          keep_outputs=True,
        )
        point = {
          "lm_weight": lm_w,
          "ilm_weight": ilm_w,
          **{k: summary[k] for k in ("mer", "wer", "cer", "intent_acc", "slot_f1")},
          "rtf": info["rtf"],
        }
        results.append(point)
        _LOG.info("tune-decoding %s", point)
        key = (point["mer"] if point["mer"] is not None else math.inf, -(point["intent_acc"] or 0))
        if best is None or key < best[0]:
          best, best_outputs, best_records = (key, point), info["outputs"], recs
    bias_search, bias_boost = [], float(cfg.decode.bias_boost)
    if bias_boosts:
      bias_search = _tune_bias_boost(
        run, workdir, best[1], best_records, split, max_batches, bias_source, bias_boosts
      )
      bias_boost = choose_bias_boost(bias_search, max_u_wer_increase=max_u_wer_increase)
  run.checkpointer.close()
  chosen = best[1]
  decode_cfg = {
    "method": cfg.decode.method,
    "beam": int(cfg.decode.beam),
    "lm_weight": float(chosen["lm_weight"]),
    "ilm_weight": float(chosen["ilm_weight"]),
    "length_bonus": float(cfg.decode.length_bonus),
  }
  if bias_boosts:
    decode_cfg["bias_boost"] = float(bias_boost)
  arrays = evaluate.calibration_arrays(best_outputs, best_records, run.data.vocab)
  calibration, fit = fit_calibration(arrays, target_accuracy=target_accuracy)
  summary = {"split": split, "decode": decode_cfg, "search": results, "calibration_fit": fit}
  if bias_boosts:
    summary["bias_search"] = {
      "phrases": bias_source,
      "max_u_wer_increase": max_u_wer_increase,
      "points": bias_search,
    }
  if jax.process_index() == 0:
    (workdir / DECODING_FILE).write_text(json.dumps(summary, indent=2))
    calibration.save(workdir / CALIBRATION_FILE)
  return summary


def _bias_point(boost: float, records, phrases: Sequence[str]) -> dict:
  """WER, B-WER and U-WER of decoded records against the bias phrases."""
  refs = [r.ref_text for r in records if r.ref_text]
  hyps = [r.hyp_text for r in records if r.ref_text]
  rates = metrics_lib.biased_error_rates(refs, hyps, phrases)
  return {
    "bias_boost": float(boost),
    "wer": metrics_lib.error_rate(
      metrics_lib.edit_counts(r, h, "word") for r, h in zip(refs, hyps, strict=True)
    ),
    **{k: _none_if_nan(v) for k, v in rates.items()},
  }


def _none_if_nan(x):
  return None if isinstance(x, float) and math.isnan(x) else x


def _tune_bias_boost(
  run, workdir, chosen: dict, unbiased_records, split, max_batches, source, boosts
) -> list[dict]:
  """WER, B-WER and U-WER of `split` decoded at each boost with the chosen fusion weights.

  The first point is the unbiased decode (boost 0) of the fusion search's winner.
  """
  from moe_asr.decoding import biasing

  items = decode_lib.bias_phrases(source, run.data.metadata)
  texts = decode_lib.bias_phrase_texts(items)
  lm = text_lm.load_lm(workdir, run.data.tokenizer)
  points = [_bias_point(0.0, unbiased_records, texts)]
  _LOG.info("tune-decoding bias %s", points[0])
  knobs = {"lm_weight": chosen["lm_weight"], "ilm_weight": chosen["ilm_weight"]}
  for boost in boosts:
    if boost == 0:
      continue
    graph = biasing.graph_from_phrases(items, run.data.tokenizer, boost=float(boost))
    steps = evaluate.make_eval_steps(run, run.config.decode, lm=lm, bias=graph, tunable=True)
    _, recs, _ = evaluate.validate(run, steps, split, max_batches, knobs=knobs)
    points.append(_bias_point(boost, recs, texts))
    _LOG.info("tune-decoding bias %s", points[-1])
  return points


def choose_bias_boost(
  points: Sequence[dict], *, max_u_wer_increase: float = 0.02, min_biased_words: int = 50
) -> float:
  """The bias boost of a search, under a constraint on unbiased WER.

  Args:
    points: dicts with `bias_boost`, `u_wer`, `b_wer` and `b_units` (reference words
      inside a phrase); the one with boost 0 is the unbiased baseline.
    max_u_wer_increase: a boost qualifies if its U-WER <= the baseline's x (1 + this).
    min_biased_words: below this many phrase words B-WER is too noisy to rank by, and the
      largest qualifying boost wins.

  Returns:
    The boost with the lowest B-WER among those that qualify (ties: the larger boost),
    or the largest qualifying one; 0.0 if none does.
  """
  base = [p for p in points if p["bias_boost"] == 0]
  if not base:
    raise ValueError("choose_bias_boost needs the unbiased point (bias_boost 0)")
  limit = (base[0]["u_wer"] or 0.0) * (1 + max_u_wer_increase)
  ok = [p for p in points if p["u_wer"] is not None and p["u_wer"] <= limit + 1e-12]
  if not ok:
    return 0.0
  rank_b = (base[0].get("b_units") or 0) >= min_biased_words
  best = min(
    ok,
    key=lambda p: (
      (p["b_wer"] if p["b_wer"] is not None else math.inf) if rank_b else 0.0,
      -p["bias_boost"],
    ),
  )
  return float(best["bias_boost"])


def fit_calibration(arrays: dict, *, target_accuracy: float) -> tuple:
  """(Calibration, fit summary) from `evaluate.calibration_arrays` output."""
  fit: dict = {"n": int(len(arrays["confidence"]))}
  kwargs: dict = {}
  lid_known = arrays["lid_labels"] >= 0
  if lid_known.any():
    kwargs["lid_temperature"] = confidence_lib.fit_temperature(
      arrays["lid_logits"][lid_known], arrays["lid_labels"][lid_known]
    )
  correct_intent = None
  if arrays["intent_log_probs"] is not None:
    known = arrays["intent_labels"] >= 0
    if known.any():
      lp, labels = arrays["intent_log_probs"][known], arrays["intent_labels"][known]
      kwargs["intent_temperature"] = confidence_lib.fit_temperature(lp, labels)
      correct_intent = np.zeros(len(known), bool)
      correct_intent[known] = lp.argmax(-1) == labels
  conf, exact = arrays["confidence"], arrays["exact"]
  kwargs["utterance"] = confidence_lib.fit_binary_calibration(conf, exact)
  calibration = confidence_lib.Calibration(**kwargs)
  calibrated = calibration.calibrate_utterance(conf)
  target = correct_intent if correct_intent is not None else exact
  threshold = confidence_lib.choose_defer_threshold(
    calibrated, target, target_accuracy=target_accuracy
  )
  calibration.defer_threshold = float(threshold)
  curve = confidence_lib.coverage_curve(calibrated, target)
  fit.update(
    ece_utterance_raw=metrics_lib.expected_calibration_error(conf, exact),
    ece_utterance=metrics_lib.expected_calibration_error(calibrated, exact),
    defer_threshold=float(threshold),
    target_accuracy=target_accuracy,
    coverage_at_threshold=float(np.mean(calibrated >= threshold)),
    aurc=float(curve["aurc"]),
  )
  return calibration, fit
