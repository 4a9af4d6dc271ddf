"""The decoding ladder of a trained run: greedy -> beam -> beam + LM -> beam + LM + bias, and
the joint CTC/attention search alone and with LM fusion and internal-LM subtraction.

  python benchmarks/decode_table.py --workdir runs/demo [--beam 8] [--lm-weight 0.3]
      [--splits test test_cs test_bias] [--bias-file corpus]
      [--joint-beam 4] [--ctc-weight 0.7] [--ilm-weight 0.1] [--rows greedy joint ...]

Each setting is a real `moe-asr eval` pass (`evaluation.score.evaluate_workdir`) with its
report under `W/eval_ladder/<setting>/`; the table (error rates as %, LID / intent
accuracy as %, B-WER / U-WER against the bias list --bias-file, decode real-time factor)
is printed and written to `W/eval_ladder/table.json`. The bias boost defaults to the tuned
one in `W/decoding.json` (`decode.bias_boost`). The LM weight defaults to the tuned one in
`W/decoding.json` (`moe-asr tune-decoding`), else 0.3; the joint search's CTC weight
defaults to the run's own (`decode.ctc_weight`). Rows with an LM need `W/lm` (`moe-asr train-lm`).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from moe_asr.data import text as text_lib
from moe_asr.decoding import biasing
from moe_asr.decoding import decode as decode_lib
from moe_asr.evaluation import metrics as metrics_lib
from moe_asr.evaluation import score

METRICS = (
  ("cer", "CER"),
  ("wer", "WER"),
  ("mer", "MER"),
  ("lid_acc", "LID"),
  ("intent_acc", "int"),
  ("b_wer", "B-WER"),
  ("u_wer", "U-WER"),
)


def settings(
  beam: int,
  lm_weight: float,
  bias_file: str,
  *,
  joint_beam: int = 4,
  ctc_weight: float = 0.7,
  ilm_weight: float = 0.1,
) -> dict[str, list[str]]:
  """The overrides of every row of the ladder, by row name."""
  plain = ["decode.rescore=False", "decode.length_bonus=0.0"]
  base = ["decode.ilm_weight=0.0", *plain]
  beam_args = base + ["decode.method='ctc_beam'", f"decode.beam={beam}"]
  joint_args = [
    *plain,
    "decode.method='joint'",
    f"decode.beam={joint_beam}",
    f"decode.ctc_weight={ctc_weight}",
    "decode.bias_file=''",
  ]
  return {
    "greedy": base + ["decode.method='greedy'", "decode.lm_weight=0.0", "decode.bias_file=''"],
    "beam": beam_args + ["decode.lm_weight=0.0", "decode.bias_file=''"],
    "beam+lm": beam_args + [f"decode.lm_weight={lm_weight}", "decode.bias_file=''"],
    "beam+lm+bias": beam_args
    + [f"decode.lm_weight={lm_weight}", f"decode.bias_file='{bias_file}'"],
    "joint": joint_args + ["decode.lm_weight=0.0", "decode.ilm_weight=0.0"],
    "joint+lm+ilm": joint_args
    + [f"decode.lm_weight={lm_weight}", f"decode.ilm_weight={ilm_weight}"],
  }


def format_table(table: dict[str, dict[str, dict]], splits: list[str]) -> str:
  head = ["setting"] + [f"{split}:{name}" for split in splits for _, name in METRICS] + ["rtf"]
  rows = [head]
  for setting, by_split in table.items():
    row = [setting]
    for split in splits:
      s = by_split.get(split, {})
      row += ["-" if s.get(k) is None else f"{100 * s[k]:.1f}" for k, _ in METRICS]
    rtf = [by_split[s]["rtf"] for s in splits if by_split.get(s, {}).get("rtf") is not None]
    row.append(f"{max(rtf):.3f}" if rtf else "-")
    rows.append(row)
  widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
  return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def bias_phrase_texts(workdir: pathlib.Path, bias_file: str) -> list[str]:
  """The normalised phrases of `bias_file` (`corpus`: the dataset's own list)."""
  if bias_file == decode_lib.CORPUS_PHRASES:
    from moe_asr.training import inputs

    cfg = score.workdir_config(workdir)
    items = list(inputs.load_run_data(cfg, workdir).metadata.get("bias_phrases") or ())
  else:
    items = [p for p, _ in biasing.read_phrase_file(bias_file)]
  return [text_lib.normalize(p) for p in items]


def biased_rates(out_dir: pathlib.Path, split: str, phrases: list[str]) -> dict:
  """B-WER and U-WER of a split's written hypotheses (`hypotheses/<split>.jsonl`)."""
  path = out_dir / "hypotheses" / f"{split}.jsonl"
  if not path.exists():
    return {}
  rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
  rows = [r for r in rows if r.get("ref_text")]
  rates = metrics_lib.biased_error_rates(
    [r["ref_text"] for r in rows], [r["hyp_text"] for r in rows], phrases
  )
  return {k: (None if v != v else v) for k, v in rates.items()}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--beam", type=int, default=8)
  parser.add_argument("--lm-weight", type=float, default=None)
  parser.add_argument("--bias-file", default="corpus")
  parser.add_argument("--splits", nargs="+", default=["test", "test_cs", "test_bias"])
  parser.add_argument("--joint-beam", type=int, default=4, help="beam of the joint search")
  parser.add_argument("--ctc-weight", type=float, default=None, help="default: the run's")
  parser.add_argument("--ilm-weight", type=float, default=0.1)
  parser.add_argument("--rows", nargs="+", default=None, help="rows to run (default: all)")
  parser.add_argument("--override", action="append", default=[], help="extra config override")
  args = parser.parse_args(argv)
  workdir = pathlib.Path(args.workdir)
  ctc_weight = args.ctc_weight
  if ctc_weight is None:
    ctc_weight = float(score.workdir_config(workdir).decode.ctc_weight)
  lm_weight = args.lm_weight
  tuned = workdir / score.DECODING_FILE
  if lm_weight is None:
    lm_weight = json.loads(tuned.read_text())["decode"]["lm_weight"] if tuned.exists() else 0.3
  out_root = workdir / "eval_ladder"
  phrases = bias_phrase_texts(workdir, args.bias_file)
  table = {}
  rows = settings(
    args.beam,
    lm_weight,
    args.bias_file,
    joint_beam=args.joint_beam,
    ctc_weight=ctc_weight,
    ilm_weight=args.ilm_weight,
  )
  unknown = sorted(set(args.rows or ()) - set(rows))
  if unknown:
    parser.error(f"unknown rows {unknown}; the rows are {list(rows)}")
  rows = {k: v for k, v in rows.items() if args.rows is None or k in args.rows}
  for name, overrides in rows.items():
    report = score.evaluate_workdir(
      workdir,
      splits=args.splits,
      overrides=overrides + args.override,
      out_dir=out_root / name,
    )
    table[name] = {
      split: {
        k: report["splits"][split].get(k)
        for k in ("cer", "wer", "mer", "lid_acc", "intent_acc", "rtf")
      }
      for split in args.splits
    }
    for split in args.splits:
      table[name][split].update(biased_rates(out_root / name, split, phrases))
  text = format_table(table, args.splits)
  print(
    f"Decoding ladder of {workdir} (beam {args.beam}, LM weight {lm_weight}; joint search: "
    f"beam {args.joint_beam}, CTC weight {ctc_weight}, internal-LM weight {args.ilm_weight}):"
  )
  print(text)
  out_root.mkdir(parents=True, exist_ok=True)
  (out_root / "table.json").write_text(
    json.dumps(
      {
        "beam": args.beam,
        "lm_weight": lm_weight,
        "joint_beam": args.joint_beam,
        "ctc_weight": ctc_weight,
        "ilm_weight": args.ilm_weight,
        "table": table,
      },
      indent=2,
    )
  )
  return table


if __name__ == "__main__":
  main(sys.argv[1:])
