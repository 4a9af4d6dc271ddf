"""Phoneme transcriptions (espeak-ng G2P), the phone inventory, and their place in datasets."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds

import moe_asr.data.builders  # noqa: F401  (registers moe_asr_synth)
from moe_asr.data import languages, phonemes, schema
from moe_asr.data.builders import local_manifest as lm
from moe_asr.data.builders import synth
from moe_asr.data.synth import grammar, tts

# One everyday sentence per registered language (normalised text).
SENTENCES = {
  "en": "turn on the lights in the kitchen",
  "es": "pon la música en la cocina",
  "de": "mach das licht im wohnzimmer an",
  "fr": "allume la lumière de la cuisine",
  "hi": "रसोई की बत्ती जला दो",
  "cmn": "打开 厨房 的 灯",
  "ru": "включи свет на кухне",
}


def _s(x) -> str:
  return x.decode() if isinstance(x, bytes) else str(x)


@pytest.fixture(scope="module")
def grammar_inventory() -> phonemes.PhoneInventory:
  """The inventory of 40 sampled utterances a language (other text than `SENTENCES`)."""
  rng = np.random.default_rng(7)
  texts = []
  for code in grammar.SUPPORTED_LANGUAGES:
    for _ in range(40):
      utt = grammar.sample_utterance(rng, code)
      texts.append(phonemes.phonemize_text(utt.text, utt.words_lang))
  return phonemes.PhoneInventory.build(texts)


def test_sentences_cover_every_language():
  assert set(SENTENCES) == set(languages.LANGUAGE_CODES) == set(phonemes.supported_languages())


@pytest.mark.parametrize("code", list(SENTENCES))
def test_every_language_gives_phones_in_the_inventory(code, grammar_inventory):
  words = SENTENCES[code].split()
  phones = phonemes.phonemize_words(words, [code] * len(words), None)
  assert len(phones) == len(words)
  assert all(phones), (code, phones)
  for word in phones:
    assert not any(ch.isspace() for ch in word) and "|" not in word
  # Without words_lang, the default language reads every word.
  assert phones == phonemes.phonemize_words(words, [], code)
  ids = grammar_inventory.encode(phones)
  assert phonemes.UNK_ID not in ids, (code, phones)
  assert ids.count(phonemes.WORD_BOUNDARY_ID) == len(words) - 1
  units = {u for word in phones for u in phonemes.split_units(word)}
  assert units <= set(grammar_inventory.units)
  if code == "cmn":  # Tones are digits.
    assert any(u.isdigit() for u in units) and "ɜ" not in units


def test_languages_use_their_own_voices():
  assert phonemes.phonemize_text("allume la lumière", language="fr") == "alym | la | lymjɛʁ"
  assert phonemes.phonemize_words(["ist"], ["de"], None) == ["ɪst"]
  # The same spelling reads differently in each language.
  assert len({phonemes.phonemize_words(["gente"], [], code)[0] for code in ("es", "fr")}) == 2


def test_merged_and_split_words_stay_one_entry_per_word():
  # espeak reads "on the" as one word; Mandarin words as several syllables.
  words = "turn on the lights".split()
  assert phonemes.phonemize_words(words, [], "en") == ["tɜːn", "ɔn", "ðə", "laɪts"]
  words = ["百分之", "六十五"]
  phones = phonemes.phonemize_words(words, ["cmn", "cmn"], None)
  assert len(phones) == 2 and all(phones)
  assert phones == [phonemes.phonemize_words([w], [], "cmn")[0] for w in words]


def test_code_switched_words_use_their_own_language():
  words = "taylor swift के songs play करो".split()
  langs = ["en", "en", "hi", "en", "en", "hi"]
  phones = phonemes.phonemize_words(words, langs, "hi")
  assert len(phones) == len(words) and all(phones)
  # Each run of one language is read as that language alone.
  assert phones[0:2] == phonemes.phonemize_words(words[0:2], [], "en")
  assert phones[2:3] == phonemes.phonemize_words(words[2:3], [], "hi")
  assert phones[3:5] == phonemes.phonemize_words(words[3:5], [], "en")
  assert phones[5:6] == phonemes.phonemize_words(words[5:6], [], "hi")
  assert phones[3] != phonemes.phonemize_words(["songs"], [], "hi")[0]
  # Empty codes fall back to the default language.
  assert phonemes.phonemize_words(words, ["en", "en", "", "en", "en", ""], "hi") == phones
  stored = phonemes.phonemize_text(" ".join(words), langs)
  assert phonemes.split(stored) == phones


def test_unsupported_language_is_a_clear_error():
  with pytest.raises(ValueError, match="'xx'"):
    phonemes.phonemize_words(["hello"], ["xx"], "en")
  with pytest.raises(ValueError, match="'mixed'"):
    phonemes.phonemize_text("hello there", language=languages.MIXED)
  with pytest.raises(ValueError, match="No language for the word 'hello'"):
    phonemes.phonemize_words(["hello"], [], None)
  with pytest.raises(ValueError, match="2 codes for 1 words"):
    phonemes.phonemize_words(["hello"], ["en", "en"], None)
  assert not phonemes.is_supported("xx") and phonemes.is_supported("cmn")


def test_word_without_phones_keeps_its_place():
  assert phonemes.phonemize_words(["'", "a"], [], "en")[0] == ""
  assert phonemes.phonemize_words([], [], "en") == []


def test_join_and_split():
  assert phonemes.join(["ɔn", "", "ðə"]) == "ɔn |  | ðə"
  assert phonemes.split("ɔn |  | ðə") == ["ɔn", "", "ðə"]
  assert phonemes.split(b"a | b") == ["a", "b"]
  assert phonemes.split("") == []
  with pytest.raises(ValueError):
    phonemes.join(["a b"])
  with pytest.raises(ValueError):
    phonemes.join(["a|b"])


@pytest.mark.parametrize(
  "phones, units",
  [
    ("tʰoːr.eː", ["tʰ", "oː", "r.", "eː"]),  # Aspiration, length, espeak's "r.".
    ("t͡ʃa", ["t͡ʃ", "a"]),  # A tie bar joins two symbols.
    ("lymjɛ̃", ["l", "y", "m", "j", "ɛ̃"]),  # Combining tilde.
    ("fɑ5ŋ", ["f", "ɑ", "5", "ŋ"]),  # A tone digit is a unit.
    ('pʲesʲnʲu"', ["pʲ", "e", "sʲ", "nʲ", 'u"']),
    ("ˈhɛˌloʊ | wɜːld", ["h", "ɛ", "l", "o", "ʊ", "w", "ɜː", "l", "d"]),  # Stress dropped.
    ("", []),
  ],
)
def test_split_units(phones, units):
  assert phonemes.split_units(phones) == units


def test_inventory_ids_encode_decode_and_json(tmp_path):
  inv = phonemes.PhoneInventory.build(["ɔn | ðə | laɪts", ["tʰa", "ɛ̃"], b"5"])
  assert inv.units[:3] == (phonemes.BLANK, phonemes.UNK, phonemes.WORD_BOUNDARY)
  assert list(inv.units[3:]) == sorted(inv.units[3:])
  assert inv.size == len(inv) == 3 + len(set(inv.units[3:])) == 15
  assert phonemes.PhoneInventory(reversed(inv.units[3:])) == inv  # Order-independent.

  ids = inv.encode("ɔn | ðə | laɪts")
  assert phonemes.BLANK_ID not in ids and phonemes.UNK_ID not in ids
  assert ids.count(phonemes.WORD_BOUNDARY_ID) == 2
  assert inv.decode(ids) == ["ɔn", "ðə", "laɪts"]
  assert inv.encode(["ɔn", "ðə", "laɪts"]) == ids
  # Blanks are dropped and empty words leave no boundary.
  assert inv.encode(["ɔn", "", "ðə"]) == inv.encode("ɔn | ðə")
  assert inv.decode([0, *inv.encode("ɔn"), 0, 2, 2, *inv.encode("ðə"), 2]) == ["ɔn", "ðə"]
  assert inv.id_to_unit(inv.unit_to_id("tʰ")) == "tʰ"

  assert phonemes.PhoneInventory.from_json(inv.to_json()) == inv
  assert phonemes.PhoneInventory.from_json(json.loads(inv.to_json())) == inv
  inv.save(tmp_path / "phones.json")
  assert phonemes.PhoneInventory.load(tmp_path / "phones.json") == inv
  with pytest.raises(ValueError):
    phonemes.PhoneInventory.from_json({"units": ["a", "b"]})
  with pytest.raises(ValueError):
    phonemes.PhoneInventory(["ts"])  # Two units.


def test_unknown_unit_is_id_1():
  inv = phonemes.PhoneInventory(["a", "l"])
  assert inv.unit_to_id("ʁ") == phonemes.UNK_ID == 1
  assert inv.encode("ʁa | la") == [1, inv.unit_to_id("a"), 2, inv.unit_to_id("l"), 3]
  assert inv.decode(inv.encode("ʁa")) == [f"{phonemes.UNK}a"]


def test_phonemizing_leaves_synthesis_reproducible():
  # The G2P engine must not keep the synthesiser's espeak library loaded.
  phonemes.phonemize_text("hello there", language="en")
  voice = tts.Voice("m3", 160, 50)
  with warnings.catch_warnings():
    warnings.simplefilter("error", RuntimeWarning)
    first = tts.synthesize("hello there", "en", voice)
    phonemes.phonemize_text("hola", language="es")
    second = tts.synthesize("hello there", "en", voice)
  np.testing.assert_array_equal(first, second)


# ---------------------------------------------------------------- datasets


def test_schema_has_phonemes():
  example = schema.empty_example("x", np.zeros(10, np.int16), "a")
  assert example["phonemes"] == ""
  schema.features().encode_example(example)


def test_tiny_corpus_has_phonemes_everywhere(tiny_corpus):
  data_dir, _, _ = tiny_corpus
  builder = tfds.builder("moe_asr_synth/tiny", data_dir=str(data_dir))
  assert str(builder.info.version) == "1.1.0"
  inventory = synth.phone_inventory(builder)
  assert synth.phones_path(builder).exists()
  stored = builder.info.metadata["phone_inventory"]
  assert phonemes.PhoneInventory.from_json(stored) == inventory
  assert 60 < inventory.size < 250
  checked_cs = 0
  for split in builder.info.splits:
    for ex in builder.as_data_source(split=split):
      words = _s(ex["text"]).split()
      words_lang = [_s(c) for c in ex["words_lang"]]
      phones = phonemes.split(_s(ex["phonemes"]))
      assert len(phones) == len(words), (split, _s(ex["id"]))
      assert all(phones), (split, _s(ex["id"]), phones)
      ids = inventory.encode(phones)
      assert ids and phonemes.UNK_ID not in ids
      if len(set(words_lang)) > 1:  # Code-switched: a single-word run reads alone.
        checked_cs += 1
        for i, (word, code) in enumerate(zip(words, words_lang, strict=True)):
          alone = (i == 0 or words_lang[i - 1] != code) and (
            i + 1 == len(words) or words_lang[i + 1] != code
          )
          if alone:
            assert phones[i] == phonemes.phonemize_words([word], [code], None)[0]
  assert checked_cs >= 16


def test_local_manifest_stores_phonemes(tmp_path, monkeypatch):
  root = tmp_path / "manifests"
  root.mkdir()
  for name in ("a", "b", "c"):
    sf.write(root / f"{name}.wav", np.full(1600, 0.1, np.float32), schema.SAMPLE_RATE)
  (root / "train.tsv").write_text(
    "path\ttext\tlanguage\na.wav\tTurn on the lights!\ten\nb.wav\tPon la música\t\n",
    encoding="utf-8",
  )
  line = {"path": "c.wav", "text": "Pon shape of you", "words_lang": ["es", "en", "en", "en"]}
  (root / "test.jsonl").write_text(json.dumps(line) + "\n", encoding="utf-8")

  builder = lm.build_local_manifest(root, tmp_path / "tfds", name="g2p", default_language="es")
  train = {_s(ex["id"]): ex for ex in builder.as_data_source(split="train")}
  assert phonemes.split(_s(train["a"]["phonemes"])) == ["tɜːn", "ɔn", "ðə", "laɪts"]
  assert phonemes.split(_s(train["b"]["phonemes"])) == phonemes.phonemize_words(
    ["pon", "la", "música"], [], "es"
  )
  test = builder.as_data_source(split="test")[0]
  phones = phonemes.split(_s(test["phonemes"]))
  assert len(phones) == 4 and all(phones)
  assert phones[1:] == phonemes.phonemize_words(["shape", "of", "you"], [], "en")
  meta = builder.info.metadata
  assert meta["num_without_phonemes"] == {"train": 0, "test": 0}
  inventory = phonemes.PhoneInventory.from_json(meta["phone_inventory"])
  for ex in [*train.values(), test]:
    assert phonemes.UNK_ID not in inventory.encode(_s(ex["phonemes"]))

  # A language without G2P: stored without phonemes, counted, and the build goes on.
  monkeypatch.setattr(phonemes, "is_supported", lambda code: code != "es")
  builder = lm.build_local_manifest(root, tmp_path / "tfds2", name="g2p", default_language="es")
  train = {_s(ex["id"]): ex for ex in builder.as_data_source(split="train")}
  assert train["a"]["phonemes"] and not train["b"]["phonemes"]
  assert not builder.as_data_source(split="test")[0]["phonemes"]
  assert builder.info.metadata["num_without_phonemes"] == {"train": 1, "test": 1}
