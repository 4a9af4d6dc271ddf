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

Under `long_policy="window"` an evaluation pipeline (`drop_remainder=False`) leaves the
utterances longer than the last bucket out of its batches and lists them in
`Pipeline.long_examples`, for the evaluation to decode in windows
(`evaluation.evaluate.evaluate_split`); a training pipeline skips them, as under "skip".
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


CURRICULUM_ORDERS = ("length", "snr", "length+snr")  # What makes an example hard.
CURRICULUM_SCHEDULES = ("linear", "sqrt")
# Random streams of the curriculum (tie-breaking, batches), apart from the plain plan's
# `[seed, epoch]` ones.
_CURRICULUM_STREAM = 0x63757272


@dataclasses.dataclass(frozen=True)
class Curriculum:
  """Easy examples first (`config.data.curriculum`).

  Global batch i < `steps` of the plan draws only from the easiest `fraction(i)` of the
  training examples (those in a bucket), the fraction growing from `start_fraction` to 1;
  from batch `steps` on the plan is the plain one, the same function of the seed as without
  a curriculum. Difficulty is the duration ("length"), the added noise ("snr": clean first,
  then by falling SNR) or the mean of the two percentile ranks ("length+snr"); ties are
  broken by a seeded permutation. Batch i picks one bucket (in proportion to the full batches
  its members in the pool make, so batches keep the buckets' shapes and sizes) and samples
  its rows from them, uniformly from the pool as in Platanios et al. 2019 (without
  replacement within a batch, independently across batches), from a random stream of
  (seed, i) alone: every process plans the same batch and a restored iterator continues
  exactly.
  """

  steps: int = 0  # Global batches the curriculum lasts (0 = off).
  by: str = "length"  # One of CURRICULUM_ORDERS.
  start_fraction: float = 0.2  # Easiest fraction of the examples that batch 0 draws from.
  # "linear": f(i) = c0 + (1 - c0) i / T; "sqrt": the competence of Platanios et al. 2019,
  # f(i) = min(1, sqrt(i (1 - c0^2) / T + c0^2)) (c0 = start_fraction, T = steps).
  schedule: str = "linear"

  def __post_init__(self):
    if not isinstance(self.steps, int | np.integer) or self.steps < 0:
      raise ValueError(f"curriculum.steps must be an integer >= 0, got {self.steps!r}")
    if self.by not in CURRICULUM_ORDERS:
      raise ValueError(f"curriculum.by must be one of {CURRICULUM_ORDERS}, got {self.by!r}")
    if not 0.0 < self.start_fraction <= 1.0:
      raise ValueError(f"curriculum.start_fraction must be in (0, 1], got {self.start_fraction}")
    if self.schedule not in CURRICULUM_SCHEDULES:
      raise ValueError(
        f"curriculum.schedule must be one of {CURRICULUM_SCHEDULES}, got {self.schedule!r}"
      )

  @property
  def enabled(self) -> bool:
    return self.steps > 0

  @property
  def uses_snr(self) -> bool:
    """Whether planning needs every example's `snr_db`."""
    return self.enabled and "snr" in self.by

  def fraction(self, index: int) -> float:
    """The easiest fraction of the examples that global batch `index` draws from."""
    if index >= self.steps:
      return 1.0
    c0, t = self.start_fraction, index / self.steps
    if self.schedule == "linear":
      return c0 + (1.0 - c0) * t
    return min(1.0, math.sqrt(t * (1.0 - c0**2) + c0**2))

  @classmethod
  def from_config(cls, cfg: Curriculum | Mapping[str, Any] | None) -> Curriculum:
    """Builds from a ConfigDict/dict (None: off); unknown keys are an error."""
    if cfg is None:
      return cls()
    if isinstance(cfg, cls):
      return cfg
    values = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f"Unknown curriculum settings {unknown}")
    if "steps" in values:
      values["steps"] = int(values["steps"])
    if "start_fraction" in values:
      values["start_fraction"] = float(values["start_fraction"])
    return cls(**values)


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
  # Audio beyond the last bucket: "skip" (left out + counted), "cut" (to the last bucket) or
  # "window" (evaluation: decoded in windows by the caller; training: as "skip").
  long_policy: str = "skip"
  seed: int = 0  # Shuffling seed.
  shuffle: bool = True
  drop_remainder: bool = True  # Drop incomplete batches (training); False pads them (eval).
  num_epochs: int | None = None  # None repeats forever.
  num_threads: int = 2  # grain reader threads.
  prefetch: int = 4  # Batches prefetched by grain.
  # Easy examples first for the first global batches (training); off by default.
  curriculum: Curriculum = dataclasses.field(default_factory=Curriculum)

  def __post_init__(self):
    if self.curriculum.enabled and not self.shuffle:
      raise ValueError("A curriculum samples its batches at random: it needs shuffle=True")

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
    if "curriculum" in values:
      values["curriculum"] = Curriculum.from_config(values["curriculum"])
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


def as_str(x: Any) -> str:
  if isinstance(x, bytes):
    return x.decode("utf-8")
  if isinstance(x, np.ndarray) and x.shape == ():
    return as_str(x.item())
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
    # `xtreme_s/fleurs.hi_in` names its config; `catalog.load` reads it from the name.
    return catalog.load(name, split, data_dir=data_dir, config=config)
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


def _audio_length(ex: Mapping[str, Any]) -> int:
  return len(ex["audio"])


def _snr_db(ex: Mapping[str, Any]) -> float:
  return float(ex.get("snr_db", schema.CLEAN_SNR_DB))


# What `example_columns` reads of every example: name -> (dtype, reader).
EXAMPLE_COLUMNS = {
  "lengths": (np.int64, _audio_length),  # Audio samples.
  "snr_db": (np.float32, _snr_db),  # Added-noise SNR; schema.CLEAN_SNR_DB (inf) when clean.
}


def example_columns(
  source: Sequence[Mapping[str, Any]], cache_files: Mapping[str, str | None]
) -> dict[str, np.ndarray]:
  """Per-example values (`EXAMPLE_COLUMNS`) of every example, each cached in its file.

  `cache_files` maps each wanted column to its cache file (None: not cached). The columns
  that no cache holds are read in one pass over the source. A cache is keyed by the number
  of examples and its dtype and written atomically; an unreadable or mismatching cache is
  recomputed, never trusted.
  """
  unknown = sorted(set(cache_files) - set(EXAMPLE_COLUMNS))
  if unknown:
    raise ValueError(f"Unknown example columns {unknown}; known: {sorted(EXAMPLE_COLUMNS)}")
  n = len(source)
  out = {}
  for name, cache_file in cache_files.items():
    if cache_file and os.path.exists(cache_file):
      try:
        cached = np.load(cache_file)
        if cached.shape == (n,) and cached.dtype == EXAMPLE_COLUMNS[name][0]:
          out[name] = cached
      except (OSError, ValueError) as e:
        logging.warning("Ignoring unreadable %s cache %s: %s", name, cache_file, e)
  missing = [name for name in cache_files if name not in out]
  if not missing:
    return out
  for name in missing:
    out[name] = np.empty(n, EXAMPLE_COLUMNS[name][0])
  for i in range(n):
    ex = source[i]
    for name in missing:
      out[name][i] = EXAMPLE_COLUMNS[name][1](ex)
  for name in missing:
    cache_file = cache_files[name]
    if not cache_file:
      continue
    try:
      tmp = f"{cache_file}.tmp{os.getpid()}"
      pathlib.Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
      with open(tmp, "wb") as f:
        np.save(f, out[name])
      os.replace(tmp, cache_file)
    except OSError as e:
      logging.warning("Could not write %s cache %s: %s", name, cache_file, e)
  return out


def example_lengths(
  source: Sequence[Mapping[str, Any]], cache_file: str | None = None
) -> np.ndarray:
  """Audio lengths (samples) of every example, cached in `cache_file` when given."""
  return example_columns(source, {"lengths": cache_file})["lengths"]


def example_snr(source: Sequence[Mapping[str, Any]], cache_file: str | None = None) -> np.ndarray:
  """`snr_db` of every example (inf: clean), cached in `cache_file` when given."""
  return example_columns(source, {"snr_db": cache_file})["snr_db"]


# ---------------------------------------------------------------------------
# The batch plan.
# ---------------------------------------------------------------------------


LONG_POLICIES = ("skip", "cut", "window")  # `PipelineConfig.long_policy` values.


def assign_buckets(lengths: np.ndarray, buckets: Sequence[Bucket], long_policy: str) -> np.ndarray:
  """Bucket index of every example; -1 for examples that are skipped (too long or empty)."""
  if long_policy not in LONG_POLICIES:
    raise ValueError(f"long_policy must be one of {LONG_POLICIES}, got {long_policy!r}")
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


def _tied_ranks(x: np.ndarray) -> np.ndarray:
  """Rank of every value scaled to [0, 1], ties sharing their mean rank."""
  _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
  mean_rank = np.cumsum(counts) - (counts + 1) / 2
  return mean_rank[inverse.reshape(-1)] / max(len(x) - 1, 1)


def curriculum_order(
  bucket_ids: np.ndarray,
  by: str,
  *,
  seed: int,
  lengths: np.ndarray | None = None,
  snr_db: np.ndarray | None = None,
) -> np.ndarray:
  """The examples that are in a bucket, easiest first (`Curriculum.by`).

  "length": shortest first; "snr": clean (inf) first, then by falling SNR (NaN last);
  "length+snr": by the mean of the two percentile ranks (ties at their mean rank). Equally
  hard examples come in an order drawn from `seed`.
  """
  if by not in CURRICULUM_ORDERS:
    raise ValueError(f"curriculum.by must be one of {CURRICULUM_ORDERS}, got {by!r}")
  members = np.flatnonzero(np.asarray(bucket_ids) >= 0)
  keys = []
  if "length" in by:
    keys.append(_tied_ranks(np.asarray(lengths)[members]))
  if "snr" in by:
    if snr_db is None or len(snr_db) != len(bucket_ids):
      raise ValueError("A curriculum by SNR needs the snr_db of every example")
    snr = np.asarray(snr_db, np.float64)[members]
    keys.append(_tied_ranks(-np.where(np.isnan(snr), -np.inf, snr)))
  difficulty = np.mean(keys, axis=0)
  shuffled = np.random.default_rng([seed, _CURRICULUM_STREAM, 0]).permutation(len(members))
  return members[shuffled[np.argsort(difficulty[shuffled], kind="stable")]]


class _CurriculumPlan:
  """The batches of a curriculum (see `Curriculum`), each a function of its index alone."""

  def __init__(self, order, bucket_ids, buckets, curriculum: Curriculum, seed: int):
    self.curriculum, self.seed, self.total = curriculum, seed, len(order)
    self.batch_sizes = np.asarray([b.batch_size for b in buckets], np.int64)
    ranked = np.asarray(bucket_ids)[order]
    # Per bucket: its members easiest first, and their positions in `order`.
    self.members = [order[ranked == b] for b in range(len(buckets))]
    self.positions = [np.flatnonzero(ranked == b) for b in range(len(buckets))]
    # The smallest pool that fills a batch of some bucket.
    ends = [
      int(pos[size - 1]) + 1
      for pos, size in zip(self.positions, self.batch_sizes, strict=True)
      if len(pos) >= size
    ]
    if not ends:
      raise ValueError("A curriculum needs a bucket that holds a full batch of examples")
    self.min_pool = min(ends)

  def pool_size(self, index: int) -> int:
    """How many of the easiest examples batch `index` draws from."""
    wanted = math.ceil(round(self.curriculum.fraction(index) * self.total, 6))
    return min(self.total, max(self.min_pool, wanted))

  def __call__(self, index: int) -> tuple[int, np.ndarray]:
    pool = self.pool_size(index)
    available = np.asarray([np.searchsorted(pos, pool) for pos in self.positions], np.int64)
    full = np.cumsum(available // self.batch_sizes)
    rng = np.random.default_rng([self.seed, _CURRICULUM_STREAM, 1, index])
    b = int(np.searchsorted(full, rng.integers(full[-1]), side="right"))
    rows = rng.choice(int(available[b]), size=int(self.batch_sizes[b]), replace=False)
    return b, self.members[b][rows].astype(np.int64)


class _PlanSource:
  """Random access to the (epoch-concatenated) batch plan: grain's source.

  With a curriculum, its batches take the first `curriculum.steps` places; the plain
  plan's batches at those places are left out, those after them are unchanged.
  """

  def __init__(
    self, bucket_ids, buckets, cfg: PipelineConfig, curriculum_order=None, allow_empty=False
  ):
    """`allow_empty`: an empty plan is no error (an evaluation whose every utterance is
    decoded in windows)."""
    self._bucket_ids, self._buckets, self._cfg = bucket_ids, buckets, cfg
    self._cache: dict[int, list] = {}
    self._lock = threading.Lock()
    self.batches_per_epoch = len(self._epoch(0))
    if self.batches_per_epoch == 0 and not allow_empty:
      raise ValueError(
        "The batch plan is empty: no bucket gets a full batch "
        f"({np.bincount(bucket_ids[bucket_ids >= 0], minlength=len(buckets)).tolist()} "
        f"examples per bucket for batch sizes {[b.batch_size for b in buckets]})."
      )
    self.curriculum = None
    if cfg.curriculum.enabled:
      if curriculum_order is None:
        raise ValueError("A curriculum needs the examples' difficulty order")
      self.curriculum = _CurriculumPlan(
        np.asarray(curriculum_order, np.int64), bucket_ids, buckets, cfg.curriculum, cfg.seed
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
    index = int(index)
    if self.curriculum is not None and index < self._cfg.curriculum.steps:
      return self.curriculum(index)
    epoch, i = divmod(index, self.batches_per_epoch)
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


def utterance_language(words_lang: Sequence[str], language: str) -> str:
  """An example's language (the utterance LID's target): its words' dominant language, else
  its `language` field unless that is "mixed"; "" where neither says."""
  return dominant_language(words_lang, fallback="" if language == langs_lib.MIXED else language)


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
    self.phones = None  # A phonemes.PhoneInventory, set by Pipeline.
    self.stats: dict[str, int] = {}
    self._lock = threading.Lock()

  def _count(self, key: str, n: int = 1) -> None:
    with self._lock:
      self.stats[key] = self.stats.get(key, 0) + n

  def empty(self, bucket_index: int) -> dict[str, np.ndarray]:
    """This process's rows of a batch of the bucket, all padding."""
    bucket = self.buckets[bucket_index]
    per_process = bucket.batch_size // self.process_count
    batch = empty_batch(bucket, per_process, self.cfg.max_lang_runs)
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
    text = as_str(ex.get("text", ""))
    words = text.split()
    if not words:  # Task labels only: no token, so no CTC or attention target.
      self._count("no_text")
    words_lang = [as_str(w) for w in ex.get("words_lang", [])]
    if words_lang and len(words_lang) != len(words):
      raise ValueError(
        f"Example {as_str(ex.get('id', index))}: {len(words_lang)} word languages for "
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
    batch["id"][r] = as_str(ex.get("id", index))
    batch["text"][r] = text
    batch["speaker"][r] = as_str(ex.get("speaker", ""))
    batch["snr_db"][r] = float(ex.get("snr_db", schema.CLEAN_SNR_DB))

    word_lang_ids = [langs_lib.language_index(code) for code in words_lang]
    batch["words_lang"][r, : len(word_lang_ids)] = word_lang_ids
    runs = [lang for i, lang in enumerate(word_lang_ids) if i == 0 or lang != word_lang_ids[i - 1]]
    batch["lang_runs"][r, : min(len(runs), self.cfg.max_lang_runs)] = runs[: self.cfg.max_lang_runs]
    utt_lang = utterance_language(words_lang, as_str(ex.get("language", "")))
    batch["language"][r] = langs_lib.language_index(utt_lang) if utt_lang else NO_LABEL
    batch["code_switched"][r] = len(runs) > 1
    segments = np.asarray(ex.get("segments", np.zeros((0, 3))), np.int64).reshape(-1, 3)
    batch["frame_lang"][r] = frame_languages(segments, bucket.num_frames, self.feature_cfg)
    valid_frames = int(features_lib.num_frames(len(audio), self.feature_cfg))
    batch["frame_lang"][r, valid_frames:] = NO_LABEL

    intent = as_str(ex.get("intent", ""))
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
      batch["token_word"][r, :n] = token_word
      slots = ex.get("slots", {"type": [], "value": []})
      pairs = list(
        zip([as_str(t) for t in slots["type"]], [as_str(v) for v in slots["value"]], strict=True)
      )
      if pairs or intent:
        # One target a word, on its last piece: the piece inference reads
        # (`evaluate.slot_spans`), and with the word tagger every piece of a word
        # carries the word's distribution, so the loss counts each word once.
        word_tags = slot_word_tags(words, pairs)
        for p, w in enumerate(token_word):
          if p + 1 == n or token_word[p + 1] != w:
            batch["slot_tags"][r, p] = self.slot_ids.get(word_tags[w], NO_LABEL)
    if self.phones is not None:
      phone_ids = self.phones.encode(as_str(ex.get("phonemes", "")))
      if not phone_ids:
        self._count("no_phonemes")
      elif len(phone_ids) > batch["phones"].shape[1]:
        self._count("phones_too_long")  # Kept for the other losses; no phone target.
      else:
        batch["phones"][r, : len(phone_ids)] = phone_ids
        batch["phone_mask"][r, : len(phone_ids)] = True


def _phone_width(bucket: Bucket) -> int:
  return -(-(bucket.num_frames // 4 + 1) // 8) * 8


def empty_batch(bucket: Bucket, rows: int, max_lang_runs: int) -> dict[str, np.ndarray]:
  return {
    "audio": np.zeros((rows, bucket.max_samples), np.int16),  # [batch, samples]
    "audio_mask": np.zeros((rows, bucket.max_samples), bool),
    "example_mask": np.zeros((rows,), bool),  # False for padding / skipped rows.
    "index": np.full((rows,), NO_LABEL, np.int64),  # Index in the data source.
    "tokens": np.zeros((rows, bucket.max_tokens), np.int32),  # [batch, tokens], 0 = pad
    "token_mask": np.zeros((rows, bucket.max_tokens), bool),
    "token_lang": np.full((rows, bucket.max_tokens), NO_LABEL, np.int32),
    # BIO tag of each word, on the word's last token (-1 elsewhere).
    "slot_tags": np.full((rows, bucket.max_tokens), NO_LABEL, np.int32),
    "token_word": np.full((rows, bucket.max_tokens), NO_LABEL, np.int32),  # Word of each token.
    # Phone ids (moe_asr.data.phonemes, word boundaries included), 0 = pad; phone CTC targets.
    # As many as encoder frames (40 ms; more could not align), a multiple of 8.
    "phones": np.zeros((rows, _phone_width(bucket)), np.int32),
    "phone_mask": np.zeros((rows, _phone_width(bucket)), bool),
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
    snr_db: np.ndarray | None = None,
    snr_cache: str | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    phones=None,
  ):
    """`phones`: a `phonemes.PhoneInventory` turning the examples' stored `phonemes` into
    `phones` targets (phone CTC); None leaves them empty."""
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
    # Lengths, and the SNRs that a curriculum by SNR ranks by, in one pass over the source.
    wanted = {}
    if lengths is None:
      wanted["lengths"] = length_cache
    if snr_db is None and cfg.curriculum.uses_snr:
      wanted["snr_db"] = snr_cache
    scanned = example_columns(source, wanted) if wanted else {}
    self.lengths = np.asarray(scanned.get("lengths", lengths))
    snr_db = scanned.get("snr_db", snr_db)
    self.snr_db = None if snr_db is None else np.asarray(snr_db, np.float32)
    self.bucket_ids = assign_buckets(self.lengths, self.buckets, cfg.long_policy)
    if vocab is None:
      from moe_asr.data.synth import grammar

      vocab = Vocabularies(grammar.INTENTS, grammar.SLOT_TYPES)
    self.vocab = vocab
    order = None
    if cfg.curriculum.enabled:
      order = curriculum_order(
        self.bucket_ids, cfg.curriculum.by, seed=cfg.seed, lengths=self.lengths, snr_db=self.snr_db
      )
    over = self.lengths > self.buckets[-1].max_samples
    # Utterances an evaluation decodes in windows (in source order); none in training.
    windowed = cfg.long_policy == "window" and not cfg.drop_remainder
    self.long_examples = np.flatnonzero(over) if windowed else np.zeros((0,), np.int64)
    self._plan = _PlanSource(
      self.bucket_ids, self.buckets, cfg, order, allow_empty=bool(len(self.long_examples))
    )
    self._load = _LoadBatch(
      source, self.buckets, cfg, tokenizer, vocab, self.feature_cfg, process_index, process_count
    )
    self._load.phones = phones
    too_long = int(np.sum(over))
    self.plan_stats = {
      "examples": len(self.lengths),
      "too_long": too_long,
      "empty": int(np.sum(self.lengths <= 0)),
      "per_bucket": np.bincount(
        self.bucket_ids[self.bucket_ids >= 0], minlength=len(self.buckets)
      ).tolist(),
      "batches_per_epoch": self._plan.batches_per_epoch,
    }
    if self._plan.curriculum is not None:
      curriculum = self._plan.curriculum
      # The easiest examples the first batch draws from: at least a full batch of a bucket.
      self.plan_stats["curriculum_start_examples"] = curriculum.pool_size(0)
      logging.info(
        "Curriculum by %s over %d batches: from the easiest %d of %d examples",
        cfg.curriculum.by,
        cfg.curriculum.steps,
        curriculum.pool_size(0),
        curriculum.total,
      )
    if too_long:
      logging.warning(
        "%d of %d utterances are longer than the last bucket (%.1f s): %s",
        too_long,
        len(self.lengths),
        self.buckets[-1].max_samples / schema.SAMPLE_RATE,
        "decoded in windows"
        if windowed
        else f"policy {cfg.long_policy!r}"
        + (" (skipped in training)" if cfg.long_policy == "window" else ""),
      )

  @property
  def stats(self) -> dict[str, int]:
    """Counts of rows skipped or cut while loading (so far, in this process)."""
    return dict(self._load.stats)

  def empty_batch(self, bucket_index: int) -> dict[str, np.ndarray]:
    """This process's rows of a batch of bucket `bucket_index`, all padding (the arrays and
    shapes of the pipeline's batches, so that a step compiled for them takes it)."""
    return self._load.empty(bucket_index)

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
