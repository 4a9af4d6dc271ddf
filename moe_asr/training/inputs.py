"""What a run reads: its dataset splits, tokenizer, label vocabularies and pipelines.

`config.data` names a TFDS dataset of the common schema (the embedded
`moe_asr_synth/<corpus>`, a `local_manifest/<name>`) or a catalog adapter
(`librispeech`, `common_voice`, ...). The tokenizer comes from
`config.data.tokenizer` when set, else from beside the embedded corpus, else it
is trained on the train split's text and kept in the workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
from collections.abc import Mapping

import ml_collections
import numpy as np

from moe_asr.data import features as features_lib
from moe_asr.data import pipeline as pipeline_lib
from moe_asr.data import schema
from moe_asr.data import tokenizer as tokenizer_lib
from moe_asr.evaluation import report as report_lib

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class RunData:
  """The dataset side of a run."""

  tokenizer: tokenizer_lib.Tokenizer
  vocab: pipeline_lib.Vocabularies
  metadata: dict  # Dataset metadata (bias phrases of the embedded corpus, ...).

  @property
  def phones(self):
    """The dataset's phone inventory (`phonemes.PhoneInventory`), or None."""
    stored = self.metadata.get("phone_inventory")
    if not stored:
      return None
    from moe_asr.data import phonemes

    return phonemes.PhoneInventory.from_json(stored)

  @property
  def num_intents(self) -> int:
    return len(self.vocab.intents)

  @property
  def num_slot_tags(self) -> int:
    return len(self.vocab.slot_tags) if self.vocab.intents else 0


def _synth_builder(cfg: ml_collections.ConfigDict):
  if not cfg.data.name.startswith("moe_asr_synth/"):
    return None
  import tensorflow_datasets as tfds

  import moe_asr.data.builders  # noqa: F401
  from moe_asr.data.builders import synth

  builder = tfds.builder(cfg.data.name, data_dir=cfg.data.data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
      f"Dataset {cfg.data.name} is not built in {cfg.data.data_dir!r}; run `moe-asr corpus build "
      f"--config {cfg.data.name.split('/')[1]} --data-dir {cfg.data.data_dir}`"
    )
  synth.check_built(builder)
  return builder


RUN_DATA_FILE = "run_data.json"  # The run's label vocabularies and dataset metadata.


def save_run_data(data: RunData, workdir: str | pathlib.Path) -> None:
  """Keeps the data side of a run in its workdir (`tokenizer.model`, `run_data.json`).

  With them, `transcribe` (and anything else that reads no split) works from the workdir
  alone, also where the training dataset is not (another machine, a shared checkpoint).
  Called by the primary process; each file is written atomically, and only if it changed.
  """
  workdir = pathlib.Path(workdir)
  files = {
    "tokenizer.model": data.tokenizer.to_bytes(),
    RUN_DATA_FILE: json.dumps(
      {
        "intents": list(data.vocab.intents),
        "slot_types": list(data.vocab.slot_types),
        "metadata": data.metadata,
      },
      ensure_ascii=False,
      indent=1,
    ).encode("utf-8"),
  }
  for name, content in files.items():
    path = workdir / name
    if not path.exists() or path.read_bytes() != content:
      report_lib.write_atomic(path, content)


def _saved_run_data(workdir: pathlib.Path) -> dict | None:
  path = workdir / RUN_DATA_FILE
  if not path.exists() or not (workdir / "tokenizer.model").exists():
    return None
  return json.loads(path.read_text("utf-8"))


def load_run_data(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> RunData:
  """Tokenizer, label vocabularies and dataset metadata of a run config.

  From the dataset (and the run's own tokenizer, if it has one); where the dataset is not
  built here, from what training kept in the workdir (`save_run_data`).
  """
  try:
    builder = _synth_builder(cfg)
  except FileNotFoundError:
    saved = _saved_run_data(pathlib.Path(workdir))
    if saved is None:
      raise
    _LOG.warning(
      "Dataset %s is not in %r: vocabularies and metadata from %s",
      cfg.data.name,
      cfg.data.data_dir,
      pathlib.Path(workdir) / RUN_DATA_FILE,
    )
    return RunData(
      tokenizer_lib.Tokenizer.load(pathlib.Path(workdir) / "tokenizer.model"),
      pipeline_lib.Vocabularies(tuple(saved["intents"]), tuple(saved["slot_types"])),
      saved["metadata"],
    )
  metadata = dict(builder.info.metadata or {}) if builder is not None else {}
  if builder is None and cfg.data.name.startswith("local_manifest/"):
    import tensorflow_datasets as tfds

    import moe_asr.data.builders  # noqa: F401

    local = tfds.builder(cfg.data.name, data_dir=cfg.data.data_dir)
    stored = dict(local.info.metadata or {}) if local.is_prepared() else {}
    for key in ("phone_inventory", "intents", "slot_types"):
      if stored.get(key):
        metadata[key] = stored[key]
  own = pathlib.Path(workdir) / "tokenizer.model"  # A tokenizer trained for this run.
  vocab_size = cfg.data.get("vocab_size", 0)
  if cfg.data.get("tokenizer"):
    tokenizer = tokenizer_lib.Tokenizer.load(cfg.data.tokenizer)
  elif own.exists():
    tokenizer = tokenizer_lib.Tokenizer.load(own)
  elif builder is not None and not vocab_size:
    from moe_asr.data.builders import synth

    tokenizer = tokenizer_lib.Tokenizer.load(synth.tokenizer_path(builder))
  else:
    vocab_size = vocab_size or 1000
    # Every training dataset's text: a mixture's tokenizer spells all of its languages.
    texts = []
    for part, split in training_parts(cfg):
      _LOG.info("Tokenizer text from %s:%s", part.data.name, split)
      source = split_source(part, split)
      texts += [pipeline_lib.as_str(source[i]["text"]) for i in range(len(source))]
    _LOG.info("Training a tokenizer of %d pieces on %d texts", vocab_size, len(texts))
    tokenizer = tokenizer_lib.Tokenizer.train(
      texts, vocab_size=vocab_size, character_coverage=cfg.data.get("character_coverage", 0.9995)
    )
    # Every process trains the same model (same text, one thread) and writes it atomically.
    report_lib.write_atomic(own, tokenizer.to_bytes())
  return RunData(tokenizer, task_vocabularies(cfg, workdir, metadata), metadata)


def task_vocabularies(
  cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path, metadata: Mapping
) -> pipeline_lib.Vocabularies:
  """The run's intent and slot vocabularies, whatever the data's source.

  In order: the run's own (`run_data.json` in the workdir: what its checkpoints were
  built with), the dataset's metadata (the embedded corpus, a `local_manifest` built
  since 1.1.0), else the labels of the train split, scanned once (and cached beside the
  split's lengths). Empty where the data has no task labels (no task heads).
  """
  saved = _saved_run_data(pathlib.Path(workdir))
  if saved is not None and (saved.get("intents") or saved.get("slot_types")):
    return pipeline_lib.Vocabularies(tuple(saved["intents"]), tuple(saved["slot_types"]))
  if "intents" in metadata or "slot_types" in metadata:
    return pipeline_lib.Vocabularies(
      tuple(metadata.get("intents", ())), tuple(metadata.get("slot_types", ()))
    )
  cache = _example_cache(cfg, cfg.data.train_split, "task_vocab")
  cache = None if cache is None else pathlib.Path(cache).with_suffix(".json")
  if cache is not None and cache.exists():
    stored = json.loads(cache.read_text("utf-8"))
  else:
    _LOG.info("Scanning %s:%s for intent and slot labels", cfg.data.name, cfg.data.train_split)
    stored = scan_task_labels(split_source(cfg, cfg.data.train_split))
    if cache is not None:
      report_lib.write_atomic(cache, json.dumps(stored))
  return pipeline_lib.Vocabularies(tuple(stored["intents"]), tuple(stored["slot_types"]))


def scan_task_labels(source) -> dict[str, list[str]]:
  """{"intents": [...], "slot_types": [...]} (sorted) of the labels in a data source."""
  intents, slot_types = set(), set()
  for i in range(len(source)):
    ex = source[i]
    intent = pipeline_lib.as_str(ex.get("intent", ""))
    if intent:
      intents.add(intent)
    slots = ex.get("slots") or {}
    slot_types.update(pipeline_lib.as_str(t) for t in slots.get("type", ()))
  slot_types.discard("")
  return {"intents": sorted(intents), "slot_types": sorted(slot_types)}


def split_source(cfg: ml_collections.ConfigDict, split: str):
  """The random-access source of one split."""
  return pipeline_lib.data_source(
    cfg.data.name, split, data_dir=cfg.data.data_dir, config=cfg.data.config or None
  )


def _example_cache(
  cfg: ml_collections.ConfigDict, split: str, column: str = "lengths"
) -> str | None:
  """Cache file of a per-example column (`pipeline.EXAMPLE_COLUMNS`) of a split."""
  if not cfg.data.data_dir or "://" in str(cfg.data.data_dir):
    return None
  name = cfg.data.name.replace("/", "_") + (f"_{cfg.data.config}" if cfg.data.config else "")
  suffix = "" if column == "lengths" else f".{column}"
  return str(pathlib.Path(cfg.data.data_dir) / "lengths" / f"{name}_{split}{suffix}.npy")


def make_pipeline(
  cfg: ml_collections.ConfigDict,
  split: str,
  data: RunData,
  *,
  train: bool,
  process_index: int,
  process_count: int,
  seed: int | None = None,
  overrides: Mapping | None = None,
) -> pipeline_lib.Pipeline:
  """A training pipeline (shuffled, repeating) or an evaluation one (one ordered pass).

  An evaluation pipeline scores every utterance: when the split holds clips longer
  than the last training bucket, one more bucket (the longest clip, rounded up to
  0.5 s, at the last bucket's batch size) is added for it (one more compile) instead
  of skipping them.

  A training pipeline follows `config.data.curriculum` (easy examples first); an evaluation
  one never does.

  With `config.data.mixture` a training pipeline is a `MixturePipeline` of its datasets
  (and `split` is not read).
  """
  if train and cfg.data.get("mixture"):
    return make_mixture(
      cfg,
      data,
      process_index=process_index,
      process_count=process_count,
      seed=seed,
      overrides=overrides,
    )
  source = split_source(cfg, split)
  overrides = dict(overrides or {})
  curriculum = pipeline_lib.Curriculum.from_config(
    overrides.get("curriculum", cfg.data.get("curriculum")) if train else None
  )
  overrides["curriculum"] = curriculum
  columns = {"lengths": _example_cache(cfg, split)}
  if curriculum.uses_snr:
    columns["snr_db"] = _example_cache(cfg, split, "snr_db")
  scanned = pipeline_lib.example_columns(source, columns)
  lengths = scanned["lengths"]
  if not train and "buckets" not in overrides and len(lengths):
    buckets = tuple(tuple(b) for b in cfg.data.buckets)
    longest = float(np.max(lengths)) / schema.SAMPLE_RATE
    if longest > buckets[-1][0]:
      overrides["buckets"] = buckets + ((math.ceil(longest * 2) / 2, buckets[-1][1]),)
  pcfg = pipeline_lib.PipelineConfig.from_config(
    cfg.data,
    seed=cfg.seed if seed is None else seed,
    shuffle=train,
    drop_remainder=train,
    num_epochs=None if train else 1,
    **overrides,
  )
  phones = None
  if cfg.model.get("phone_ctc") and cfg.model.phone_ctc.layers:
    phones = data.phones
    if phones is None:
      _LOG.warning("%s has no phone inventory: the phone CTC has no targets", cfg.data.name)
    elif phones.size > cfg.model.phone_ctc.vocab_size:
      raise ValueError(
        f"{cfg.data.name} has {phones.size} phone ids, more than model.phone_ctc.vocab_size="
        f"{cfg.model.phone_ctc.vocab_size}"
      )
  return pipeline_lib.Pipeline(
    source,
    pcfg,
    phones=phones,
    tokenizer=data.tokenizer,
    vocab=data.vocab,
    feature_cfg=features_lib.FeatureConfig.from_config(cfg.model.features),
    lengths=lengths,
    snr_db=scanned.get("snr_db"),
    process_index=process_index,
    process_count=process_count,
  )


def mixture_entries(mixture) -> list[tuple[str, str, float, str]]:
  """`config.data.mixture` as (name, split, weight, data_dir) tuples.

  Each entry is (name, split, weight) or (name, split, weight, data_dir); an empty name or
  data_dir means `config.data.name` / `config.data.data_dir`.
  """
  entries = []
  for entry in mixture:
    entry = tuple(entry)
    if len(entry) not in (3, 4):
      raise ValueError(
        f"config.data.mixture entries are (name, split, weight[, data_dir]), got {entry!r}"
      )
    name, split, weight = entry[:3]
    data_dir = entry[3] if len(entry) == 4 else ""
    if not isinstance(weight, int | float) or not weight > 0:
      raise ValueError(f"config.data.mixture weight must be > 0, got {entry!r}")
    entries.append((str(name), str(split), float(weight), str(data_dir)))
  if not entries:
    raise ValueError("config.data.mixture is empty")
  return entries


def training_parts(cfg: ml_collections.ConfigDict) -> list[tuple[ml_collections.ConfigDict, str]]:
  """(config, split) of each dataset training reads: the mixture's entries (each config's
  `data.name` and `data_dir` its own), else `data.train_split` of `data.name`."""
  if not cfg.data.get("mixture"):
    return [(cfg, cfg.data.train_split)]
  parts = []
  for name, split, _, data_dir in mixture_entries(cfg.data.mixture):
    part = ml_collections.ConfigDict(cfg.to_dict())
    part.data.mixture = ()
    part.data.name = name or cfg.data.name
    part.data.data_dir = data_dir or cfg.data.data_dir
    parts.append((part, split))
  return parts


class MixturePipeline:
  """Training batches drawn from several pipelines in proportion to their weights.

  Each dataset is its own bucketed, shuffled, repeating `Pipeline` (the run's buckets, so
  every batch has a shape the step was compiled for); `grain.MapDataset.mix` interleaves
  their batches deterministically by weight, so batch i of the mixture is always the same
  batch, and the iterator's state (a single position) resumes the exact sequence.
  """

  def __init__(self, pipelines, weights, names):
    self.pipelines, self.weights, self.names = list(pipelines), list(weights), list(names)
    self.cfg = self.pipelines[0].cfg

  @property
  def stats(self) -> dict[str, int]:
    total: dict[str, int] = {}
    for p in self.pipelines:
      for k, v in p.stats.items():
        total[k] = total.get(k, 0) + v
    return total

  def example_batches(self) -> dict[int, dict[str, np.ndarray]]:
    shapes = {}
    for p in self.pipelines:
      shapes.update(p.example_batches())
    return shapes

  def empty_batch(self, bucket_index: int) -> dict[str, np.ndarray]:
    return self.pipelines[0].empty_batch(bucket_index)

  @property
  def batches_per_epoch(self) -> int:
    return sum(p.batches_per_epoch for p in self.pipelines)

  def dataset(self):
    import grain

    return grain.MapDataset.mix([p.dataset() for p in self.pipelines], self.weights)

  def __iter__(self):
    import grain

    read = grain.ReadOptions(
      num_threads=self.cfg.num_threads, prefetch_buffer_size=self.cfg.prefetch
    )
    return iter(self.dataset().to_iter_dataset(read))


def make_mixture(
  cfg: ml_collections.ConfigDict,
  data: RunData,
  *,
  process_index: int,
  process_count: int,
  seed: int | None = None,
  overrides: Mapping | None = None,
) -> MixturePipeline:
  """The `MixturePipeline` of `config.data.mixture` (tokenizer and labels from `data`)."""
  pipelines, weights, names = [], [], []
  base_seed = cfg.seed if seed is None else seed
  weighted = zip(training_parts(cfg), mixture_entries(cfg.data.mixture), strict=True)
  for k, ((part, split), (_, _, weight, _)) in enumerate(weighted):
    pipelines.append(
      make_pipeline(
        part,
        split,
        data,
        train=True,
        process_index=process_index,
        process_count=process_count,
        seed=base_seed + k,
        overrides=overrides,
      )
    )
    weights.append(weight)
    names.append(f"{part.data.name}:{split}")
  return MixturePipeline(pipelines, weights, names)


@functools.cache
def _dataset_prepared(name: str, data_dir: str) -> bool | None:
  """Whether TFDS dataset `name` is built in `data_dir` (None: not a TFDS name it knows)."""
  import tensorflow_datasets as tfds

  import moe_asr.data.builders  # noqa: F401  (registers the project's builders)

  try:
    return tfds.builder(name, data_dir=data_dir).is_prepared()
  except Exception:  # An unregistered name or config: the pipeline's own error says more.
    return None


def check_dataset(cfg: ml_collections.ConfigDict) -> None:
  """Raises FileNotFoundError naming the dataset and folder when it is not built there.

  (TFDS's own error for a missing dataset blames the file format.)
  """
  from moe_asr.data import catalog

  name, data_dir = cfg.data.name, str(cfg.data.data_dir)
  if name.split("/")[0] in catalog.ADAPTERS or "://" in data_dir:
    return
  if _dataset_prepared(name, os.path.abspath(data_dir)) is False:
    raise FileNotFoundError(
      f"Dataset {name} is missing: it is not built in data_dir {os.path.abspath(data_dir)!r}. "
      "Build it there (moe-asr corpus build, moe-asr data import) or point "
      "--config.data.data_dir at the folder that holds it."
    )
