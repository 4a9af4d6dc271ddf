"""Tests for the SentencePiece tokenizer: training, tags, persistence, extension."""

from __future__ import annotations

import random

import pytest

from moe_asr.data import tokenizer as tok
from moe_asr.data.languages import LANGUAGE_CODES

WORDS = {
  "en": "turn on off the light lamp in kitchen bedroom living room play some music song set an "
  "alarm for seven tomorrow morning call mom what is weather today please open close door "
  "window volume up down",
  "es": "enciende apaga la luz en cocina el dormitorio pon música canción una alarma a las siete "
  "mañana llama mamá qué tiempo hace hoy por favor abre cierra puerta ventana sube baja volumen",
  "de": "schalte das licht in der küche aus an spiel musik stelle einen wecker für sieben uhr "
  "morgen früh ruf mama wie ist wetter heute bitte öffne schließe die tür fenster lauter leiser",
  "fr": "allume éteins la lumière dans cuisine chambre joue de musique règle une alarme pour sept "
  "heures demain matin appelle maman quel temps fait il aujourd'hui ouvre ferme porte fenêtre",
  "hi": "रसोई की बत्ती जलाओ बंद करो गाना चलाओ कल सुबह सात बजे अलार्म लगाओ माँ को फ़ोन आज मौसम "
  "कैसा है कृपया दरवाज़ा खिड़की खोलो आवाज़ बढ़ाओ घटाओ",
  "cmn": "帮 我 把 客厅 的 灯 打开 关掉 播放 音乐 歌曲 设置 明天 早上 七 点 闹钟 给 妈妈 打 电话 "
  "今天 天气 怎么样 请 门 窗户 调 大 小 音量 厨房 卧室",
  "ru": "включи выключи свет на кухне в спальне поставь музыку песню будильник семь утра завтра "
  "позвони маме какая сегодня погода пожалуйста открой закрой дверь окно громче тише",
}

ROUND_TRIP = {
  "en": "turn on the light in the kitchen",
  "es": "pon la canción en la cocina",
  "de": "schließe bitte das fenster in der küche",
  "fr": "règle une alarme pour sept heures demain matin",
  "hi": "कल सुबह सात बजे अलार्म लगाओ",
  "cmn": "帮 我 把 客厅 的 灯 打开",
  "ru": "включи свет на кухне пожалуйста",
}


def _sentences(codes, per_language=60, seed=0):
  rng = random.Random(seed)
  out = []
  for code in codes:
    words = WORDS[code].split()
    out += [" ".join(rng.choices(words, k=rng.randint(3, 8))) for _ in range(per_language)]
  return out


VOCAB_SIZE = 520


@pytest.fixture(scope="module")
def tokenizer():
  return tok.Tokenizer.train(_sentences(LANGUAGE_CODES), vocab_size=VOCAB_SIZE)


def test_special_ids(tokenizer):
  assert tokenizer.vocab_size == VOCAB_SIZE
  assert tokenizer.pad_id == tokenizer.blank_id == 0
  assert tokenizer.id_to_piece(0) == "<pad>"
  assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (1, 2, 3)
  assert tokenizer.id_to_piece(tokenizer.bos_id) == "<s>"
  assert tokenizer.id_to_piece(tokenizer.eos_id) == "</s>"


@pytest.mark.parametrize("code", LANGUAGE_CODES)
def test_round_trip(tokenizer, code):
  text = ROUND_TRIP[code]
  ids = tokenizer.encode(text)
  assert tokenizer.unk_id not in ids
  assert tokenizer.decode(ids) == text
  # Special ids around the text are dropped on decoding.
  framed = [tokenizer.bos_id, *ids, tokenizer.eos_id, tokenizer.pad_id, tokenizer.pad_id]
  assert tokenizer.decode(framed) == text


def test_no_unk_for_training_characters_or_unseen_ones(tokenizer):
  texts = _sentences(LANGUAGE_CODES)
  for ids in tokenizer.encode_batch(texts):
    assert tokenizer.unk_id not in ids
  # Characters never seen in training fall back to bytes and still round-trip.
  unseen = "ölçü 龍 ქართული"
  ids = tokenizer.encode(unseen)
  assert tokenizer.unk_id not in ids
  assert any(tokenizer.id_to_piece(i).startswith("<0x") for i in ids)
  assert tokenizer.decode(ids) == unseen


def test_subwords_are_learned(tokenizer):
  # A trained vocabulary uses multi-character pieces: frequent words need
  # fewer pieces than characters.
  text = ROUND_TRIP["en"]
  assert len(tokenizer.encode(text)) < len(text.replace(" ", "")) / 2


def test_language_tags_and_task_tokens_are_single_ids(tokenizer):
  tag_ids = [tokenizer.language_tag_id(code) for code in LANGUAGE_CODES]
  assert len(set(tag_ids)) == len(LANGUAGE_CODES)
  assert tokenizer.languages == LANGUAGE_CODES
  for code, tag_id in zip(LANGUAGE_CODES, tag_ids, strict=True):
    assert tokenizer.id_to_piece(tag_id) == tok.language_tag(code) == f"<{code}>"
    assert tokenizer.encode(f"<{code}>") == [tag_id]
    assert tokenizer.piece_to_id(f"<{code}>") == tag_id
  for token in tok.TASK_TOKENS:
    assert tokenizer.encode(token) == [tokenizer.task_token_id(token)]
  assert tuple(f"<{c}>" for c in LANGUAGE_CODES) == tok.LANGUAGE_TAGS

  text = "<cs> turn on <es> la luz"
  ids = tokenizer.encode(text)
  assert ids[0] == tokenizer.task_token_id("<cs>")
  assert tokenizer.language_tag_id("es") in ids
  # Around a tag, words are segmented as if the tag were a space.
  assert ids[1:] == (
    tokenizer.encode("turn on") + [tokenizer.language_tag_id("es")] + tokenizer.encode("la luz")
  )
  assert tokenizer.decode(ids) == "turn on la luz"
  assert tokenizer.decode(ids, keep_symbols=True) == text


def test_unknown_language_tag_raises(tokenizer):
  with pytest.raises(ValueError, match="'xx'"):
    tokenizer.language_tag_id("xx")
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tokenizer.decode([VOCAB_SIZE])


def test_save_load_and_bytes(tokenizer, tmp_path):
  path = tmp_path / "sub" / "spm.model"
  tokenizer.save(path)
  loaded = tok.Tokenizer.load(path)
  restored = tok.Tokenizer.from_bytes(tokenizer.to_bytes())
  texts = list(ROUND_TRIP.values()) + ["<hi> kal <en> seven baje"]
  expected = tokenizer.encode_batch(texts)
  assert loaded.encode_batch(texts) == expected
  assert restored.encode_batch(texts) == expected
  assert loaded.to_bytes() == restored.to_bytes() == tokenizer.to_bytes()


def test_training_is_deterministic(tokenizer):
  again = tok.Tokenizer.train(_sentences(LANGUAGE_CODES), vocab_size=VOCAB_SIZE)
  assert again.to_bytes() == tokenizer.to_bytes()


def test_training_errors():
  with pytest.raises(ValueError, match="non-empty"):
    tok.Tokenizer.train([], vocab_size=500)
  with pytest.raises(ValueError, match="non-empty"):
    tok.Tokenizer.train(["", "  "], vocab_size=500)
  with pytest.raises(ValueError, match=r"use vocab_size <= \d+"):
    tok.Tokenizer.train(_sentences(["en"], 20), vocab_size=5000)
  with pytest.raises(ValueError, match="no room"):
    tok.Tokenizer.train(_sentences(["en"], 20), vocab_size=200)
  # 200 distinct characters and the word marker, all kept (coverage 1.0), and 272 fixed pieces.
  han = [" ".join(chr(0x4E00 + i + j) for j in range(10)) for i in range(0, 200, 10)]
  with pytest.raises(ValueError, match="needs at least 473 pieces"):
    tok.Tokenizer.train(han * 5, vocab_size=300, character_coverage=1.0)


def test_extend_with_a_new_language():
  old = tok.Tokenizer.train(_sentences(["en", "es"]), vocab_size=360, languages=("en", "es"))
  # Tags in the extension text must not turn into learned pieces.
  russian = ["<ru> " + text for text in _sentences(["ru"], 80, seed=1)]
  held_out = _sentences(["ru"], 20, seed=2)
  with pytest.raises(ValueError, match="'ru'"):
    old.language_tag_id("ru")

  new = old.extend(russian, num_new_pieces=40, language="ru")
  assert new.vocab_size == old.vocab_size + 41
  for i in range(old.vocab_size):
    assert new.id_to_piece(i) == old.id_to_piece(i)
  ru_id = new.language_tag_id("ru")
  assert ru_id >= old.vocab_size
  assert new.encode("<ru>") == [ru_id]
  assert new.languages == ("en", "es", "ru")
  assert not any("<" in new.id_to_piece(i) for i in range(ru_id + 1, new.vocab_size))

  # Before extension Cyrillic falls back to two bytes per letter.
  before = sum(len(ids) for ids in old.encode_batch(held_out))
  after = sum(len(ids) for ids in new.encode_batch(held_out))
  assert after < 0.5 * before
  for text in held_out:
    ids = new.encode(text)
    assert new.decode(ids) == text
    assert not any(new.id_to_piece(i).startswith("<0x") for i in ids)
  # No Latin pieces were learned from Russian, so en/es encode as before.
  old_texts = _sentences(["en", "es"], 20, seed=3)
  assert new.encode_batch(old_texts) == old.encode_batch(old_texts)

  # Deterministic, and survives serialisation.
  again = old.extend(russian, num_new_pieces=40, language="ru")
  assert again.to_bytes() == new.to_bytes()
  assert tok.Tokenizer.from_bytes(new.to_bytes()).encode_batch(held_out) == new.encode_batch(
    held_out
  )


def test_extend_errors_and_existing_tag():
  old = tok.Tokenizer.train(_sentences(["en", "es"]), vocab_size=360, languages=("en", "es"))
  with pytest.raises(ValueError, match="non-empty"):
    old.extend([], num_new_pieces=10)
  with pytest.raises(ValueError, match=r"num_new_pieces <= \d+"):
    old.extend(["да нет"], num_new_pieces=500, language="ru")
  bpe = tok.Tokenizer.train(_sentences(["en"]), vocab_size=320, model_type="bpe", languages=("en",))
  with pytest.raises(ValueError, match="unigram"):
    bpe.extend(["hello"], num_new_pieces=1)
  # An existing tag is not added twice.
  same = old.extend(_sentences(["es"], 20), num_new_pieces=0, language="es")
  assert same.vocab_size == old.vocab_size
