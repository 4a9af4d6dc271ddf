"""Transcript normalisation shared by every data source, the tokenizer and metrics.

Normalised text is Unicode NFC, lower-cased, without punctuation (apostrophes
and hyphens inside a word are kept: "what's", "l'alarme", "wi-fi"), with single
spaces between words. Chinese is written with spaces between words, so that
`words_lang` can give a language to every whitespace word; metrics that need
characters (CER, MER) split it further.
"""

from __future__ import annotations

import re
import unicodedata

# Characters kept inside words besides letters, marks and digits.
_INNER = "'-"
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def _is_word_char(ch: str) -> bool:
  cat = unicodedata.category(ch)
  return cat[0] in ("L", "M", "N")


def normalize(text: str) -> str:
  """Normalises a transcript (see the module docstring).

  Args:
    text: raw transcript in any script.

  Returns:
    The normalised transcript; "" when nothing word-like remains.
  """
  text = unicodedata.normalize("NFC", text).translate(_APOSTROPHES).lower()
  out = []
  for i, ch in enumerate(text):
    if _is_word_char(ch):
      out.append(ch)
    elif ch in _INNER:
      prev_ok = i > 0 and _is_word_char(text[i - 1])
      next_ok = i + 1 < len(text) and _is_word_char(text[i + 1])
      out.append(ch if prev_ok and next_ok else " ")
    else:
      out.append(" ")
  return re.sub(r"\s+", " ", "".join(out)).strip()


def is_cjk(ch: str) -> bool:
  """True for CJK unified ideographs (scored by character, not by word)."""
  code = ord(ch)
  return 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF
