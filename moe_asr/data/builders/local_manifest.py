"""TFDS builder for a folder of audio files described by TSV / JSONL manifests.

The folder holds the audio and one manifest per split, `{split}.tsv` or
`{split}.jsonl` (any split names: train, validation, test, test_cs...). Each
manifest line describes one utterance:

- `path` (required): audio file, relative to the folder or absolute; it must
  lie inside the folder unless the config sets `allow_outside=True`.
- `text`: transcript, normalised with `moe_asr.data.text.normalize`. Required,
  except on a line with an `intent` and no `slots`: such an example (speech-to-
  intent sets often have no transcripts) is kept with text "" and trains the
  task heads only (the pipeline and losses give it no CTC or attention target).
- `language`: a code of `moe_asr.data.languages` or `mixed`. Default: the
  single language of `words_lang`, `mixed` if it has several, else the
  config's `default_language`.
- `words_lang`: one language code per word of the normalised text (TSV: space
  separated; JSONL: a list).
- `intent`: end-task label.
- `slots`: JSONL: a list of `[type, value]` or `{"type": ..., "value": ...}`;
  TSV: the same as a JSON string. Values must appear in the normalised text.
- `speaker`: speaker id.
- `id`: example id, unique within a split (default: the audio file's stem).
- `segments` (JSONL only): a list of `[start_sample, end_sample, language]`,
  in samples of the stored 16 kHz audio, the language as a code or an index.

Usage:

```python
config = LocalManifestConfig(name="mydata", manifest_dir="/data/mydata")
builder = LocalManifest(config=config, data_dir="/data/tfds")
builder.download_and_prepare(file_format="array_record")
train = builder.as_data_source(split="train")
```

or `build_local_manifest("/data/mydata", "/data/tfds", name="mydata")`.

Every example gets its `phonemes` (espeak-ng IPA per word of the normalised
text, each word in its `words_lang` language; see `moe_asr.data.phonemes`) at
build time. An item in a language without G2P gets `phonemes` "" (the build
goes on), counted with any other item without phones in
`builder.info.metadata["num_without_phonemes"]` (per split); the
phone inventory of the whole dataset is in `builder.info.metadata["phone_inventory"]`.

The task vocabularies are in the metadata too: `intents` and `slot_types`, sorted,
as the train split's labels give them (every split's when there is no `train`
split), with `num_without_text` per split; a run reads them from there
(`training.inputs.load_run_data`).

A manifest line that is not valid UTF-8 is an item error (naming the file and the
line), as is an audio path outside the folder.

With `on_error="skip"` bad items are left out, and each one is recorded (split,
manifest line, audio path, reason) in the dataset's metadata
(`builder.info.metadata["skipped"]`, saved in `metadata.json` beside the
records), and counted in `builder.info.metadata["num_skipped"]`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from moe_asr.data import audio_io, languages, phonemes, schema, text

_LOG = logging.getLogger(__name__)
ON_ERROR_MODES = ("raise", "skip")
_COLUMNS = (
  "path",
  "text",
  "language",
  "words_lang",
  "intent",
  "slots",
  "speaker",
  "id",
  "segments",
)
_REQUIRED_COLUMNS = ("path",)
_MANIFEST_SUFFIXES = (".tsv", ".jsonl")
# TFDS split names: letters, digits and underscores.
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")


class ManifestError(ValueError):
  """A manifest or one of its items is invalid; names the manifest, the line and the item."""


@dataclasses.dataclass(eq=False, kw_only=True)
class LocalManifestConfig(tfds.core.BuilderConfig):
  """Configuration of a `LocalManifest` dataset; build one per folder.

  Attributes:
    manifest_dir: folder with the audio files and the `{split}.tsv` /
      `{split}.jsonl` manifests.
    splits: splits to build; None builds one split per manifest in the folder.
    on_error: "raise" stops at the first bad item with an error naming it;
      "skip" leaves bad items out and records them in the dataset metadata.
    max_seconds: audio longer than this is a bad item; None accepts any length.
    default_language: language of items that give none (no `language` nor
      `words_lang`); None makes such items bad.
    reject_silent: treat all-zero audio as a bad item.
    allow_outside: accept audio paths outside `manifest_dir` (absolute, or with
      `..`); by default such a path is a bad item.
    train_split: the split whose labels give the intent and slot vocabularies.
  """

  manifest_dir: str = ""
  splits: tuple[str, ...] | None = None
  on_error: str = "raise"
  max_seconds: float | None = None
  default_language: str | None = None
  reject_silent: bool = False
  allow_outside: bool = False
  train_split: str = "train"

  def __post_init__(self):
    if not self.manifest_dir:
      raise ValueError("LocalManifestConfig needs a manifest_dir.")
    self.manifest_dir = os.fspath(self.manifest_dir)
    if self.on_error not in ON_ERROR_MODES:
      raise ValueError(f"on_error must be one of {ON_ERROR_MODES}, got {self.on_error!r}.")
    if self.default_language is not None:
      languages.check_language(self.default_language)
    if self.splits is not None:
      self.splits = tuple(self.splits)


@dataclasses.dataclass(frozen=True)
class ManifestRow:
  """One line of a manifest, not yet validated."""

  manifest: str  # Path of the manifest file.
  line: int  # 1-based line number in the manifest.
  fields: dict[str, Any]  # Column -> value (TSV: strings; JSONL: JSON values).
  problem: str = ""  # Why the line could not be parsed, if it could not.

  def error(self, reason: str) -> ManifestError:
    audio = self.fields.get("path")
    item = f" ({audio})" if isinstance(audio, str) and audio else ""
    return ManifestError(f"{self.manifest}:{self.line}{item}: {reason}")


def find_manifests(manifest_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
  """Returns split name -> manifest file for every manifest in `manifest_dir`."""
  folder = pathlib.Path(manifest_dir)
  if not folder.is_dir():
    raise ManifestError(f"Manifest folder {folder} does not exist.")
  found: dict[str, pathlib.Path] = {}
  for path in sorted(folder.iterdir()):
    if path.suffix not in _MANIFEST_SUFFIXES or not path.is_file():
      continue
    split = path.stem
    if not _SPLIT_NAME.fullmatch(split):
      raise ManifestError(f"{path}: split names may hold only letters, digits and '_'.")
    if split in found:
      raise ManifestError(f"Split {split!r} has two manifests: {found[split]} and {path}.")
    found[split] = path
  if not found:
    raise ManifestError(f"No {{split}}.tsv or {{split}}.jsonl manifest in {folder}.")
  return found


def read_manifest(manifest: str | os.PathLike) -> list[ManifestRow]:
  """Reads the lines of a TSV (with a header line) or JSONL manifest.

  Raises:
    ManifestError: for problems with the whole file (missing or unknown TSV
      columns, a `segments` column in a TSV).
  """
  manifest = pathlib.Path(manifest)
  lines, bad_lines = _decode_lines(manifest.read_bytes())
  rows = []
  if manifest.suffix == ".jsonl":
    for i, line in enumerate(lines, start=1):
      if i in bad_lines:
        rows.append(ManifestRow(str(manifest), i, {}, bad_lines[i]))
        continue
      if not line.strip():
        continue
      try:
        fields = json.loads(line)
      except json.JSONDecodeError as e:
        rows.append(ManifestRow(str(manifest), i, {}, f"invalid JSON ({e})"))
        continue
      if isinstance(fields, dict):
        rows.append(ManifestRow(str(manifest), i, fields))
      else:
        rows.append(ManifestRow(str(manifest), i, {}, "a JSONL line must be a JSON object"))
    return rows
  if not lines:
    raise ManifestError(f"{manifest}: empty TSV manifest (a header line is required).")
  if 1 in bad_lines:
    raise ManifestError(f"{manifest}:1: the header line is {bad_lines[1]}.")
  header = [column.strip() for column in lines[0].split("\t")]
  unknown = [column for column in header if column not in _COLUMNS or column == "segments"]
  if unknown:
    raise ManifestError(
      f"{manifest}:1: unknown columns {unknown}; TSV columns are "
      f"{', '.join(c for c in _COLUMNS if c != 'segments')} (segments need JSONL)."
    )
  missing = [column for column in _REQUIRED_COLUMNS if column not in header]
  if missing:
    raise ManifestError(f"{manifest}:1: missing required columns {missing}.")
  for i, line in enumerate(lines[1:], start=2):
    if i in bad_lines:
      rows.append(ManifestRow(str(manifest), i, {}, bad_lines[i]))
      continue
    if not line.strip():
      continue
    values = [v.strip() for v in line.split("\t")]
    if len(values) != len(header):
      problem = f"{len(values)} tab-separated fields where the header has {len(header)}"
      # The fields that do line up still name the item in the error.
      rows.append(ManifestRow(str(manifest), i, dict(zip(header, values, strict=False)), problem))
      continue
    fields = {k: v for k, v in zip(header, values, strict=True) if v}
    problem = ""
    if "words_lang" in fields:
      fields["words_lang"] = fields["words_lang"].split()
    if "slots" in fields:
      try:
        fields["slots"] = json.loads(fields["slots"])
      except json.JSONDecodeError as e:
        problem = f"slots is not valid JSON ({e})"
    rows.append(ManifestRow(str(manifest), i, fields, problem))
  return rows


def _decode_lines(data: bytes) -> tuple[list[str], dict[int, str]]:
  """The lines of a manifest's bytes, and {1-based line: problem} for lines not UTF-8.

  Lines are split on b"\\n" (a "\\r" before it dropped), so that one bad byte spoils
  one line only; such a line is "" in the list. A UTF-8 byte-order mark (spreadsheet
  exports often start with one) is dropped.
  """
  data = data.removeprefix(b"\xef\xbb\xbf")
  raw_lines = data.split(b"\n")
  if raw_lines and raw_lines[-1] == b"":
    raw_lines.pop()
  lines, bad = [], {}
  for i, raw in enumerate(raw_lines, start=1):
    raw = raw.removesuffix(b"\r")
    try:
      lines.append(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
      bad[i] = (
        f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
        "save the manifest as UTF-8"
      )
      lines.append("")
  return lines, bad


def _check_code(row: ManifestRow, code: Any, what: str, allow_mixed: bool = False) -> str:
  if allow_mixed and code == languages.MIXED:
    return code
  if not isinstance(code, str) or code not in languages.LANGUAGES:
    raise row.error(
      f"unknown language code {code!r} in {what}; known codes: "
      f"{', '.join(languages.LANGUAGE_CODES)}" + (", mixed" if allow_mixed else "")
    )
  return code


def _parse_slots(row: ManifestRow, raw: Any, transcript: str) -> dict[str, list[str]]:
  slots = {"type": [], "value": []}
  if not isinstance(raw, list):
    raise row.error(f"slots must be a list, got {raw!r}")
  for slot in raw:
    if isinstance(slot, dict) and set(slot) == {"type", "value"}:
      slot_type, value = slot["type"], slot["value"]
    elif isinstance(slot, (list, tuple)) and len(slot) == 2:
      slot_type, value = slot
    else:
      raise row.error(f"a slot must be [type, value] or {{'type', 'value'}}, got {slot!r}")
    if not isinstance(slot_type, str) or not slot_type or not isinstance(value, str):
      raise row.error(f"slot type and value must be strings, got {slot!r}")
    value = text.normalize(value)
    # Slot values are spans of the transcript (docs/design.md §3), matched on whole words.
    if not value or f" {value} " not in f" {transcript} ":
      raise row.error(f"slot value {value!r} does not appear in the text {transcript!r}")
    slots["type"].append(slot_type)
    slots["value"].append(value)
  return slots


def _parse_segments(row: ManifestRow, raw: Any, num_samples: int) -> np.ndarray:
  if not isinstance(raw, list):
    raise row.error(f"segments must be a list, got {raw!r}")
  segments = []
  for segment in raw:
    if not (isinstance(segment, (list, tuple)) and len(segment) == 3):
      raise row.error(f"a segment must be [start_sample, end_sample, language], got {segment!r}")
    start, end, lang = segment
    if isinstance(lang, str):
      lang = languages.language_index(_check_code(row, lang, "segments"))
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end, lang)):
      raise row.error(f"segment values must be integers or a language code, got {segment!r}")
    if not 0 <= start < end <= num_samples:
      raise row.error(f"segment {segment!r} is outside the audio's {num_samples} samples")
    if not 0 <= lang < len(languages.LANGUAGE_CODES):
      raise row.error(f"segment language index {lang} is not a known language")
    segments.append((start, end, lang))
  return np.asarray(segments, np.int32).reshape(-1, 3)


def row_to_example(
  row: ManifestRow,
  *,
  base_dir: str | os.PathLike,
  max_seconds: float | None = None,
  default_language: str | None = None,
  reject_silent: bool = False,
  allow_outside: bool = False,
) -> dict[str, Any]:
  """Validates one manifest line and builds its schema example (audio included).

  Args:
    row: the manifest line.
    base_dir: folder that relative audio paths are relative to.
    max_seconds: longer audio is an error.
    default_language: language of a line that gives none.
    reject_silent: all-zero audio is an error.
    allow_outside: accept audio outside `base_dir` (else an error).

  Returns:
    A dict matching `schema.features()`.

  Raises:
    ManifestError: naming the manifest, the line and the audio path.
  """
  fields = row.fields
  if row.problem:
    raise row.error(row.problem)
  unknown = sorted(set(fields) - set(_COLUMNS))
  if unknown:
    raise row.error(f"unknown fields {unknown}; allowed: {', '.join(_COLUMNS)}")
  for column in _REQUIRED_COLUMNS:
    if not isinstance(fields.get(column), str) or not fields[column]:
      raise row.error(f"missing or empty {column!r}")
  for column in ("language", "intent", "speaker", "id"):
    if column in fields and not isinstance(fields[column], str):
      raise row.error(f"{column!r} must be a string, got {fields[column]!r}")

  if "text" in fields and not isinstance(fields["text"], str):
    raise row.error(f"'text' must be a string, got {fields['text']!r}")
  raw_text = fields.get("text") or ""
  transcript = text.normalize(raw_text)
  if not transcript:
    if raw_text:
      raise row.error(f"empty transcript after normalisation (text {raw_text!r})")
    if not fields.get("intent") or fields.get("slots"):
      raise row.error(
        "missing or empty 'text' (a line without a transcript needs an intent, and no slots)"
      )
  num_words = len(transcript.split())

  language = fields.get("language") or None
  if language is not None:
    _check_code(row, language, "language", allow_mixed=True)
  words_lang = fields.get("words_lang")
  if words_lang is not None:
    if not isinstance(words_lang, list):
      raise row.error(f"words_lang must be a list of codes, got {words_lang!r}")
    words_lang = [_check_code(row, code, "words_lang") for code in words_lang]
    if len(words_lang) != num_words:
      raise row.error(
        f"words_lang has {len(words_lang)} codes but the normalised text "
        f"{transcript!r} has {num_words} words"
      )
    if language is None:
      language = words_lang[0] if len(set(words_lang)) == 1 else languages.MIXED
  else:
    language = language or default_language
    if language is None:
      raise row.error("no language: give a language column or set default_language")
    if language == languages.MIXED:
      raise row.error("language 'mixed' needs a words_lang column")
    words_lang = [language] * num_words
  slots = _parse_slots(row, fields.get("slots", []), transcript)

  audio_path = pathlib.Path(fields["path"])
  if not audio_path.is_absolute():
    audio_path = pathlib.Path(base_dir) / audio_path
  inside = audio_path.resolve().is_relative_to(pathlib.Path(base_dir).resolve())
  if not allow_outside and not inside:
    raise row.error(
      f"audio file {audio_path} is outside the manifest's folder {base_dir} "
      "(allow_outside=True accepts it)"
    )
  if not audio_path.is_file():
    raise row.error(f"audio file {audio_path} not found")
  try:
    audio = audio_io.load_audio(audio_path, max_seconds=max_seconds, reject_silent=reject_silent)
  except audio_io.AudioError as e:
    raise row.error(str(e)) from e
  segments = _parse_segments(row, fields.get("segments", []), len(audio))

  example = schema.empty_example(fields.get("id") or audio_path.stem, audio, transcript)
  example.update(
    words_lang=words_lang,
    phonemes=_phonemes(transcript, words_lang),
    segments=segments,
    language=language,
    intent=fields.get("intent", ""),
    slots=slots,
    speaker=fields.get("speaker", ""),
  )
  return example


def _phonemes(transcript: str, words_lang: list[str]) -> str:
  """The stored phonemes of a transcript; "" where a word's language has no G2P."""
  if not transcript:
    return ""
  if not all(phonemes.is_supported(code) for code in words_lang):
    return ""
  return phonemes.phonemize_text(transcript, words_lang)


class LocalManifest(tfds.core.GeneratorBasedBuilder):
  """Speech from a local folder of audio files and per-split TSV / JSONL manifests."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
    "1.0.0": "Initial release.",
    "1.1.0": (
      "Phonemes of every example (espeak-ng G2P) and the phone inventory in the metadata; "
      "the intent and slot vocabularies of the train split in the metadata; lines with an "
      "intent but no transcript kept (text ''); non-UTF-8 lines and audio outside the "
      "folder are item errors."
    ),
  }
  # No predefined configs: every folder is described by its own
  # LocalManifestConfig, passed as `config=`.
  BUILDER_CONFIGS = []
  # TFDS derives this from the package's resources through a check that needs
  # the optional `importlib_resources` package; the module file is the answer.
  code_path = epath.Path(__file__)

  def __init__(self, *, file_format: str | None = None, **kwargs):
    # array_record gives the random access that the grain pipeline needs.
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    source = getattr(config, "manifest_dir", None)
    return tfds.core.DatasetInfo(
      builder=self,
      description=f"Local speech manifests from {source}." if source else "Local speech.",
      features=schema.features(),
      supervised_keys=("audio", "text"),
      metadata=tfds.core.MetadataDict(),
    )

  def _manifest_config(self) -> LocalManifestConfig:
    config = self.builder_config
    if not isinstance(config, LocalManifestConfig):
      raise ValueError(
        "LocalManifest builds from a LocalManifestConfig: "
        "LocalManifest(config=LocalManifestConfig(name=..., manifest_dir=...), data_dir=...)."
      )
    return config

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    config = self._manifest_config()
    manifests = find_manifests(config.manifest_dir)
    if config.splits is not None:
      missing = [s for s in config.splits if s not in manifests]
      if missing:
        raise ManifestError(
          f"No manifest for splits {missing} in {config.manifest_dir} "
          f"(found: {', '.join(manifests)})."
        )
      manifests = {s: manifests[s] for s in config.splits}
    metadata = self.info.metadata
    metadata["on_error"] = config.on_error
    metadata["skipped"] = {split: [] for split in manifests}
    metadata["num_skipped"] = {split: 0 for split in manifests}
    metadata["num_without_phonemes"] = {split: 0 for split in manifests}
    metadata["num_without_text"] = {split: 0 for split in manifests}
    self._phone_units: set[str] = set()
    self._labels: dict[str, tuple[set[str], set[str]]] = {}
    return {
      split: self._generate_examples(split, manifest) for split, manifest in manifests.items()
    }

  def _generate_examples(self, split: str, manifest: pathlib.Path) -> Iterator[tuple[str, Any]]:
    config = self._manifest_config()
    skipped = self.info.metadata["skipped"][split]
    first_line: dict[str, int] = {}
    for row in read_manifest(manifest):
      try:
        example = row_to_example(
          row,
          base_dir=manifest.parent,
          max_seconds=config.max_seconds,
          default_language=config.default_language,
          reject_silent=config.reject_silent,
          allow_outside=config.allow_outside,
        )
        if example["id"] in first_line:
          raise row.error(
            f"id {example['id']!r} already used on line {first_line[example['id']]}; "
            "ids must be unique within a split (add an 'id' column)"
          )
      except ManifestError as e:
        if config.on_error == "raise":
          raise
        _LOG.warning("Skipping a manifest item: %s", e)
        path = row.fields.get("path") if isinstance(row.fields.get("path"), str) else ""
        skipped.append({"manifest": row.manifest, "line": row.line, "path": path, "reason": str(e)})
        self.info.metadata["num_skipped"][split] = len(skipped)
        continue
      first_line[example["id"]] = row.line
      if not example["text"]:
        self.info.metadata["num_without_text"][split] += 1
      if not example["phonemes"] and example["text"]:
        self.info.metadata["num_without_phonemes"][split] += 1
      labels = self._labels.setdefault(split, (set(), set()))
      if example["intent"]:
        labels[0].add(example["intent"])
      labels[1].update(example["slots"]["type"])
      self._phone_units.update(phonemes.split_units(example["phonemes"]))
      yield example["id"], example
    if skipped:
      _LOG.warning("Split %s: skipped %d bad items of %s.", split, len(skipped), manifest)
    without = self.info.metadata["num_without_phonemes"][split]
    if without:
      _LOG.warning(
        "Split %s: %d items stored without phonemes (a language without G2P).",
        split,
        without,
      )
    # Splits are written one after another: after the last, the units of all of them.
    inventory = phonemes.PhoneInventory(self._phone_units)
    self.info.metadata["phone_inventory"] = json.loads(inventory.to_json())
    # The task vocabularies: the train split's labels (all splits' without one).
    source = [self._labels[config.train_split]] if config.train_split in self._labels else []
    source = source or list(self._labels.values())
    self.info.metadata["intents"] = sorted(set().union(*(s[0] for s in source)))
    self.info.metadata["slot_types"] = sorted(set().union(*(s[1] for s in source)))


def build_local_manifest(
  manifest_dir: str | os.PathLike,
  data_dir: str | os.PathLike,
  name: str = "default",
  on_error: str = "raise",
  *,
  max_seconds: float | None = None,
  default_language: str | None = None,
  splits: tuple[str, ...] | None = None,
  reject_silent: bool = False,
  allow_outside: bool = False,
  overwrite: bool = False,
) -> LocalManifest:
  """Builds (or reuses) the array_record dataset of a manifest folder.

  Args:
    manifest_dir: folder with the audio and the `{split}.tsv|jsonl` manifests.
    data_dir: TFDS data dir; the dataset goes to
      `data_dir/local_manifest/{name}/1.1.0`.
    name: config name of this folder's dataset.
    on_error: "raise" or "skip" (see `LocalManifestConfig`).
    max_seconds: longer audio is a bad item.
    default_language: language of items that give none.
    splits: splits to build (default: every manifest in the folder).
    reject_silent: all-zero audio is a bad item.
    allow_outside: accept audio paths outside `manifest_dir`.
    overwrite: rebuild even if the dataset already exists in `data_dir`.

  Returns:
    The prepared builder; read it with `builder.as_data_source(split=...)`.
  """
  config = LocalManifestConfig(
    name=name,
    manifest_dir=os.fspath(manifest_dir),
    splits=splits,
    on_error=on_error,
    max_seconds=max_seconds,
    default_language=default_language,
    reject_silent=reject_silent,
    allow_outside=allow_outside,
  )
  builder = LocalManifest(config=config, data_dir=os.fspath(data_dir))
  if overwrite and builder.data_path.exists():
    # A builder that found the dataset on disk has its info frozen from the
    # files; delete them and start from a fresh builder.
    builder.data_path.rmtree()
    builder = LocalManifest(config=config, data_dir=os.fspath(data_dir))
  builder.download_and_prepare(file_format="array_record")
  return builder
