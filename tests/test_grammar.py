"""Tests of the spoken-command grammar (templates, entities, code-switching)."""

import re
import unicodedata

import numpy as np
import pytest

from moe_asr.data import languages
from moe_asr.data.synth import (
  grammar,
  lang_cmn,
  lang_de,
  lang_en,
  lang_es,
  lang_fr,
  lang_hi,
  lang_ru,
)
from moe_asr.data.text import is_cjk, normalize

LANGS = grammar.SUPPORTED_LANGUAGES
PAIRS = grammar.CODE_SWITCH_PAIRS
MODULES = {
  "en": lang_en,
  "es": lang_es,
  "de": lang_de,
  "fr": lang_fr,
  "hi": lang_hi,
  "cmn": lang_cmn,
  "ru": lang_ru,
}


def _script_ok(word: str, lang: str) -> bool:
  """Whether every letter of `word` is in the script of `lang`."""
  letters = [ch for ch in word if unicodedata.category(ch)[0] == "L"]
  if not letters:
    return False
  if lang == "cmn":
    return all(is_cjk(ch) for ch in letters)
  script = {"hi": "DEVANAGARI", "ru": "CYRILLIC"}.get(lang, "LATIN")
  return all(unicodedata.name(ch).startswith(script) for ch in letters)


def _check_utterance(u: grammar.Utterance, intent: str) -> None:
  assert u.intent == intent
  assert u.text == normalize(u.text)
  assert not re.search(r"\d", u.text), u.text  # Numbers are spelled out.
  words = u.text.split(" ")
  assert len(u.words_lang) == len(words)
  for chunk in u.chunks:
    assert chunk.text and chunk.text == normalize(chunk.text)
  for word, lang in zip(words, u.words_lang, strict=True):
    assert _script_ok(word, lang), (word, lang, u.text)
  for slot_type, value in u.slots:
    assert slot_type in grammar.SLOT_TYPES
    value_words = value.split(" ")
    n = len(value_words)
    assert value and any(words[i : i + n] == value_words for i in range(len(words) - n + 1)), (
      value,
      u.text,
    )
  # Named entities pair up with the named-entity slots; each is a listed entity.
  named_slots = [s for s in u.slots if s[0] in grammar.NAMED_ENTITY_TYPES]
  assert len(named_slots) == len(u.entities)
  langs = set(u.words_lang)
  for (slot_type, value), (entity_type, entity) in zip(named_slots, u.entities, strict=True):
    assert slot_type == entity_type
    assert any(entity in grammar.entities(lang, slot_type) for lang in langs)
    if langs <= {"en", "cmn"}:  # Languages that do not inflect entities.
      assert value == entity


def test_public_constants():
  assert len(grammar.INTENTS) >= 15 and len(set(grammar.INTENTS)) == len(grammar.INTENTS)
  snake = re.compile(r"^[a-z]+(_[a-z]+)*$")
  assert all(snake.match(x) for x in grammar.INTENTS + grammar.SLOT_TYPES)
  assert set(LANGS) == {"en", "es", "de", "fr", "hi", "cmn", "ru"}
  assert set(LANGS) <= set(languages.LANGUAGE_CODES)
  for pair in [("es", "en"), ("hi", "en"), ("cmn", "en"), ("en", "es")]:
    assert pair in PAIRS


@pytest.mark.parametrize("lang", LANGS)
def test_monolingual_every_intent(lang):
  rng = np.random.default_rng(0)
  for intent in grammar.INTENTS:
    for _ in range(40):
      u = grammar.sample_utterance(rng, lang, intent=intent)
      _check_utterance(u, intent)
      assert len(u.chunks) == 1 and u.chunks[0].lang == lang
      assert u.language == lang
      assert set(u.words_lang) == {lang}


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def test_code_switched_every_intent(pair):
  matrix, embed = pair
  rng = np.random.default_rng(1)
  for intent in grammar.INTENTS:
    for _ in range(40):
      u = grammar.sample_utterance(rng, matrix, embed=embed, intent=intent)
      _check_utterance(u, intent)
      assert len(u.chunks) >= 2
      assert all(a.lang != b.lang for a, b in zip(u.chunks, u.chunks[1:], strict=False))
      assert {c.lang for c in u.chunks} == {matrix, embed}
      assert u.language == languages.MIXED


def test_code_switching_realistic_patterns():
  """The switches the corpus is built around occur: English time words before a Hindi
  "बजे", English nouns with a Hindi light verb, English titles inside Spanish."""
  rng = np.random.default_rng(2)
  hi = [grammar.sample_utterance(rng, "hi", embed="en", intent="set_alarm") for _ in range(300)]
  assert any(
    re.search(r"\b(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve) बजे", u.text)
    for u in hi
  )
  hi = [grammar.sample_utterance(rng, "hi", embed="en") for _ in range(300)]
  assert sum(u.text.endswith(" करो") or u.text.endswith(" कर दो") for u in hi) > 30
  es = [grammar.sample_utterance(rng, "es", embed="en", intent="play_music") for _ in range(200)]
  assert sum(("song", v) in u.slots for u in es for v in grammar.entities("en", "song")) > 20


def test_deterministic():
  for lang, embed in [(x, None) for x in LANGS] + list(PAIRS):
    rng1, rng2 = np.random.default_rng(11), np.random.default_rng(11)
    seq1 = [grammar.sample_utterance(rng1, lang, embed=embed) for _ in range(50)]
    seq2 = [grammar.sample_utterance(rng2, lang, embed=embed) for _ in range(50)]
    assert seq1 == seq2
    rng3 = np.random.default_rng(12)
    seq3 = [grammar.sample_utterance(rng3, lang, embed=embed) for _ in range(50)]
    assert seq3 != seq1
    assert len({u.text for u in seq1}) > 40  # Each call draws afresh.


@pytest.mark.parametrize("lang", LANGS)
def test_entity_lists(lang):
  total = 0
  for slot_type in ("contact", "song", "city"):
    values = grammar.entities(lang, slot_type)
    assert len(values) >= 100, (lang, slot_type, len(values))
    total += len(values)
  assert total >= 330
  for slot_type in grammar.SLOT_TYPES:
    values = grammar.entities(lang, slot_type)
    assert len(set(values)) == len(values), (lang, slot_type)
    for v in values:
      assert v == normalize(v) and not re.search(r"\d", v), (lang, slot_type, v)
      assert all(_script_ok(w, lang) for w in v.split(" ")), (lang, slot_type, v)
  for generated in ("time", "date", "duration", "number", "percent", "temperature"):
    assert grammar.entities(lang, generated) == ()
  for listed in ("artist", "place", "room", "device", "app", "item", "language"):
    assert len(grammar.entities(lang, listed)) >= 15


@pytest.mark.parametrize("lang", LANGS)
def test_template_variety(lang):
  rng = np.random.default_rng(3)
  for intent in grammar.INTENTS:
    assert len(grammar.templates(lang, intent)) >= 6
    skeletons = set()
    for _ in range(150):
      u = grammar.sample_utterance(rng, lang, intent=intent)
      text = f" {u.text} "
      for slot_type, value in u.slots:
        text = text.replace(f" {value} ", f" <{slot_type}> ", 1)
      skeletons.add(text.strip())
    assert len(skeletons) >= 6, (lang, intent, skeletons)


@pytest.mark.parametrize("lang", LANGS)
def test_diversity(lang):
  rng = np.random.default_rng(4)
  texts = {grammar.sample_utterance(rng, lang).text for _ in range(2000)}
  assert len(texts) > 1000


def test_unknown_names_raise():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="xx"):
    grammar.sample_utterance(rng, "xx")
  with pytest.raises(ValueError, match="de-en"):
    grammar.sample_utterance(rng, "de", embed="en")
  with pytest.raises(ValueError, match="en-hi"):
    grammar.sample_utterance(rng, "en", embed="hi")
  with pytest.raises(ValueError, match="order_pizza"):
    grammar.sample_utterance(rng, "en", intent="order_pizza")
  with pytest.raises(ValueError, match="xx"):
    grammar.entities("xx", "song")
  with pytest.raises(ValueError, match="flavour"):
    grammar.entities("en", "flavour")


def test_pick_entity_controls_choice():
  calls = []

  def first(rng, lang, slot_type, candidates):
    del rng
    calls.append((lang, slot_type))
    return candidates[0]

  rng = np.random.default_rng(5)
  for _ in range(50):
    u = grammar.sample_utterance(rng, "es", embed="en", intent="play_music", pick_entity=first)
    for slot_type, value in u.entities:
      assert value in {grammar.entities(lang, slot_type)[0] for lang in ("es", "en")}
  assert ("en", "song") in calls or ("en", "artist") in calls
  # Entities are reported as listed even where the text inflects them.
  calls.clear()
  u = grammar.sample_utterance(rng, "ru", intent="call_contact", pick_entity=first)
  assert u.entities == (("contact", "иван"),) and u.slots[0][1] in ("ивану", "ивана")
  assert calls == [("ru", "contact")]
  with pytest.raises(ValueError, match="not a"):
    grammar.sample_utterance(
      rng, "en", intent="call_contact", pick_entity=lambda *_: "nobody at all"
    )


@pytest.mark.parametrize("lang", LANGS)
def test_template_and_entity_text_is_normalised(lang):
  module = MODULES[lang]
  syntax = re.compile(r"\{[^}]*\}|\$[a-z_]+|[()\[\]|<>]")
  sources = list(module.MACROS.values())
  sources += [t for ts in module.TEMPLATES.values() for t in ts]
  sources += [
    t for by_intent in module.CODE_SWITCH.values() for ts in by_intent.values() for t in ts
  ]
  for source in sources:
    for word in syntax.sub(" ", source).split():
      assert word == normalize(word), (lang, source, word)


def test_number_words():
  assert lang_en.number_words(42) == "forty two" and lang_en.ordinal_words(21) == "twenty first"
  assert (
    lang_es.number_words(21, "apoc") == "veintiún"
    and lang_es.number_words(31, "f") == "treinta y una"
  )
  assert lang_de.number_words(21) == "einundzwanzig" and lang_de.ordinal_dative(3) == "dritten"
  assert (
    lang_fr.number_words(71) == "soixante et onze" and lang_fr.number_words(80) == "quatre-vingts"
  )
  assert (
    lang_fr.number_words(91) == "quatre-vingt-onze"
    and lang_fr.number_words(21, fem=True) == "vingt et une"
  )
  assert lang_hi.number_words(45) == "पैंतालीस" and lang_hi.number_words(100) == "सौ"
  assert lang_cmn.number_words(2, liang=True) == "两" and lang_cmn.number_words(25) == "二十五"
  assert (
    lang_ru.number_words(21, "f_acc") == "двадцать одну"
    and lang_ru.number_words(12, "f") == "двенадцать"
  )
  assert [lang_ru.plural(n, "минута", "минуты", "минут") for n in (1, 3, 11, 21, 25)] == [
    "минута",
    "минуты",
    "минут",
    "минута",
    "минут",
  ]
  for module in MODULES.values():
    words = [module.number_words(n) for n in range(101)]
    assert len(set(words)) == 101
    assert all(w == normalize(w) for w in words)


def test_inflection():
  assert lang_es.inflect("room", "salón", "gen") == ("del", "salón", "")
  assert lang_es.inflect("place", "aeropuerto", "a") == ("al", "aeropuerto", "")
  assert lang_de.inflect("room", "wohnzimmer", "in") == ("im", "wohnzimmer", "")
  assert lang_de.inflect("room", "terrasse", "in") == ("auf der", "terrasse", "")
  assert lang_de.inflect("task", "den müll rausbringen", "zu")[1] == "den müll rauszubringen"
  assert lang_fr.inflect("place", "aéroport", "a") == ("à", "l'aéroport", "")
  assert lang_fr.inflect("room", "salon", "gen") == ("du", "salon", "")
  assert lang_hi.inflect("task", "दवाई लेना", "obl")[1] == "दवाई लेने"
  assert lang_ru.inflect("contact", "мама", "dat")[1] == "маме"
  assert lang_ru.inflect("contact", "мария смирнова", "dat")[1] == "марии смирновой"
  assert lang_ru.inflect("contact", "пётр", "acc")[1] == "петра"
  assert lang_ru.inflect("city", "москва", "v") == ("в", "москве", "")
  assert lang_ru.inflect("city", "владимир", "v") == ("во", "владимире", "")
  assert lang_ru.inflect("device", "стиральная машина", "acc")[1] == "стиральную машину"
  assert lang_ru.inflect("language", "английский", "po")[1] == "по-английски"


def test_intents_with_slot():
  assert grammar.intents_with_slot("en", "place") == ("navigate_to",)
  for lang in LANGS:
    assert set(grammar.intents_with_slot(lang, "temperature")) == {"set_temperature"}
    assert "play_music" in grammar.intents_with_slot(lang, "song")
    assert "get_weather" in grammar.intents_with_slot(lang, "city")
  assert "lights_on" in grammar.intents_with_slot("hi", "room", embed="en")
  rng = np.random.default_rng(6)
  for intent in grammar.intents_with_slot("de", "contact"):
    found = any(
      t == "contact"
      for _ in range(100)
      for t, _ in grammar.sample_utterance(rng, "de", intent=intent).slots
    )
    assert found, intent
