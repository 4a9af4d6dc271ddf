"""Scoring a model on a split: greedy decoding on device, one record per utterance.

The eval step runs the encoder once, decodes the CTC best path, runs the
attention decoder and the task heads on that hypothesis (what a deployed
model sees: no reference tokens, tokens routed by the LID context) and returns
small fixed-shape arrays. The host turns them into `evaluation.metrics.Utterance`
records, reading references from the data source by example index, so every
process can gather the global batch and process 0 scores it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moe_asr.data import languages as langs_lib
from moe_asr.data import pipeline as pipeline_lib
from moe_asr.data import schema
from moe_asr.data import text as text_lib
from moe_asr.decoding import greedy
from moe_asr.evaluation import metrics as metrics_lib
from moe_asr.training import sharding


def make_eval_step(graphdef: nnx.GraphDef, decoder_max_len: int) -> Callable:
  """`eval_step(state, rng_state, batch) -> dict of arrays` (jit it)."""

  def eval_step(state, rng_state, batch):
    train_state = nnx.merge(graphdef, rng_state, state)
    model = train_state.model
    model.eval()
    encoded = model.encode(batch)
    tokens, lengths, ctc_conf = greedy.ctc_greedy(encoded.ctc_logits, encoded.enc.mask)
    length = min(tokens.shape[1], decoder_max_len)
    tokens, lengths = tokens[:, :length], jnp.minimum(lengths, length)
    mask = greedy.token_mask(lengths, length)
    out = {
      "index": batch["index"],
      "example_mask": batch["example_mask"],
      "tokens": tokens,
      "lengths": lengths,
      "confidence": ctc_conf,
      "utt_lid": jnp.argmax(encoded.utt_probs, -1).astype(jnp.int32),
      "utt_lid_conf": jnp.max(encoded.utt_probs, -1),
    }
    _, task = model.decode_tokens(encoded, tokens, mask)
    if task is not None:
      intent_probs = jnp.exp(task.intent_log_probs)
      out["intent"] = jnp.argmax(intent_probs, -1).astype(jnp.int32)
      out["intent_probs"] = intent_probs
      out["slot_tags"] = jnp.argmax(task.slot_log_probs, -1).astype(jnp.int32)
    return out

  return eval_step


def _slot_spans(
  tokens: np.ndarray, tags: np.ndarray, tag_names: tuple[str, ...], tokenizer
) -> tuple[tuple[str, str], ...]:
  """(type, value) pairs from BIO tags over hypothesis tokens."""
  spans, current, kind = [], [], None
  for tok, tag in zip(tokens.tolist(), tags.tolist(), strict=True):
    name = tag_names[tag] if 0 <= tag < len(tag_names) else "O"
    if name.startswith("B-") or (name.startswith("I-") and name[2:] != kind):
      if current:
        spans.append((kind, current))
      current, kind = [tok], name[2:]
    elif name.startswith("I-"):
      current.append(tok)
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


def records_from_outputs(out: Mapping[str, np.ndarray], source, run_data) -> list:
  """One `Utterance` per valid row of a gathered eval-step output."""
  records = []
  tokenizer, vocab = run_data.tokenizer, run_data.vocab
  for r in np.flatnonzero(out["example_mask"]):
    ref = _reference(source[int(out["index"][r])])
    n = int(out["lengths"][r])
    tokens = out["tokens"][r, :n]
    rec = dict(ref, hyp_text=text_lib.normalize(tokenizer.decode(tokens)))
    rec["hyp_language"] = langs_lib.LANGUAGE_CODES[int(out["utt_lid"][r])]
    rec["confidence"] = float(out["confidence"][r])
    if "intent" in out and vocab.intents:
      i = int(out["intent"][r])
      rec["hyp_intent"] = vocab.intents[i]
      rec["intent_confidence"] = float(out["intent_probs"][r, i])
      rec["hyp_slots"] = _slot_spans(tokens, out["slot_tags"][r, :n], vocab.slot_tags, tokenizer)
    records.append(metrics_lib.Utterance(**rec))
  return records


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
) -> tuple[list, dict]:
  """Decodes a split and returns (records, info).

  Args:
    pipeline: an evaluation pipeline (one ordered pass, incomplete batches padded).
    step_for: returns the compiled eval step for a (device) batch.
    state, rng_state: the train state (as split by the trainer).
    batch_shardings: shardings of a host batch's arrays.
    run_data: tokenizer and vocabularies.
    max_batches: stop after this many batches (0 = the whole split).

  Returns:
    (records, {"seconds": decode wall time, "audio_seconds", "rtf", "skipped": pipeline
    counts}).
  """
  records: list = []
  audio_seconds = 0.0
  start = time.perf_counter()
  for i, host_batch in enumerate(pipeline):
    if max_batches and i >= max_batches:
      break
    batch = pipeline_lib.device_arrays(host_batch)
    global_batch = sharding.put_batch(batch, batch_shardings(batch))
    out = _gather(step_for(global_batch)(state, rng_state, global_batch))
    batch_records = records_from_outputs(out, pipeline.source, run_data)
    audio_seconds += sum(r.duration_s for r in batch_records)
    records += batch_records
  seconds = time.perf_counter() - start
  return records, {
    "seconds": seconds,
    "audio_seconds": audio_seconds,
    "rtf": seconds / audio_seconds if audio_seconds else math.nan,
    "skipped": pipeline.stats,
  }
