"""pyctcdecode beam search over a dump of CTC log-probabilities (the peer of benchmarks/decode.py).

    benchmarks/peers/.venv-pyctcdecode/bin/python benchmarks/peers/pyctcdecode_decode.py \
        --logprobs W/bench/ctc_logprobs_test.npz --out peer.json --beam 8 \
        [--hotwords phrases.txt --hotword-weight 3.0]

Runs in its own virtual environment (pyctcdecode pins numpy < 2), so it imports
nothing from moe_asr. The .npz holds `log_probs` float32 [N, T, V], `lengths`
int [N] and `labels` [V] (str; "" is the CTC blank, pieces starting with "▁"
begin a word). Each utterance is decoded with `BeamSearchDecoderCTC.decode`
(no language model) at beam width K; the JSON written to --out holds the raw
texts (placeholder characters for special and byte pieces left in; the caller
turns them into text the same way for both decoders) and the seconds spent in
the decoding loop alone (imports, loading and decoder construction excluded;
the median over --repeats passes).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import statistics
import time

import numpy as np
import pyctcdecode


def read_hotwords(path: str) -> list[str]:
  """One phrase per line; blank lines skipped."""
  with open(path, encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip()]


def decode_all(
  decoder: pyctcdecode.BeamSearchDecoderCTC,
  log_probs: np.ndarray,
  lengths: np.ndarray,
  *,
  beam: int,
  beam_prune_logp: float,
  token_min_logp: float,
  hotwords: list[str] | None,
  hotword_weight: float,
) -> tuple[list[str], float]:
  """(texts, seconds): every utterance decoded one after another in this process."""
  texts = []
  start = time.perf_counter()
  for lp, n in zip(log_probs, lengths, strict=True):  # lp: [T, V] log-probs
    texts.append(
      decoder.decode(
        lp[: int(n)],
        beam_width=beam,
        beam_prune_logp=beam_prune_logp,
        token_min_logp=token_min_logp,
        hotwords=hotwords,
        hotword_weight=hotword_weight,
      )
      if n > 0
      else ""
    )
  return texts, time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--logprobs", required=True, help=".npz with log_probs, lengths, labels")
  parser.add_argument("--out", required=True, help="JSON output path")
  parser.add_argument("--beam", type=int, default=8)
  parser.add_argument(
    "--beam-prune-logp",
    type=float,
    default=-10.0,
    help="drop beams this much below the best (pyctcdecode's default)",
  )
  parser.add_argument(
    "--token-min-logp",
    type=float,
    default=-5.0,
    help="skip tokens below this log-prob unless they are the frame's argmax (its default)",
  )
  parser.add_argument("--hotwords", default="", help="file of phrases, one a line")
  parser.add_argument("--hotword-weight", type=float, default=10.0)
  parser.add_argument("--limit", type=int, default=0, help="first N utterances only (0 = all)")
  parser.add_argument("--repeats", type=int, default=1, help="passes; the median time is kept")
  args = parser.parse_args()
  logging.getLogger("pyctcdecode").setLevel(logging.ERROR)

  with np.load(args.logprobs) as data:
    log_probs = data["log_probs"].astype(np.float32)
    lengths = data["lengths"].astype(np.int64)
    labels = [str(x) for x in data["labels"]]
  if args.limit:
    log_probs, lengths = log_probs[: args.limit], lengths[: args.limit]
  hotwords = read_hotwords(args.hotwords) if args.hotwords else None
  decoder = pyctcdecode.build_ctcdecoder(labels)
  times = []
  for _ in range(max(1, args.repeats)):
    texts, seconds = decode_all(
      decoder,
      log_probs,
      lengths,
      beam=args.beam,
      beam_prune_logp=args.beam_prune_logp,
      token_min_logp=args.token_min_logp,
      hotwords=hotwords,
      hotword_weight=args.hotword_weight,
    )
    times.append(seconds)
  seconds = statistics.median(times)
  result = {
    "texts": texts,
    "seconds": seconds,
    "seconds_per_pass": times,
    "utterances": len(texts),
    "beam": args.beam,
    "beam_prune_logp": args.beam_prune_logp,
    "token_min_logp": args.token_min_logp,
    "hotwords": len(hotwords or []),
    "hotword_weight": args.hotword_weight,
    "is_bpe": bool(decoder._alphabet.is_bpe),  # noqa: SLF001
    "pyctcdecode": importlib.metadata.version("pyctcdecode"),
  }
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(result, f, ensure_ascii=False)


if __name__ == "__main__":
  main()
