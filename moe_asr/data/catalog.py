"""Adapters from TFDS catalog speech datasets to the common example schema.

`load(name, split, config=...)` opens a catalog dataset with
`tfds.data_source` and returns a random-access `SchemaDataSource` whose items
are schema examples (docs/design.md §3): int16 audio at 16 kHz, transcript normalised
with `moe_asr.data.text.normalize`, `language`, `words_lang = [language] *
num_words`, no segments or slots, and `snr_db = inf`. The conversion is lazy,
one example at a time, so the grain pipeline reads catalog sets exactly like
the embedded corpus.

Supported sets (`ADAPTERS`), with the fields they read:

- `xtreme_s` (FLEURS), config `fleurs.<lang>` (`fleurs.hi_in`, `fleurs.all`):
  `audio` at 16 kHz; text from `raw_transcription`; language from the config
  (from each example's `language` for `fleurs.all`); id from the file name;
  no speaker ids.
- `common_voice`, config = language (`en`, `zh-CN`): `voice`, 48 kHz mp3 clips
  (the TFDS feature states no rate); text `sentence`; speaker `client_id`.
- `librispeech`, config `default` or `lazy_decode` (encoded flac bytes):
  `speech` at 16 kHz; `text`; speaker `speaker_id`; `id`; English.
- `speech_commands`: `audio` at 16 kHz; the keyword (`label`) as text and as
  intent; English; no speaker ids.
- `spoken_digit`: `audio` at 8 kHz, resampled; the digit's word as text;
  speaker and id from the file name (`7_jackson_32.wav`); English.

Sets without ids of their own get `{name}/{config}/{split}/{index}` from
`SchemaDataSource`.

Languages: catalog language tags are mapped to the codes of
`moe_asr.data.languages` by their first subtag (`hi_in` -> `hi`, `es_419` ->
`es`, `cmn_hans_cn` -> `cmn`), with Chinese tags resolved by region (`zh-CN`,
`zh-TW` -> `cmn`; `zh-HK` -> `yue`). A language that `moe_asr.data.languages`
does not list raises a ValueError naming it: add it to the registry first, so
that its index means the same thing everywhere.

Speech Commands' `_silence_` and `_unknown_` classes have no known words: their
text is "" (the intent keeps the class), so ASR training should filter them out.
FLEURS' FLoRes sentences go through our own normaliser (from the raw text) so
that every source is normalised the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from moe_asr.data import audio_io, languages, schema, text

# Keyword classes of the TFDS `speech_commands` label feature, in label order.
SPEECH_COMMANDS_LABELS = (
  "down",
  "go",
  "left",
  "no",
  "off",
  "on",
  "right",
  "stop",
  "up",
  "yes",
  "_silence_",
  "_unknown_",
)
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Tags whose first subtag alone does not give the language (lower case, "_").
_TAG_ALIASES = {"zh_cn": "cmn", "zh_tw": "cmn", "zh_sg": "cmn", "zh_hk": "yue", "zh": "cmn"}
# FLEURS' `language` field holds English names; ours use the same names.
_NAME_TO_CODE = {lang.name: lang.code for lang in languages.LANGUAGES.values()}


def catalog_language(tag: str) -> str:
  """Maps a catalog language tag (`hi_in`, `cmn_hans_cn`, `zh-CN`, `en`) to our code.

  Raises:
    ValueError: naming the tag, when the language is not in
      `moe_asr.data.languages`.
  """
  norm = tag.strip().lower().replace("-", "_")
  code = next(
    (c for alias, c in _TAG_ALIASES.items() if norm == alias or norm.startswith(alias + "_")),
    norm.split("_")[0],
  )
  if code not in languages.LANGUAGES:
    raise ValueError(
      f"Catalog language {tag!r} (code {code!r}) is not in moe_asr.data.languages "
      f"(known: {', '.join(languages.LANGUAGE_CODES)}); add it to the registry first."
    )
  return code


def _str(value: Any) -> str:
  """A text feature as str: TFDS gives bytes from as_numpy and str from data sources."""
  if isinstance(value, np.ndarray):
    value = value.item()
  if isinstance(value, bytes):
    return value.decode("utf-8")
  return str(value)


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


@dataclasses.dataclass(frozen=True)
class Adapter:
  """How one TFDS catalog dataset maps to the schema.

  Attributes:
    audio_key: the dataset's audio feature.
    sample_rate: rate of that audio where the catalog feature does not state
      one (or for `to_schema` calls without a data source).
    default_config: config used when none is given; None for sets without
      configs, or where a config must be chosen.
    needs_config: the set has configs and one must be named.
    config_language: config name -> language code, or None where the
      language comes from each example; raises ValueError for unknown ones.
    fields: (example, config language) -> text, language, intent, speaker and
      the example's own id ("" where it has none).
  """

  audio_key: str
  sample_rate: int
  default_config: str | None
  needs_config: bool
  config_language: Callable[[str | None], str | None]
  fields: Callable[[Mapping[str, Any], str | None], dict[str, str]]


def _fleurs_language(config: str | None) -> str | None:
  if not config or not config.startswith("fleurs."):
    raise ValueError(
      f"xtreme_s configs are 'fleurs.<language>' (e.g. fleurs.hi_in), got {config!r}."
    )
  tag = config.split(".", 1)[1]
  return None if tag == "all" else catalog_language(tag)


def _fleurs_fields(ex: Mapping[str, Any], language: str | None) -> dict[str, str]:
  if language is None:  # fleurs.all: the example names its language in English.
    name = _str(ex["language"])
    if name not in _NAME_TO_CODE:
      raise ValueError(
        f"FLEURS language {name!r} is not in moe_asr.data.languages "
        f"(known: {', '.join(_NAME_TO_CODE)})."
      )
    language = _NAME_TO_CODE[name]
  raw = _str(ex.get("raw_transcription", "")) or _str(ex["transcription"])
  stem = _stem(_str(ex["path"])) if "path" in ex else ""
  return {"text": raw, "language": language, "intent": "", "speaker": "", "id": stem}


def _common_voice_fields(ex: Mapping[str, Any], language: str | None) -> dict[str, str]:
  return {
    "text": _str(ex["sentence"]),
    "language": language,
    "intent": "",
    "speaker": _str(ex.get("client_id", "")),
    "id": "",
  }


def _librispeech_fields(ex: Mapping[str, Any], language: str | None) -> dict[str, str]:
  return {
    "text": _str(ex["text"]),
    "language": language,
    "intent": "",
    "speaker": str(int(ex["speaker_id"])),
    "id": _str(ex["id"]),
  }


def _label_name(label: Any, names: Sequence[str]) -> str:
  if isinstance(label, (str, bytes)):
    return _str(label)
  return names[int(label)]


def _speech_commands_fields(ex: Mapping[str, Any], language: str | None) -> dict[str, str]:
  label = _label_name(ex["label"], SPEECH_COMMANDS_LABELS)
  keyword = "" if label.startswith("_") else label
  return {"text": keyword, "language": language, "intent": label, "speaker": "", "id": ""}


def _spoken_digit_fields(ex: Mapping[str, Any], language: str | None) -> dict[str, str]:
  digit = _label_name(ex["label"], [str(i) for i in range(10)])
  # File names are `{digit}_{speaker}_{take}.wav`.
  stem = _stem(_str(ex.get("audio/filename", "")))
  parts = stem.split("_")
  speaker = parts[1] if len(parts) == 3 else ""
  return {
    "text": DIGIT_WORDS[int(digit)],
    "language": language,
    "intent": "",
    "speaker": speaker,
    "id": stem,
  }


def _fixed(code: str) -> Callable[[str | None], str]:
  return lambda config: code


ADAPTERS: dict[str, Adapter] = {
  "xtreme_s": Adapter("audio", 16_000, None, True, _fleurs_language, _fleurs_fields),
  # Common Voice clips are 48 kHz mp3; TFDS's feature does not state a rate.
  "common_voice": Adapter("voice", 48_000, "en", True, catalog_language, _common_voice_fields),
  "librispeech": Adapter("speech", 16_000, "default", True, _fixed("en"), _librispeech_fields),
  "speech_commands": Adapter("audio", 16_000, None, False, _fixed("en"), _speech_commands_fields),
  "spoken_digit": Adapter("audio", 8_000, None, False, _fixed("en"), _spoken_digit_fields),
}


def _adapter(name: str) -> Adapter:
  if name not in ADAPTERS:
    raise ValueError(f"No catalog adapter for {name!r}; supported: {', '.join(sorted(ADAPTERS))}.")
  return ADAPTERS[name]


def _resolve_config(name: str, config: str | None) -> str | None:
  adapter = _adapter(name)
  config = config or adapter.default_config
  if adapter.needs_config and not config:
    raise ValueError(f"{name} needs a config (e.g. fleurs.hi_in for xtreme_s).")
  if not adapter.needs_config and config:
    raise ValueError(f"{name} has no configs, got {config!r}.")
  return config


def _waveform(audio: Any, sample_rate: int) -> np.ndarray:
  """Catalog audio (decoded array or encoded file bytes) -> int16 [samples] at 16 kHz."""
  if isinstance(audio, np.ndarray) and audio.dtype.kind in "SO" and audio.ndim == 0:
    audio = audio.item()
  if isinstance(audio, bytes):  # Encoded file, e.g. librispeech/lazy_decode.
    return audio_io.load_audio(io.BytesIO(audio), target_sr=schema.SAMPLE_RATE)
  x = np.asarray(audio)
  if sample_rate == schema.SAMPLE_RATE and x.ndim == 1:
    return audio_io.to_int16(x)
  is_int = np.issubdtype(x.dtype, np.integer)
  if x.ndim == 2:  # [samples, channels]
    x = x.mean(axis=-1)
  if is_int:  # To soundfile's [-1, 1) scale, so that to_int16 maps it back.
    x = x / 32768.0
  return audio_io.to_int16(audio_io.resample(x, sample_rate, schema.SAMPLE_RATE))


def to_schema(
  name: str,
  example: Mapping[str, Any],
  *,
  builder_config_name: str | None = None,
  sample_rate: int | None = None,
  example_id: str | None = None,
) -> dict[str, Any]:
  """Maps one TFDS example of a catalog set to a schema example.

  Args:
    name: catalog name, a key of `ADAPTERS`.
    example: one example as returned by `tfds.data_source` or `tfds.as_numpy`.
    builder_config_name: the TFDS config it comes from (e.g. `fleurs.hi_in`);
      defaults to the adapter's default config.
    sample_rate: rate of the example's audio; defaults to the adapter's.
    example_id: id to use where the dataset has no id of its own; defaults to
      a digest of the audio.

  Returns:
    A dict that `schema.features().encode_example` accepts.

  Raises:
    ValueError: for unknown names, configs, or languages missing from
      `moe_asr.data.languages`.
  """
  adapter = _adapter(name)
  config = _resolve_config(name, builder_config_name)
  fields = adapter.fields(example, adapter.config_language(config))
  audio = _waveform(example[adapter.audio_key], sample_rate or adapter.sample_rate)
  transcript = text.normalize(fields["text"])
  prefix = f"{name}/{config}" if config else name
  if fields["id"]:
    ex_id = f"{prefix}/{fields['id']}"
  else:
    ex_id = example_id or f"{prefix}/{hashlib.sha1(audio.tobytes()).hexdigest()[:16]}"
  out = schema.empty_example(ex_id, audio, transcript)
  out.update(
    language=fields["language"],
    words_lang=[fields["language"]] * len(transcript.split()),
    intent=fields["intent"],
    speaker=fields["speaker"],
  )
  return out


class SchemaDataSource:
  """Random-access source of schema examples over a TFDS data source.

  Wraps any sequence of TFDS examples (`tfds.data_source(...)`, or a list) and
  converts an example only when it is read, so it serves grain's
  `MapDataset.source` / `DataLoader` directly.
  """

  def __init__(
    self,
    source: Sequence[Mapping[str, Any]],
    name: str,
    *,
    config: str | None = None,
    split: str = "",
    sample_rate: int | None = None,
  ):
    """Wraps `source`.

    Args:
      source: the TFDS examples (len and __getitem__).
      name: catalog name, a key of `ADAPTERS`.
      config: TFDS config the examples come from.
      split: split name, used in the ids of sets without ids of their own.
      sample_rate: rate of the source audio; defaults to the adapter's.
    """
    adapter = _adapter(name)
    self._source = source
    self._name = name
    self._config = _resolve_config(name, config)
    adapter.config_language(self._config)  # Fail now, not at the first read.
    self._split = split
    self._sample_rate = sample_rate or adapter.sample_rate
    prefix = f"{name}/{self._config}" if self._config else name
    self._id_prefix = f"{prefix}/{split}" if split else prefix

  def __len__(self) -> int:
    return len(self._source)

  def _convert(self, index: int, example: Mapping[str, Any]) -> dict[str, Any]:
    return to_schema(
      self._name,
      example,
      builder_config_name=self._config,
      sample_rate=self._sample_rate,
      example_id=f"{self._id_prefix}/{index}",
    )

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f"Index {index} out of range for {len(self)} examples.")
    return self._convert(index, self._source[index])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    indices = [int(i) for i in indices]
    getitems = getattr(self._source, "__getitems__", None)
    # Array-record sources read a batch of records in one call.
    raw = getitems(indices) if getitems else [self._source[i] for i in indices]
    return [self._convert(i, ex) for i, ex in zip(indices, raw, strict=True)]

  def __repr__(self) -> str:
    return (
      f"SchemaDataSource(name={self._name!r}, config={self._config!r}, "
      f"split={self._split!r}, num_examples={len(self)})"
    )


def load(
  name: str,
  split: str,
  *,
  data_dir: str | None = None,
  config: str | None = None,
  download: bool = True,
  sample_rate: int | None = None,
) -> SchemaDataSource:
  """Opens a catalog dataset as a source of schema examples.

  Args:
    name: catalog name, a key of `ADAPTERS`; may carry the config as
      `name/config` (e.g. `xtreme_s/fleurs.hi_in`).
    split: TFDS split, slices allowed (`train[:10%]`).
    data_dir: TFDS data dir.
    config: TFDS config (e.g. `fleurs.hi_in`, `en`); defaults to the adapter's.
    download: let TFDS download and prepare the set when it is not in
      `data_dir`.
    sample_rate: rate of the source audio; defaults to the rate the dataset's
      audio feature states, else the adapter's.

  Returns:
    A `SchemaDataSource`.

  Raises:
    ValueError: for unsupported names (listing the supported ones), missing or
      invalid configs, and languages missing from `moe_asr.data.languages`.
  """
  import tensorflow_datasets as tfds

  if "/" in name:
    name, name_config = name.split("/", 1)
    if config and config != name_config:
      raise ValueError(f"Config given twice: {name_config!r} in the name and {config!r}.")
    config = name_config
  adapter = _adapter(name)
  config = _resolve_config(name, config)
  adapter.config_language(config)  # Before any download.
  source = tfds.data_source(
    f"{name}/{config}" if config else name, split=split, data_dir=data_dir, download=download
  )
  if sample_rate is None:
    feature = source.dataset_info.features[adapter.audio_key]
    sample_rate = getattr(feature, "sample_rate", None)
  return SchemaDataSource(source, name, config=config, split=split, sample_rate=sample_rate)
