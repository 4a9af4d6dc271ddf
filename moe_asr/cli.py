"""The `moe-asr` console script: subcommands that call the library.

moe-asr corpus build --config tiny --data-dir DATA [--config.seed=1]
moe-asr corpus stats --data-dir DATA [--name moe_asr_synth/tiny]
moe-asr data import DIR --name NAME --data-dir DATA [--on-error skip|raise]  # your recordings
moe-asr devices [--json PATH]        # join the job's processes, check an all-reduce
moe-asr train --config tiny --workdir W [--config.train.steps=200]
moe-asr train-lm --workdir W         # text LM for fusion and rescoring (W/lm)
moe-asr transfer --from W --workdir W2 --language ru --method expert [--replay 0.1]
moe-asr eval --workdir W [--step N] [--average-last N] [--ensemble W2 ...]
             [--decode.method=ctc_beam --decode.beam=8
             --decode.lm_weight=0.3 --decode.bias_file=phrases.txt]
moe-asr tune-decoding --workdir W    # fusion weights + calibration -> W/decoding.json
moe-asr transcribe --workdir W a.wav b.flac   # JSON lines
moe-asr pseudo-label --workdir W --split unlabeled --out DIR [--target-cer 0.15]
moe-asr self-train --workdir TEACHER --out ROOT --rounds 2 --steps 200
moe-asr demo --workdir runs/demo     # the main job
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import pathlib
import sys
import time
import traceback
from collections.abc import Sequence

from moe_asr import commandline


def _corpus_build(args, overrides) -> int:
  from moe_asr.data.builders import synth

  builder = synth.builder_from_config_file(args.config, args.data_dir, overrides)
  name = builder.info.full_name
  print(f"Building {name} into {args.data_dir} ...", flush=True)
  start = time.time()
  tok = synth.prepare(builder)
  elapsed = time.time() - start
  splits = builder.info.splits
  total = sum(s.num_examples for s in splits.values())
  print(
    f"Built {name}: {total} utterances in {len(splits)} splits, tokenizer of "
    f"{tok.vocab_size} pieces, in {elapsed:.0f} s.\n"
    f"Load it with tfds.builder({builder.name + '/' + builder.builder_config.name!r}, "
    f"data_dir={str(args.data_dir)!r}) after `import moe_asr.data.builders`."
  )
  return 0


def _corpus_stats(args, overrides) -> int:
  import tensorflow_datasets as tfds

  import moe_asr.data.builders  # noqa: F401
  from moe_asr.data import stats as stats_lib

  name = args.name
  if name is None:
    found = sorted(
      p.parent.relative_to(args.data_dir).as_posix()
      for p in pathlib.Path(args.data_dir).glob("*/*/*/dataset_info.json")
    )
    if not found:
      print(f"No TFDS dataset found under {args.data_dir}", file=sys.stderr)
      return 2
    name = "/".join(found[0].split("/")[:2])
  builder = tfds.builder(name, data_dir=str(args.data_dir))
  if hasattr(builder.builder_config, "digest"):
    from moe_asr.data.builders import synth

    synth.check_built(builder)  # Refuse to describe data built from another config.
  stats = stats_lib.dataset_stats(builder)
  print(stats_lib.format_stats(stats))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(stats, indent=2))
  return 0


def _data_import(args, overrides) -> int:
  from moe_asr.data.builders import local_manifest

  name = args.name
  print(f"Importing {args.dir} as local_manifest/{name} into {args.data_dir} ...", flush=True)
  builder = local_manifest.build_local_manifest(
    args.dir,
    args.data_dir,
    name=name,
    on_error=args.on_error,
    max_seconds=args.max_seconds,
    default_language=args.default_language,
    allow_outside=args.allow_outside,
    overwrite=args.overwrite,
  )
  metadata = builder.info.metadata
  for split, info in builder.info.splits.items():
    without = metadata.get("num_without_text", {}).get(split, 0)
    skipped = metadata.get("skipped", {}).get(split, [])
    print(
      f"  {split}: {info.num_examples} utterances"
      + (f" ({without} without a transcript: task heads only)" if without else "")
      + (f", {len(skipped)} skipped" if skipped else "")
    )
    for item in skipped:
      print(f"    skipped {item['reason']}")
  intents, slot_types = metadata.get("intents", []), metadata.get("slot_types", [])
  print(f"  {len(intents)} intents, {len(slot_types)} slot types (from the train split)")
  print(
    f"Train on it: moe-asr train --config small --workdir W "
    f"--config.data.name=local_manifest/{name} --config.data.data_dir={args.data_dir}"
  )
  return 0


def _expert_maps(model_cfg) -> dict[str, dict[str, int]]:
  """{section: {language code: expert}} for the MoE sections routed by language."""
  from moe_asr.data import languages
  from moe_asr.models import moe

  out = {}
  for name in ("encoder", "decoder"):
    section = model_cfg.get(name)
    if not section or not section.get("moe_layers") or section.get("num_layers", 1) == 0:
      continue
    if section.get("router") not in ("language", "hybrid"):
      continue
    n = section.get("num_languages", len(languages.LANGUAGE_CODES))
    expert_map = moe.resolve_expert_map(
      section.get("expert_map", "modulo"), n, max(section.num_experts, 1)
    )
    codes = languages.LANGUAGE_CODES
    out[name] = {codes[i] if i < len(codes) else str(i): e for i, e in enumerate(expert_map)}
  return out


def _model_info(args, overrides) -> int:
  from moe_asr import config_lib
  from moe_asr.models import info
  from moe_asr.training import memory

  cfg = config_lib.load_config(args.config, overrides)
  if args.mesh:  # Before JAX starts: a CPU fakes the mesh's devices.
    memory.fake_cpu_devices(math.prod(memory.parse_mesh(args.mesh, tuple(cfg.mesh.axes))))
  sizes = info.model_info(
    cfg, vocab_size=args.vocab_size, num_intents=args.num_intents, num_slot_tags=args.num_slot_tags
  )
  print(
    info.format_info(sizes, title=f"{args.config} (model preset {cfg.get('model_preset', '?')})")
  )
  sizes["expert_maps"] = _expert_maps(cfg.model)
  for name, expert_map in sizes["expert_maps"].items():
    spec = cfg.model[name].get("expert_map", "modulo")
    items = ", ".join(f"{code} {e}" for code, e in expert_map.items())
    print(f"{name} expert of each language ({spec}): {items}")
  if args.mesh:
    sizes["memory"] = memory.train_memory(
      cfg,
      args.mesh,
      vocab_size=args.vocab_size,
      num_intents=args.num_intents,
      num_slot_tags=args.num_slot_tags,
    )
    print(memory.format_memory(sizes["memory"]))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(sizes, indent=2))
  return 0


def _devices(args, overrides) -> int:
  from moe_asr.training import distributed

  index, count = distributed.initialize()
  try:
    result = distributed.check_collectives()
  except RuntimeError as e:
    print(f"process {index}/{count}: {e}", file=sys.stderr, flush=True)
    return 1
  print(
    f"process {index}/{count}: {result['local_devices']} local / {result['global_devices']} "
    f"global {result['platform']} devices, all-reduce {result['allreduce']} == "
    f"{result['expected']} ok",
    flush=True,
  )
  # Every process writes its own file when the path names it; otherwise only process 0 writes.
  if args.json and ("{process}" in args.json or distributed.is_primary()):
    path = pathlib.Path(args.json.replace("{process}", str(index)))
    path.write_text(json.dumps(result, indent=2))
  return 0


def _train(args, overrides) -> int:
  from moe_asr import config_lib
  from moe_asr.training import distributed, train

  commandline.configure_logging(args.verbose)
  cfg = config_lib.load_config(args.config, overrides)  # Touches no device: before joining.
  distributed.initialize(timeouts=cfg.get("distributed"))
  if cfg.get("transfer") and cfg.transfer.get("source"):  # A transfer config (transfer.py).
    from moe_asr.training import transfer

    t = cfg.transfer
    rest = [o.removeprefix("--") for o in overrides if "config.transfer." not in o]
    cfg = transfer.transfer_config(
      t.source,
      args.workdir,
      language=t.language,
      method=t.method,
      data=t.data,
      replay=t.replay,
      overrides=rest,
      section=t.to_dict(),
    )
    result = transfer.run_transfer(cfg, args.workdir)
    if distributed.is_primary() and "transfer" in result:
      print(transfer.format_markdown(result))
    return 0
  summary = train.train_and_evaluate(cfg, args.workdir)
  keys = (
    "step",
    "train/loss",
    "train/steps_per_second",
    "val/cer",
    "val/wer",
    "val/lid_acc",
    "val/intent_acc",
    "compiles",
  )
  print("  ".join(f"{k}={summary[k]:.4g}" for k in keys if isinstance(summary.get(k), int | float)))
  return 0


def _transfer(args, overrides) -> int:
  from moe_asr.training import distributed, transfer

  commandline.configure_logging(args.verbose)
  distributed.initialize()
  cfg = transfer.transfer_config(
    args.source,
    args.workdir,
    language=args.language,
    method=args.method,
    data=args.data or "",
    replay=args.replay,
    overrides=[o.removeprefix("--") for o in overrides],
  )
  result = transfer.run_transfer(cfg, args.workdir)
  if distributed.is_primary() and "transfer" in result:
    print(transfer.format_markdown(result))
    print(f"Report: {pathlib.Path(args.workdir) / 'transfer' / 'report.md'}")
  return 0


def _eval(args, overrides) -> int:
  from moe_asr.evaluation import report as report_lib
  from moe_asr.evaluation import score
  from moe_asr.training import distributed

  commandline.configure_logging(args.verbose)
  distributed.initialize()
  out_dir = pathlib.Path(args.out) if args.out else pathlib.Path(args.workdir) / "eval"
  report = score.evaluate_workdir(
    args.workdir,
    splits=args.split or None,
    overrides=[o.removeprefix("--") for o in overrides],
    out_dir=out_dir,
    step=args.step,
    average_last=args.average_last,
    ensemble=args.ensemble,
    ensemble_weights=args.ensemble_weights,
  )
  if distributed.is_primary():
    print(report_lib.format_table(report))
    print(f"Report: {out_dir / 'report.md'}")
  return 0


def _train_lm(args, overrides) -> int:
  from moe_asr.evaluation import score
  from moe_asr.training import text_lm

  commandline.configure_logging(args.verbose)
  cfg = score.workdir_config(args.workdir, [o.removeprefix("--") for o in overrides])
  summary = text_lm.train_workdir_lm(cfg, args.workdir, text_files=args.text, steps=args.steps)
  ppl = summary.get("val_perplexity")
  print(
    f"Text LM: {summary['sentences']} sentences, final loss {summary['final_loss']:.3f}"
    + (f", {summary['val_split']} perplexity {ppl:.2f}" if ppl is not None else "")
    + f" -> {text_lm.lm_dir(args.workdir)}"
  )
  return 0


def _tune_decoding(args, overrides) -> int:
  from moe_asr.evaluation import score

  commandline.configure_logging(args.verbose)
  summary = score.tune_decoding(
    args.workdir,
    split=args.split,
    lm_weights=args.lm_weights,
    ilm_weights=args.ilm_weights,
    overrides=[o.removeprefix("--") for o in overrides],
    max_batches=args.max_batches,
    target_accuracy=args.target_accuracy,
    bias_boosts=args.bias_boosts,
    max_u_wer_increase=args.max_u_wer_increase,
  )
  for point in summary["search"] + summary.get("bias_search", {}).get("points", []):
    print("  ".join(f"{k}={v:.4g}" for k, v in point.items() if isinstance(v, int | float)))
  fit = summary["calibration_fit"]
  print(f"Best on {summary['split']}: {summary['decode']}")
  print(
    f"Calibration: utterance ECE {fit['ece_utterance_raw']:.3f} -> {fit['ece_utterance']:.3f}; "
    f"defer below {fit['defer_threshold']:.3f} keeps {fit['coverage_at_threshold']:.1%}"
  )
  print(f"Wrote {pathlib.Path(args.workdir) / score.DECODING_FILE} and {score.CALIBRATION_FILE}")
  return 0


def _pseudo_label(args, overrides) -> int:
  from moe_asr import selftrain

  commandline.configure_logging(args.verbose)
  summary = selftrain.pseudo_label(
    args.workdir,
    args.out,
    split=args.split,
    data=args.data,
    data_dir=args.data_dir,
    name=args.name,
    tfds_dir=args.tfds_dir,
    target_cer=args.target_cer,
    calibration_split=args.calibration_split,
    filter_cfg=selftrain.FilterConfig(
      threshold=args.threshold,
      min_language_fraction=args.min_language_fraction,
      max_keep_fraction=args.max_keep_fraction,
      min_cps=args.min_cps,
      max_cps=args.max_cps,
      check_script=not args.no_script_check,
    ),
    overrides=overrides,
    step=args.step,
    noise_snr=args.noise_snr,
  )
  counts = summary["filter"]
  if "threshold" in summary:
    at = summary["validation"] or {}
    print(
      f"Threshold {summary['threshold']:.4g} for CER <= {summary['target_cer']} on "
      f"{summary['calibration_split']}: keeps {at.get('kept_fraction', 0):.1%} at CER "
      f"{at.get('kept_cer')} (dropped: {at.get('dropped_cer')})"
    )
  print(
    f"{summary['split']}: kept {counts['kept']} of {counts['items']} "
    f"(inconsistent {counts['skipped']}, below threshold {counts['below_threshold']}, "
    f"over the cap {counts['over_cap']}, added by quotas {counts['quota_added']}); "
    f"per language {counts['kept_per_language']}"
  )
  print(
    f"Dataset {summary['dataset']} ({summary['examples']} utterances) in {summary['data_dir']}; "
    f"{pathlib.Path(args.out) / 'filter.json'}"
  )
  return 0


def _self_train(args, overrides) -> int:
  from moe_asr import selftrain

  commandline.configure_logging(args.verbose)
  result = selftrain.self_train(
    args.workdir,
    args.out,
    rounds=args.rounds,
    steps=args.steps,
    split=args.split,
    target_cer=args.target_cer,
    keep_fractions=args.keep_fractions,
    filter_cfg=selftrain.FilterConfig(
      min_language_fraction=args.min_language_fraction,
      min_cps=args.min_cps,
      max_cps=args.max_cps,
      check_script=not args.no_script_check,
    ),
    pseudo_weight=args.pseudo_weight,
    init_from_teacher=not args.from_scratch,
    overrides=overrides,
    noise_snr=args.noise_snr,
  )
  for r in result["rounds"]:
    f, t = r["pseudo"]["filter"], r["train"]
    print(
      f"round {r['round']}: kept {f['kept']} of {f['items']} pseudo-labels "
      f"(cap {r['keep_fraction']:.0%}); student {r['student']} step {t.get('step')} "
      + "  ".join(f"{k}={t[k]:.4g}" for k in ("val/cer", "val/wer", "val/intent_acc") if k in t)
    )
  print(f"Wrote {pathlib.Path(args.out) / 'selftrain.json'}")
  return 0


def _demo(args, overrides) -> int:
  from moe_asr import demo

  commandline.configure_logging(args.verbose)
  demo.run_demo(args.workdir, data_dir=args.data_dir, config=args.config, overrides=overrides)
  return 0


_STEP_HELP = "checkpoint step to use (default: the newest that reads back)"


def _add_data_commands(sub) -> None:
  """Adds the corpus and data commands (building and importing datasets)."""
  corpus = sub.add_parser("corpus", help="build or inspect the embedded corpus")
  corpus_sub = corpus.add_subparsers(dest="corpus_command", required=True)
  build = corpus_sub.add_parser("build", help="synthesise a corpus config into a TFDS dataset")
  build.add_argument(
    "--config", required=True, help=commandline.preset_help("corpus", "a corpus config file")
  )
  build.add_argument("--data-dir", required=True, type=pathlib.Path, help="TFDS data directory")
  build.set_defaults(func=_corpus_build)
  stats = corpus_sub.add_parser(
    "stats", help="hours, utterances, speakers per split/language/intent"
  )
  stats.add_argument("--data-dir", required=True, type=pathlib.Path, help="TFDS data directory")
  stats.add_argument(
    "--name", default=None, help="dataset, e.g. moe_asr_synth/tiny (default: first found)"
  )
  stats.add_argument("--json", default=None, help="also write the statistics to this JSON file")
  stats.set_defaults(func=_corpus_stats)

  data = sub.add_parser("data", help="bring your own recordings in")
  data_sub = data.add_subparsers(dest="data_command", required=True)
  imp = data_sub.add_parser(
    "import", help="a folder of audio and {split}.tsv|jsonl manifests -> local_manifest/NAME"
  )
  imp.add_argument("dir", type=pathlib.Path, help="folder with the audio and the manifests")
  imp.add_argument("--name", required=True, help="dataset config name: local_manifest/NAME")
  imp.add_argument("--data-dir", default="data", type=pathlib.Path, help="TFDS data directory")
  imp.add_argument(
    "--on-error", choices=("skip", "raise"), default="skip", help="bad items: skip or stop"
  )
  imp.add_argument("--default-language", default=None, help="language of lines that give none")
  imp.add_argument("--max-seconds", type=float, default=None, help="longer audio is skipped")
  imp.add_argument(
    "--allow-outside", action="store_true", help="accept audio paths outside the folder"
  )
  imp.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")
  imp.set_defaults(func=_data_import)


def _add_training_commands(sub) -> None:
  """Adds model-info, devices, train and transfer."""
  model_info = sub.add_parser("model-info", help="parameters in total and active per token")
  model_info.add_argument("--config", required=True, help=commandline.preset_help("experiment"))
  model_info.add_argument("--vocab-size", type=int, default=1500, help="tokenizer vocabulary")
  model_info.add_argument("--num-intents", type=int, default=24)
  model_info.add_argument("--num-slot-tags", type=int, default=39, help="BIO tags (2 x types + 1)")
  model_info.add_argument("--json", default=None, help="also write the counts to this JSON file")
  model_info.add_argument(
    "--mesh",
    default=None,
    help="e.g. data=8,expert=8: also memory per device of the compiled train step on that mesh",
  )
  model_info.set_defaults(func=_model_info)

  devices = sub.add_parser(
    "devices", help="join the job's processes and check an all-reduce over every device"
  )
  devices.add_argument(
    "--json", default=None, help="write the check to this JSON file ({process}: process index)"
  )
  devices.set_defaults(func=_devices)

  train = sub.add_parser("train", help="train a config in a workdir (resumes what is there)")
  train.add_argument("--config", required=True, help=commandline.preset_help("experiment"))
  train.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, config.json")
  train.add_argument("-v", "--verbose", action="store_true", help="log everything (INFO)")
  train.set_defaults(func=_train)

  tr = sub.add_parser(
    "transfer", help="carry a trained run to a new language or task; scores new and old splits"
  )
  tr.add_argument("--from", dest="source", required=True, help="the source run's workdir")
  tr.add_argument("--workdir", required=True, help="the transfer run's workdir")
  tr.add_argument("--language", required=True, help="language code of the new data")
  tr.add_argument("--method", choices=("expert", "lora", "adapters", "full"), default="expert")
  tr.add_argument("--data", default=None, help="dataset of the new data (default: held-out split)")
  tr.add_argument("--replay", type=float, default=0.0, help="fraction of old training data")
  tr.add_argument("-v", "--verbose", action="store_true")
  tr.set_defaults(func=_transfer)


def _add_scoring_commands(sub) -> None:
  """Adds eval, train-lm and tune-decoding."""
  ev = sub.add_parser("eval", help="score a workdir's newest checkpoint; writes W/eval/report.*")
  ev.add_argument("--workdir", required=True, help="a training workdir")
  ev.add_argument("--split", action="append", help="split to score (repeatable)")
  ev.add_argument("--out", default=None, help="report directory (default W/eval)")
  ev.add_argument("--step", type=int, default=None, help=_STEP_HELP)
  ev.add_argument(
    "--average-last",
    type=int,
    default=0,
    metavar="N",
    help="score the mean parameters of the last N saved checkpoints (up to --step)",
  )
  ev.add_argument(
    "--ensemble",
    nargs="+",
    default=(),
    metavar="W",
    help="more workdirs decoded with --workdir as one ensemble (averaged CTC and task posteriors)",
  )
  ev.add_argument(
    "--ensemble-weights",
    default="equal",
    help="the members' weights: equal, validation (1 / last validation CER) or w1,w2,...",
  )
  ev.add_argument("-v", "--verbose", action="store_true")
  ev.set_defaults(func=_eval)

  lm = sub.add_parser("train-lm", help="train the text LM for fusion/rescoring into W/lm")
  lm.add_argument("--workdir", required=True, help="a training workdir (tokenizer, dataset)")
  lm.add_argument("--text", action="append", default=[], help="extra text file (repeatable)")
  lm.add_argument("--steps", type=int, default=None, help="optimiser steps (config.lm_train)")
  lm.add_argument("-v", "--verbose", action="store_true")
  lm.set_defaults(func=_train_lm)

  tune = sub.add_parser(
    "tune-decoding", help="grid-search fusion weights, fit calibration; writes W/decoding.json"
  )
  tune.add_argument("--workdir", required=True)
  tune.add_argument("--split", default=None, help="held-out split (default: validation)")
  tune.add_argument("--lm-weights", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.5])
  tune.add_argument("--ilm-weights", type=float, nargs="+", default=[0.0])
  tune.add_argument("--max-batches", type=int, default=0, help="per grid point (0 = all)")
  tune.add_argument("--target-accuracy", type=float, default=0.95, help="for the defer threshold")
  tune.add_argument(
    "--bias-boosts", type=float, nargs="*", default=[], help="per-character bias boosts to try"
  )
  tune.add_argument(
    "--max-u-wer-increase", type=float, default=0.02, help="bias search: U-WER limit, relative"
  )
  tune.add_argument("-v", "--verbose", action="store_true")
  tune.set_defaults(func=_tune_decoding)


def _add_self_training_commands(sub) -> None:
  """Adds pseudo-label and self-train."""
  pl = sub.add_parser(
    "pseudo-label", help="label a split with a run's model, filtered, as a TFDS dataset"
  )
  pl.add_argument("--workdir", required=True, help="the teacher run")
  pl.add_argument("--split", default="unlabeled", help="the split to label")
  pl.add_argument("--out", required=True, help="output folder (audio, labels, manifest, tfds)")
  pl.add_argument("--data", default=None, help="dataset to read (default: the run's)")
  pl.add_argument("--data-dir", default=None, help="its TFDS data dir (default: the run's)")
  pl.add_argument("--name", default=None, help="local_manifest/NAME (default pseudo_SPLIT)")
  pl.add_argument("--tfds-dir", default=None, help="where it is built (default OUT/tfds)")
  pl.add_argument(
    "--target-cer", type=float, default=None, help="choose the threshold for this kept CER"
  )
  pl.add_argument("--calibration-split", default="validation", help="labelled split for it")
  pl.add_argument("--threshold", type=float, default=0.0, help="confidence threshold (no target)")
  pl.add_argument(
    "--min-language-fraction", type=float, default=0.0, help="per-language quota of kept items"
  )
  pl.add_argument("--max-keep-fraction", type=float, default=1.0, help="keep at most this much")
  pl.add_argument("--min-cps", type=float, default=1.0, help="fewer characters/s: implausible")
  pl.add_argument("--max-cps", type=float, default=30.0, help="more characters/s: implausible")
  pl.add_argument(
    "--no-script-check", action="store_true", help="keep words in another script than the LID's"
  )
  pl.add_argument(
    "--noise-snr",
    type=float,
    nargs=2,
    default=None,
    metavar=("LOW", "HIGH"),
    help="store noisy copies (SNR dB drawn from LOW..HIGH) of the audio the teacher decoded",
  )
  pl.add_argument("--step", type=int, default=None, help=_STEP_HELP)
  pl.add_argument("-v", "--verbose", action="store_true")
  pl.set_defaults(func=_pseudo_label)

  st = sub.add_parser(
    "self-train", help="rounds of teacher -> pseudo-labels -> student (config overrides: student)"
  )
  st.add_argument("--workdir", required=True, help="the first teacher (a trained run)")
  st.add_argument("--out", required=True, help="root folder of the rounds")
  st.add_argument("--rounds", type=int, default=1)
  st.add_argument("--steps", type=int, default=200, help="training steps of each student")
  st.add_argument("--split", default="unlabeled", help="the split to pseudo-label")
  st.add_argument("--target-cer", type=float, default=None, help="threshold target on validation")
  st.add_argument(
    "--keep-fractions",
    type=float,
    nargs="+",
    default=[1.0],
    help="most confident fraction kept in each round (curriculum; the last repeats)",
  )
  st.add_argument("--min-language-fraction", type=float, default=0.0, help="per-language quota")
  st.add_argument("--pseudo-weight", type=float, default=0.5, help="mixture weight of them")
  st.add_argument("--from-scratch", action="store_true", help="students do not start from teachers")
  st.add_argument("--min-cps", type=float, default=1.0)
  st.add_argument("--max-cps", type=float, default=30.0)
  st.add_argument("--no-script-check", action="store_true")
  st.add_argument(
    "--noise-snr", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"), help="noisy student"
  )
  st.add_argument("-v", "--verbose", action="store_true")
  st.set_defaults(func=_self_train)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="moe-asr", description=__doc__.split("\n")[0])
  parser.add_argument(
    "-v",
    "--verbose",
    dest="traceback",
    action="store_true",
    help="show the traceback of an error (each subcommand's -v also logs everything)",
  )
  sub = parser.add_subparsers(dest="command", required=True)

  _add_data_commands(sub)
  _add_training_commands(sub)
  _add_scoring_commands(sub)
  _add_self_training_commands(sub)

  demo = sub.add_parser("demo", help="the main job: build the demo corpus, train, score, print")
  demo.add_argument("--workdir", default="runs/demo", help="where the run goes")
  demo.add_argument("--data-dir", default="data", help="TFDS data directory of the corpus")
  demo.add_argument(
    "--config", default=None, help=commandline.preset_help("experiment") + " (default: demo)"
  )
  demo.add_argument("-v", "--verbose", action="store_true")
  demo.set_defaults(func=_demo)

  from moe_asr import transcribe

  transcribe.add_parser(sub).add_argument("--step", type=int, default=None, help=_STEP_HELP)
  return parser


def _known_errors() -> tuple[type[BaseException], ...]:
  """Errors that say what is wrong with the input or the run, not with the program.

  Each module's own are known once it is imported (one that is not imported raised none).
  """
  known: list[type[BaseException]] = [FileNotFoundError, NotADirectoryError, PermissionError]
  for module, names in (
    ("moe_asr.config_lib", ("ConfigError",)),
    ("moe_asr.training.checkpoint", ("CheckpointError", "TokenizerMismatchError", "SaveError")),
    ("moe_asr.training.run_lock", ("WorkdirBusyError",)),
    ("moe_asr.training.distributed", ("PeerError",)),
    ("moe_asr.training.train", ("NonFiniteError",)),
    ("moe_asr.selftrain", ("NothingKeptError",)),
  ):
    loaded = sys.modules.get(module)
    known += [getattr(loaded, name) for name in names if hasattr(loaded, name)]
  return tuple(known)


def _is_known(error: BaseException) -> bool:
  if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
    return True  # A full disk or quota.
  return isinstance(error, _known_errors())


def main(argv: Sequence[str] | None = None) -> int:
  """Runs a subcommand; a known error prints one line (`-v`: its traceback) and exits 2."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (dataset builds) is quiet.
  argv = sys.argv[1:] if argv is None else list(argv)
  rest, overrides = commandline.split_overrides(argv)
  args = build_parser().parse_args(rest)
  try:
    code = args.func(args, overrides)
  except BaseException as e:
    _tell_peers(ok=False, reason=" ".join(str(e).split()) or type(e).__name__)
    if not isinstance(e, Exception) or not _is_known(e):
      raise
    verbose = args.traceback or getattr(args, "verbose", False)
    if verbose:
      traceback.print_exc()
    message = " ".join(str(e).split()) or type(e).__name__
    hint = "" if verbose else " (-v shows the traceback)"
    print(f"moe-asr {args.command}: error: {message}{hint}", file=sys.stderr, flush=True)
    return 2
  _tell_peers(ok=True)
  return code


def _tell_peers(ok: bool, reason: str = "") -> None:
  """Tells the other processes of a multi-process job that this one ended (or failed)."""
  distributed = sys.modules.get("moe_asr.training.distributed")
  if distributed is not None:
    distributed.finish(ok, reason)


if __name__ == "__main__":
  sys.exit(main())
