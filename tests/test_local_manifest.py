"""Tests for audio reading (audio_io) and the local-manifest TFDS builder."""

from __future__ import annotations

import io
import json
import pathlib

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds

from moe_asr.data import audio_io, languages, schema
from moe_asr.data.builders import local_manifest as lm

SR = schema.SAMPLE_RATE


def _sine(freq: float, sr: int, n: int, amp: float) -> np.ndarray:
  return amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)


def _peak_hz(x: np.ndarray, sr: int) -> float:
  spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
  return float(np.argmax(spectrum) * sr / len(x))


# ---------------------------------------------------------------- audio_io


def test_load_audio_resamples_stereo_8k_to_mono_16k(tmp_path):
  n = 4000  # 0.5 s at 8 kHz.
  left, right = _sine(440, 8000, n, 0.4), _sine(440, 8000, n, 0.2)
  path = tmp_path / "stereo.wav"
  sf.write(path, np.stack([left, right], axis=1), 8000, subtype="PCM_16")

  audio = audio_io.load_audio(path)

  assert audio.dtype == np.int16 and audio.ndim == 1
  assert abs(len(audio) - 2 * n) <= 1
  assert _peak_hz(audio, SR) == pytest.approx(440, abs=SR / len(audio))  # One FFT bin.
  # Channels are averaged: amplitude (0.4 + 0.2) / 2 of full scale, away from the edges.
  middle = audio[1000:-1000].astype(np.float64) / 32768
  assert np.max(np.abs(middle)) == pytest.approx(0.3, abs=0.01)


def test_load_audio_keeps_16k_pcm16_exactly_and_reads_file_objects(tmp_path):
  x = (_sine(300, SR, 1600, 0.5) * 32767).astype(np.int16)
  buf = io.BytesIO()
  sf.write(buf, x, SR, format="FLAC", subtype="PCM_16")
  buf.seek(0)
  np.testing.assert_array_equal(audio_io.load_audio(buf), x)
  path = tmp_path / "x.flac"
  path.write_bytes(buf.getvalue())
  np.testing.assert_array_equal(audio_io.load_audio(path), x)


@pytest.mark.parametrize(
  "data, kwargs, reason",
  [
    (np.zeros((0,), np.float32), {}, "zero samples"),
    (np.array([0.1, np.nan, 0.2], np.float32), {}, "NaN or infinite"),
    (np.array([0.1, np.inf, 0.2], np.float32), {}, "NaN or infinite"),
    (np.zeros(100, np.float32), {"reject_silent": True}, "silent"),
    (np.full(SR * 2, 0.1, np.float32), {"max_seconds": 1.5}, "longer than max_seconds"),
  ],
)
def test_load_audio_errors_name_the_file(tmp_path, data, kwargs, reason):
  path = tmp_path / "bad_item.wav"
  sf.write(path, data, SR, subtype="FLOAT")
  with pytest.raises(audio_io.AudioError, match=reason) as info:
    audio_io.load_audio(path, **kwargs)
  assert str(path) in str(info.value)
  assert info.value.path == str(path)


def test_load_audio_rejects_corrupt_file(tmp_path):
  path = tmp_path / "noise.wav"
  path.write_bytes(np.random.default_rng(0).bytes(2000))
  with pytest.raises(audio_io.AudioError, match="noise.wav: cannot be read as audio"):
    audio_io.load_audio(path)


def test_to_int16_and_resample():
  np.testing.assert_array_equal(
    audio_io.to_int16(np.array([-1.5, -1.0, 0.0, 0.5, 1.0])), [-32768, -32768, 0, 16384, 32767]
  )
  np.testing.assert_array_equal(audio_io.to_int16(np.array([-40000, 5, 40000])), [-32768, 5, 32767])
  y = audio_io.resample(_sine(1000, 48000, 4800, 0.5), 48000, SR)
  assert y.dtype == np.float32 and len(y) == 1600
  assert _peak_hz(y, SR) == pytest.approx(1000, abs=SR / 1600)


# ---------------------------------------------------------------- the builder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pathlib.Path:
  """A folder with 3 audio files (8 kHz stereo wav, 16 kHz flac, float wav) and 2 manifests."""
  root = tmp_path_factory.mktemp("corpus")
  n8 = 4000
  stereo = np.stack([_sine(440, 8000, n8, 0.4), _sine(440, 8000, n8, 0.2)], axis=1)
  sf.write(root / "stereo8k.wav", stereo, 8000, subtype="PCM_16")
  (root / "clips").mkdir()
  flac = (_sine(300, SR, 8000, 0.5) * 32767).astype(np.int16)
  sf.write(root / "clips" / "b.flac", flac, SR, subtype="PCM_16")
  sf.write(root / "c.wav", _sine(600, SR, 12000, 0.25).astype(np.float32), SR, subtype="FLOAT")
  (root / "train.tsv").write_text(
    "path\ttext\tlanguage\tintent\tslots\tspeaker\tid\n"
    'stereo8k.wav\tTurn ON the lights, please!\ten\tlights_on\t[["device", "Lights"]]\tspk1\t\n'
    "clips/b.flac\tPon la música\t\t\t\tspk2\tb_custom\n",
    encoding="utf-8",
  )
  jsonl = {
    "path": str(root / "c.wav"),  # Absolute paths work too.
    "text": "Pon shape of you en la cocina",
    "words_lang": ["es", "en", "en", "en", "es", "es", "es"],
    "intent": "play_music",
    "slots": [{"type": "song", "value": "Shape of You"}, ["room", "cocina"]],
    "segments": [[0, 2000, "es"], [2000, 8000, "en"], [8000, 12000, 1]],
    "speaker": "spk3",
  }
  (root / "test.jsonl").write_text(json.dumps(jsonl, ensure_ascii=False) + "\n", encoding="utf-8")
  return root


def _by_id(source) -> dict[str, dict]:
  return {source[i]["id"].decode(): source[i] for i in range(len(source))}


def test_builder_is_registered():
  assert "local_manifest" in tfds.list_builders()
  assert tfds.builder_cls("local_manifest") is lm.LocalManifest


def test_build_and_read_back_all_fields(corpus, tmp_path):
  config = lm.LocalManifestConfig(name="mydata", manifest_dir=str(corpus), default_language="es")
  builder = lm.LocalManifest(config=config, data_dir=str(tmp_path))
  builder.download_and_prepare(file_format="array_record")

  assert set(builder.info.splits) == {"train", "test"}
  assert (tmp_path / "local_manifest" / "mydata" / "1.1.0").is_dir()
  train = _by_id(builder.as_data_source(split="train"))
  assert set(train) == {"stereo8k", "b_custom"}
  features = schema.features()

  a = train["stereo8k"]
  assert a["audio"].dtype == np.int16 and a["audio"].ndim == 1
  assert abs(len(a["audio"]) - 8000) <= 1  # 0.5 s at 16 kHz.
  assert _peak_hz(a["audio"], SR) == pytest.approx(440, abs=SR / len(a["audio"]))
  assert a["text"] == b"turn on the lights please"
  assert a["language"] == b"en"
  assert a["words_lang"] == [b"en"] * 5
  assert a["intent"] == b"lights_on"
  assert a["slots"]["type"] == [b"device"] and a["slots"]["value"] == [b"lights"]
  assert a["speaker"] == b"spk1"
  assert a["segments"].shape == (0, 3) and a["snr_db"] == np.inf

  b = train["b_custom"]
  expected = (_sine(300, SR, 8000, 0.5) * 32767).astype(np.int16)
  np.testing.assert_array_equal(b["audio"], expected)
  assert b["text"] == "pon la música".encode()
  assert b["language"] == b"es" and b["words_lang"] == [b"es"] * 3  # default_language.
  assert b["intent"] == b"" and len(b["slots"]["type"]) == 0

  c = builder.as_data_source(split="test")[0]
  assert c["id"] == b"c"
  assert len(c["audio"]) == 12000
  assert c["language"] == languages.MIXED.encode()
  assert c["words_lang"] == [s.encode() for s in ["es", "en", "en", "en", "es", "es", "es"]]
  es, en = languages.language_index("es"), languages.language_index("en")
  np.testing.assert_array_equal(c["segments"], [[0, 2000, es], [2000, 8000, en], [8000, 12000, 1]])
  assert c["slots"]["type"] == [b"song", b"room"]
  assert c["slots"]["value"] == [b"shape of you", b"cocina"]
  # Read-back examples still satisfy the schema.
  for ex in [a, b, c]:
    features.encode_example(ex)

  # The prepared dataset is readable by name, without the manifest folder's config.
  source = tfds.data_source("local_manifest/mydata", split="test", data_dir=str(tmp_path))
  assert source[0]["text"] == c["text"]


@pytest.fixture
def corpus_with_corrupt_file(tmp_path) -> pathlib.Path:
  root = tmp_path / "corrupt_corpus"
  root.mkdir()
  for name in ("one", "two"):
    sf.write(root / f"{name}.wav", _sine(200, SR, 1600, 0.3), SR, subtype="PCM_16")
  (root / "broken.wav").write_bytes(np.random.default_rng(1).bytes(3000))
  (root / "train.tsv").write_text(
    "path\ttext\nbroken.wav\tbroken\none.wav\tone\ntwo.wav\ttwo\n", encoding="utf-8"
  )
  return root


def test_corrupt_file_fails_the_build_naming_it(corpus_with_corrupt_file, tmp_path):
  with pytest.raises(lm.ManifestError, match=r"train\.tsv:2 \(broken\.wav\): .*broken\.wav"):
    lm.build_local_manifest(
      corpus_with_corrupt_file, tmp_path / "data", default_language="en", on_error="raise"
    )


def test_corrupt_file_skipped_and_recorded(corpus_with_corrupt_file, tmp_path):
  data_dir = tmp_path / "data"
  builder = lm.build_local_manifest(
    corpus_with_corrupt_file, data_dir, name="skipping", on_error="skip", default_language="en"
  )
  source = builder.as_data_source(split="train")
  assert len(source) == 2
  assert sorted(source[i]["id"] for i in range(2)) == [b"one", b"two"]

  def check(metadata):
    assert metadata["num_skipped"] == {"train": 1}
    (item,) = metadata["skipped"]["train"]
    assert item["path"] == "broken.wav" and item["line"] == 2
    assert "cannot be read as audio" in item["reason"]

  check(builder.info.metadata)
  # Recorded on disk with the dataset, not only in memory.
  check(tfds.builder("local_manifest/skipping", data_dir=str(data_dir)).info.metadata)
  saved = json.loads((pathlib.Path(builder.data_dir) / "metadata.json").read_text())
  check(saved)


def test_overwrite_rebuilds(corpus_with_corrupt_file, tmp_path):
  kwargs = dict(name="ow", on_error="skip", default_language="en")
  data_dir = tmp_path / "data"
  assert (
    len(
      lm.build_local_manifest(corpus_with_corrupt_file, data_dir, **kwargs).as_data_source(
        split="train"
      )
    )
    == 2
  )
  (corpus_with_corrupt_file / "train.tsv").write_text("path\ttext\none.wav\tone\n")
  reused = lm.build_local_manifest(corpus_with_corrupt_file, data_dir, **kwargs)
  assert len(reused.as_data_source(split="train")) == 2  # Existing dataset reused.
  rebuilt = lm.build_local_manifest(corpus_with_corrupt_file, data_dir, overwrite=True, **kwargs)
  assert len(rebuilt.as_data_source(split="train")) == 1
  assert rebuilt.info.metadata["num_skipped"] == {"train": 0}


# ---------------------------------------------------------------- item errors


@pytest.fixture
def bad_items(tmp_path) -> tuple[pathlib.Path, list[lm.ManifestRow]]:
  sf.write(tmp_path / "ok.wav", _sine(200, SR, 1600, 0.3), SR, subtype="PCM_16")
  sf.write(tmp_path / "long.wav", _sine(200, SR, 3 * SR, 0.3), SR, subtype="PCM_16")
  sf.write(tmp_path / "empty.wav", np.zeros(0), SR, subtype="PCM_16")
  sf.write(tmp_path / "nan.wav", np.array([0.1, np.nan] * 100, np.float32), SR, subtype="FLOAT")
  lines = [
    "path\ttext\tlanguage\twords_lang\tslots\tid",
    "empty.wav\thello\ten\t\t\t",  # 2
    "nan.wav\thello\ten\t\t\t",  # 3
    "ok.wav\thello\txx\t\t\t",  # 4
    "ok.wav\t?! ...\ten\t\t\t",  # 5
    "ok.wav\thello big world\t\ten en\t\t",  # 6
    'ok.wav\thello\ten\t\t[["room", "kitchen"]]\t',  # 7
    "missing.wav\thello\ten\t\t\t",  # 8
    "long.wav\thello\ten\t\t\t",  # 9
    "ok.wav\thello\t\ten\t\tx1",  # 10: fine
    "ok.wav\tbonjour\tmixed\t\t\t",  # 11
    "ok.wav\thola mundo\t\tes zz\t\t",  # 12
  ]
  (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
  return tmp_path, lm.read_manifest(tmp_path / "train.tsv")


@pytest.mark.parametrize(
  "line, path, reason",
  [
    (2, "empty.wav", "zero samples"),
    (3, "nan.wav", "NaN or infinite"),
    (4, "ok.wav", "unknown language code 'xx' in language"),
    (5, "ok.wav", "empty transcript"),
    (6, "ok.wav", "words_lang has 2 codes but the normalised text 'hello big world' has 3"),
    (7, "ok.wav", "slot value 'kitchen' does not appear"),
    (8, "missing.wav", "not found"),
    (9, "long.wav", "longer than max_seconds"),
    (11, "ok.wav", "language 'mixed' needs a words_lang"),
    (12, "ok.wav", "unknown language code 'zz' in words_lang"),
  ],
)
def test_bad_items_name_line_and_file(bad_items, line, path, reason):
  base_dir, rows = bad_items
  (row,) = [r for r in rows if r.line == line]
  with pytest.raises(lm.ManifestError) as info:
    lm.row_to_example(row, base_dir=base_dir, max_seconds=2.0)
  message = str(info.value)
  assert f"train.tsv:{line} ({path})" in message
  assert reason in message


def test_good_item_next_to_bad_ones(bad_items):
  base_dir, rows = bad_items
  (row,) = [r for r in rows if r.line == 10]
  example = lm.row_to_example(row, base_dir=base_dir, max_seconds=2.0)
  assert example["id"] == "x1" and example["language"] == "en"
  schema.features().encode_example(example)


def test_item_without_language_needs_default(bad_items):
  base_dir, _ = bad_items
  row = lm.ManifestRow("m.jsonl", 1, {"path": "ok.wav", "text": "hello"})
  with pytest.raises(lm.ManifestError, match="no language"):
    lm.row_to_example(row, base_dir=base_dir)
  assert lm.row_to_example(row, base_dir=base_dir, default_language="de")["language"] == "de"


def test_manifest_level_errors(tmp_path):
  (tmp_path / "train.tsv").write_text("path\ttranscript\nok.wav\thi\n")
  with pytest.raises(lm.ManifestError, match="unknown columns \\['transcript'\\]"):
    lm.read_manifest(tmp_path / "train.tsv")
  (tmp_path / "train.tsv").write_text("text\tlanguage\nhi\ten\n")
  with pytest.raises(lm.ManifestError, match="missing required columns \\['path'\\]"):
    lm.read_manifest(tmp_path / "train.tsv")
  (tmp_path / "train.tsv").write_bytes(b"path\ttext\xff\nok.wav\thi\n")
  with pytest.raises(lm.ManifestError, match="train.tsv:1: the header line is not valid UTF-8"):
    lm.read_manifest(tmp_path / "train.tsv")
  (tmp_path / "train.jsonl").write_text("{}\n")
  with pytest.raises(lm.ManifestError, match="two manifests"):
    lm.find_manifests(tmp_path)
  with pytest.raises(ValueError, match="on_error"):
    lm.LocalManifestConfig(name="x", manifest_dir=str(tmp_path), on_error="ignore")
  with pytest.raises(ValueError, match="Unknown language code 'xx'"):
    lm.LocalManifestConfig(name="x", manifest_dir=str(tmp_path), default_language="xx")


def test_unparsable_lines_are_item_errors(tmp_path):
  (tmp_path / "a.tsv").write_text(
    "\ufeffpath\ttext\tslots\nx.wav\thi\nx.wav\thi\t[oops\n", encoding="utf-8"
  )
  rows = lm.read_manifest(tmp_path / "a.tsv")  # The byte-order mark is not part of "path".
  assert [r.line for r in rows] == [2, 3]
  for row, reason in zip(
    rows, ["2 tab-separated fields where the header has 3", "slots is not"], strict=True
  ):
    with pytest.raises(lm.ManifestError, match=rf"a\.tsv:{row.line} \(x\.wav\): {reason}"):
      lm.row_to_example(row, base_dir=tmp_path)
  (tmp_path / "b.jsonl").write_text('{"path": "x.wav", "text": "hi"}\n\n{not json\n[1]\n')
  rows = lm.read_manifest(tmp_path / "b.jsonl")
  assert [r.line for r in rows] == [1, 3, 4]
  with pytest.raises(lm.ManifestError, match=r"b\.jsonl:3: invalid JSON"):
    lm.row_to_example(rows[1], base_dir=tmp_path)
  with pytest.raises(lm.ManifestError, match=r"b\.jsonl:4: a JSONL line must be a JSON object"):
    lm.row_to_example(rows[2], base_dir=tmp_path)


def test_duplicate_ids_are_an_item_error(tmp_path):
  for sub in ("a", "b"):
    (tmp_path / sub).mkdir()
    sf.write(tmp_path / sub / "same.wav", _sine(200, SR, 1600, 0.3), SR, subtype="PCM_16")
  (tmp_path / "train.jsonl").write_text(
    '{"path": "a/same.wav", "text": "one"}\n{"path": "b/same.wav", "text": "two"}\n'
  )
  with pytest.raises(lm.ManifestError, match=r"train\.jsonl:2 \(b/same\.wav\): id 'same' already"):
    lm.build_local_manifest(tmp_path, tmp_path / "data", default_language="en")


def test_non_utf8_lines_are_item_errors_and_skipped(tmp_path):
  sf.write(tmp_path / "ok.wav", _sine(200, SR, 1600, 0.3), SR, subtype="PCM_16")
  (tmp_path / "train.tsv").write_bytes(
    b"path\ttext\nok.wav\thello\nok.wav\tcaf\xe9\n"  # Line 3: Latin-1, not UTF-8.
  )
  rows = lm.read_manifest(tmp_path / "train.tsv")
  assert [r.line for r in rows] == [2, 3]
  with pytest.raises(lm.ManifestError, match=r"train\.tsv:3: not valid UTF-8 \(byte 0xe9 at col"):
    lm.row_to_example(rows[1], base_dir=tmp_path, default_language="en")
  builder = lm.build_local_manifest(
    tmp_path, tmp_path / "data", on_error="skip", default_language="en"
  )
  assert len(builder.as_data_source(split="train")) == 1
  (skipped,) = builder.info.metadata["skipped"]["train"]
  assert skipped["line"] == 3 and "not valid UTF-8" in skipped["reason"]


def test_audio_outside_the_folder_needs_allow_outside(tmp_path):
  folder = tmp_path / "set"
  folder.mkdir()
  sf.write(tmp_path / "outside.wav", _sine(200, SR, 1600, 0.3), SR, subtype="PCM_16")
  for path in ("../outside.wav", str(tmp_path / "outside.wav")):
    (folder / "train.tsv").write_text(f"path\ttext\n{path}\thello\n")
    (row,) = lm.read_manifest(folder / "train.tsv")
    with pytest.raises(lm.ManifestError, match="outside the manifest's folder"):
      lm.row_to_example(row, base_dir=folder, default_language="en")
    example = lm.row_to_example(row, base_dir=folder, default_language="en", allow_outside=True)
    assert example["text"] == "hello"


def test_rows_without_text_keep_their_intent_and_the_vocabularies(tmp_path):
  sf.write(tmp_path / "a.wav", _sine(200, SR, 1600, 0.3), SR, subtype="PCM_16")
  (tmp_path / "train.jsonl").write_text(
    "\n".join(
      json.dumps(row)
      for row in [
        {
          "path": "a.wav",
          "id": "1",
          "text": "lights on in the kitchen",
          "intent": "lights_on",
          "slots": [["room", "kitchen"]],
        },
        {"path": "a.wav", "id": "2", "intent": "play_music"},  # No transcript: kept.
        {"path": "a.wav", "id": "3"},  # Neither: an error.
        {
          "path": "a.wav",
          "id": "4",
          "intent": "x",
          "slots": [["room", "kitchen"]],
        },  # Slots need text.
      ]
    )
    + "\n"
  )
  (tmp_path / "test.jsonl").write_text(json.dumps({"path": "a.wav", "intent": "unseen"}) + "\n")
  builder = lm.build_local_manifest(
    tmp_path, tmp_path / "data", on_error="skip", default_language="en"
  )
  train = _by_id(builder.as_data_source(split="train"))
  assert sorted(train) == ["1", "2"]
  assert train["2"]["text"].decode() == "" and train["2"]["intent"].decode() == "play_music"
  assert train["2"]["phonemes"].decode() == ""
  reasons = {s["line"]: s["reason"] for s in builder.info.metadata["skipped"]["train"]}
  assert "missing or empty 'text'" in reasons[3] and "missing or empty 'text'" in reasons[4]
  # The train split's labels, not the test split's.
  assert builder.info.metadata["intents"] == ["lights_on", "play_music"]
  assert builder.info.metadata["slot_types"] == ["room"]
  assert builder.info.metadata["num_without_text"] == {"train": 1, "test": 1}
