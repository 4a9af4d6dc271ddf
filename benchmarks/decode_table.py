"""The decoding ladder of a trained run: greedy -> beam -> beam + LM -> beam + LM + bias.

  python benchmarks/decode_table.py --workdir runs/demo [--beam 8] [--lm-weight 0.3]
      [--splits test test_cs test_bias] [--bias-file corpus]

Each setting is a real `moe-asr eval` pass (`training.score.evaluate_workdir`) with its
report under `W/eval_ladder/<setting>/`; the table (error rates as %, LID / intent
accuracy as %, decode real-time factor) is printed and written to
`W/eval_ladder/table.json`. The LM weight defaults to the tuned one in
`W/decoding.json` (`moe-asr tune-decoding`), else 0.3. Needs `W/lm` (`moe-asr train-lm`).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from moe_asr.training import score

METRICS = (
  ("cer", "CER"),
  ("wer", "WER"),
  ("mer", "MER"),
  ("lid_acc", "LID"),
  ("intent_acc", "int"),
)


def settings(beam: int, lm_weight: float, bias_file: str) -> dict[str, list[str]]:
  base = ["decode.ilm_weight=0.0", "decode.rescore=False", "decode.length_bonus=0.0"]
  beam_args = base + ["decode.method='ctc_beam'", f"decode.beam={beam}"]
  return {
    "greedy": base + ["decode.method='greedy'", "decode.lm_weight=0.0", "decode.bias_file=''"],
    "beam": beam_args + ["decode.lm_weight=0.0", "decode.bias_file=''"],
    "beam+lm": beam_args + [f"decode.lm_weight={lm_weight}", "decode.bias_file=''"],
    "beam+lm+bias": beam_args
    + [f"decode.lm_weight={lm_weight}", f"decode.bias_file='{bias_file}'"],
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


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--beam", type=int, default=8)
  parser.add_argument("--lm-weight", type=float, default=None)
  parser.add_argument("--bias-file", default="corpus")
  parser.add_argument("--splits", nargs="+", default=["test", "test_cs", "test_bias"])
  parser.add_argument("--override", action="append", default=[], help="extra config override")
  args = parser.parse_args(argv)
  workdir = pathlib.Path(args.workdir)
  lm_weight = args.lm_weight
  tuned = workdir / score.DECODING_FILE
  if lm_weight is None:
    lm_weight = json.loads(tuned.read_text())["decode"]["lm_weight"] if tuned.exists() else 0.3
  out_root = workdir / "eval_ladder"
  table = {}
  for name, overrides in settings(args.beam, lm_weight, args.bias_file).items():
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
  text = format_table(table, args.splits)
  print(f"Decoding ladder of {workdir} (beam {args.beam}, LM weight {lm_weight}):")
  print(text)
  out_root.mkdir(parents=True, exist_ok=True)
  (out_root / "table.json").write_text(
    json.dumps({"beam": args.beam, "lm_weight": lm_weight, "table": table}, indent=2)
  )
  return table


if __name__ == "__main__":
  main(sys.argv[1:])
