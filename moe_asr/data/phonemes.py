"""Phoneme transcriptions (G2P) with espeak-ng, and one phone inventory for all languages.

Transcripts are converted to IPA with the `phonemizer` package's espeak-ng backend,
running on the espeak-ng library and voice data of the `espeakng-loader` wheel (the
ones the corpus synthesiser speaks with), in the voice that `moe_asr.data.languages`
gives each language (`en` -> `en-us`, `fr` -> `fr-fr`, `cmn` -> `cmn`, ...), the
voices the synthesiser speaks in. Stress marks are dropped; length marks, diacritics
and Mandarin tones are kept. espeak writes a Mandarin tone as the first digit of its
contour after the syllable's vowel (mā 5, má 3, mǎ 2, mà 5, ma 1: tones 1 and 4 look
alike), and its IPA output spells the digit 3 as "ɜ"; that "ɜ" is written back as
"3" here, so that tones are digits and "ɜ" is only ever a vowel.

Stored form
-----------
Datasets hold ONE string per utterance, the `phonemes` feature: the phones of each
whitespace word of the normalised transcript, in order, joined by `WORD_SEPARATOR`
(" | "):

    text      "turn on the lights"
    phonemes  "tɜːn | ɔn | ðə | laɪts"

A word's phones never contain whitespace or "|", so `split(phonemes)` gives back one
entry per word of the transcript (a word that espeak gives no phones for is ""). An
empty `phonemes` string means "no phonemes" (a language without G2P, a catalog set)
and splits into [].

    join(["ɔn", "ðə"]) == "ɔn | ðə"    split("ɔn | ðə") == ["ɔn", "ðə"]    split("") == []

Conversion
----------
    phonemize_words(words, words_lang, default_language) -> list[str]
        One phone string per word. Runs of consecutive words of one language are
        phonemized together (cross-word effects such as French liaison or English
        weak forms are kept); where espeak merges or splits words so that the run's
        word count does not come back ("on the" -> "ɔnðə"), the run's words are
        phonemized one by one instead (a merge and a split within one run would
        keep the count and go unnoticed). Mandarin, whose words espeak splits into
        syllables, always goes word by word. A backend is made once per language
        and process (tens of milliseconds); calls are serialised by a lock.
    phonemize_text(text, words_lang=(), language=None) -> str
        The stored form for a transcript (`join(phonemize_words(text.split(), ...))`).
    supported_languages() -> tuple[str, ...];  is_supported(code) -> bool
        An unsupported code makes the functions above raise ValueError naming it.

Phones and the inventory
------------------------
    split_units(phones) -> list[str]
        Splits an IPA string into units: a base symbol with the combining diacritics,
        modifier letters (ʰ ʲ ʷ ...), length marks (ː ˑ) and espeak's ASCII marks
        ("." in "r.", '"' in 'u"') that follow it; a tie bar joins the next base symbol
        to the unit (t͡ʃ). Each digit (a Mandarin tone as espeak writes it) is a unit.
    PhoneInventory(units)
        Ids: 0 `BLANK_ID` (CTC blank), 1 `UNK_ID` (a unit outside the inventory),
        2 `WORD_BOUNDARY_ID`, then the units in sorted (code point) order.
        `PhoneInventory.build(phonemes)` scans stored strings (or per-word lists);
        `encode(phonemes) -> list[int]` puts `WORD_BOUNDARY_ID` between words (empty
        words are skipped); `decode(ids) -> list[str]` gives the phones per word;
        `size`; `to_json()` / `from_json(...)`; `save(path)` / `load(path)`.

The embedded corpus stores its inventory (built from every split) in
`builder.info.metadata["phone_inventory"]` and in `phones.json` beside the data
(`moe_asr.data.builders.synth.phone_inventory(builder)` loads it).

espeak-ng keeps global state in its shared library, and the synthesiser
(`moe_asr.data.synth.tts`) unloads the library after every call so that its audio
does not depend on earlier calls. phonemizer keeps the library it is given loaded
for the life of the process, so it is given a private copy of it here, and the
synthesiser's library is never held.
"""

from __future__ import annotations

import atexit
import json
import locale
import logging
import os
import pathlib
import re
import shutil
import tempfile
import threading
import unicodedata
from collections.abc import Iterable, Sequence

from moe_asr.data import languages

WORD_SEPARATOR = " | "

BLANK_ID = 0
UNK_ID = 1
WORD_BOUNDARY_ID = 2
BLANK = "<blank>"
UNK = "<unk>"
WORD_BOUNDARY = "|"
SPECIAL_UNITS: tuple[str, ...] = (BLANK, UNK, WORD_BOUNDARY)

# Dropped from phone strings: stress and syllable-prominence marks, and separators.
_DROPPED = frozenset("ˈˌ'|‿") | frozenset(" \t\n\r")
# espeak's ASCII spellings of phones without an IPA symbol ("r." for the Hindi flap,
# "s." "i." in Mandarin, 'u"' in Russian) mark the base symbol before them.
_ASCII_MODIFIERS = frozenset('."')
_TIE_BARS = frozenset("\u0361\u035c")  # Combining double inverted breve / breve below.
# Mandarin tone 3 (rising, 35) as espeak's IPA output spells it (not before a length
# mark, which only an English vowel read inside Mandarin text would have).
_CMN_TONE_3 = re.compile("ɜ(?!ː)")

# phonemizer logs a warning for every call whose text espeak reads as another
# language (English words inside Hindi, say); the flags are removed either way.
_ESPEAK_LOG = logging.getLogger(f"{__name__}.espeak")
_ESPEAK_LOG.setLevel(logging.ERROR)

_lock = threading.RLock()
_backends: dict[str, object] = {}
_library_copy: str | None = None


def _reset_in_child() -> None:
  # A fork taken while another thread phonemizes must not leave the child with
  # a lock that nobody releases.
  global _lock
  _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
  os.register_at_fork(after_in_child=_reset_in_child)


# ----------------------------------------------------------------------------
# Stored form.


def join(word_phones: Sequence[str]) -> str:
  """The stored form of per-word phone strings (see the module docstring)."""
  for phones in word_phones:
    if WORD_SEPARATOR.strip() in phones or any(ch.isspace() for ch in phones):
      raise ValueError(f"A word's phones may not hold whitespace or '|': {phones!r}")
  return WORD_SEPARATOR.join(word_phones)


def split(phonemes: str) -> list[str]:
  """The per-word phone strings of a stored `phonemes` string; [] for ""."""
  if isinstance(phonemes, bytes):
    phonemes = phonemes.decode()
  if not phonemes:
    return []
  return phonemes.split(WORD_SEPARATOR)


# ----------------------------------------------------------------------------
# G2P.


def supported_languages() -> tuple[str, ...]:
  """Language codes that `phonemize_words` accepts (every registered language)."""
  return languages.LANGUAGE_CODES


def is_supported(code: str) -> bool:
  """True if `code` can be phonemized."""
  return code in languages.LANGUAGES


def _check_supported(code: str) -> str:
  if not is_supported(code):
    raise ValueError(
      f"No phonemizer for language {code!r}; supported: {', '.join(supported_languages())}"
    )
  return code


def _private_library() -> str:
  """A copy of espeakng-loader's espeak-ng library for phonemizer (made once a process)."""
  global _library_copy
  if _library_copy is None or not os.path.exists(_library_copy):
    import espeakng_loader

    source = pathlib.Path(espeakng_loader.get_library_path())
    folder = tempfile.mkdtemp(prefix="moe_asr_g2p_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    target = pathlib.Path(folder) / source.name
    shutil.copyfile(source, target)
    _library_copy = str(target)
  return _library_copy


def _backend(code: str):
  """The phonemizer espeak backend of a language, created once a process."""
  with _lock:
    backend = _backends.get(code)
    if backend is not None:
      return backend
    import espeakng_loader
    from phonemizer.backend import EspeakBackend
    from phonemizer.backend.espeak.wrapper import EspeakWrapper

    voice = languages.LANGUAGES[code].espeak_voice
    # espeak_Initialize switches LC_CTYPE; give the process its locale back.
    saved_ctype = locale.setlocale(locale.LC_CTYPE)
    try:
      EspeakWrapper.set_library(_private_library())
      EspeakWrapper.set_data_path(espeakng_loader.get_data_path())
      backend = EspeakBackend(
        voice,
        preserve_punctuation=False,
        with_stress=False,
        language_switch="remove-flags",
        words_mismatch="ignore",
        logger=_ESPEAK_LOG,
      )
    finally:
      locale.setlocale(locale.LC_CTYPE, saved_ctype)
    _backends[code] = backend
    return backend


def _separator():
  from phonemizer.separator import Separator

  return Separator(phone="", syllable="", word=WORD_SEPARATOR.strip())


def _clean(phones: str, code: str) -> str:
  """A word's phones as stored: NFC, without whitespace, separators or stress marks."""
  phones = unicodedata.normalize("NFC", phones)
  if code == "cmn":
    phones = _CMN_TONE_3.sub("3", phones)
  return "".join(ch for ch in phones if ch not in _DROPPED and not ch.isspace())


def _phonemize_run(code: str, words: Sequence[str]) -> list[str]:
  """Phones of consecutive words of one language, one string per word."""
  backend = _backend(code)
  sep = _separator()
  with _lock:
    if len(words) > 1 and languages.LANGUAGES[code].space_delimited:
      (line,) = backend.phonemize([" ".join(words)], separator=sep, strip=True, njobs=1)
      pieces = line.split(sep.word)
      if len(pieces) == len(words):
        return [_clean(p, code) for p in pieces]
    # Word by word: a word espeak splits (a Mandarin word into syllables) is joined.
    lines = backend.phonemize(list(words), separator=sep, strip=True, njobs=1)
  if len(lines) != len(words):  # phonemizer returns one line per input line.
    raise RuntimeError(f"phonemizer returned {len(lines)} lines for {len(words)} words")
  return [_clean(line, code) for line in lines]


def phonemize_words(
  words: Sequence[str], words_lang: Sequence[str], default_language: str | None
) -> list[str]:
  """Phones of each word, each in its own language.

  Args:
    words: the whitespace words of a normalised transcript.
    words_lang: one language code per word, or empty (every word in
      `default_language`); an empty code stands for `default_language` too.
    default_language: the language of words without one (may be None when
      `words_lang` gives every word's language).

  Returns:
    One phone string per word, `len(words)` of them; "" for a word espeak gives
    no phones for.

  Raises:
    ValueError: for a language without G2P (naming it), or a `words_lang` whose
      length differs from `words`.
  """
  words = [w.decode() if isinstance(w, bytes) else str(w) for w in words]
  langs = [c.decode() if isinstance(c, bytes) else str(c) for c in words_lang]
  if not langs:
    langs = [""] * len(words)
  if len(langs) != len(words):
    raise ValueError(f"words_lang has {len(langs)} codes for {len(words)} words")
  langs = [code or default_language or "" for code in langs]
  if "" in langs:
    word = words[langs.index("")]
    raise ValueError(f"No language for the word {word!r}: give words_lang or default_language")
  for code in dict.fromkeys(langs):
    _check_supported(code)
  out: list[str] = []
  start = 0
  for end in range(1, len(words) + 1):
    if end == len(words) or langs[end] != langs[start]:
      out += _phonemize_run(langs[start], words[start:end])
      start = end
  return out


def phonemize_text(text: str, words_lang: Sequence[str] = (), language: str | None = None) -> str:
  """The stored `phonemes` string of a normalised transcript.

  Args:
    text: normalised transcript (whitespace words).
    words_lang: per-word language codes, or empty to use `language` for all.
    language: language of words without a code.

  Returns:
    `join(phonemize_words(text.split(), words_lang, language))`.
  """
  return join(phonemize_words(text.split(), words_lang, language))


# ----------------------------------------------------------------------------
# Units and the inventory.


def _is_modifier(ch: str) -> bool:
  if ch in _ASCII_MODIFIERS or unicodedata.combining(ch):
    return True
  return unicodedata.category(ch) in ("Mn", "Me", "Lm", "Sk")


def split_units(phones: str) -> list[str]:
  """Splits an IPA string into phone units (see the module docstring).

  Whitespace, "|" and stress marks are dropped, so a stored `phonemes` string
  gives the units of all its words in order.
  """
  units: list[str] = []
  join_next = False
  for ch in unicodedata.normalize("NFC", phones):
    if ch in _DROPPED or ch.isspace():
      join_next = False
      continue
    if ch in _TIE_BARS:
      if units:
        units[-1] += ch
        join_next = True
      continue
    if ch.isdigit():
      units.append(ch)
      join_next = False
    elif _is_modifier(ch) and units and not units[-1].isdigit():
      units[-1] += ch
    elif join_next and units:
      units[-1] += ch
      join_next = False
    else:
      units.append(ch)
  return units


class PhoneInventory:
  """A fixed, sorted set of phone units with CTC ids (see the module docstring).

  Attributes:
    units: every id's symbol: `SPECIAL_UNITS`, then the phone units in sorted order.
  """

  def __init__(self, units: Iterable[str]):
    """An inventory of `units` (deduplicated and sorted; special symbols excluded)."""
    phones = sorted(set(units) - set(SPECIAL_UNITS))
    for unit in phones:
      if split_units(unit) != [unit]:
        raise ValueError(f"{unit!r} is not a single phone unit")
    self.units: tuple[str, ...] = SPECIAL_UNITS + tuple(phones)
    self._ids = {unit: i for i, unit in enumerate(self.units)}

  @classmethod
  def build(cls, phonemes: Iterable[str | Sequence[str]]) -> PhoneInventory:
    """The inventory of every unit in `phonemes`.

    Args:
      phonemes: stored `phonemes` strings, or lists of per-word phone strings.
    """
    found: set[str] = set()
    for item in phonemes:
      if isinstance(item, bytes):
        item = item.decode()
      words = [item] if isinstance(item, str) else item
      for word in words:
        found.update(split_units(word))
    return cls(found)

  @property
  def size(self) -> int:
    """Number of ids (the CTC output size), blank, unknown and boundary included."""
    return len(self.units)

  def __len__(self) -> int:
    return self.size

  def __eq__(self, other) -> bool:
    return isinstance(other, PhoneInventory) and self.units == other.units

  def __hash__(self) -> int:
    return hash(self.units)

  def __repr__(self) -> str:
    return f"PhoneInventory(size={self.size})"

  def unit_to_id(self, unit: str) -> int:
    """The id of a unit; `UNK_ID` for a unit outside the inventory."""
    return self._ids.get(unit, UNK_ID)

  def id_to_unit(self, unit_id: int) -> str:
    """The symbol of an id."""
    return self.units[unit_id]

  def encode(self, phonemes: str | Sequence[str]) -> list[int]:
    """Unit ids of an utterance, `WORD_BOUNDARY_ID` between words.

    Args:
      phonemes: a stored `phonemes` string, or the per-word phone strings.

    Returns:
      The ids; words without units are skipped (no boundary for them), and a
      unit outside the inventory is `UNK_ID`.
    """
    if isinstance(phonemes, bytes):
      phonemes = phonemes.decode()
    words = split(phonemes) if isinstance(phonemes, str) else phonemes
    ids: list[int] = []
    for word in words:
      units = split_units(word)
      if not units:
        continue
      if ids:
        ids.append(WORD_BOUNDARY_ID)
      ids += [self._ids.get(unit, UNK_ID) for unit in units]
    return ids

  def decode(self, ids: Iterable[int]) -> list[str]:
    """Per-word phone strings of unit ids (blanks dropped, empty words left out).

    `UNK_ID` reads as `UNK`. Ids are taken as given: collapse CTC repeats first.
    """
    words: list[str] = []
    current: list[str] = []
    for unit_id in ids:
      unit_id = int(unit_id)
      if unit_id == BLANK_ID:
        continue
      if unit_id == WORD_BOUNDARY_ID:
        if current:
          words.append("".join(current))
        current = []
        continue
      current.append(self.units[unit_id])
    if current:
      words.append("".join(current))
    return words

  def to_json(self) -> str:
    """JSON text of the inventory (its units in id order)."""
    return json.dumps({"units": list(self.units)}, ensure_ascii=False)

  @classmethod
  def from_json(cls, data: str | bytes | dict) -> PhoneInventory:
    """The inventory of `to_json()` output (the text, or the parsed dict)."""
    if isinstance(data, str | bytes):
      data = json.loads(data)
    units = list(data["units"])
    if tuple(units[: len(SPECIAL_UNITS)]) != SPECIAL_UNITS:
      raise ValueError(f"A phone inventory starts with {SPECIAL_UNITS}, got {units[:3]}")
    inventory = cls(units[len(SPECIAL_UNITS) :])
    if list(inventory.units) != units:
      raise ValueError("Phone inventory units are not sorted and unique")
    return inventory

  def save(self, path: str | os.PathLike) -> None:
    """Writes `to_json()` to `path` (atomically)."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(self.to_json() + "\n", encoding="utf-8")
    tmp.replace(path)

  @classmethod
  def load(cls, path: str | os.PathLike) -> PhoneInventory:
    """Reads an inventory that `save` wrote."""
    return cls.from_json(pathlib.Path(path).read_text(encoding="utf-8"))
