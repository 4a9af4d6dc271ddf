"""Tests for the TFDS catalog adapters (on TFDS's mocked data: nothing is downloaded)."""

from __future__ import annotations

import io
import math
import pickle

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds

from moe_asr.data import catalog, schema, text

SR = schema.SAMPLE_RATE


def _mock(num_examples: int = 3):
  return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


def _expected_text(name: str, raw: dict) -> str:
  if name == "xtreme_s":
    return raw["raw_transcription"]
  if name == "common_voice":
    return raw["sentence"]
  if name == "librispeech":
    return raw["text"]
  if name == "speech_commands":
    label = catalog.SPEECH_COMMANDS_LABELS[int(raw["label"])]
    return "" if label.startswith("_") else label
  return catalog.DIGIT_WORDS[int(raw["label"])]


@pytest.mark.parametrize(
  "name, config, language, source_rate",
  [
    ("xtreme_s", "fleurs.hi_in", "hi", 16_000),
    ("xtreme_s", "fleurs.cmn_hans_cn", "cmn", 16_000),
    ("common_voice", "en", "en", 48_000),
    ("common_voice", "zh-CN", "cmn", 48_000),
    ("librispeech", None, "en", 16_000),
    ("speech_commands", None, "en", 16_000),
    ("spoken_digit", None, "en", 8_000),
  ],
)
def test_adapter_produces_schema_examples(name, config, language, source_rate):
  features = schema.features()
  tfds_name = f"{name}/{config}" if config else name
  with _mock(3):
    source = catalog.load(name, "train", config=config)
    raw_source = tfds.data_source(tfds_name, split="train")
    assert len(source) == 3
    for i in range(3):
      ex, raw = source[i], raw_source[i]
      features.encode_example(ex)  # Raises if any field does not fit the schema.
      raw_audio = raw[catalog.ADAPTERS[name].audio_key]
      assert ex["audio"].dtype == np.int16 and ex["audio"].ndim == 1
      assert len(ex["audio"]) == math.ceil(len(raw_audio) * SR / source_rate)
      if source_rate == SR:  # No resampling: the samples themselves are kept.
        np.testing.assert_array_equal(ex["audio"], raw_audio)
      assert ex["text"] == text.normalize(_expected_text(name, raw))
      assert ex["language"] == language
      assert ex["words_lang"] == [language] * len(ex["text"].split())
      assert ex["segments"].shape == (0, 3)
      assert ex["slots"] == {"type": [], "value": []}
      assert ex["snr_db"] == np.inf
      assert ex["id"].startswith(name)
    assert len({source[i]["id"] for i in range(3)}) == 3


def test_per_dataset_labels_and_speakers():
  with _mock(4):
    commands = catalog.load("speech_commands", "train")
    raw = tfds.data_source("speech_commands", split="train")
    for i in range(4):
      assert commands[i]["intent"] == catalog.SPEECH_COMMANDS_LABELS[int(raw[i]["label"])]
    assert commands[1]["id"] == "speech_commands/train/1"
    libri = catalog.load("librispeech", "train")
    raw = tfds.data_source("librispeech", split="train")
    assert libri[0]["speaker"] == str(int(raw[0]["speaker_id"]))
    assert libri[0]["id"] == f"librispeech/default/{raw[0]['id']}"
    cv = catalog.load("common_voice/en", "train")
    raw = tfds.data_source("common_voice/en", split="train")
    assert cv[0]["speaker"] == raw[0]["client_id"]


def test_as_numpy_examples_have_bytes_text():
  with _mock(2):
    for raw in tfds.as_numpy(tfds.load("xtreme_s/fleurs.es_419", split="test")):
      assert isinstance(raw["raw_transcription"], bytes)
      ex = catalog.to_schema("xtreme_s", raw, builder_config_name="fleurs.es_419")
      schema.features().encode_example(ex)
      assert ex["text"] == text.normalize(raw["raw_transcription"].decode())
      assert ex["language"] == "es"


@pytest.mark.parametrize(
  "tag, code",
  [
    ("hi_in", "hi"),
    ("es_419", "es"),
    ("cmn_hans_cn", "cmn"),
    ("en", "en"),
    ("zh-CN", "cmn"),
    ("zh-TW", "cmn"),
    ("ru_ru", "ru"),
    ("de-DE", "de"),
    ("fr_fr", "fr"),
  ],
)
def test_catalog_language(tag, code):
  assert catalog.catalog_language(tag) == code


@pytest.mark.parametrize("tag, code", [("af_za", "af"), ("zh-HK", "yue"), ("sv-SE", "sv")])
def test_unknown_catalog_language_names_it(tag, code):
  with pytest.raises(ValueError, match=f"{tag!r} \\(code {code!r}\\) is not in"):
    catalog.catalog_language(tag)


def test_load_rejects_before_opening_anything():
  # Nothing is mocked: these must fail before tfds is asked for data.
  with pytest.raises(ValueError, match="supported: common_voice, librispeech, speech_commands"):
    catalog.load("timit", "train")
  with pytest.raises(ValueError, match="'af_za' \\(code 'af'\\)"):
    catalog.load("xtreme_s", "train", config="fleurs.af_za")
  with pytest.raises(ValueError, match="needs a config"):
    catalog.load("xtreme_s", "train")
  with pytest.raises(ValueError, match="'sv-SE'"):
    catalog.load("common_voice/sv-SE", "train")
  with pytest.raises(ValueError, match="has no configs"):
    catalog.load("spoken_digit", "train", config="x")


def test_fleurs_all_takes_language_from_example():
  example = {
    "audio": np.arange(100, dtype=np.int64),
    "raw_transcription": "Namaste, Duniya!",
    "transcription": "namaste duniya",
    "language": "Hindi",
    "path": "/data/fleurs/hi_in/audio/train/1234.wav",
  }
  ex = catalog.to_schema("xtreme_s", example, builder_config_name="fleurs.all")
  assert ex["language"] == "hi" and ex["words_lang"] == ["hi", "hi"]
  assert ex["text"] == "namaste duniya" and ex["id"] == "xtreme_s/fleurs.all/1234"
  with pytest.raises(ValueError, match="'Afrikaans' is not in"):
    catalog.to_schema(
      "xtreme_s", {**example, "language": "Afrikaans"}, builder_config_name="fleurs.all"
    )


def test_spoken_digit_resampled_from_8k():
  n = 4000
  wave = np.rint(10000 * np.sin(2 * np.pi * 500 * np.arange(n) / 8000)).astype(np.int64)
  ex = catalog.to_schema(
    "spoken_digit", {"audio": wave, "label": 7, "audio/filename": "7_jackson_32.wav"}
  )
  assert (
    ex["text"] == "seven" and ex["speaker"] == "jackson" and ex["id"] == "spoken_digit/7_jackson_32"
  )
  audio = ex["audio"]
  assert audio.dtype == np.int16 and len(audio) == 2 * n
  spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
  assert np.argmax(spectrum) * SR / len(audio) == pytest.approx(500, abs=SR / len(audio))
  # Amplitude kept on the 16-bit scale (resampler ripple well under 2%).
  assert np.max(np.abs(audio[500:-500])) == pytest.approx(10000, rel=0.02)


def test_encoded_audio_bytes_are_decoded():
  wave = np.rint(8000 * np.sin(2 * np.pi * 250 * np.arange(3200) / SR)).astype(np.int16)
  buf = io.BytesIO()
  sf.write(buf, wave, SR, format="FLAC", subtype="PCM_16")
  example = {"speech": buf.getvalue(), "text": "HELLO WORLD", "speaker_id": 84, "id": "84-1-0"}
  ex = catalog.to_schema("librispeech", example, builder_config_name="lazy_decode")
  np.testing.assert_array_equal(ex["audio"], wave)
  assert ex["text"] == "hello world" and ex["speaker"] == "84"


def test_schema_data_source_over_a_list():
  rows = [
    {"audio": np.full(160, i, np.int16), "label": label} for i, label in enumerate([0, 10, 11, 9])
  ]
  source = catalog.SchemaDataSource(rows, "speech_commands", split="validation")
  assert len(source) == 4
  assert source[0]["text"] == "down" and source[0]["intent"] == "down"
  assert (
    source[1]["text"] == "" and source[1]["intent"] == "_silence_" and source[1]["words_lang"] == []
  )
  assert source[2]["intent"] == "_unknown_"
  assert source[-1]["text"] == "yes" and source[-1]["id"] == "speech_commands/validation/3"
  np.testing.assert_array_equal(source[2]["audio"], np.full(160, 2, np.int16))
  batch = source.__getitems__([3, 0])
  assert [b["id"] for b in batch] == [
    "speech_commands/validation/3",
    "speech_commands/validation/0",
  ]
  with pytest.raises(IndexError):
    source[4]
  # Grain worker processes receive the source pickled.
  clone = pickle.loads(pickle.dumps(source))
  assert clone[0]["text"] == "down" and len(clone) == 4
  for i in range(4):
    schema.features().encode_example(source[i])


def test_the_fleurs_preset_trains_on_a_mixture_of_its_languages(tmp_path):
  """`fleurs_large`'s data side on mocked FLEURS: one tokenizer over every language's
  transcripts, and training batches drawn from all six datasets."""
  from moe_asr import config_lib
  from moe_asr.training import inputs

  cfg = config_lib.load_config(
    "fleurs_large",
    [f"data.data_dir={tmp_path / 'tfds'}", "data.buckets=((32.0,4),)", "data.vocab_size=300"],
  )
  parts = inputs.training_parts(cfg)
  assert [p.data.name for p, _ in parts] == [f"xtreme_s/fleurs.{x}" for x in
                                             ("en_us", "de_de", "fr_fr", "es_419", "hi_in",
                                              "cmn_hans_cn")]  # fmt: skip
  with _mock(6):
    data = inputs.load_run_data(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "tokenizer.model").exists()
    pipe = inputs.make_pipeline(
      cfg, cfg.data.train_split, data, train=True, process_index=0, process_count=1
    )
    assert isinstance(pipe, inputs.MixturePipeline) and len(pipe.pipelines) == 6
    languages_seen = set()
    for batch, _ in zip(pipe, range(24), strict=False):
      assert batch["audio"].shape[0] == 4
      real = batch["example_mask"].astype(bool)
      languages_seen |= {int(x) for x in batch["language"][real]}
  from moe_asr.data import languages

  six = {languages.language_index(c) for c in ("en", "de", "fr", "es", "hi", "cmn")}
  assert languages_seen == six  # Each example labelled with its dataset's language.
