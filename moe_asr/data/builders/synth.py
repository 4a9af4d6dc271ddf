"""TFDS builder `moe_asr_synth`: the embedded corpus written as array_record.

One builder config per corpus preset in `moe_asr/configs/corpus/` (`base.py`
excluded), so that after `import moe_asr.data.builders`,
`tfds.builder("moe_asr_synth/tiny", data_dir=DIR)` loads what
`moe-asr corpus build --config tiny --data-dir DIR` built.
A config file elsewhere is built through `builder_from_config_file`.

Every example carries its `phonemes` (`moe_asr.data.phonemes`). The phone
inventory of the built corpus (every unit of every split) is in
`builder.info.metadata["phone_inventory"]` and, once `prepare` has run, in
`phones.json` beside the data, next to `tokenizer.model`; `phone_inventory(builder)`
loads it.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import ml_collections
import tensorflow_datasets as tfds

from moe_asr import config_lib
from moe_asr.data import languages as langs_lib
from moe_asr.data import phonemes, schema
from moe_asr.data.synth import corpus, grammar


class MoeAsrSynthConfig(tfds.core.BuilderConfig):
  """A builder config wrapping a corpus config (`moe_asr/configs/corpus/*.py`)."""

  def __init__(self, *, corpus_config: ml_collections.ConfigDict, **kwargs):
    plain = corpus.to_plain(corpus_config)
    digest = hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:12]
    super().__init__(
      name=corpus_config.name,
      description=f"{corpus_config.description} (corpus config sha256 {digest})",
      **kwargs,
    )
    self.corpus_config = corpus_config
    self.digest = digest


def _discover_configs() -> list[MoeAsrSynthConfig]:
  folder = config_lib.config_dir() / "corpus"
  configs = []
  if folder.is_dir():
    for path in sorted(folder.glob("*.py")):
      if path.stem in ("base", "__init__"):
        continue
      configs.append(MoeAsrSynthConfig(corpus_config=config_lib.load_config(path)))
  return configs


class MoeAsrSynth(tfds.core.GeneratorBasedBuilder):
  """Multilingual, code-switched spoken commands synthesised with espeak-ng."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
    "1.0.0": "First release.",
    "1.1.0": "A `phonemes` feature (espeak-ng IPA per word, `moe_asr.data.phonemes`) on "
    "every example; the phone inventory in the metadata (`phone_inventory`) and in "
    "phones.json.",
  }
  BUILDER_CONFIGS = _discover_configs()

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config.corpus_config
    metadata = tfds.core.MetadataDict(
      corpus_config=corpus.to_plain(cfg),
      corpus_config_digest=self.builder_config.digest,
      language_codes=list(langs_lib.LANGUAGE_CODES),
      languages=list(cfg.languages),
      heldout_language=cfg.heldout_language,
      intents=list(grammar.INTENTS),
      slot_types=list(grammar.SLOT_TYPES),
      bias_phrases=corpus.bias_phrases(cfg),
      bias_entities=[list(e) for e in corpus.bias_entities(cfg)],
    )
    return self.dataset_info_from_configs(
      features=schema.features(),
      supervised_keys=("audio", "text"),
      metadata=metadata,
      # Keep generation order: example i of a split is `{split}-{i:06d}`.
      disable_shuffling=True,
      homepage="https://github.com/espeak-ng/espeak-ng",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download: the corpus is synthesised.
    corpus.validate_config(self.builder_config.corpus_config)
    self._phone_units: set[str] = set()
    return {
      split: self._generate_examples(split)
      for split, spec in corpus.split_specs(self.builder_config.corpus_config).items()
      if spec.size > 0
    }

  def _generate_examples(self, split: str):
    for key, example in corpus.generate_split(self.builder_config.corpus_config, split):
      self._phone_units.update(phonemes.split_units(example["phonemes"]))
      yield key, example
    # The splits are written one after another: after the last one the metadata
    # holds the units of all of them, and is saved with the dataset info.
    inventory = phonemes.PhoneInventory(self._phone_units)
    self.info.metadata["phone_inventory"] = json.loads(inventory.to_json())


def builder_from_config_file(
  path: str | pathlib.Path, data_dir: str | pathlib.Path, overrides=()
) -> MoeAsrSynth:
  """The builder of a corpus config: a preset name (`tiny`) or a file (registered or not)."""
  cfg = config_lib.load_config(path, overrides, kind="corpus")
  known = {c.name: c for c in MoeAsrSynth.BUILDER_CONFIGS}
  builder_config = MoeAsrSynthConfig(corpus_config=cfg)
  if cfg.name in known and known[cfg.name].digest != builder_config.digest:
    # Same name, different content: keep them apart on disk.
    raise ValueError(
      f"Corpus config {path} is named {cfg.name!r} like the corpus preset {cfg.name!r} but "
      "differs from it; give it another `name`."
    )
  if cfg.name in known:
    return MoeAsrSynth(config=cfg.name, data_dir=str(data_dir))
  return MoeAsrSynth(config=builder_config, data_dir=str(data_dir))


def check_built(builder: tfds.core.DatasetBuilder) -> dict[str, Any]:
  """Returns the metadata of a built synth dataset after checking its config digest."""
  metadata = dict(builder.info.metadata or {})
  want = getattr(builder.builder_config, "digest", None)
  have = metadata.get("corpus_config_digest")
  if want and have and want != have:
    raise ValueError(
      f"Dataset at {builder.data_dir} was built from another version of corpus config "
      f"{builder.builder_config.name!r} (digest {have}, config now {want}); rebuild it "
      "into a new --data-dir."
    )
  return metadata


def tokenizer_path(builder: tfds.core.DatasetBuilder) -> pathlib.Path:
  """Where the tokenizer trained on a built corpus lives (beside its data)."""
  return pathlib.Path(str(builder.data_dir)) / "tokenizer.model"


def phones_path(builder: tfds.core.DatasetBuilder) -> pathlib.Path:
  """Where the phone inventory of a built corpus lives (beside its data)."""
  return pathlib.Path(str(builder.data_dir)) / "phones.json"


def phone_inventory(builder: tfds.core.DatasetBuilder) -> phonemes.PhoneInventory:
  """The phone inventory of a built corpus: `phones.json`, else the dataset metadata.

  Raises:
    ValueError: if the dataset has neither (built by a version without phonemes).
  """
  path = phones_path(builder)
  if path.exists():
    return phonemes.PhoneInventory.load(path)
  stored = (builder.info.metadata or {}).get("phone_inventory")
  if stored is None:
    raise ValueError(f"Dataset at {builder.data_dir} has no phone inventory; rebuild it.")
  return phonemes.PhoneInventory.from_json(stored)


def prepare(builder: MoeAsrSynth, *, vocab_size: int | None = None):
  """Builds the corpus if missing, trains its tokenizer on the train text and saves both.

  The phone inventory goes to `phones_path(builder)`, the tokenizer to
  `tokenizer_path(builder)`, beside the data.

  Args:
    builder: a `moe_asr_synth` builder.
    vocab_size: tokenizer vocabulary size; default from the corpus config.

  Returns:
    The `moe_asr.data.tokenizer.Tokenizer` saved beside the data.
  """
  from moe_asr.data import tokenizer as tokenizer_lib

  builder.download_and_prepare(file_format="array_record")
  check_built(builder)
  if not phones_path(builder).exists():
    stored = (builder.info.metadata or {}).get("phone_inventory")
    if stored is not None:
      phonemes.PhoneInventory.from_json(stored).save(phones_path(builder))
  path = tokenizer_path(builder)
  if path.exists():
    return tokenizer_lib.Tokenizer.load(path)
  source = builder.as_data_source(split="train")
  texts = [t.decode() if isinstance(t, bytes) else str(t) for t in (ex["text"] for ex in source)]
  cfg = builder.builder_config.corpus_config
  tok = tokenizer_lib.Tokenizer.train(texts, vocab_size=vocab_size or cfg.tokenizer_vocab_size)
  tmp = path.with_suffix(".model.tmp")
  tok.save(tmp)
  tmp.replace(path)  # Atomic: a killed build never leaves half a tokenizer.
  return tok
