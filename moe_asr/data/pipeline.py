"""Input pipeline: data source -> length buckets -> per-process rows -> padded numpy batches.

The pipeline is a grain `MapDataset` over a *batch plan*: for every epoch the
example indices are shuffled (seeded by `seed` and the epoch), sorted into
length buckets and cut into global batches of the bucket's batch size; the
plan's batches are shuffled too. Every process computes the same plan and
loads only its rows of each global batch, so all processes always agree on
the bucket shape of a step (a requirement of a multi-host `jit`). The grain
iterator's state is a single position in that plan, so saving and restoring it
continues the exact same sequence.

Batches only ever take the static shapes of the configured buckets. Rows that
cannot be used (past the end of an evaluation split, audio longer than the last
bucket under `long_policy="skip"`, labels longer than the bucket's label
length, empty audio) are masked out with `example_mask == False` and counted in
`Pipeline.stats`; nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pathlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from moe_asr.data import features as features_lib
from moe_asr.data import languages as langs_lib
from moe_asr.data import schema

# Keys of a batch that hold strings (kept on the host, never sent to devices).
STRING_KEYS = ("id", "text", "speaker")
NO_LABEL = -1  # Padding / unknown value of integer label arrays.


@dataclasses.dataclass(frozen=True)
class Bucket:
  """One static batch shape."""

  max_samples: int  # Audio length of the bucket (longest utterance it takes).
  batch_size: int  # Global batch size (all processes together).
  max_tokens: int  # Label length.
  max_words: int  # Word-level label length (`words_lang`).
  num_frames: int  # Feature frames of `max_samples` (frame-level LID targets).


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Settings of the input pipeline (`config.data` in experiment configs)."""

  # ((max_seconds, global_batch_size), ...), ascending in seconds.
  buckets: tuple[tuple[float, int], ...] = ((3.0, 32), (5.0, 24), (8.0, 16), (12.0, 8))
  tokens_per_second: float = (
    15.0  # Label length of a bucket: seconds x this (+2, to a multiple of 8).
  )
  words_per_second: float = 5.0  # Word-label length of a bucket, likewise.
  max_lang_runs: int = 8  # Length of the language-run sequence (LID CTC targets).
  long_policy: str = "skip"  # Audio beyond the last bucket: "skip" (mask + count) or "cut".
  seed: int = 0  # Shuffling seed.
  shuffle: bool = True
  drop_remainder: bool = True  # Drop incomplete batches (training); False pads them (eval).
  num_epochs: int | None = None  # None repeats forever.
  num_threads: int = 2  # grain reader threads.
  prefetch: int = 4  # Batches prefetched by grain.

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any] | None = None, **overrides) -> PipelineConfig:
    """Builds from a ConfigDict/dict with any subset of the fields."""
    values = {}
    if cfg is not None:
      names = {f.name for f in dataclasses.fields(cls)}
      items = cfg.items() if hasattr(cfg, "items") else dict(cfg).items()
      values = {k: v for k, v in items if k in names}
    values.update(overrides)
    if "buckets" in values:
      values["buckets"] = tuple((float(s), int(b)) for s, b in values["buckets"])
    return cls(**values)


def make_buckets(cfg: PipelineConfig, feature_cfg: features_lib.FeatureConfig | None = None):
  """The static bucket shapes of a pipeline config."""
  feature_cfg = feature_cfg or features_lib.FeatureConfig()
  seconds = [s for s, _ in cfg.buckets]
  if seconds != sorted(seconds) or len(set(seconds)) != len(seconds):
    raise ValueError(f"Bucket lengths must be strictly ascending, got {seconds}")
  buckets = []
  for sec, batch in cfg.buckets:
    samples = int(round(sec * schema.SAMPLE_RATE))
    buckets.append(
      Bucket(
        max_samples=samples,
        batch_size=int(batch),
        max_tokens=_round_up(int(math.ceil(sec * cfg.tokens_per_second)) + 2, 8),
        max_words=_round_up(int(math.ceil(sec * cfg.words_per_second)) + 2, 8),
        num_frames=int(features_lib.num_frames(samples, feature_cfg)),
      )
    )
  return tuple(buckets)


def _round_up(x: int, m: int) -> int:
  return (x + m - 1) // m * m


def _as_str(x: Any) -> str:
  if isinstance(x, bytes):
    return x.decode("utf-8")
  if isinstance(x, np.ndarray) and x.shape == ():
    return _as_str(x.item())
  return str(x)


# ---------------------------------------------------------------------------
# Data sources and lengths.
# ---------------------------------------------------------------------------


def data_source(name: str, split: str, *, data_dir: str | None = None, config: str | None = None):
  """A random-access source of schema examples.

  Args:
    name: a TFDS dataset of the schema (`moe_asr_synth/tiny`, `local_manifest/NAME`)
      or a catalog adapter name (`librispeech`, `common_voice`, ...).
    split: split name (TFDS slicing such as `train[:10%]` works for TFDS sets).
    data_dir: TFDS data directory.
    config: catalog builder config (e.g. `fleurs.hi_in` for `xtreme_s`).
  """
  from moe_asr.data import catalog

  if name.split("/")[0] in catalog.ADAPTERS:
    return catalog.load(name.split("/")[0], split, data_dir=data_dir, config=config)
  import tensorflow_datasets as tfds

  import moe_asr.data.builders  # noqa: F401  (registers the project's builders)

  builder = tfds.builder(name, data_dir=data_dir)
  if hasattr(builder.builder_config, "digest"):
    from moe_asr.data.builders import synth

    synth.check_built(builder)
  # The schema stores audio as a raw int16 tensor (`encoding="none"`): its serialized value
  # is the decoded array, and reading it as such skips TFDS's decoding of it through
  # TensorFlow, which took about half of each example's read time (1.3 against 2.9 ms an
  # example of the demo corpus; the same arrays).
  return builder.as_data_source(split=split, decoders={"audio": tfds.decode.SkipDecoding()})


def example_lengths(
  source: Sequence[Mapping[str, Any]], cache_file: str | None = None
) -> np.ndarray:
  """Audio lengths (samples) of every example, cached in `cache_file` when given.

  The cache is keyed by the number of examples and written atomically; an
  unreadable or mismatching cache is recomputed, never trusted.
  """
  n = len(source)
  if cache_file and os.path.exists(cache_file):
    try:
      cached = np.load(cache_file)
      if cached.shape == (n,):
        return cached
    except (OSError, ValueError) as e:
      logging.warning("Ignoring unreadable length cache %s: %s", cache_file, e)
  lengths = np.fromiter((len(source[i]["audio"]) for i in range(n)), np.int64, count=n)
  if cache_file:
    try:
      tmp = f"{cache_file}.tmp{os.getpid()}"
      pathlib.Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
      with open(tmp, "wb") as f:
        np.save(f, lengths)
      os.replace(tmp, cache_file)
    except OSError as e:
      logging.warning("Could not write length cache %s: %s", cache_file, e)
  return lengths


# ---------------------------------------------------------------------------
# The batch plan.
# ---------------------------------------------------------------------------


def assign_buckets(lengths: np.ndarray, buckets: Sequence[Bucket], long_policy: str) -> np.ndarray:
  """Bucket index of every example; -1 for examples that are skipped (too long or empty)."""
  if long_policy not in ("skip", "cut"):
    raise ValueError(f"long_policy must be 'skip' or 'cut', got {long_policy!r}")
  limits = np.asarray([b.max_samples for b in buckets])
  ids = np.searchsorted(limits, lengths, side="left")
  too_long = ids >= len(buckets)
  ids = np.where(too_long, len(buckets) - 1 if long_policy == "cut" else -1, ids)
  return np.where(lengths <= 0, -1, ids).astype(np.int64)


def plan_epoch(
  bucket_ids: np.ndarray,
  buckets: Sequence[Bucket],
  *,
  seed: int,
  epoch: int,
  shuffle: bool,
  drop_remainder: bool,
) -> list[tuple[int, np.ndarray]]:
  """Global batches of one epoch: (bucket index, example indices, -1 = padding row)."""
  rng = np.random.default_rng([seed, epoch])
  batches = []
  for b, bucket in enumerate(buckets):
    members = np.flatnonzero(bucket_ids == b)
    if shuffle:
      members = rng.permutation(members)
    for start in range(0, len(members), bucket.batch_size):
      rows = members[start : start + bucket.batch_size]
      if len(rows) < bucket.batch_size:
        if drop_remainder:
          break
        rows = np.concatenate([rows, np.full(bucket.batch_size - len(rows), -1)])
      batches.append((b, rows.astype(np.int64)))
  if shuffle:
    order = rng.permutation(len(batches))
    batches = [batches[i] for i in order]
  return batches


class _PlanSource:
  """Random access to the (epoch-concatenated) batch plan: grain's source."""

  def __init__(self, bucket_ids, buckets, cfg: PipelineConfig):
    self._bucket_ids, self._buckets, self._cfg = bucket_ids, buckets, cfg
    self._cache: dict[int, list] = {}
    self._lock = threading.Lock()
    self.batches_per_epoch = len(self._epoch(0))
    if self.batches_per_epoch == 0:
      raise ValueError(
        "The batch plan is empty: no bucket gets a full batch "
        f"({np.bincount(bucket_ids[bucket_ids >= 0], minlength=len(buckets)).tolist()} "
        f"examples per bucket for batch sizes {[b.batch_size for b in buckets]})."
      )

  def _epoch(self, epoch: int):
    with self._lock:
      if epoch not in self._cache:
        if len(self._cache) > 2:
          self._cache.pop(min(self._cache))
        self._cache[epoch] = plan_epoch(
          self._bucket_ids,
          self._buckets,
          seed=self._cfg.seed,
          epoch=epoch,
          shuffle=self._cfg.shuffle,
          drop_remainder=self._cfg.drop_remainder,
        )
      return self._cache[epoch]

  def __len__(self) -> int:
    # "Forever" is a very large number of epochs, so that indices past an epoch
    # reach the next epoch's (reshuffled) plan instead of wrapping around.
    return self.batches_per_epoch * (self._cfg.num_epochs or 10**9)

  def __getitem__(self, index: int):
    epoch, i = divmod(int(index), self.batches_per_epoch)
    return self._epoch(epoch)[i]


# ---------------------------------------------------------------------------
# Turning examples into padded arrays.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Vocabularies:
  """Label vocabularies of the task heads."""

  intents: tuple[str, ...]
  slot_types: tuple[str, ...]

  @property
  def slot_tags(self) -> tuple[str, ...]:
    """BIO tags: "O", then "B-type", "I-type" per slot type."""
    return ("O",) + tuple(f"{p}-{t}" for t in self.slot_types for p in ("B", "I"))


def dominant_language(words_lang: Sequence[str], fallback: str = "") -> str:
  """The most frequent language of the words (first on ties)."""
  if not words_lang:
    return fallback
  counts: dict[str, int] = {}
  for lang in words_lang:
    counts[lang] = counts.get(lang, 0) + 1
  return max(counts, key=lambda k: (counts[k], -words_lang.index(k)))


def slot_word_tags(words: Sequence[str], slots: Sequence[tuple[str, str]]) -> list[str]:
  """BIO tag per word, finding each slot value left to right as a whole-word run."""
  tags = ["O"] * len(words)
  start = 0
  for slot_type, value in slots:
    value_words = value.split()
    n = len(value_words)
    for i in range(start, len(words) - n + 1):
      if words[i : i + n] == value_words and all(t == "O" for t in tags[i : i + n]):
        tags[i] = f"B-{slot_type}"
        for j in range(i + 1, i + n):
          tags[j] = f"I-{slot_type}"
        start = i + n
        break
    else:
      raise ValueError(
        f"Slot value {value!r} ({slot_type}) is not a word run of {' '.join(words)!r}"
      )
  return tags


def frame_languages(segments: np.ndarray, num_frames: int, feature_cfg) -> np.ndarray:
  """Language index of each feature frame (by its centre sample); -1 where unknown."""
  out = np.full(num_frames, NO_LABEL, np.int32)
  if len(segments) == 0:
    return out
  shift = int(round(feature_cfg.sample_rate * feature_cfg.frame_shift_ms / 1000))
  win = int(round(feature_cfg.sample_rate * feature_cfg.frame_length_ms / 1000))
  centres = np.arange(num_frames) * shift + win // 2
  for start, end, lang in np.asarray(segments).reshape(-1, 3):
    out[(centres >= start) & (centres < end)] = lang
  return out


class _LoadBatch:
  """grain map: one planned global batch -> this process's padded numpy rows."""

  def __init__(
    self, source, buckets, cfg, tokenizer, vocab, feature_cfg, process_index, process_count
  ):
    self.source, self.buckets, self.cfg = source, buckets, cfg
    self.tokenizer, self.vocab, self.feature_cfg = tokenizer, vocab, feature_cfg
    self.process_index, self.process_count = process_index, process_count
    self.intent_ids = {name: i for i, name in enumerate(vocab.intents)}
    self.slot_ids = {name: i for i, name in enumerate(vocab.slot_tags)}
    self.stats: dict[str, int] = {}
    self._lock = threading.Lock()

  def _count(self, key: str, n: int = 1) -> None:
    with self._lock:
      self.stats[key] = self.stats.get(key, 0) + n

  def empty(self, bucket_index: int) -> dict[str, np.ndarray]:
    """This process's rows of a batch of the bucket, all padding."""
    bucket = self.buckets[bucket_index]
    per_process = bucket.batch_size // self.process_count
    batch = _empty_batch(bucket, per_process, self.cfg.max_lang_runs)
    batch["bucket"] = np.full((per_process,), bucket_index, np.int32)
    return batch

  def __call__(self, planned):
    bucket_index, rows = planned
    bucket = self.buckets[bucket_index]
    per_process = bucket.batch_size // self.process_count
    rows = rows[self.process_index * per_process : (self.process_index + 1) * per_process]
    batch = self.empty(bucket_index)
    for r, index in enumerate(rows):
      if index < 0:
        continue
      self._fill_row(batch, r, int(index), bucket)
    return batch

  def _fill_row(self, batch, r, index, bucket):
    ex = self.source[index]
    audio = np.asarray(ex["audio"])
    if audio.ndim != 1 or len(audio) == 0:
      self._count("skipped_empty_audio")
      return
    if len(audio) > bucket.max_samples:
      if self.cfg.long_policy != "cut":
        self._count("skipped_too_long")
        return
      self._count("cut_too_long")
      audio = audio[: bucket.max_samples]
    text = _as_str(ex.get("text", ""))
    words = text.split()
    words_lang = [_as_str(w) for w in ex.get("words_lang", [])]
    if words_lang and len(words_lang) != len(words):
      raise ValueError(
        f"Example {_as_str(ex.get('id', index))}: {len(words_lang)} word languages for "
        f"{len(words)} words"
      )
    # Token ids per word, so that every token knows its word (slot tags, languages).
    token_ids, token_word = [], []
    if self.tokenizer is not None:
      for w, word in enumerate(words):
        ids = self.tokenizer.encode(word)
        token_ids += ids
        token_word += [w] * len(ids)
      if len(token_ids) > bucket.max_tokens:
        self._count("skipped_labels_too_long")
        return
    if len(words) > bucket.max_words:
      self._count("skipped_labels_too_long")
      return

    batch["example_mask"][r] = True
    batch["index"][r] = index
    batch["audio"][r, : len(audio)] = audio
    batch["audio_mask"][r, : len(audio)] = True
    batch["id"][r] = _as_str(ex.get("id", index))
    batch["text"][r] = text
    batch["speaker"][r] = _as_str(ex.get("speaker", ""))
    batch["snr_db"][r] = float(ex.get("snr_db", schema.CLEAN_SNR_DB))

    word_lang_ids = [langs_lib.language_index(code) for code in words_lang]
    batch["words_lang"][r, : len(word_lang_ids)] = word_lang_ids
    runs = [lang for i, lang in enumerate(word_lang_ids) if i == 0 or lang != word_lang_ids[i - 1]]
    batch["lang_runs"][r, : min(len(runs), self.cfg.max_lang_runs)] = runs[: self.cfg.max_lang_runs]
    language = _as_str(ex.get("language", ""))
    utt_lang = dominant_language(
      words_lang, fallback=language if language != langs_lib.MIXED else ""
    )
    batch["language"][r] = langs_lib.language_index(utt_lang) if utt_lang else NO_LABEL
    batch["code_switched"][r] = len(runs) > 1
    segments = np.asarray(ex.get("segments", np.zeros((0, 3))), np.int64).reshape(-1, 3)
    batch["frame_lang"][r] = frame_languages(segments, bucket.num_frames, self.feature_cfg)
    valid_frames = int(features_lib.num_frames(len(audio), self.feature_cfg))
    batch["frame_lang"][r, valid_frames:] = NO_LABEL

    intent = _as_str(ex.get("intent", ""))
    batch["intent"][r] = self.intent_ids.get(intent, NO_LABEL)
    if intent and intent not in self.intent_ids:
      self._count("unknown_intent")
    if self.tokenizer is not None:
      n = len(token_ids)
      batch["tokens"][r, :n] = token_ids
      batch["token_mask"][r, :n] = True
      batch["token_lang"][r, :n] = (
        [word_lang_ids[w] for w in token_word] if word_lang_ids else NO_LABEL
      )
      slots = ex.get("slots", {"type": [], "value": []})
      pairs = list(
        zip([_as_str(t) for t in slots["type"]], [_as_str(v) for v in slots["value"]], strict=True)
      )
      if pairs or intent:
        # Every piece of a word carries the word's tag: the task heads read causal decoder
        # states, so the word's last piece (the state that has read the whole word) is the
        # one inference reads (`evaluate._slot_spans`).
        word_tags = slot_word_tags(words, pairs)
        batch["slot_tags"][r, :n] = [self.slot_ids.get(word_tags[w], NO_LABEL) for w in token_word]


def _empty_batch(bucket: Bucket, rows: int, max_lang_runs: int) -> dict[str, np.ndarray]:
  return {
    "audio": np.zeros((rows, bucket.max_samples), np.int16),  # [batch, samples]
    "audio_mask": np.zeros((rows, bucket.max_samples), bool),
    "example_mask": np.zeros((rows,), bool),  # False for padding / skipped rows.
    "index": np.full((rows,), NO_LABEL, np.int64),  # Index in the data source.
    "tokens": np.zeros((rows, bucket.max_tokens), np.int32),  # [batch, tokens], 0 = pad
    "token_mask": np.zeros((rows, bucket.max_tokens), bool),
    "token_lang": np.full((rows, bucket.max_tokens), NO_LABEL, np.int32),
    "slot_tags": np.full((rows, bucket.max_tokens), NO_LABEL, np.int32),  # BIO per token.
    "words_lang": np.full((rows, bucket.max_words), NO_LABEL, np.int32),
    "lang_runs": np.full((rows, max_lang_runs), NO_LABEL, np.int32),  # Languages of word runs.
    "frame_lang": np.full((rows, bucket.num_frames), NO_LABEL, np.int32),  # 10 ms frames.
    "language": np.full((rows,), NO_LABEL, np.int32),  # Dominant language index.
    "code_switched": np.zeros((rows,), bool),
    "intent": np.full((rows,), NO_LABEL, np.int32),
    "snr_db": np.full((rows,), schema.CLEAN_SNR_DB, np.float32),
    "id": np.full((rows,), "", object),
    "text": np.full((rows,), "", object),
    "speaker": np.full((rows,), "", object),
  }


# ---------------------------------------------------------------------------
# The pipeline.
# ---------------------------------------------------------------------------


class Pipeline:
  """Bucketed, sharded, checkpointable batches over one split.

  Iterate with `iter(pipeline)`; the iterator has `get_state()` / `set_state()`
  (grain), which checkpoints store.
  """

  def __init__(
    self,
    source: Sequence[Mapping[str, Any]],
    cfg: PipelineConfig,
    *,
    tokenizer=None,
    vocab: Vocabularies | None = None,
    feature_cfg: features_lib.FeatureConfig | None = None,
    lengths: np.ndarray | None = None,
    length_cache: str | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
  ):
    if process_index is None or process_count is None:
      import jax

      process_index, process_count = jax.process_index(), jax.process_count()
    self.cfg = cfg
    self.feature_cfg = feature_cfg or features_lib.FeatureConfig()
    self.buckets = make_buckets(cfg, self.feature_cfg)
    for b in self.buckets:
      if b.batch_size % process_count:
        raise ValueError(f"Batch size {b.batch_size} is not divisible by {process_count} processes")
    self.source = source
    self.lengths = example_lengths(source, length_cache) if lengths is None else np.asarray(lengths)
    self.bucket_ids = assign_buckets(self.lengths, self.buckets, cfg.long_policy)
    if vocab is None:
      from moe_asr.data.synth import grammar

      vocab = Vocabularies(grammar.INTENTS, grammar.SLOT_TYPES)
    self.vocab = vocab
    self._plan = _PlanSource(self.bucket_ids, self.buckets, cfg)
    self._load = _LoadBatch(
      source, self.buckets, cfg, tokenizer, vocab, self.feature_cfg, process_index, process_count
    )
    too_long = int(np.sum(self.lengths > self.buckets[-1].max_samples))
    self.plan_stats = {
      "examples": len(self.lengths),
      "too_long": too_long,
      "empty": int(np.sum(self.lengths <= 0)),
      "per_bucket": np.bincount(
        self.bucket_ids[self.bucket_ids >= 0], minlength=len(self.buckets)
      ).tolist(),
      "batches_per_epoch": self._plan.batches_per_epoch,
    }
    if too_long:
      logging.warning(
        "%d of %d utterances are longer than the last bucket (%.1f s): policy %r",
        too_long,
        len(self.lengths),
        self.buckets[-1].max_samples / schema.SAMPLE_RATE,
        cfg.long_policy,
      )

  @property
  def stats(self) -> dict[str, int]:
    """Counts of rows skipped or cut while loading (so far, in this process)."""
    return dict(self._load.stats)

  @property
  def batches_per_epoch(self) -> int:
    return self._plan.batches_per_epoch

  def example_batches(self) -> dict[int, dict[str, np.ndarray]]:
    """The shapes the pipeline yields: an empty batch of this process's rows for each bucket
    that holds examples, by bucket index."""
    per_bucket = self.plan_stats["per_bucket"]
    return {i: self._load.empty(i) for i, n in enumerate(per_bucket) if n}

  def dataset(self) -> grain.MapDataset:
    return grain.MapDataset.source(self._plan).map(self._load)

  def __iter__(self) -> grain.DatasetIterator:
    read = grain.ReadOptions(
      num_threads=self.cfg.num_threads, prefetch_buffer_size=self.cfg.prefetch
    )
    return iter(self.dataset().to_iter_dataset(read))


def device_arrays(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The numeric part of a batch (what goes to `jax.device_put`)."""
  return {k: v for k, v in batch.items() if k not in STRING_KEYS}
