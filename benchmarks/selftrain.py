"""Self-training against supervised training on a fraction of the labels, in one command.

  python benchmarks/selftrain.py --root runs/selftrain --data-dir data \\
      [--config tiny] [--labelled 25] [--teacher-steps 300] [--student-steps 150] \\
      [--rounds 2] [--target-cer 0.3] [--keep-fractions 0.5 0.8] [--out docs/results/x.md] \\
      [--override data.buckets='((4.0,8),(8.0,4))' ...] \\
      [--student-override train.learning_rate=3e-4 ...] [--noise-snr 10 30]

1. `supervised`: trained `--teacher-steps` on the first `--labelled` % of `train` only.
2. `round1`, `round2`, ...: `moe_asr.selftrain.self_train` from it: the rest of `train`
   (labels hidden: only its audio is read) and `unlabeled` are pseudo-labelled by the
   current teacher, filtered (threshold for `--target-cer` on `validation`, per-language
   quota, consistency checks, the most confident `--keep-fractions` of it), and a student
   trains `--student-steps` from the teacher on the mixture of the labelled part and the
   kept pseudo-labels.
3. `supervised+N`: the control for the extra steps: the supervised run continued
   `--student-steps` x rounds steps on the labelled part alone (the same number of steps
   as the last round's student has had since the supervised run).

`--override` applies to every run; `--student-override` to the students and the control
only (they continue a trained run: a lower peak learning rate, no second curriculum or
oracle-LID phase). `--noise-snr LOW HIGH` trains the students on noisy copies of the audio
the teacher labelled clean (noisy student training).

`python benchmarks/selftrain.py --score-pseudo-labels PL` scores a `moe-asr pseudo-label`
output folder instead: the CER and intent accuracy of its kept and dropped pseudo-labels
against the labelled split's hidden references (read here, never by `pseudo-label`).

Every run is scored by `moe-asr eval` (its newest checkpoint, the run's decode settings)
on `--splits`; the table (each run's own steps and, in brackets, its total with those of
the runs it started from; WER, CER, intent accuracy, slot F1 in %, with 95% bootstrap
intervals) and each round's filter (threshold, kept fraction and the CER of the kept and
dropped pseudo-labels on validation, and of the kept pseudo-labels themselves against
the hidden labels) are printed, written as markdown to `--out` and as JSON to
`ROOT/results.json`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

from moe_asr import config_lib, selftrain
from moe_asr.data import pipeline as pipeline_lib
from moe_asr.evaluation import metrics as metrics_lib
from moe_asr.evaluation import score
from moe_asr.training import train

METRICS = (("wer", "WER"), ("cer", "CER"), ("intent_acc", "intent"), ("slot_f1", "slot F1"))


def _train(config: str, workdir: pathlib.Path, overrides: list[str]) -> dict:
  cfg = config_lib.load_config(config, overrides)
  return train.train_and_evaluate(cfg, workdir)


def _scores(workdir: pathlib.Path, splits, steps_before: int = 0) -> dict:
  """The run's test scores (its own decode settings); `total_steps` adds the steps of the
  runs it started from (`steps_before`)."""
  report = score.evaluate_workdir(workdir, splits=splits, out_dir=workdir / "eval")
  step = int(report["model"]["step"])
  return {
    "step": step,
    "total_steps": steps_before + step,
    "decode": (report.get("decode") or {}).get("method"),
    "splits": report["splits"],
  }


def _pseudo_label_cer(labels_file: pathlib.Path, refs: dict) -> dict:
  """The CER of the kept and the dropped pseudo-labels against the hidden labels."""
  kept, dropped = [], []
  for line in labels_file.read_text("utf-8").splitlines():
    item = json.loads(line)
    counts = metrics_lib.edit_counts(refs[item["id"]]["text"], item["text"], "char")
    (kept if item["kept"] else dropped).append(counts)
  return {
    "kept": len(kept),
    "dropped": len(dropped),
    "kept_cer": metrics_lib.error_rate(kept),
    "dropped_cer": metrics_lib.error_rate(dropped),
  }


def score_pseudo_labels(pl_dir: pathlib.Path) -> dict:
  """Kept and dropped pseudo-labels of a `pseudo-label` folder against the hidden labels."""
  summary = json.loads((pl_dir / "filter.json").read_text())
  source = summary["provenance"]["source"]
  refs = selftrain.references(
    pipeline_lib.data_source(source["data"], source["split"], data_dir=source["data_dir"])
  )
  out = {"filter": summary["filter"], "threshold": summary.get("threshold")}
  out["validation"] = summary.get("validation")
  items = [
    json.loads(x)
    for x in (pl_dir / "labels" / f"{summary.get('split_name', summary['split'])}.jsonl")
    .read_text()
    .splitlines()
  ]
  for name, group in (
    ("kept", [i for i in items if i["kept"]]),
    ("dropped", [i for i in items if not i["kept"]]),
  ):
    counts = [metrics_lib.edit_counts(refs[i["id"]]["text"], i["text"], "char") for i in group]
    labelled = [i for i in group if refs[i["id"]]["intent"]]
    out[name] = {
      "n": len(group),
      "cer": metrics_lib.error_rate(counts),
      "intent_acc": (
        sum(i["intent"] == refs[i["id"]]["intent"] for i in labelled) / len(labelled)
        if labelled
        else None
      ),
    }
  return out


def _cell(split_report: dict, metric: str) -> str:
  value = split_report.get(metric)
  if value is None:
    return "-"
  ci = (split_report.get("ci") or {}).get(metric)
  out = f"{100 * value:.1f}"
  return out + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def format_markdown(results: dict) -> str:
  splits = results["splits"]
  head = ["run", "steps (total)"] + [f"{s} {name}" for s in splits for _, name in METRICS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for run, scored in results["runs"].items():
    cells = [run, f"{scored['step']} ({scored.get('total_steps', scored['step'])})"]
    for s in splits:
      cells += [_cell(scored["splits"][s], m) for m, _ in METRICS]
    lines.append("| " + " | ".join(cells) + " |")
  lines += [
    "",
    "| round | threshold | kept (of) | val kept frac | val kept CER | val dropped CER "
    "| pseudo kept CER | pseudo dropped CER |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in results["rounds"]:
    v, p = r["validation"] or {}, r["hidden_label_cer"]

    def pct(x):
      return "-" if x is None or x != x else f"{100 * x:.1f}"

    lines.append(
      f"| {r['round']} | {r['threshold']:.3g} | {r['kept']} ({r['items']}) | "
      f"{pct(v.get('kept_fraction'))} | {pct(v.get('kept_cer'))} | {pct(v.get('dropped_cer'))} "
      f"| {pct(p['kept_cer'])} | {pct(p['dropped_cer'])} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", type=pathlib.Path)
  parser.add_argument("--data-dir")
  parser.add_argument(
    "--score-pseudo-labels", type=pathlib.Path, default=None, help="a pseudo-label folder"
  )
  parser.add_argument("--config", default="tiny")
  parser.add_argument("--labelled", type=int, default=25, help="percent of train with labels")
  parser.add_argument("--teacher-steps", type=int, default=300)
  parser.add_argument("--student-steps", type=int, default=150)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--target-cer", type=float, default=0.3)
  parser.add_argument("--keep-fractions", type=float, nargs="+", default=[0.5, 0.8])
  parser.add_argument("--min-language-fraction", type=float, default=0.1)
  parser.add_argument("--pseudo-weight", type=float, default=0.5)
  parser.add_argument(
    "--student-override",
    action="append",
    default=[],
    help="a.b=value override of the students and the control only (repeat)",
  )
  parser.add_argument(
    "--noise-snr", type=float, nargs=2, default=None, help="students hear noisy copies (dB)"
  )
  parser.add_argument("--splits", nargs="+", default=["test", "test_cs"])
  parser.add_argument("--out", default=None, help="markdown table file")
  parser.add_argument(
    "--override", action="append", default=[], help="a.b=value override of every run (repeat)"
  )
  args = parser.parse_args(argv)
  if args.score_pseudo_labels:
    scored = score_pseudo_labels(args.score_pseudo_labels)
    print(json.dumps(selftrain.json_safe(scored), indent=1))
    return 0
  if args.root is None or args.data_dir is None:
    parser.error("--root and --data-dir are required (or --score-pseudo-labels)")

  start = time.time()
  root = args.root.absolute()
  common = [f"data.data_dir={args.data_dir}", *args.override]
  labelled = f"train[:{args.labelled}%]"
  hidden = f"train[{args.labelled}%:]+unlabeled"
  supervised = root / "supervised"
  if not (supervised / "checkpoints").exists():
    _train(
      args.config,
      supervised,
      common + [f"data.train_split={labelled}", f"train.steps={args.teacher_steps}"],
    )
  runs = {"supervised": _scores(supervised, args.splits)}

  result = selftrain.self_train(
    supervised,
    root / "rounds",
    rounds=args.rounds,
    steps=args.student_steps,
    split=hidden,
    target_cer=args.target_cer,
    keep_fractions=args.keep_fractions,
    filter_cfg=selftrain.FilterConfig(min_language_fraction=args.min_language_fraction),
    pseudo_weight=args.pseudo_weight,
    overrides=args.override + args.student_override,
    noise_snr=tuple(args.noise_snr) if args.noise_snr else None,
  )
  cfg = score.workdir_config(supervised)
  refs = selftrain.references(
    pipeline_lib.data_source(cfg.data.name, hidden, data_dir=cfg.data.data_dir)
  )
  rounds = []
  before = runs["supervised"]["total_steps"]  # A round's student starts from its teacher.
  for r in result["rounds"]:
    runs[f"round{r['round']}"] = _scores(pathlib.Path(r["student"]), args.splits, before)
    before = runs[f"round{r['round']}"]["total_steps"]
    pseudo = r["pseudo"]
    labels = root / "rounds" / f"round{r['round']}" / "pseudo" / "labels"
    rounds.append(
      {
        "round": r["round"],
        "threshold": pseudo.get("threshold", 0.0),
        "validation": pseudo.get("validation"),
        "kept": pseudo["filter"]["kept"],
        "items": pseudo["filter"]["items"],
        "filter": pseudo["filter"],
        "hidden_label_cer": _pseudo_label_cer(labels / f"{pseudo['split_name']}.jsonl", refs),
      }
    )

  extra = args.student_steps * args.rounds
  control = root / f"supervised+{extra}"
  if not (control / "checkpoints").exists():
    _train(
      args.config,
      control,
      common
      + [
        f"data.train_split={labelled}",
        f"train.steps={extra}",
        f"init_from={supervised / 'checkpoints'}",
      ]
      + (
        [f"data.tokenizer={supervised / 'tokenizer.model'}"]
        if (supervised / "tokenizer.model").exists()
        else []
      )
      + args.student_override,
    )
  runs[f"supervised+{extra}"] = _scores(control, args.splits, runs["supervised"]["total_steps"])

  results = {
    "splits": args.splits,
    "runs": runs,
    "rounds": rounds,
    "args": {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()},
    "machine": f"{platform.processor() or platform.machine()}, {platform.platform()}",
    "seconds": time.time() - start,
  }
  (root / "results.json").write_text(json.dumps(selftrain.json_safe(results), indent=1))
  table = format_markdown(results)
  print(table)
  if args.out:
    pathlib.Path(args.out).write_text(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
