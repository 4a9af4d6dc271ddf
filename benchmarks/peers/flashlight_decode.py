"""flashlight-text's lexicon-free CTC beam search over a dump of CTC log-probabilities.

    benchmarks/peers/.venv/flashlight-text/bin/python benchmarks/peers/flashlight_decode.py \
        --logprobs W/bench/ctc_logprobs_test.npz --out peer.json --beam 8 \
        [--lm-text train_pieces.txt --lm-order 3 --lm-weight 0.3]

The peer of benchmarks/decode.py: `flashlight.lib.text.decoder.LexiconFreeDecoder` (the C++
decoder behind torchaudio's `ctc_decoder` with `lexicon=None`), CTC criterion, run in its own
virtual environment, importing nothing from moe_asr. The .npz holds `log_probs` float32
[N, T, V], `lengths` int [N] and `labels` [V] (str; "" is the CTC blank). Without --lm-text
the LM is `ZeroLM`; with it, a token n-gram model is estimated here from the given sentences
(one a line, labels separated by spaces), written as ARPA and loaded by flashlight's `KenLM`
(flashlight-text ships KenLM in its wheels): the tokens are the LM's words, as in
torchaudio's lexicon-free decoding with a token LM.

The JSON written to --out holds the raw texts (labels joined, as our decoder's are) and the
seconds spent in the decoding loop alone (decoder and LM construction excluded; the median
over --repeats passes).
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import json
import math
import statistics
import tempfile
import time
from collections.abc import Sequence

import numpy as np
from flashlight.lib.text import decoder as fl
from flashlight.lib.text.dictionary import Dictionary

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def write_arpa(
  sentences: Sequence[Sequence[str]], order: int, path: str, discount: float = 0.7
) -> dict:
  """Writes a back-off n-gram LM of `sentences` in ARPA format.

  Interpolated absolute discounting (one discount for every order), unigrams add-one
  smoothed over the vocabulary plus </s> and <unk>; stored as ARPA probabilities and back-off
  weights, so a back-off LM reader (KenLM) reproduces the interpolated model on seen n-grams.

  Returns:
    {"ngrams": count per order}.
  """
  counts = [collections.Counter() for _ in range(order + 1)]  # counts[n][(h..., w)]
  for words in sentences:
    seq = [BOS] + list(words) + [EOS]
    for i in range(1, len(seq)):  # every predicted word, <s> only as context
      for n in range(1, min(order, i + 1) + 1):
        counts[n][tuple(seq[i - n + 1 : i + 1])] += 1
  vocab = sorted({w for (w,) in counts[1]} | {EOS, UNK})
  total = sum(counts[1].values()) + len(vocab)
  prob: dict[tuple, float] = {(w,): (counts[1][(w,)] + 1) / total for w in vocab}
  prob[(BOS,)] = 0.0
  for n in range(2, order + 1):
    context_total = collections.Counter()
    context_types = collections.Counter()
    for gram, c in counts[n].items():
      context_total[gram[:-1]] += c
      context_types[gram[:-1]] += 1
    for gram, c in counts[n].items():
      h = gram[:-1]
      lower = _interpolated(prob, gram[1:])
      prob[gram] = (c - discount) / context_total[h] + (
        discount * context_types[h] / context_total[h]
      ) * lower
  backoff: dict[tuple, float] = {}
  for n in range(1, order):
    seen = collections.defaultdict(list)
    for gram in counts[n + 1]:
      seen[gram[:-1]].append(gram)
    for h, grams in seen.items():
      num = 1.0 - sum(prob[g] for g in grams)
      den = 1.0 - sum(_interpolated(prob, g[1:]) for g in grams)
      backoff[h] = num / den if num > 0 and den > 0 else 1e-9
  log10 = lambda p: -99.0 if p <= 0 else math.log10(p)
  grams_by_order = [[g for g in prob if len(g) == n] for n in range(1, order + 1)]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\\data\\\n")
    for n, grams in enumerate(grams_by_order, start=1):
      f.write(f"ngram {n}={len(grams)}\n")
    for n, grams in enumerate(grams_by_order, start=1):
      f.write(f"\n\\{n}-grams:\n")
      for g in sorted(grams):
        line = f"{log10(prob[g]):.6f}\t{' '.join(g)}"
        if n < order and g in backoff:
          line += f"\t{math.log10(backoff[g]):.6f}"
        f.write(line + "\n")
    f.write("\n\\end\\\n")
  return {"ngrams": [len(g) for g in grams_by_order]}


def _interpolated(prob: dict[tuple, float], gram: tuple) -> float:
  """p(w | h) of the model so far: the stored n-gram, else backing off to shorter contexts.

  Only used while estimating, on suffixes of seen n-grams, whose lower orders are stored.
  """
  while gram not in prob and len(gram) > 1:
    gram = gram[1:]
  return prob.get(gram, prob.get((UNK,), 1e-9))


def collapse(tokens: Sequence[int], blank: int) -> list[int]:
  """CTC collapse of flashlight's frame-level token path (negative ids are padding)."""
  out, previous = [], None
  for t in tokens:
    if t != previous and t != blank and t >= 0:
      out.append(int(t))
    previous = t
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--logprobs", required=True, help=".npz with log_probs, lengths, labels")
  parser.add_argument("--out", required=True, help="JSON output path")
  parser.add_argument("--beam", type=int, default=8, help="beam_size")
  parser.add_argument("--beam-size-token", type=int, default=0, help="tokens per frame (0: beam)")
  parser.add_argument("--beam-threshold", type=float, default=10.0, help="drop hyps this far")
  parser.add_argument("--lm-text", default="", help="LM sentences, labels separated by spaces")
  parser.add_argument("--lm-order", type=int, default=3)
  parser.add_argument("--lm-weight", type=float, default=0.3)
  parser.add_argument("--sil-id", type=int, default=2, help="a token CTC never emits (bos)")
  parser.add_argument("--blank-id", type=int, default=0)
  parser.add_argument("--limit", type=int, default=0, help="first N utterances only (0 = all)")
  parser.add_argument("--repeats", type=int, default=1, help="passes; the median time is kept")
  args = parser.parse_args()

  with np.load(args.logprobs) as data:
    log_probs = data["log_probs"].astype(np.float32)
    lengths = data["lengths"].astype(np.int64)
    labels = [str(x) for x in data["labels"]]
  if args.limit:
    log_probs, lengths = log_probs[: args.limit], lengths[: args.limit]
  names = [label or "<blank>" for label in labels]

  lm_info: dict = {"lm": "ZeroLM"}
  with tempfile.TemporaryDirectory() as tmp:
    if args.lm_text:
      with open(args.lm_text, encoding="utf-8") as f:
        sentences = [line.split() for line in f if line.strip()]
      arpa = f"{tmp}/lm.arpa"
      start = time.perf_counter()
      lm_info = write_arpa(sentences, args.lm_order, arpa)
      lm_info.update(
        lm=f"KenLM {args.lm_order}-gram over tokens ({len(sentences)} sentences)",
        build_seconds=time.perf_counter() - start,
      )
      tokens = Dictionary()
      for name in names:
        tokens.add_entry(name)
      from flashlight.lib.text.decoder.kenlm import KenLM

      lm = KenLM(arpa, tokens)
      lm_weight = args.lm_weight
    else:
      lm, lm_weight = fl.ZeroLM(), 0.0
    options = fl.LexiconFreeDecoderOptions(
      beam_size=args.beam,
      beam_size_token=args.beam_size_token or args.beam,
      beam_threshold=args.beam_threshold,
      lm_weight=lm_weight,
      sil_score=0.0,
      log_add=False,
      criterion_type=fl.CriterionType.CTC,
    )
    decoder = fl.LexiconFreeDecoder(options, lm, args.sil_id, args.blank_id, [])

    times = []
    for _ in range(max(1, args.repeats)):
      texts = []
      start = time.perf_counter()
      for lp, n in zip(log_probs, lengths, strict=True):
        if n <= 0:
          texts.append("")
          continue
        emissions = np.ascontiguousarray(lp[: int(n)])
        results = decoder.decode(emissions.ctypes.data, int(n), emissions.shape[1])
        best = collapse(results[0].tokens, args.blank_id) if results else []
        texts.append("".join(labels[t] for t in best))
      times.append(time.perf_counter() - start)
  result = {
    "texts": texts,
    "seconds": statistics.median(times),
    "seconds_per_pass": times,
    "utterances": len(texts),
    "beam": args.beam,
    "beam_size_token": args.beam_size_token or args.beam,
    "beam_threshold": args.beam_threshold,
    "lm_weight": lm_weight,
    **lm_info,
    "flashlight-text": importlib.metadata.version("flashlight-text"),
  }
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(result, f, ensure_ascii=False)


if __name__ == "__main__":
  main()
