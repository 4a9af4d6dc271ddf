"""`moe-asr transcribe`: audio files in, one JSON line per file out.

moe-asr transcribe --workdir W a.wav b.m4a [--method ctc_beam --beam 8] [--output out.jsonl]

Each file is read with `audio_io.load_audio` (any libsndfile format, and m4a/mp4, webm and
amr through PyAV; any rate and channel count) and decoded on device with the workdir's
decoding settings (`W/decoding.json`, then the command line), in the smallest of the run's
length buckets that holds it (so the compiled shapes of evaluation are reused). A file
longer than the longest bucket is cut at pauses into windows that fit (`moe_asr.longform`),
and the windows' transcripts are stitched into one record. A record per file, in input
order:

  {"file", "text", "language", "language_confidence", "words": [{"word",
   "language", "start", "end", "confidence"}, ...], "intent", "intent_confidence",
   "slots": [{"type", "value"}, ...], "confidence", "deferred", "duration_s", "speech": true}

and, for a file decoded in windows, "segments" (a window each: start, end, text, language,
language_confidence, intent, intent_confidence, slots, confidence) and "language_segments"
(runs of words of one language: language, start, end, words), with a null top-level intent.
A file without speech (shorter than `--min-duration`, silent, or no speech for the
voice-activity detector) gives `{"file", "text": "", "speech": false, "reason", ...}` with
null language, intent and confidence (an error with `--no-speech-error`), and a file that
cannot be used (unreadable, empty, NaN) `{"file", "error"}`; the other files go on. The
command exits 0 when every file was transcribed and 1 when any failed.

Word times come from the CTC frame at which each word's first token was
emitted (40 ms frames, or 40 / `model.ctc_upsample` ms): a word ends where the
next one starts; the last word ends one frame per token after its start, capped
at the audio's duration.
Searches that do not align tokens to frames (joint CTC/attention) give null
times and null word confidences. With a fitted calibration (`W/calibration.json`)
the confidences are calibrated and `deferred` says whether the utterance
should go to a person; without one `deferred` is false.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import logging
import pathlib
import sys
from collections.abc import Mapping, Sequence

import numpy as np

# jax and the training stack are imported inside the functions, so that building the
# `moe-asr` parser (which imports this module) stays fast for the other commands.

_LOG = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Words from hypothesis tokens (host side).
# ---------------------------------------------------------------------------


def words_from_tokens(
  tokens: np.ndarray,
  token_conf: np.ndarray,
  token_frames: np.ndarray,
  token_lang: np.ndarray,
  tokenizer,
  *,
  duration_s: float,
  seconds_per_frame: float,
  default_language: str,
  calibration=None,
) -> list[dict]:
  """The words of one hypothesis with their language, times and confidence.

  Args:
    tokens: int [n] the hypothesis (its valid tokens only).
    token_conf: float [n] token confidences.
    token_frames: int [n] CTC frame of each token's emission, -1 where unknown.
    token_lang: int [n] language index (`languages.LANGUAGE_CODES`) of each token, -1 unknown.
    tokenizer: the run's `Tokenizer`.
    duration_s: the audio's duration (caps the last word's end).
    seconds_per_frame: duration of an encoder frame.
    default_language: language of words whose tokens have none.
    calibration: a `confidence.Calibration` (its word Platt scaling is applied), or None.

  Returns:
    [{"word", "language", "start", "end", "confidence"}]; `word` is normalised like the
    transcript and never empty; times are seconds (None where the frames are unknown),
    `confidence` the minimum of the word's token confidences (None where unknown).
  """
  from moe_asr.data import languages as langs_lib
  from moe_asr.data import text as text_lib
  from moe_asr.decoding import confidence as confidence_lib

  tokens = np.asarray(tokens).tolist()
  frames = np.asarray(token_frames).tolist()
  langs = np.asarray(token_lang).tolist()
  spans = []
  for span in tokenizer.word_spans(tokens):
    text = text_lib.normalize(tokenizer.decode([tokens[p] for p in span]))
    if text:  # Pieces with nothing word-like (a lone "▁", punctuation, unk) make no word.
      spans.append((span, text))
  if not spans:
    return []
  token_word = np.full(len(tokens), -1, np.int64)
  for w, (span, _) in enumerate(spans):
    token_word[span] = w
  word_conf = confidence_lib.word_confidence(np.asarray(token_conf, np.float64), token_word)
  if calibration is not None:
    word_conf = np.asarray(calibration.calibrate_word(word_conf))

  starts = []
  for span, _ in spans:
    frame = frames[span[0]]
    starts.append(round(frame * seconds_per_frame, 3) if frame >= 0 else None)
  words = []
  for w, (span, text) in enumerate(spans):
    start = starts[w]
    if start is None:
      end = None
    elif w + 1 < len(spans):
      end = starts[w + 1]
    else:
      end = round(min(start + seconds_per_frame * len(span), duration_s), 3)
    known = [langs[p] for p in span if langs[p] >= 0]
    # Majority of the tokens' languages; ties go to the language of the earlier token.
    language = (
      langs_lib.LANGUAGE_CODES[collections.Counter(known).most_common(1)[0][0]]
      if known
      else default_language
    )
    aligned = all(frames[p] >= 0 for p in span)
    words.append(
      {
        "word": text,
        "language": language,
        "start": start,
        "end": end,
        "confidence": float(word_conf[w]) if aligned else None,
      }
    )
  return words


def record_from_row(
  out: Mapping[str, np.ndarray],
  r: int,
  *,
  name: str,
  duration_s: float,
  run_data,
  seconds_per_frame: float,
  calibration=None,
) -> dict:
  """The JSON record of row `r` of a gathered decode output (see the module docstring)."""
  from moe_asr.data import languages as langs_lib
  from moe_asr.data import text as text_lib
  from moe_asr.evaluation import evaluate

  tokenizer, vocab = run_data.tokenizer, run_data.vocab
  cal = calibration
  n = int(out["lengths"][r])
  tokens = np.asarray(out["tokens"][r, :n])
  lid_probs = evaluate.softmax(out["utt_lid_logits"][r], cal.lid_temperature if cal else 1.0)
  lid = int(np.argmax(lid_probs))
  language = langs_lib.LANGUAGE_CODES[lid]
  confidence = float(out["confidence"][r])
  deferred = False
  if cal is not None:
    confidence = float(cal.calibrate_utterance(np.asarray([confidence]))[0])
    deferred = bool(confidence < cal.defer_threshold)
  intent, intent_conf, slots = None, None, []
  if "intent_log_probs" in out and vocab.intents:
    log_probs = out["intent_log_probs"][r]
    i = int(np.argmax(log_probs))
    intent = vocab.intents[i]
    intent_conf = float(evaluate.softmax(log_probs, cal.intent_temperature if cal else 1.0)[i])
    spans = evaluate.slot_spans(tokens, out["slot_tags"][r, :n], vocab.slot_tags, tokenizer)
    slots = [{"type": kind, "value": value} for kind, value in spans]
  return {
    "file": name,
    "text": text_lib.normalize(tokenizer.decode(tokens)),
    "language": language,
    "language_confidence": float(lid_probs[lid]),
    "words": words_from_tokens(
      tokens,
      out["token_conf"][r, :n],
      out["token_frames"][r, :n],
      out["token_lang"][r, :n],
      tokenizer,
      duration_s=duration_s,
      seconds_per_frame=seconds_per_frame,
      default_language=language,
      calibration=cal,
    ),
    "intent": intent,
    "intent_confidence": intent_conf,
    "slots": slots,
    "confidence": confidence,
    "deferred": deferred,
    "duration_s": round(duration_s, 3),
  }


# ---------------------------------------------------------------------------
# Decoding files.
# ---------------------------------------------------------------------------


MIN_DURATION_S = 0.1  # Shorter audio holds no word: the no-speech result.


def _bucket_batches(lengths: Mapping[int, int], buckets) -> list[tuple[object, list[int]]]:
  """(bucket, file indices) per batch: each file in the smallest bucket that holds it."""
  grouped: dict[int, list[int]] = collections.defaultdict(list)
  for i, samples in lengths.items():
    b = next(k for k, bucket in enumerate(buckets) if samples <= bucket.max_samples)
    grouped[b].append(i)
  batches = []
  for b in sorted(grouped):
    size = buckets[b].batch_size
    members = grouped[b]
    batches += [(buckets[b], members[j : j + size]) for j in range(0, len(members), size)]
  return batches


def host_batch(bucket, members: Sequence[int], audio: Mapping[int, np.ndarray]) -> dict:
  rows = bucket.batch_size
  batch = {
    "audio": np.zeros((rows, bucket.max_samples), np.int16),  # [batch, samples]
    "audio_mask": np.zeros((rows, bucket.max_samples), bool),
    "index": np.full((rows,), -1, np.int32),  # Key of the audio in `audio`.
    "example_mask": np.zeros((rows,), bool),  # False on padding rows.
  }
  for r, i in enumerate(members):
    wave = audio[i]
    batch["audio"][r, : len(wave)] = wave
    batch["audio_mask"][r, : len(wave)] = True
    batch["index"][r] = i
    batch["example_mask"][r] = True
  return batch


def no_speech_record(name: str, duration_s: float, reason: str) -> dict:
  """The record of a file with nothing to transcribe: no text, no language, no intent."""
  return {
    "file": name,
    "text": "",
    "speech": False,
    "reason": reason,
    "language": None,
    "language_confidence": None,
    "words": [],
    "intent": None,
    "intent_confidence": None,
    "slots": [],
    "confidence": None,
    "deferred": False,
    "duration_s": round(duration_s, 3),
  }


def speech_check(wave: np.ndarray, *, min_duration: float) -> tuple[str | None, np.ndarray | None]:
  """(why `wave` holds no speech or None, its VAD speech mask or None where not run).

  No speech: shorter than `min_duration` seconds, silent (`audio_io.silence_reason`: all
  zeros, a stereo mix that cancels, an RMS below `audio_io.SILENCE_DBFS`), or no frame the
  voice-activity detector (`moe_asr.data.vad`) calls speech.
  """
  from moe_asr.data import audio_io, schema, vad

  seconds = len(wave) / schema.SAMPLE_RATE
  if seconds < min_duration:
    return f"{seconds:.3f} s is shorter than the minimum duration {min_duration:g} s", None
  reason = audio_io.silence_reason(wave)
  if reason is not None:
    return f"silent: {reason}", None
  mask = vad.speech_mask(wave)
  if not mask.any():
    return "the voice-activity detector found no speech", mask
  return None, mask


def transcribe_files(
  workdir: str | pathlib.Path,
  files: Sequence[str | pathlib.Path],
  *,
  overrides: Sequence[str] = (),
  method: str | None = None,
  beam: int | None = None,
  lm_weight: float | None = None,
  bias_file: str | None = None,
  step: int | None = None,
  min_duration: float = MIN_DURATION_S,
  no_speech_error: bool = False,
  average_last: int = 0,
  ensemble: Sequence[str | pathlib.Path] = (),
  ensemble_weights: str | Sequence[float] = "equal",
) -> list[dict]:
  """Transcribes audio files of any length with the newest checkpoint of `workdir`.

  Args:
    workdir: a training workdir.
    files: audio file paths.
    overrides: `config.a.b=value` overrides of the workdir's config.
    method, beam, lm_weight, bias_file: set `config.decode.*` (after the overrides).
    step: the checkpoint step (default: the newest that reads back).
    min_duration: audio shorter than this (seconds) has no speech.
    no_speech_error: a file without speech is an error record instead of the no-speech
      record.
    average_last: > 0: decode with the mean parameters of the last this many saved steps
      (up to `step`; `training.averaging`).
    ensemble, ensemble_weights: more workdirs decoded with `workdir` as one ensemble and
      their weights (`score.with_ensemble`); calibration and settings are `workdir`'s.

  Returns:
    One record per file, in the order of `files`: the transcript record of the module
    docstring, the no-speech record, or `{"file", "error"}` for a file that could not be
    read.

  Files are read one at a time and cut into windows (`longform.file_windows`); windows wait
  in a queue per bucket and are decoded a full batch at a time, so what is held is the file being
  cut, at most a batch of windows per bucket, and the decoded words. Every process reads
  every file (they must be visible to all processes) and feeds its share of each batch's
  rows.
  """
  import jax

  from moe_asr.data import features as features_lib
  from moe_asr.data import pipeline as pipeline_lib
  from moe_asr.evaluation import evaluate, score
  from moe_asr.models import partitioning
  from moe_asr.training import distributed, sharding

  if not min_duration >= 0:
    raise ValueError(f"min_duration must be >= 0 seconds, got {min_duration}")
  distributed.initialize()
  workdir = pathlib.Path(workdir)
  cfg = _decode_config(workdir, overrides, step, method, beam, lm_weight, bias_file)
  buckets = pipeline_lib.make_buckets(
    pipeline_lib.PipelineConfig.from_config(cfg.data),
    features_lib.FeatureConfig.from_config(cfg.model.features),
  )
  # `token_frames` count CTC frames: `ctc_upsample` per encoder frame.
  seconds_per_frame = evaluate.seconds_per_ctc_frame(cfg)

  files = _Files(
    [str(f) for f in files],
    min_duration=min_duration,
    no_speech_error=no_speech_error,
    max_samples=buckets[-1].max_samples,
  )
  items = files.windows()
  first = next(items, None)
  if first is None:  # Nothing to decode: no model is loaded.
    return _finish(files.names, files.records)

  run, weights = _load_model(
    cfg, workdir, step, average_last, ensemble, ensemble_weights, overrides
  )
  calibration = score.load_calibration(workdir)
  lid_temperature = calibration.lid_temperature if calibration else 1.0
  process, processes = jax.process_index(), jax.process_count()

  def decode(bucket, queue: list) -> None:
    waves = {k: wave for k, (_, _, wave) in enumerate(queue)}
    host = host_batch(bucket, range(len(queue)), waves)
    rows = bucket.batch_size // processes  # This process's rows of the global batch.
    local = {k: v[process * rows : (process + 1) * rows] for k, v in host.items()}
    batch = sharding.put_batch(local, run.batch_shardings(local))
    out = evaluate.gather(eval_steps(batch)(run.state, run.rng_state, batch))
    for r in np.flatnonzero(out["example_mask"]):
      i, w, wave = queue[int(out["index"][r])]
      record = record_from_row(
        out,
        int(r),
        name=files.names[i],
        duration_s=len(wave) / files.rate,
        run_data=run.data,
        seconds_per_frame=seconds_per_frame,
        calibration=calibration,
      )
      files.add(i, w, record, evaluate.softmax(out["utt_lid_logits"][r], lid_temperature))
    queue.clear()

  try:
    with run.mesh, partitioning.axis_rules(run.rules, run.mesh):
      eval_steps, described = score.make_decoder(run, workdir, ensemble_weights=weights)
      _LOG.info("Decoding with %s", described)
      queues: list[list] = [[] for _ in buckets]
      for item in itertools.chain([first], items):
        b = next(k for k, bucket in enumerate(buckets) if len(item[2]) <= bucket.max_samples)
        queues[b].append(item)
        if len(queues[b]) == buckets[b].batch_size:
          decode(buckets[b], queues[b])
      for bucket, queue in zip(buckets, queues, strict=True):
        if queue:
          decode(bucket, queue)
  finally:
    run.checkpointer.close()
  return _finish(files.names, files.records)


def _decode_config(workdir, overrides, step, method, beam, lm_weight, bias_file):
  """The workdir's config with the overrides, then the decoding flags, applied."""
  from moe_asr.evaluation import score

  cfg = score.workdir_config(workdir, overrides, step=step)
  for key, value in (
    ("method", method),
    ("beam", None if beam is None else int(beam)),
    ("lm_weight", None if lm_weight is None else float(lm_weight)),
    ("bias_file", None if bias_file is None else str(bias_file)),
  ):
    if value is not None:
      cfg.decode[key] = value
  return cfg


def _load_model(cfg, workdir, step, average_last, ensemble, ensemble_weights, overrides):
  """The run to decode with (averaged, an ensemble as asked) and its members' weights."""
  from moe_asr import runtime
  from moe_asr.evaluation import score

  run = runtime.build_run(cfg, workdir, for_training=False, step=step)
  if average_last:
    from moe_asr.training import averaging

    averaging.average_last(run, average_last, step)
  run, _, weights = score.with_ensemble(
    run, workdir, ensemble, ensemble_weights, overrides=overrides, average_last=average_last
  )
  return run, weights


class _Files:
  """The files of a transcription: a record each, and the windows of those being decoded.

  `windows()` reads the files one at a time and yields their windows; `add` takes a
  window's record and, once a file's windows are all decoded, makes the file's record.
  """

  def __init__(self, names, *, min_duration: float, no_speech_error: bool, max_samples: int):
    from moe_asr.data import schema

    self.names = names
    self.records: list[dict | None] = [None] * len(names)
    # Files being decoded: their windows, and the windows' records and language probabilities.
    self.open: dict[int, dict] = {}
    self.min_duration, self.no_speech_error = min_duration, no_speech_error
    self.max_samples = max_samples
    self.rate = schema.SAMPLE_RATE

  def no_speech(self, i: int, seconds: float, reason: str) -> None:
    if self.no_speech_error:
      self.records[i] = {"file": self.names[i], "error": f"{self.names[i]}: no speech ({reason})"}
    else:
      self.records[i] = no_speech_record(self.names[i], seconds, reason)

  def windows(self):
    """(file, window, the window's samples) to decode, file by file."""
    from moe_asr import longform
    from moe_asr.data import audio_io

    for i, name in enumerate(self.names):
      try:
        wave = audio_io.load_audio(name)
      except audio_io.AudioError as e:
        self.records[i] = {"file": name, "error": str(e)}
        continue
      seconds = len(wave) / self.rate
      reason, mask = speech_check(wave, min_duration=self.min_duration)
      if reason is not None:
        self.no_speech(i, seconds, reason)
        continue
      planned, split = longform.file_windows(wave, mask, self.max_samples)
      if not planned:
        self.no_speech(i, seconds, "the voice-activity detector found no speech")
        continue
      if split:
        _LOG.info("%s: %.1f s in %d windows", name, seconds, len(planned))
      self.open[i] = {
        "windows": planned,
        "split": split,
        "seconds": seconds,
        "records": [None] * len(planned),
        "lid": [None] * len(planned),
        "left": len(planned),
      }
      for w, window in enumerate(planned):
        yield i, w, np.array(wave[window.start : window.end])  # A copy: `wave` can go.

  def add(self, i: int, w: int, record: dict, lid_probs: np.ndarray) -> None:
    """Window `w` of file `i` decoded: its record and language probabilities."""
    state = self.open[i]
    state["records"][w] = record
    state["lid"][w] = lid_probs
    state["left"] -= 1
    if state["left"] == 0:
      self._finish_file(i)

  def _finish_file(self, i: int) -> None:
    from moe_asr import longform

    state = self.open.pop(i)
    if not state["split"]:
      self.records[i] = {**state["records"][0], "speech": True}
      return
    self.records[i] = longform.stitch(
      state["windows"],
      state["records"],
      name=self.names[i],
      duration_s=state["seconds"],
      sample_rate=self.rate,
      lid_probs=state["lid"],
    )


def _finish(names: Sequence[str], records: Sequence[dict | None]) -> list[dict]:
  return [
    rec if rec is not None else {"file": name, "error": f"{name}: was not decoded"}
    for name, rec in zip(names, records, strict=True)
  ]


# ---------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------


def run_command(args: argparse.Namespace, overrides: Sequence[str] = ()) -> int:
  """`moe-asr transcribe`: prints a JSON line per file; 0 if all decoded, 1 if any failed."""
  import jax

  from moe_asr import commandline

  commandline.configure_logging(args.verbose)
  records = transcribe_files(
    args.workdir,
    args.files,
    overrides=overrides,
    method=args.method,
    beam=args.beam,
    lm_weight=args.lm_weight,
    bias_file=args.bias_file,
    step=getattr(args, "step", None),
    min_duration=args.min_duration,
    no_speech_error=args.no_speech_error,
    average_last=getattr(args, "average_last", 0),
    ensemble=getattr(args, "ensemble", ()),
    ensemble_weights=getattr(args, "ensemble_weights", "equal"),
  )
  if jax.process_index() == 0:
    lines = [json.dumps(rec, ensure_ascii=False) for rec in records]
    for line in lines:
      print(line)
    sys.stdout.flush()
    if args.output:
      path = pathlib.Path(args.output)
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    for rec in records:
      if "error" in rec:
        print(f"error: {rec['error']}", file=sys.stderr)
  return 1 if any("error" in rec for rec in records) else 0


def add_parser(sub) -> argparse.ArgumentParser:
  """Adds the `transcribe` subcommand to `moe-asr`'s subparsers (`func`: `run_command`)."""
  p = sub.add_parser(
    "transcribe",
    help="transcribe audio files with a workdir's model (JSON lines; exit 1 if any file failed)",
    description=__doc__.split("\n")[0],
  )
  p.add_argument("--workdir", required=True, help="a trained workdir")
  p.add_argument(
    "files",
    nargs="+",
    help="audio files (wav, flac, ogg, mp3, m4a, webm, ...; any rate, channels and length)",
  )
  p.add_argument(
    "--method", choices=("greedy", "ctc_beam", "joint"), default=None, help="search (decode.method)"
  )
  p.add_argument("--beam", type=int, default=None, help="hypotheses kept (decode.beam)")
  p.add_argument("--lm-weight", type=float, default=None, help="text LM weight (decode.lm_weight)")
  p.add_argument("--bias-file", default=None, help="phrases to boost, one per line")
  p.add_argument("--output", default=None, help="also write the JSON lines to this file")
  p.add_argument(
    "--min-duration",
    type=float,
    default=MIN_DURATION_S,
    metavar="SECONDS",
    help=f"shorter audio has no speech (default {MIN_DURATION_S})",
  )
  p.add_argument(
    "--no-speech-error",
    action="store_true",
    help="a file without speech (silent, too short) is an error instead of a no-speech record",
  )
  p.add_argument(
    "--average-last",
    type=int,
    default=0,
    metavar="N",
    help="decode with the mean parameters of the last N saved checkpoints (up to --step)",
  )
  p.add_argument(
    "--ensemble",
    nargs="+",
    default=(),
    metavar="W",
    help="more workdirs decoded with --workdir as one ensemble (averaged CTC and task "
    "posteriors); after the audio files",
  )
  p.add_argument(
    "--ensemble-weights",
    default="equal",
    help="the members' weights: equal, validation (1 / last validation CER) or w1,w2,...",
  )
  p.add_argument("-v", "--verbose", action="store_true", help="log everything (INFO)")
  p.set_defaults(func=run_command)
  return p
