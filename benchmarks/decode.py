"""Our CTC prefix beam search against pyctcdecode on the same CTC log-probabilities, in one run.

    python benchmarks/decode.py --workdir runs/demo --split test [--beam 8 --batch 32]
    python benchmarks/decode.py --logprobs runs/demo/bench/ctc_logprobs_test.npz [--no-peer]

With --workdir, the newest checkpoint is restored and the split's CTC
log-posteriors, valid lengths, references and the vocabulary are dumped once to
`W/bench/ctc_logprobs_<split>.npz` (reused when present); --logprobs reads any
such dump. The same dump is then decoded at the same beam width K by

  ours            `moe_asr.decoding.ctc_beam.ctc_prefix_beam_search`, jit-compiled,
                  batches of --batch utterances sorted by length (frames padded to a
                  multiple of --frame-multiple, one compile per padded length; the
                  compiles and one warm-up pass are excluded from the timing);
  ours+bias       the same with a context graph of the bias phrases;
  pyctcdecode     `BeamSearchDecoderCTC.decode` (no LM), one utterance at a time in
                  one process, run by benchmarks/peers/pyctcdecode_decode.py in its
                  own virtual environment (created here on first use);
  pyctcdecode+hw  the same with the bias phrases as hotwords;
  ours+bias1000   ours with --num-bias-large (1000) phrases;
  ours+lm         ours with shallow fusion of the workdir's text LM (W/lm, a transformer
                  over our pieces) at --lm-weight;
  flashlight      flashlight-text's `LexiconFreeDecoder` (C++, the decoder of torchaudio's
                  `ctc_decoder`), CTC criterion, `ZeroLM`, beam_size = beam_size_token = K,
                  beam_threshold = -beam_prune_logp, one utterance at a time, run by
                  benchmarks/peers/flashlight_decode.py in its own virtual environment
                  (benchmarks/peers/.venv/flashlight-text, created here on first use);
  flashlight+kenlm  the same with a token 3-gram KenLM estimated from the transcripts W/lm
                  was trained on (flashlight cannot run our transformer LM: its LM
                  interface is a C++/Python callback per token and hypothesis) at --lm-weight.
                  flashlight has no hotword biasing, so it has no bias rows.

Pruning is set equal in spirit: pyctcdecode expands the tokens with log p >=
`token_min_logp` (plus the frame's argmax) and ours the top `token_topk` (= K)
tokens with log p >= max - `prune_threshold`, where `prune_threshold` =
-`token_min_logp` (CTC frames are peaked: the max is close to 0); pyctcdecode
also drops beams `beam_prune_logp` below the best, ours keeps the top K.
Both decoders' outputs become text the same way (pieces joined, "▁" -> space,
special pieces dropped, byte pieces decoded, `moe_asr.data.text.normalize`) and
WER and CER (characters, spaces left out) use `moe_asr.evaluation.metrics`.
The bias phrases (--num-bias, default 100) are drawn deterministically: a fifth
are slot values / 2-3 word spans of the split's references (they occur in the
audio), the rest are word spans that occur in no reference. Ours boosts each
phrase character by --bias-boost; pyctcdecode's hotword weight is per word, by
default --bias-boost times the phrases' mean characters per word, so both add about
the same score for a matched phrase. Every row also reports B-WER and U-WER against the
bias phrases (`metrics.biased_error_rates`).

Prints a table (utterances/s, WER, CER, throughput ours/peer, bias cost = time with
bias / without) and writes it to `W/bench/decode.json` (next to the dump).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from moe_asr.data import text as text_lib
from moe_asr.evaluation import metrics as metrics_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
PEER_DIR = REPO / "benchmarks" / "peers"
PEER_VENV = PEER_DIR / ".venv-pyctcdecode"
PEER_SCRIPT = PEER_DIR / "pyctcdecode_decode.py"
FLASHLIGHT_VENV = PEER_DIR / ".venv" / "flashlight-text"
FLASHLIGHT_SCRIPT = PEER_DIR / "flashlight_decode.py"

WORD_BOUNDARY = "\u2581"  # SentencePiece's "▁", also pyctcdecode's BPE word marker.
UNK_LABEL = "\u2581\u2047\u2581"  # pyctcdecode's own BPE unk label "▁⁇▁": a word of its own.
# Labels of pieces that are not text, from the Unicode private use area so that no
# transcript or hotword contains them: byte-fallback pieces <0xNN> -> BYTE_BASE + NN
# (decoded back to UTF-8 afterwards), other special pieces (bos, eos, language tags,
# task tokens) -> SPECIAL_BASE + id (dropped from the text).
BYTE_BASE = 0xE000
SPECIAL_BASE = 0xE100
_BYTE_RUN = re.compile("[\ue000-\ue0ff]+")
_SPECIAL = re.compile("[\ue100-\uf8ff]")
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")

ROWS = (
  "ours",
  "ours+bias",
  "ours+bias1000",
  "ours+lm",
  "pyctcdecode",
  "pyctcdecode+hotwords",
  "flashlight",
  "flashlight+kenlm",
)
# The peer row each of ours is compared with, and the row a bias cost is relative to.
PEER_OF = {
  "ours": "flashlight",
  "ours+bias": "pyctcdecode+hotwords",
  "ours+lm": "flashlight+kenlm",
}
PLAIN_OF = {"ours+bias": "ours", "ours+bias1000": "ours", "pyctcdecode+hotwords": "pyctcdecode"}


# ---------------------------------------------------------------------------
# Labels and text: one conversion for both decoders.
# ---------------------------------------------------------------------------


def piece_labels(pieces: Sequence[str], special: Sequence[bool], blank_id: int = 0) -> list[str]:
  """pyctcdecode labels of a SentencePiece vocabulary.

  Args:
    pieces: piece string of each id.
    special: whether each id is a control / user-defined piece (not text).
    blank_id: the CTC blank (label "").

  Returns:
    Unique labels: "" for the blank, `UNK_LABEL` for "<unk>", private-use
    placeholders for byte and special pieces, the piece itself otherwise.
  """
  labels = []
  for i, (piece, is_special) in enumerate(zip(pieces, special, strict=True)):
    byte = _BYTE_PIECE.match(piece)
    if i == blank_id:
      labels.append("")
    elif piece == "<unk>":
      labels.append(UNK_LABEL)
    elif byte:
      labels.append(chr(BYTE_BASE + int(byte.group(1), 16)))
    elif is_special:
      labels.append(chr(SPECIAL_BASE + i))
    else:
      labels.append(piece)
  if len(set(labels)) != len(labels):
    raise ValueError("Vocabulary labels are not unique")
  return labels


def clean_text(raw: str) -> str:
  """Normalised text of a raw decoder output (joined labels or pyctcdecode's text)."""
  raw = _SPECIAL.sub("", raw.replace(WORD_BOUNDARY, " "))
  raw = _BYTE_RUN.sub(
    lambda m: bytes(ord(c) - BYTE_BASE for c in m.group()).decode("utf-8", "replace"), raw
  )
  return text_lib.normalize(raw)


def tokens_text(tokens: Sequence[int], labels: Sequence[str]) -> str:
  """Normalised text of a token sequence, exactly as pyctcdecode's output is treated."""
  return clean_text("".join(labels[int(t)] for t in tokens))


def word_error_rate(refs: Sequence[str], hyps: Sequence[str], mode: str = "word") -> float:
  """WER (or CER with mode="char": characters, spaces left out)."""
  counts = [metrics_lib.edit_counts(r, h, mode) for r, h in zip(refs, hyps, strict=True)]
  return metrics_lib.error_rate(counts)


# ---------------------------------------------------------------------------
# Bias phrases.
# ---------------------------------------------------------------------------


def bias_phrases(
  references: Sequence[str],
  num: int = 100,
  *,
  present_fraction: float = 0.2,
  slot_values: Sequence[str] = (),
  seed: int = 0,
) -> list[str]:
  """`num` distinct phrases: some from the references, the rest occurring in none.

  Args:
    references: normalised reference transcripts of the split.
    num: number of phrases.
    present_fraction: share drawn from the references (slot values first, then
      2-3 word spans).
    slot_values: normalised slot values of the split (preferred present phrases).
    seed: the draw is a function of the inputs and the seed.

  Returns:
    The phrases, present ones first.
  """
  rng = np.random.default_rng(seed)
  padded = [f" {r} " for r in references]
  words = sorted({w for r in references for w in r.split()})
  spans = sorted(
    {
      " ".join(ws[i : i + n])
      for ws in (r.split() for r in references)
      for n in (2, 3)
      for i in range(len(ws) - n + 1)
    }
  )
  values = sorted({v for v in slot_values if v})
  num_present = min(int(round(num * present_fraction)), len(values) + len(spans))
  present: list[str] = []
  for pool in (values, spans):
    take = min(num_present - len(present), len(pool))
    present += [pool[i] for i in sorted(rng.choice(len(pool), take, replace=False))]
  phrases, seen = list(present), set(present)
  tries = 0
  while len(phrases) < num and words and tries < 100 * num:
    tries += 1
    phrase = " ".join(rng.choice(words, int(rng.integers(2, 4))))
    if phrase not in seen and not any(f" {phrase} " in r for r in padded):
      phrases.append(phrase)
      seen.add(phrase)
  return phrases


def greedy_segment(text: str, labels: Sequence[str]) -> list[int]:
  """Longest-match segmentation of `text` into label ids (used when no tokenizer is saved)."""
  index = {label: i for i, label in enumerate(labels) if label}
  longest = max(map(len, index))
  ids = []
  for word in text.split():
    s, pos = WORD_BOUNDARY + word, 0
    while pos < len(s):
      for n in range(min(longest, len(s) - pos), 0, -1):
        if s[pos : pos + n] in index:
          ids.append(index[s[pos : pos + n]])
          pos += n
          break
      else:
        pos += 1  # a character no label covers
  return ids


def phrase_tokens(phrases: Sequence[str], labels: Sequence[str], tokenizer=None) -> list[list[int]]:
  """Token ids of each phrase: the tokenizer's segmentation, else longest match on labels."""
  if tokenizer is not None:
    return [tokenizer.encode(p) for p in phrases]
  return [greedy_segment(p, labels) for p in phrases]


# ---------------------------------------------------------------------------
# Dumping CTC log-probabilities of a trained run.
# ---------------------------------------------------------------------------


def _as_str(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def dump_logprobs(
  workdir: str | pathlib.Path,
  split: str,
  out_path: str | pathlib.Path,
  *,
  overrides: Sequence[str] = (),
  max_batches: int = 0,
) -> pathlib.Path:
  """Writes the CTC log-posteriors of a split with the newest checkpoint of `workdir`.

  Args:
    workdir: a training workdir.
    split: dataset split.
    out_path: the .npz to write.
    overrides: config overrides (e.g. `data.data_dir=...`).
    max_batches: stop after this many pipeline batches (0 = the whole split).

  Returns:
    `out_path`, holding log_probs float32 [N, T, V], lengths int32 [N], labels [V],
    references [N] and slot_values (normalised), ids [N] and the tokenizer proto
    (uint8).
  """
  from flax import nnx

  from moe_asr import runtime
  from moe_asr.data import pipeline as pipeline_lib
  from moe_asr.evaluation import score
  from moe_asr.models import partitioning
  from moe_asr.training import inputs, sharding

  cfg = score.workdir_config(workdir, overrides)
  run = runtime.build_run(cfg, workdir, for_training=False)
  tokenizer = run.data.tokenizer

  def ctc_step(state, rng_state, batch):
    model = nnx.merge(run.graphdef, rng_state, state).model
    model.eval()
    encoded = model.encode(batch)
    return {
      "log_probs": jax.nn.log_softmax(encoded.ctc_logits.astype(jnp.float32), -1),
      "lengths": encoded.ctc_mask.sum(-1).astype(jnp.int32),
      "index": batch["index"],
      "example_mask": batch["example_mask"],
    }

  replicated = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec())
  rows, ids, refs, values = [], [], [], []
  with run.mesh, partitioning.axis_rules(run.rules, run.mesh):
    steps = runtime.CompiledSteps(ctc_step, run, replicated, donate=False)
    pipe = inputs.make_pipeline(cfg, split, run.data, train=False, process_index=0, process_count=1)
    for b, host_batch in enumerate(pipe):
      if max_batches and b >= max_batches:
        break
      batch = pipeline_lib.device_arrays(host_batch)
      batch = sharding.put_batch(batch, run.batch_shardings(batch))
      out = jax.device_get(steps(batch)(run.state, run.rng_state, batch))
      for r in np.flatnonzero(out["example_mask"]):
        ex = pipe.source[int(out["index"][r])]
        n = int(out["lengths"][r])
        rows.append(out["log_probs"][r, :n])
        ids.append(_as_str(ex.get("id", "")))
        refs.append(text_lib.normalize(_as_str(ex.get("text", ""))))
        slots = ex.get("slots") or {}
        values += [text_lib.normalize(_as_str(v)) for v in slots.get("value", [])]
  run.checkpointer.close()
  lengths = np.array([len(x) for x in rows], np.int32)
  log_probs = np.zeros((len(rows), int(lengths.max()), tokenizer.vocab_size), np.float32)
  for i, x in enumerate(rows):
    log_probs[i, : len(x)] = x
  pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
  special = [
    i in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) or tokenizer.is_symbol(i)
    for i in range(tokenizer.vocab_size)
  ]
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(
    out_path,
    log_probs=log_probs,
    lengths=lengths,
    labels=np.array(piece_labels(pieces, special, tokenizer.blank_id)),
    references=np.array(refs),
    slot_values=np.array(sorted(set(values))),
    ids=np.array(ids),
    tokenizer=np.frombuffer(tokenizer.to_bytes(), np.uint8),
  )
  return out_path


def load_dump(path: str | pathlib.Path) -> dict:
  """The arrays of a dump (see `dump_logprobs`), plus the tokenizer when it was saved."""
  with np.load(path) as data:
    out = {k: data[k] for k in data.files}
  out["labels"] = [str(x) for x in out["labels"]]
  out["references"] = [str(x) for x in out["references"]]
  out["slot_values"] = [str(x) for x in out.get("slot_values", [])]
  tok = out.pop("tokenizer", None)
  if tok is not None and tok.size:
    from moe_asr.data.tokenizer import Tokenizer

    out["tokenizer"] = Tokenizer.from_bytes(tok.tobytes())
  return out


# ---------------------------------------------------------------------------
# Our side.
# ---------------------------------------------------------------------------


def length_batches(
  lengths: np.ndarray, batch: int, frame_multiple: int
) -> list[tuple[np.ndarray, int]]:
  """(utterance indices, padded frames) per batch, utterances sorted by length."""
  order = np.argsort(lengths, kind="stable")
  out = []
  for start in range(0, len(order), batch):
    idx = order[start : start + batch]
    frames = max(int(lengths[idx].max()), 1)
    out.append((idx, -(-frames // frame_multiple) * frame_multiple))
  return out


def decode_ours(
  log_probs: np.ndarray,
  lengths: np.ndarray,
  labels: Sequence[str],
  *,
  beam: int,
  batch: int = 32,
  frame_multiple: int = 32,
  max_len_ratio: float = 1.0,
  token_topk: int | None = None,
  prune_threshold: float | None = 5.0,
  graph=None,
  bias_reserve: int | None = None,
  lm=None,
  lm_weight: float = 0.0,
  repeats: int = 1,
) -> dict:
  """Decodes every utterance with our CTC prefix beam search; times the decoding loop.

  Args:
    log_probs: float32 [N, T, V] CTC log-posteriors.
    lengths: int [N] valid frames.
    labels: label of each token id (text conversion).
    beam: beam width K.
    batch: utterances per call (the last batch is padded with empty rows).
    frame_multiple: frames of a batch are padded to a multiple of this.
    max_len_ratio: output token slots per padded frame. CTC emits at most one token a
      frame, so 1.0 never cuts a hypothesis; 0.5 cut character-level hypotheses of fast
      speech (CER 37.9% against 35.1% for the peer on the demo model) and is only safe
      for word pieces.
    token_topk: extension candidates per frame (default K).
    prune_threshold: skip tokens with log p < frame max - this.
    graph: a `biasing.ContextGraph` or None.
    repeats: timed passes over all utterances (the median is kept).

  Returns:
    {"texts": normalised hypotheses [N], "seconds": decoding loop wall time (median pass),
    "compile_seconds", "shapes": distinct padded frame counts}.
  """
  from moe_asr.decoding import ctc_beam

  @functools.partial(jax.jit, static_argnames=("max_len",))
  def search(lp, mask, graph, *, max_len):
    nbest = ctc_beam.ctc_prefix_beam_search(
      lp,
      mask,
      beam=beam,
      max_len=max_len,
      token_topk=token_topk if token_topk is not None else beam,
      prune_threshold=prune_threshold,
      bias=graph,
      bias_reserve=bias_reserve,
      lm=lm,
      lm_weight=lm_weight,
      nbest=1,
    )
    return nbest.best

  staged = []
  for idx, frames in length_batches(lengths, batch, frame_multiple):
    lp = np.zeros((batch, frames, log_probs.shape[-1]), np.float32)
    take = min(frames, log_probs.shape[1])
    lp[: len(idx), :take] = log_probs[idx, :take]
    mask = np.arange(frames)[None] < np.pad(lengths[idx], (0, batch - len(idx)))[:, None]
    max_len = max(1, int(round(frames * max_len_ratio)))
    if lm is not None:  # the LM's positions: bos + max_len tokens
      max_len = min(max_len, lm.max_len - 1)
    staged.append((idx, jax.device_put(lp), jax.device_put(mask), max_len))

  start = time.perf_counter()
  compiled = {}
  for _, lp, mask, max_len in staged:  # compile every shape and warm up once
    if lp.shape not in compiled:
      compiled[lp.shape] = search.lower(lp, mask, graph, max_len=max_len).compile()
  compile_seconds = time.perf_counter() - start
  jax.block_until_ready([compiled[lp.shape](lp, mask, graph) for _, lp, mask, _ in staged])

  times = []
  for _ in range(max(1, repeats)):
    texts = [""] * len(lengths)
    start = time.perf_counter()
    outs = [compiled[lp.shape](lp, mask, graph) for _, lp, mask, _ in staged]
    outs = jax.device_get(outs)
    for (idx, *_), (tokens, lens) in zip(staged, outs, strict=True):
      for row, i in enumerate(idx):
        texts[i] = tokens_text(tokens[row, : lens[row]], labels)
    times.append(time.perf_counter() - start)
  return {
    "texts": texts,
    "seconds": statistics.median(times),
    "seconds_per_pass": times,
    "compile_seconds": compile_seconds,
    "shapes": sorted({lp.shape[1] for _, lp, _, _ in staged}),
  }


# ---------------------------------------------------------------------------
# The peer (pyctcdecode in its own virtual environment).
# ---------------------------------------------------------------------------


def peer_python() -> pathlib.Path:
  """The peer venv's python, creating the venv (pyctcdecode, numpy < 2) if needed."""
  python = PEER_VENV / "bin" / "python"
  if not python.exists():
    print(f"Creating {PEER_VENV} (pyctcdecode, numpy<2) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run(
      [str(python), "-m", "pip", "install", "-q", "pyctcdecode", "numpy<2"], check=True
    )
  return python


def decode_peer(
  npz_path: str | pathlib.Path,
  *,
  beam: int,
  beam_prune_logp: float = -10.0,
  token_min_logp: float = -5.0,
  hotwords: Sequence[str] = (),
  hotword_weight: float = 10.0,
  limit: int = 0,
  repeats: int = 1,
) -> dict:
  """Runs benchmarks/peers/pyctcdecode_decode.py; returns its JSON with normalised texts."""
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "peer.json"
    cmd = [
      str(peer_python()),
      str(PEER_SCRIPT),
      f"--logprobs={npz_path}",
      f"--out={out}",
      f"--beam={beam}",
      f"--beam-prune-logp={beam_prune_logp}",
      f"--token-min-logp={token_min_logp}",
      f"--hotword-weight={hotword_weight}",
      f"--limit={limit}",
      f"--repeats={repeats}",
    ]
    if hotwords:
      (pathlib.Path(tmp) / "hotwords.txt").write_text("\n".join(hotwords) + "\n", "utf-8")
      cmd.append(f"--hotwords={pathlib.Path(tmp) / 'hotwords.txt'}")
    env = dict(os.environ, PYTHONPATH="")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
      raise RuntimeError(f"pyctcdecode peer failed:\n{proc.stderr[-4000:]}")
    result = json.loads(out.read_text("utf-8"))
  result["texts"] = [clean_text(t) for t in result["texts"]]
  return result


def flashlight_python() -> pathlib.Path:
  """The flashlight-text venv's python, creating the venv (flashlight-text, numpy) if needed."""
  python = FLASHLIGHT_VENV / "bin" / "python"
  if not python.exists():
    print(f"Creating {FLASHLIGHT_VENV} (flashlight-text, numpy) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(FLASHLIGHT_VENV)], check=True)
    subprocess.run(
      [str(python), "-m", "pip", "install", "-q", "flashlight-text", "numpy"], check=True
    )
  return python


def decode_flashlight(
  npz_path: str | pathlib.Path,
  *,
  beam: int,
  beam_threshold: float = 10.0,
  lm_sentences: Sequence[Sequence[str]] = (),
  lm_order: int = 3,
  lm_weight: float = 0.3,
  limit: int = 0,
  repeats: int = 1,
) -> dict:
  """Runs benchmarks/peers/flashlight_decode.py; returns its JSON with normalised texts.

  `lm_sentences` (label sequences) give the peer a token n-gram KenLM; none: ZeroLM.
  """
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "peer.json"
    cmd = [
      str(flashlight_python()),
      str(FLASHLIGHT_SCRIPT),
      f"--logprobs={npz_path}",
      f"--out={out}",
      f"--beam={beam}",
      f"--beam-threshold={beam_threshold}",
      f"--limit={limit}",
      f"--repeats={repeats}",
    ]
    if lm_sentences:
      text = pathlib.Path(tmp) / "lm.txt"
      text.write_text("\n".join(" ".join(s) for s in lm_sentences) + "\n", "utf-8")
      cmd += [f"--lm-text={text}", f"--lm-order={lm_order}", f"--lm-weight={lm_weight}"]
    env = dict(os.environ, PYTHONPATH="")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
      raise RuntimeError(f"flashlight peer failed:\n{proc.stderr[-4000:]}")
    result = json.loads(out.read_text("utf-8"))
  result["texts"] = [clean_text(t) for t in result["texts"]]
  return result


def lm_label_sentences(workdir: str | pathlib.Path, labels: Sequence[str], tokenizer) -> list:
  """The training transcripts the workdir's text LM learnt from, as label sequences."""
  from moe_asr.evaluation import score
  from moe_asr.training import text_lm

  cfg = score.workdir_config(workdir)
  texts = text_lm.split_texts(cfg, cfg.data.train_split)
  return [[labels[t] for t in tokenizer.encode(t)] for t in texts if t]


# ---------------------------------------------------------------------------
# The comparison.
# ---------------------------------------------------------------------------


def format_table(results: dict, num_utts: int) -> str:
  """Rows `ROWS` (missing ones marked skipped): utt/s, WER, CER, speed against the peer row,
  bias cost (time with bias / without), and B-WER / U-WER where measured.

  CER leaves spaces out, so it compares decoders whose text differs only in word spacing
  (pyctcdecode's BPE mode spaces a character vocabulary's output differently from ours).
  """

  def rate(name):
    r = results.get(name)
    return num_utts / r["seconds"] if r and r["seconds"] > 0 else None

  head = f"{'decoder':22s} {'utt/s':>10s} {'WER':>7s} {'CER':>7s} {'B-WER':>7s} {'U-WER':>7s}"
  lines = [head + f" {'vs peer':>10s} {'bias cost':>10s}"]
  pct = lambda x: "-" if x is None or x != x else f"{x * 100:.2f}%"
  for name in ROWS:
    r = results.get(name)
    if r is None:
      lines.append(f"{name:22s} skipped")
      continue
    speed = rate(name)
    ratio = rate(PEER_OF[name]) if name in PEER_OF else None
    ratio_s = f"{speed / ratio:9.2f}x" if ratio and speed else "-"
    base = results.get(PLAIN_OF.get(name, ""))
    cost_s = f"{r['seconds'] / base['seconds']:9.2f}x" if base and base["seconds"] > 0 else "-"
    lines.append(
      f"{name:22s} {speed:10.1f} {pct(r['wer']):>7s} {pct(r['cer']):>7s} "
      f"{pct(r.get('b_wer')):>7s} {pct(r.get('u_wer')):>7s} {ratio_s:>10s} {cost_s:>10s}"
    )
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="trained run: dump (or reuse) W/bench/ctc_logprobs_<split>")
  src.add_argument("--logprobs", help="an existing dump (.npz)")
  parser.add_argument("--split", default="test")
  parser.add_argument("--override", action="append", default=[], help="config a.b=value")
  parser.add_argument("--max-batches", type=int, default=0, help="dump only N batches")
  parser.add_argument("--limit", type=int, default=0, help="decode the first N utterances")
  parser.add_argument("--repeats", type=int, default=1, help="timed passes (median kept)")
  parser.add_argument("--beam", type=int, default=8)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--frame-multiple", type=int, default=32)
  parser.add_argument(
    "--max-len-ratio", type=float, default=1.0, help="output token slots per frame (1.0 is exact)"
  )
  parser.add_argument("--token-min-logp", type=float, default=-5.0)
  parser.add_argument("--beam-prune-logp", type=float, default=-10.0)
  parser.add_argument("--num-bias", type=int, default=100)
  parser.add_argument("--num-bias-large", type=int, default=1000, help="0: no ours+bias1000 row")
  parser.add_argument("--bias-boost", type=float, default=1.5, help="ours, per character")
  parser.add_argument("--bias-reserve", type=int, default=None, help="ours (default beam // 2)")
  parser.add_argument("--lm-weight", type=float, default=0.3, help="ours+lm and flashlight+kenlm")
  parser.add_argument("--lm-order", type=int, default=3, help="flashlight+kenlm n-gram order")
  parser.add_argument("--no-lm", action="store_true", help="skip the LM rows")
  parser.add_argument("--hotword-weight", type=float, default=None, help="pyctcdecode, per word")
  parser.add_argument("--no-peer", action="store_true", help="only our decoder")
  parser.add_argument("--out", default="", help="JSON output (default next to the dump)")
  args = parser.parse_args(argv)

  if args.workdir:
    npz = pathlib.Path(args.workdir) / "bench" / f"ctc_logprobs_{args.split}.npz"
    if not npz.exists():
      print(f"Dumping CTC log-probs of {args.split} to {npz} ...", flush=True)
      dump_logprobs(
        args.workdir, args.split, npz, overrides=args.override, max_batches=args.max_batches
      )
  else:
    npz = pathlib.Path(args.logprobs)
  data = load_dump(npz)
  log_probs, lengths = data["log_probs"], data["lengths"].astype(np.int64)
  refs = data["references"]
  if args.limit:
    log_probs, lengths, refs = log_probs[: args.limit], lengths[: args.limit], refs[: args.limit]
  labels, tokenizer = data["labels"], data.get("tokenizer")

  from moe_asr.decoding import biasing

  def graph_of(num: int):
    phrases = bias_phrases(refs, num, slot_values=data["slot_values"])
    ids = phrase_tokens(phrases, labels, tokenizer)
    keep = [i for i, p in enumerate(ids) if p]
    phrases, ids = [phrases[i] for i in keep], [ids[i] for i in keep]
    if tokenizer is not None:  # per character, confirmed at word starts, as in decoding
      weight, word_start = biasing.token_tables(tokenizer)
    else:
      weight = np.array([len(x.replace(WORD_BOUNDARY, "")) or 1 for x in labels], float)
      word_start = np.array([not x or x.startswith(WORD_BOUNDARY) for x in labels])
    graph = biasing.build_context_graph(
      ids, len(labels), boost=args.bias_boost, token_weight=weight, word_start=word_start
    )
    return phrases, ids, weight, graph

  phrases, phrase_ids, weight, graph = graph_of(args.num_bias)
  chars_per_word = sum(weight[t] for p in phrase_ids for t in p) / max(
    1, sum(len(p.split()) for p in phrases)
  )
  hotword_weight = (
    args.hotword_weight if args.hotword_weight is not None else args.bias_boost * chars_per_word
  )
  present = sum(any(f" {p} " in f" {r} " for r in refs) for p in phrases)

  ours = dict(
    beam=args.beam,
    batch=args.batch,
    frame_multiple=args.frame_multiple,
    max_len_ratio=args.max_len_ratio,
    prune_threshold=-args.token_min_logp,
    repeats=args.repeats,
  )
  biased = dict(ours, bias_reserve=args.bias_reserve)
  results = {
    "ours": decode_ours(log_probs, lengths, labels, **ours),
    "ours+bias": decode_ours(log_probs, lengths, labels, graph=graph, **biased),
  }
  if args.num_bias_large:
    large = graph_of(args.num_bias_large)
    results["ours+bias1000"] = decode_ours(log_probs, lengths, labels, graph=large[3], **biased)
    results["ours+bias1000"]["phrases"] = len(large[0])
  lm = None
  if args.workdir and not args.no_lm:
    from moe_asr.training import text_lm

    lm = text_lm.load_lm(args.workdir, tokenizer)
    if lm is None:
      print(f"No text LM in {args.workdir}/lm: the LM rows are skipped", flush=True)
    else:
      results["ours+lm"] = decode_ours(
        log_probs, lengths, labels, lm=lm, lm_weight=args.lm_weight, **ours
      )
  if not args.no_peer:
    peer = dict(
      beam=args.beam,
      beam_prune_logp=args.beam_prune_logp,
      token_min_logp=args.token_min_logp,
      hotword_weight=hotword_weight,
      limit=args.limit,
      repeats=args.repeats,
    )
    results["pyctcdecode"] = decode_peer(npz, **peer)
    results["pyctcdecode+hotwords"] = decode_peer(npz, hotwords=phrases, **peer)
    fl = dict(beam=args.beam, beam_threshold=-args.beam_prune_logp, limit=args.limit)
    results["flashlight"] = decode_flashlight(npz, repeats=args.repeats, **fl)
    if lm is not None:
      results["flashlight+kenlm"] = decode_flashlight(
        npz,
        lm_sentences=lm_label_sentences(args.workdir, labels, tokenizer),
        lm_order=args.lm_order,
        lm_weight=args.lm_weight,
        repeats=args.repeats,
        **fl,
      )

  for r in results.values():
    r["wer"] = word_error_rate(refs, r["texts"])
    r["cer"] = word_error_rate(refs, r["texts"], "char")
    r["utt_per_s"] = len(refs) / r["seconds"] if r["seconds"] > 0 else None
    r.update(metrics_lib.biased_error_rates(refs, r["texts"], phrases))

  print(
    f"{len(refs)} utterances, {int(lengths.sum())} frames, vocab {len(labels)}, beam {args.beam}, "
    f"{len(phrases)} bias phrases ({present} occur in the references), boost {args.bias_boost}"
    f"/character, hotword weight {hotword_weight:.2f}/word, {jax.devices()[0].platform} "
    f"({os.cpu_count()} CPUs)"
  )
  table = format_table(results, len(refs))
  print(table)
  out = pathlib.Path(args.out) if args.out else npz.parent / "decode.json"
  summary = {
    "dump": str(npz),
    "utterances": len(refs),
    "frames": int(lengths.sum()),
    "vocab": len(labels),
    "settings": dict(
      vars(args), hotword_weight=hotword_weight, prune_threshold=-args.token_min_logp
    ),
    "bias_phrases": phrases,
    "bias_phrases_present": present,
    "references": refs,
    "results": results,
    "table": table,
  }
  out.write_text(json.dumps(summary, indent=1, ensure_ascii=False), "utf-8")
  print(f"Wrote {out}")
  return summary


if __name__ == "__main__":
  main()
