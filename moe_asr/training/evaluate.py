"""Scoring a model on a split: decoding on device, one record per utterance.

The eval step runs the encoder once, searches (`decoding/decode.py`: greedy CTC,
CTC prefix beam or joint CTC/attention beam, with LM fusion, biasing and task
rescoring as configured), runs the attention decoder and the task heads on the
winning hypothesis (what a deployed model sees: no reference tokens, tokens
routed by the LID context) and returns small fixed-shape arrays. The host turns
them into `evaluation.metrics.Utterance` records, reading references from the
data source by example index, so every process can gather the global batch and
process 0 scores it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import jax
import ml_collections
import numpy as np
from flax import nnx

from moe_asr.data import languages as langs_lib
from moe_asr.data import pipeline as pipeline_lib
from moe_asr.data import schema
from moe_asr.data import text as text_lib
from moe_asr.decoding import confidence as confidence_lib
from moe_asr.decoding import decode as decode_lib
from moe_asr.evaluation import metrics as metrics_lib
from moe_asr.training import sharding


def make_eval_step(
  graphdef: nnx.GraphDef,
  decoder_max_len: int,
  decode_cfg: ml_collections.ConfigDict | None = None,
  *,
  lm=None,
  bias=None,
  eos_id: int = 3,
  tunable: bool = False,
  word_table: np.ndarray | None = None,
) -> Callable:
  """`eval_step(state, rng_state, batch) -> dict of arrays` (jit it).

  Args:
    graphdef: the train state's graph.
    decoder_max_len: the decoder's positions (hypotheses are cut to fit).
    decode_cfg: the `decode` config section (default: greedy CTC).
    lm: a text LM for fusion / rescoring (closed over: its weights become constants).
    bias: a contextual-biasing graph, or None.
    eos_id: the end token.
    tunable: LM/ILM weights come from the batch (see `decode.make_decode_fn`).
    word_table: the tokenizer's `word_table` (for a word-level slot tagger).
  """
  cfg = decode_cfg if decode_cfg is not None else decode_lib.default_config()
  decode = decode_lib.make_decode_fn(
    cfg,
    decoder_max_len=decoder_max_len,
    lm=lm,
    bias=bias,
    eos_id=eos_id,
    tunable=tunable,
    word_table=word_table,
  )

  def eval_step(state, rng_state, batch):
    train_state = nnx.merge(graphdef, rng_state, state)
    model = train_state.model
    model.eval()
    out = decode(model, batch)
    out["index"] = batch["index"]
    if "tf_slot_tags" in out:
      out["ref_tokens"] = batch["tokens"][:, : out["tf_slot_tags"].shape[1]]
      out["ref_lengths"] = batch["token_mask"][:, : out["tf_slot_tags"].shape[1]].sum(-1)
    out["example_mask"] = batch["example_mask"]
    return out

  return eval_step


def softmax(x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
  """softmax(x / temperature) over the last axis, in float64 (host side)."""
  z = np.asarray(x, np.float64) / temperature
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _slot_spans(
  tokens: np.ndarray, tags: np.ndarray, tag_names: tuple[str, ...], tokenizer
) -> tuple[tuple[str, str], ...]:
  """(type, value) pairs from BIO tags over hypothesis tokens, read per word.

  A word takes the tag of its last token: the task heads read causal decoder
  states, and the last token's state is the one that has read the whole word
  (every token of a word is trained on the word's tag, `pipeline._LoadBatch`).
  So a span is whole words, and a tag flickering inside a word neither splits
  nor cuts it.
  """
  spans, current, kind = [], [], None
  tokens, tags = tokens.tolist(), tags.tolist()
  for positions in tokenizer.word_spans(tokens):
    tag = tags[positions[-1]]
    name = tag_names[tag] if 0 <= tag < len(tag_names) else "O"
    word = [tokens[p] for p in positions]
    if name.startswith("B-") or (name.startswith("I-") and name[2:] != kind):
      if current:
        spans.append((kind, current))
      current, kind = word, name[2:]
    elif name.startswith("I-"):
      current.extend(word)
    else:
      if current:
        spans.append((kind, current))
      current, kind = [], None
  if current:
    spans.append((kind, current))
  return tuple((k, text_lib.normalize(tokenizer.decode(ids))) for k, ids in spans)


def _reference(ex: Mapping) -> dict:
  as_str = pipeline_lib._as_str
  words_lang = [as_str(w) for w in ex.get("words_lang", [])]
  language = as_str(ex.get("language", ""))
  dominant = pipeline_lib.dominant_language(
    words_lang, fallback=language if language != langs_lib.MIXED else ""
  )
  codes = sorted(set(words_lang))
  slots = ex.get("slots", {"type": [], "value": []})
  return dict(
    id=as_str(ex.get("id", "")),
    ref_text=as_str(ex.get("text", "")),
    language=dominant,
    pair="-".join(codes) if len(codes) > 1 else "",
    speaker=as_str(ex.get("speaker", "")),
    snr_db=float(ex.get("snr_db", schema.CLEAN_SNR_DB)),
    ref_intent=as_str(ex.get("intent", "")),
    ref_slots=tuple(
      (as_str(t), text_lib.normalize(as_str(v)))
      for t, v in zip(slots["type"], slots["value"], strict=True)
    ),
    duration_s=len(ex["audio"]) / schema.SAMPLE_RATE,
  )


def records_from_outputs(
  out: Mapping[str, np.ndarray],
  source,
  run_data,
  calibration: confidence_lib.Calibration | None = None,
) -> list:
  """One `Utterance` per valid row of a gathered eval-step output.

  With a `calibration`, intent and LID probabilities use its temperatures, the
  transcript confidence its Platt scaling, and `deferred` its threshold; the raw
  values are kept in `*_raw`.
  """
  records = []
  tokenizer, vocab = run_data.tokenizer, run_data.vocab
  cal = calibration
  for r in np.flatnonzero(out["example_mask"]):
    ref = _reference(source[int(out["index"][r])])
    n = int(out["lengths"][r])
    tokens = out["tokens"][r, :n]
    rec = dict(ref, hyp_text=text_lib.normalize(tokenizer.decode(tokens)))
    lid = int(np.argmax(out["utt_lid_logits"][r]))
    rec["hyp_language"] = langs_lib.LANGUAGE_CODES[lid]
    raw_conf = float(out["confidence"][r])
    rec["confidence"] = raw_conf
    for key in ("frame_lid_correct", "frame_lid_total", "boundary_hit", "boundary_total"):
      if key in out:
        rec[key] = int(out[key][r])
    if cal is not None:
      rec["confidence_raw"] = raw_conf
      rec["confidence"] = float(cal.calibrate_utterance(np.asarray([raw_conf]))[0])
      rec["deferred"] = bool(rec["confidence"] < cal.defer_threshold)
    if "intent_log_probs" in out and vocab.intents:
      log_probs = out["intent_log_probs"][r]
      i = int(np.argmax(log_probs))
      rec["hyp_intent"] = vocab.intents[i]
      rec["intent_confidence"] = float(softmax(log_probs)[i])
      if cal is not None:
        rec["intent_confidence_raw"] = rec["intent_confidence"]
        rec["intent_confidence"] = float(softmax(log_probs, cal.intent_temperature)[i])
      rec["hyp_slots"] = _slot_spans(tokens, out["slot_tags"][r, :n], vocab.slot_tags, tokenizer)
      if "tf_slot_tags" in out and int(out["ref_lengths"][r]) > 0:
        # The heads on the reference transcript (teacher forcing).
        m = int(out["ref_lengths"][r])
        rec["tf_intent"] = vocab.intents[int(np.argmax(out["tf_intent_log_probs"][r]))]
        rec["tf_slots"] = _slot_spans(
          out["ref_tokens"][r, :m], out["tf_slot_tags"][r, :m], vocab.slot_tags, tokenizer
        )
    records.append(metrics_lib.Utterance(**rec))
  return records


def calibration_arrays(outputs: list[Mapping[str, np.ndarray]], records: list, vocab) -> dict:
  """What `confidence.fit_*` needs: the step outputs' raw scores beside their records' labels.

  Args:
    outputs: gathered eval-step outputs, in order.
    records: `records_from_outputs` of those outputs (one per valid row, same order), which
      already hold the references, so nothing is read from the dataset again.
    vocab: the run's label vocabularies.

  Returns:
    {"intent_log_probs" [N, I] or None, "intent_labels" [N] (-1 unknown), "lid_logits" [N, L],
     "lid_labels" [N] (-1 unknown), "confidence" [N] (raw), "exact" [N] bool (hypothesis ==
     reference after normalisation)}.
  """
  rows = [(out, r) for out in outputs for r in np.flatnonzero(out["example_mask"])]
  if len(rows) != len(records):
    raise ValueError(f"{len(rows)} output rows for {len(records)} records")
  intents = {name: i for i, name in enumerate(vocab.intents)}
  codes = {code: i for i, code in enumerate(langs_lib.LANGUAGE_CODES)}
  has_intents = bool(outputs) and "intent_log_probs" in outputs[0]
  return {
    "intent_log_probs": (
      np.asarray([o["intent_log_probs"][r] for o, r in rows], np.float32) if has_intents else None
    ),
    "intent_labels": np.asarray([intents.get(rec.ref_intent, -1) for rec in records], np.int64),
    "lid_logits": np.asarray([o["utt_lid_logits"][r] for o, r in rows], np.float32),
    "lid_labels": np.asarray([codes.get(rec.language, -1) for rec in records], np.int64),
    "confidence": np.asarray([o["confidence"][r] for o, r in rows], np.float32),
    "exact": np.asarray(
      [text_lib.normalize(rec.hyp_text) == text_lib.normalize(rec.ref_text) for rec in records],
      bool,
    ),
  }


class WithKnobs:
  """An evaluation pipeline whose batches carry per-utterance decoding weights.

  Each batch gets `decode_<name>` float32 [rows] for every knob (read by a decode
  step made with `tunable=True`), so a weight search reuses one compiled step.
  """

  def __init__(self, pipeline, knobs: Mapping[str, float]):
    self.pipeline, self.knobs = pipeline, dict(knobs)
    self.source = pipeline.source

  @property
  def stats(self):
    return self.pipeline.stats

  def __iter__(self):
    for batch in self.pipeline:
      rows = batch["audio"].shape[0]
      yield {
        **batch,
        **{f"decode_{k}": np.full((rows,), v, np.float32) for k, v in self.knobs.items()},
      }


def _gather(tree) -> dict[str, np.ndarray]:
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  return multihost_utils.process_allgather(tree, tiled=True)


def evaluate_split(
  pipeline: pipeline_lib.Pipeline,
  step_for: Callable[[dict], Callable],
  state,
  rng_state,
  batch_shardings: Callable[[dict], dict],
  run_data,
  *,
  max_batches: int = 0,
  calibration: confidence_lib.Calibration | None = None,
  keep_outputs: bool = False,
) -> tuple[list, dict]:
  """Decodes a split and returns (records, info).

  Args:
    pipeline: an evaluation pipeline (one ordered pass, incomplete batches padded).
    step_for: returns the compiled eval step for a (device) batch.
    state, rng_state: the train state (as split by the trainer).
    batch_shardings: shardings of a host batch's arrays.
    run_data: tokenizer and vocabularies.
    max_batches: stop after this many batches (0 = the whole split).
    calibration: applied to the records' confidences (see `records_from_outputs`).
    keep_outputs: also return the gathered step outputs (for fitting a calibration).

  Returns:
    (records, {"seconds": decode wall time, "audio_seconds", "rtf", "latency_p50" /
    "latency_p95" (seconds from a batch's arrival to its decoded arrays, compiles
    excluded, over batches), "skipped": pipeline counts, "expert_load" ([encoder MoE
    layers, languages, experts] routing weight summed over frames of each reference
    language) when the encoder has experts, and "outputs" if asked}).
  """
  records: list = []
  outputs: list = []
  latencies: list[float] = []
  expert_load = None  # [layers, languages, experts], summed over the split's frames.
  audio_seconds = 0.0
  start = time.perf_counter()
  for i, host_batch in enumerate(pipeline):
    if max_batches and i >= max_batches:
      break
    batch = pipeline_lib.device_arrays(host_batch)
    global_batch = sharding.put_batch(batch, batch_shardings(batch))
    step = step_for(global_batch)  # Compiles on a new shape (not counted as latency).
    t0 = time.perf_counter()
    out = _gather(step(state, rng_state, global_batch))
    latencies.append(time.perf_counter() - t0)
    batch_records = records_from_outputs(out, pipeline.source, run_data, calibration)
    audio_seconds += sum(r.duration_s for r in batch_records)
    records += batch_records
    if out.get("expert_language_load") is not None:
      batch_load = out["expert_language_load"][np.asarray(out["example_mask"], bool)].sum(0)
      expert_load = batch_load if expert_load is None else expert_load + batch_load
    if keep_outputs:
      outputs.append(out)
  seconds = time.perf_counter() - start
  info = {
    "seconds": seconds,
    "audio_seconds": audio_seconds,
    "rtf": seconds / audio_seconds if audio_seconds else math.nan,
    "latency_p50": float(np.percentile(latencies, 50)) if latencies else math.nan,
    "latency_p95": float(np.percentile(latencies, 95)) if latencies else math.nan,
    "skipped": pipeline.stats,
  }
  if expert_load is not None and expert_load.shape[0]:
    info["expert_load"] = expert_load
  if keep_outputs:
    info["outputs"] = outputs
  return records, info
