"""Scoring a model on a split: decoding on device, one record per utterance.

The eval step runs the encoder once, searches (`decoding/decode.py`: greedy CTC,
CTC prefix beam or joint CTC/attention beam, with LM fusion, biasing and task
rescoring as configured), runs the attention decoder and the task heads on the
winning hypothesis (what a deployed model sees: no reference tokens, tokens
routed by the LID context) and returns small fixed-shape arrays. The host turns
them into `evaluation.metrics.Utterance` records, reading references from the
data source by example index, so every process can gather the global batch and
process 0 scores it.

Utterances longer than the last bucket (an evaluation pipeline with
`long_policy="window"` lists them in `long_examples`) are decoded as `moe-asr transcribe`
decodes a long file: cut into windows at the pauses a voice-activity detector finds
(`longform.plan_windows`, overlapping hard cuts where a stretch of speech has no pause),
decoded by the same compiled step in the buckets' batch shapes, a batch at a time, and
stitched (`longform.stitch`) into one hypothesis scored against the full reference. See
`decode_long_examples` for what each metric reads.

`make_eval_steps(run)` compiles the eval step for a `runtime.Run` and `validate` decodes a
split with it (validation during training, `moe-asr eval`, `tune-decoding`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import jax
import ml_collections
import numpy as np
from flax import nnx

from moe_asr import runtime
from moe_asr.data import features as features_lib
from moe_asr.data import languages as langs_lib
from moe_asr.data import pipeline as pipeline_lib
from moe_asr.data import schema
from moe_asr.data import text as text_lib
from moe_asr.decoding import confidence as confidence_lib
from moe_asr.decoding import decode as decode_lib
from moe_asr.evaluation import decode_stats
from moe_asr.evaluation import metrics as metrics_lib
from moe_asr.training import inputs, sharding


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
  ensemble_weights=None,
) -> Callable:
  """`eval_step(state, rng_state, batch) -> dict of arrays` (jit it).

  With a tuple of graphdefs (an ensemble, `training.ensemble`), the state and RNG state are
  tuples too, one per member, and the members decode together (`decode.make_decode_fn`).

  Args:
    graphdef: the train state's graph.
    decoder_max_len: the decoder's positions (hypotheses are cut to fit).
    decode_cfg: the `decode` config section (default: greedy CTC).
    lm: a text LM for fusion / rescoring (closed over: its weights become constants).
    bias: a contextual-biasing graph, or None.
    eos_id: the end token.
    tunable: LM/ILM weights come from the batch (see `decode.make_decode_fn`).
    word_table: the tokenizer's `word_table` (for a word-level slot tagger).
    ensemble_weights: the members' weights (an ensemble; default equal).
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
    ensemble_weights=ensemble_weights,
  )

  def eval_step(state, rng_state, batch):
    if isinstance(graphdef, tuple):
      model = [nnx.merge(*parts).model for parts in zip(graphdef, rng_state, state, strict=True)]
      for member in model:
        member.eval()
    else:
      model = nnx.merge(graphdef, rng_state, state).model
      model.eval()
    encoding = decode_lib.encode(model, batch, ensemble_weights)
    out = decode(model, batch, encoding)
    out.update(
      decode_stats.step_outputs(
        encoding, batch, cfg, decoder_max_len=decoder_max_len, word_table=word_table
      )
    )
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


def slot_spans(
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
  as_str = pipeline_lib.as_str
  words_lang = [as_str(w) for w in ex.get("words_lang", [])]
  dominant = pipeline_lib.utterance_language(words_lang, as_str(ex.get("language", "")))
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
      rec["hyp_slots"] = slot_spans(tokens, out["slot_tags"][r, :n], vocab.slot_tags, tokenizer)
      if "tf_slot_tags" in out and int(out["ref_lengths"][r]) > 0:
        # The heads on the reference transcript (teacher forcing).
        m = int(out["ref_lengths"][r])
        rec["tf_intent"] = vocab.intents[int(np.argmax(out["tf_intent_log_probs"][r]))]
        rec["tf_slots"] = slot_spans(
          out["ref_tokens"][r, :m], out["tf_slot_tags"][r, :m], vocab.slot_tags, tokenizer
        )
    records.append(metrics_lib.Utterance(**rec))
  return records


def seconds_per_ctc_frame(cfg: ml_collections.ConfigDict) -> float:
  """Seconds per CTC frame of a run's model (`token_frames` count these)."""
  from moe_asr.models import conformer

  feature_cfg = features_lib.FeatureConfig.from_config(cfg.model.features)
  ctc_frames = conformer.SUBSAMPLING / cfg.model.get("ctc_upsample", 1)
  return ctc_frames * feature_cfg.frame_shift_ms / 1000.0


def _windowed_utterance(
  ref: Mapping,
  windows,
  window_records: list[dict],
  stitched: dict | None,
  raw: list[float],
  cal,
  intent_raw: float = math.nan,
) -> tuple:
  """(`Utterance`, whether the task heads' answer is missing) of a windowed utterance.

  `ref`: the utterance's `_reference` fields.
  """
  rec = dict(ref)
  if stitched is None:  # No speech found: an empty hypothesis, no language, no intent.
    return metrics_lib.Utterance(**rec, hyp_text=""), False
  rec.update(
    hyp_text=text_lib.normalize(stitched["text"]),
    hyp_language=stitched["language"],
    confidence=float(stitched["confidence"]),
  )
  if cal is not None:
    weights = np.asarray([max(w.samples, 1) for w in windows], np.float64)
    rec["confidence_raw"] = float(np.dot(weights / weights.sum(), raw))
    rec["deferred"] = bool(stitched["deferred"])
  heads = window_records[0]["intent"] is not None
  if heads and len(windows) == 1:
    (one,) = window_records
    rec.update(
      hyp_intent=one["intent"],
      intent_confidence=float(one["intent_confidence"]),
      hyp_slots=tuple((s["type"], s["value"]) for s in one["slots"]),
    )
    if cal is not None:
      rec["intent_confidence_raw"] = intent_raw
  return metrics_lib.Utterance(**rec), heads and len(windows) > 1


def _open_utterance(ex: Mapping, index: int, seconds: float, windows) -> dict:
  """What `decode_long_examples` keeps of an utterance while its windows are decoded."""
  return {
    "id": pipeline_lib.as_str(ex.get("id", index)),
    "ref": _reference(ex),  # The references (small): the audio is not kept.
    "seconds": seconds,
    "windows": windows,
    "records": [None] * len(windows),
    "lid": [None] * len(windows),
    "raw": [0.0] * len(windows),
    "intent_raw": math.nan,  # The (single) window's uncalibrated intent confidence.
    "left": len(windows),
  }


def _stitched_utterance(st: dict, cal) -> tuple:
  """(`Utterance`, heads missing) of an `_open_utterance` whose windows are all decoded."""
  from moe_asr import longform

  stitched = longform.stitch(
    st["windows"],
    st["records"],
    name=st["id"],
    duration_s=st["seconds"],
    sample_rate=schema.SAMPLE_RATE,
    lid_probs=st["lid"],
  )
  return _windowed_utterance(
    st["ref"], st["windows"], st["records"], stitched, st["raw"], cal, st["intent_raw"]
  )


def _window_batch(pipeline, b: int, queue: list, process: int) -> dict:
  """This process's rows of a batch of bucket `b` holding the queued windows."""
  host = pipeline.empty_batch(b)
  rows = host["audio"].shape[0]  # This process's rows of the global batch.
  for k, q in enumerate(range(process * rows, min((process + 1) * rows, len(queue)))):
    _, _, wave = queue[q]
    host["audio"][k, : len(wave)] = wave
    host["audio_mask"][k, : len(wave)] = True
    host["example_mask"][k] = True
    host["index"][k] = q  # Position in the queue.
  return host


def decode_long_examples(
  pipeline,
  run_batch: Callable[[dict], Mapping[str, np.ndarray]],
  run_data,
  *,
  seconds_per_frame: float,
  calibration: confidence_lib.Calibration | None = None,
  max_batches: int = 0,
) -> tuple[list, dict]:
  """Scores the pipeline's `long_examples` (utterances over the last bucket) in windows.

  Each utterance is cut as `moe-asr transcribe` cuts a long file (`longform.file_windows`:
  windows of at most the last bucket, cut at VAD pauses, overlapping 1 s at hard cuts,
  silence left out); each window goes to the smallest bucket that holds it and is decoded
  with the other windows of that bucket, a full batch at a time, by `run_batch` (the
  split's compiled step, in the pipeline's batch arrays). The windows' transcripts are
  stitched (`longform.stitch`: overlaps deduplicated by word times) and the record holds:
  - the full reference (text, language, intent, slots) and the utterance's duration;
  - `hyp_text`: the stitched transcript, so WER, CER and MER count the whole utterance;
  - `hyp_language`: the language most probable over the windows, weighted by their length;
  - `confidence`: the windows' confidences averaged by length (`deferred` if any window is);
  - intent and slots: the task heads read the decoder over one window's audio, so only an
    utterance whose speech fits one window (the silence around it left out) gets them; for
    one in several windows the heads never saw the whole command, and its intent and slots
    are missing (scored as wrong: no intent, no slot) and counted in `heads_missing`.
    (Running the heads on the stitched hypothesis would need the encoder over the whole
    audio, a shape no bucket has.)
  Frame-level LID counts and teacher-forced heads are not measured on windows.

  Memory stays flat in the utterances' length: one utterance's audio is read at a time and
  at most one batch of windows per bucket waits to be decoded. Every process cuts every
  utterance (the order is the same) and fills its rows of each global batch.

  Args:
    pipeline: an evaluation pipeline with `long_examples`, `buckets`, `source` and
      `empty_batch`.
    run_batch: host batch (this process's rows) -> the gathered step output.
    run_data: tokenizer and vocabularies.
    seconds_per_frame: seconds per CTC frame (`seconds_per_ctc_frame`), for word times.
    calibration: as for `records_from_outputs`.
    max_batches: start no utterance once this many window batches ran (0 = no limit).

  Returns:
    (records, {"utterances": utterances decoded in windows, "windows": windows decoded,
    "batches": batches run, "no_speech": utterances without a speech frame (empty
    hypothesis), "heads_missing": utterances in several windows scored without intent and
    slots}).
  """
  from moe_asr import longform, transcribe
  from moe_asr.data import vad

  buckets = pipeline.buckets
  rate = schema.SAMPLE_RATE
  lid_temperature = calibration.lid_temperature if calibration is not None else 1.0
  process = jax.process_index()
  counts = {"utterances": 0, "windows": 0, "batches": 0, "no_speech": 0, "heads_missing": 0}
  records: list = []
  open_utts: dict[int, dict] = {}
  queues: list[list] = [[] for _ in buckets]

  def finish(index: int) -> None:
    record, missing = _stitched_utterance(open_utts.pop(index), calibration)
    records.append(record)
    counts["heads_missing"] += int(missing)

  def decode(b: int, queue: list) -> None:
    out = run_batch(_window_batch(pipeline, b, queue, process))
    counts["batches"] += 1
    for r in np.flatnonzero(out["example_mask"]):
      index, w, wave = queue[int(out["index"][r])]
      st = open_utts[index]
      st["records"][w] = transcribe.record_from_row(
        out,
        int(r),
        name=st["id"],
        duration_s=len(wave) / rate,
        run_data=run_data,
        seconds_per_frame=seconds_per_frame,
        calibration=calibration,
      )
      st["lid"][w] = softmax(out["utt_lid_logits"][r], lid_temperature)
      st["raw"][w] = float(out["confidence"][r])
      if "intent_log_probs" in out:
        st["intent_raw"] = float(softmax(out["intent_log_probs"][r]).max())
      st["left"] -= 1
      if st["left"] == 0:
        finish(index)
    queue.clear()

  for index in (int(i) for i in pipeline.long_examples):
    if max_batches and counts["batches"] >= max_batches:
      break
    ex = pipeline.source[index]
    wave = np.asarray(ex["audio"])
    windows, _ = longform.file_windows(wave, vad.speech_mask(wave), buckets[-1].max_samples)
    counts["utterances"] += 1
    if not windows:
      counts["no_speech"] += 1
      records.append(_windowed_utterance(_reference(ex), [], [], None, [], calibration)[0])
      continue
    counts["windows"] += len(windows)
    open_utts[index] = _open_utterance(ex, index, len(wave) / rate, windows)
    for w, window in enumerate(windows):
      piece = np.array(wave[window.start : window.end])  # A copy: `wave` can go.
      b = next(k for k, bucket in enumerate(buckets) if len(piece) <= bucket.max_samples)
      queues[b].append((index, w, piece))
      if len(queues[b]) == buckets[b].batch_size:
        decode(b, queues[b])
    del ex, wave
  for b, queue in enumerate(queues):
    if queue:
      decode(b, queue)
  return records, counts


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


class _Wrapped:
  """An evaluation pipeline around another: the same source and skip statistics."""

  def __init__(self, pipeline):
    self.pipeline, self.source = pipeline, pipeline.source

  @property
  def stats(self):
    return self.pipeline.stats


class WithKnobs(_Wrapped):
  """An evaluation pipeline whose batches carry per-utterance decoding weights.

  Each batch gets `decode_<name>` float32 [rows] for every knob (read by a decode
  step made with `tunable=True`), so a weight search reuses one compiled step.
  """

  def __init__(self, pipeline, knobs: Mapping[str, float]):
    super().__init__(pipeline)
    self.knobs = dict(knobs)

  def __iter__(self):
    for batch in self.pipeline:
      rows = batch["audio"].shape[0]
      yield {
        **batch,
        **{f"decode_{k}": np.full((rows,), v, np.float32) for k, v in self.knobs.items()},
      }


def gather(tree) -> dict[str, np.ndarray]:
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
  seconds_per_frame: float | None = None,
) -> tuple[list, dict]:
  """Decodes a split and returns (records, info).

  Utterances the pipeline lists in `long_examples` (`long_policy="window"`) are decoded
  in windows after the bucketed batches (`decode_long_examples`); their records follow
  the others.

  Args:
    pipeline: an evaluation pipeline (one ordered pass, incomplete batches padded).
    step_for: returns the compiled eval step for a (device) batch.
    state, rng_state: the train state (as split by the trainer).
    batch_shardings: shardings of a host batch's arrays.
    run_data: tokenizer and vocabularies.
    max_batches: stop after this many batches (0 = the whole split).
    calibration: applied to the records' confidences (see `records_from_outputs`).
    keep_outputs: also return the gathered step outputs (for fitting a calibration; the
      windows' outputs are not among them).
    seconds_per_frame: seconds per CTC frame (`seconds_per_ctc_frame`); needed when the
      pipeline has `long_examples`.

  Returns:
    (records, {"seconds": decode wall time, "audio_seconds", "rtf", "latency_p50" /
    "latency_p95" (seconds from a batch's arrival to its decoded arrays, compiles
    excluded, over batches), "skipped": pipeline counts, "expert_load" ([encoder MoE
    layers, languages, experts] routing weight summed over frames of each reference
    language) when the encoder has experts, "long_form" (`decode_long_examples`' counts)
    and "outputs" if asked}).
  """
  records: list = []
  outputs: list = []
  latencies: list[float] = []
  expert_load = None  # [layers, languages, experts], summed over the split's frames.
  audio_seconds = 0.0
  start = time.perf_counter()

  def run_batch(host_batch):
    batch = pipeline_lib.device_arrays(host_batch)
    global_batch = sharding.put_batch(batch, batch_shardings(batch))
    step = step_for(global_batch)  # Compiles on a new shape (not counted as latency).
    t0 = time.perf_counter()
    out = gather(step(state, rng_state, global_batch))
    latencies.append(time.perf_counter() - t0)
    return out

  batches = 0
  for i, host_batch in enumerate(pipeline):
    if max_batches and i >= max_batches:
      break
    batches += 1
    out = run_batch(host_batch)
    batch_records = records_from_outputs(out, pipeline.source, run_data, calibration)
    audio_seconds += sum(r.duration_s for r in batch_records)
    records += batch_records
    if out.get("expert_language_load") is not None:
      batch_load = out["expert_language_load"][np.asarray(out["example_mask"], bool)].sum(0)
      expert_load = batch_load if expert_load is None else expert_load + batch_load
    if keep_outputs:
      outputs.append(out)
  long_examples = getattr(pipeline, "long_examples", ())
  long_form = {"utterances": 0, "windows": 0, "batches": 0, "no_speech": 0, "heads_missing": 0}
  if len(long_examples) and not (max_batches and batches >= max_batches):
    if seconds_per_frame is None:
      raise ValueError("evaluate_split: windowed utterances need seconds_per_frame")
    long_records, long_form = decode_long_examples(
      pipeline,
      run_batch,
      run_data,
      seconds_per_frame=seconds_per_frame,
      calibration=calibration,
      max_batches=max_batches - batches if max_batches else 0,
    )
    audio_seconds += sum(r.duration_s for r in long_records)
    records += long_records
  seconds = time.perf_counter() - start
  info = {
    "seconds": seconds,
    "audio_seconds": audio_seconds,
    "rtf": seconds / audio_seconds if audio_seconds else math.nan,
    "latency_p50": float(np.percentile(latencies, 50)) if latencies else math.nan,
    "latency_p95": float(np.percentile(latencies, 95)) if latencies else math.nan,
    "skipped": pipeline.stats,
    "long_form": long_form,
  }
  if expert_load is not None and expert_load.shape[0]:
    info["expert_load"] = expert_load
  if keep_outputs:
    info["outputs"] = outputs
  return records, info


# ---------------------------------------------------------------------------
# Validating a run on a split.
# ---------------------------------------------------------------------------


class _UntilStopped(_Wrapped):
  """An evaluation pipeline that ends early once `stop()` is true (`stopped` says so)."""

  def __init__(self, pipeline, stop: Callable[[], bool]):
    super().__init__(pipeline)
    self.stop, self.stopped = stop, False

  def __iter__(self):
    for batch in self.pipeline:
      if self.stop():
        self.stopped = True
        return
      yield batch


def eval_pipeline(run: runtime.Run, split: str, overrides: Mapping | None = None):
  """One ordered pass over `split` of the run's dataset, this process's share of it.

  Raises:
    FileNotFoundError: (from `inputs.check_dataset`) the dataset is not prepared.
  """
  inputs.check_dataset(run.config)
  return inputs.make_pipeline(
    run.config,
    split,
    run.data,
    train=False,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    overrides=overrides,
  )


def validate(
  run: runtime.Run,
  eval_steps: runtime.CompiledSteps,
  split: str,
  max_batches: int = 0,
  knobs: Mapping[str, float] | None = None,
  stop: Callable[[], bool] | None = None,
  overrides: Mapping | None = None,
  **kwargs,
):
  """Decodes a split with `eval_steps`; returns (summary dict, records, info).

  `knobs`: per-utterance decoding weights put in every batch (`WithKnobs`);
  `stop`: polled before each batch, ends the pass early when true (`info["stopped"]`);
  `overrides`: pipeline settings (`eval_pipeline`);
  `kwargs` go to `evaluate_split` (calibration, keep_outputs, seconds_per_frame).
  """
  pipe = eval_pipeline(run, split, overrides)
  if knobs:
    pipe = WithKnobs(pipe, knobs)
  if stop is not None:
    pipe = _UntilStopped(pipe, stop)
  records, info = evaluate_split(
    pipe,
    eval_steps,
    run.state,
    run.rng_state,
    run.batch_shardings,
    run.data,
    max_batches=max_batches,
    **kwargs,
  )
  info["stopped"] = bool(getattr(pipe, "stopped", False))
  return metrics_lib.summarize(records), records, info


def make_eval_steps(
  run: runtime.Run,
  decode_cfg=None,
  *,
  lm=None,
  bias=None,
  tunable: bool = False,
  ensemble_weights=None,
) -> runtime.CompiledSteps:
  """Compiled eval steps (greedy CTC by default; see `decoding.decode`).

  `run` may be an ensemble (`training.ensemble.combine`), decoded with `ensemble_weights`.
  """
  step = make_eval_step(
    run.graphdef,
    run.config.model.decoder.max_len,
    decode_cfg,
    lm=lm,
    bias=bias,
    eos_id=run.data.tokenizer.eos_id,
    tunable=tunable,
    word_table=run.data.tokenizer.word_table(),
    ensemble_weights=ensemble_weights,
  )
  replicated = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec())
  return runtime.CompiledSteps(step, run, replicated, donate=False)
