"""benchmarks/decode.py, our side only, on a tiny synthetic dump (no peer venv, no network)."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("bench_decode", REPO / "benchmarks" / "decode.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


PIECES = ["<pad>", "<unk>", "<s>", "<en>", "▁a", "b", "▁c", "d", "<0xC3>", "<0xA9>", "▁"]
SPECIAL = [True, True, True, True, False, False, False, False, False, False, False]
# (token ids, normalised reference); "▁c" + bytes C3 A9 is "cé", <s>/<en> are not text.
UTTERANCES = [
  ([4, 5, 6], "ab c"),
  ([6, 7], "cd"),
  ([4, 3, 5, 6, 8, 9], "ab cé"),
  ([6, 2, 4], "c a"),
  ([4, 1, 5], "a b"),
]


def test_labels_and_text(bench):
  labels = bench.piece_labels(PIECES, SPECIAL)
  assert labels[0] == "" and labels[1] == "▁⁇▁"
  assert labels[4:8] == ["▁a", "b", "▁c", "d"]
  assert len(set(labels)) == len(labels)
  for tokens, ref in UTTERANCES:
    assert bench.tokens_text(tokens, labels) == ref
  # pyctcdecode's output for the same tokens: words joined by spaces, placeholders kept.
  assert bench.clean_text("ab c\ue0c3\ue0a9") == "ab cé"
  assert bench.clean_text("c\ue102 a") == "c a"


def test_bias_phrases_are_deterministic_and_mostly_absent(bench):
  refs = ["turn on the kitchen lights", "call john smith now", "play some jazz music"]
  a = bench.bias_phrases(refs, 20, slot_values=["john smith"])
  assert a == bench.bias_phrases(refs, 20, slot_values=["john smith"])
  assert len(a) == len(set(a)) == 20
  present = [p for p in a if any(f" {p} " in f" {r} " for r in refs)]
  assert len(present) == 4 and a[0] == "john smith"
  assert all(2 <= len(p.split()) <= 3 for p in a[1:])


def _write_dump(path: pathlib.Path, labels: list[str]) -> None:
  frames = 2 * max(len(t) for t, _ in UTTERANCES) + 3
  log_probs = np.full((len(UTTERANCES), frames, len(labels)), 0.0, np.float32)
  lengths = []
  rng = np.random.default_rng(0)
  for i, (tokens, _) in enumerate(UTTERANCES):
    # Each token on one frame followed by a blank frame: the best path is unambiguous.
    best_path = [x for t in tokens for x in (t, 0)] + [0]
    logits = rng.normal(0, 0.3, (frames, len(labels)))
    logits[np.arange(len(best_path)), best_path] += 9.0
    log_probs[i] = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    lengths.append(len(best_path))
  np.savez(
    path,
    log_probs=log_probs,
    lengths=np.array(lengths, np.int32),
    labels=np.array(labels),
    references=np.array([r for _, r in UTTERANCES]),
    slot_values=np.array(["ab c"]),
    ids=np.array([f"u{i}" for i in range(len(UTTERANCES))]),
  )


def test_our_side_of_the_benchmark(bench, tmp_path, capsys):
  labels = bench.piece_labels(PIECES, SPECIAL)
  npz = tmp_path / "ctc_logprobs_test.npz"
  _write_dump(npz, labels)
  out = tmp_path / "decode.json"
  argv = ["--logprobs", str(npz), "--no-peer", "--beam", "4", "--batch", "2"]
  summary = bench.main([*argv, "--num-bias", "6", "--frame-multiple", "8", "--out", str(out)])
  printed = capsys.readouterr().out

  rows = {line.split()[0]: line.split()[1:] for line in printed.splitlines() if line.strip()}
  for name in ("ours", "ours+bias"):
    assert name in rows, printed
    assert float(rows[name][0]) > 0  # utt/s
    assert rows[name][1:3] == ["0.00%", "0.00%"]  # WER, CER: every utterance decoded exactly
  assert rows["pyctcdecode"] == ["skipped"] and rows["pyctcdecode+hotwords"] == ["skipped"]

  saved = json.loads(out.read_text("utf-8"))
  assert saved == json.loads(json.dumps(summary))
  assert saved["results"]["ours"]["texts"] == [r for _, r in UTTERANCES]
  assert saved["results"]["ours+bias"]["wer"] == 0.0
  assert len(saved["bias_phrases"]) == 6 and saved["bias_phrases"][0] == "ab c"
  assert saved["settings"]["prune_threshold"] == 5.0
