"""Language registry: codes, espeak-ng voices and script properties.

Every dataset and model in the project indexes languages through this table so
that a language's index means the same thing in a corpus, a checkpoint and a
report. `LANGUAGE_CODES` fixes the order; new languages are appended, never
inserted, so existing indices stay valid after transfer.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Language:
  code: str  # ISO 639 code used everywhere in the project (`cmn`, not `zh`).
  name: str  # English name, for reports.
  espeak_voice: str  # espeak-ng voice (language) name.
  script: str  # Writing system, for tokenizer coverage and reports.
  space_delimited: bool  # False where words are not separated by spaces (CER, not WER).


LANGUAGES: dict[str, Language] = {
  lang.code: lang
  for lang in [
    Language("en", "English", "en-us", "Latin", True),
    Language("es", "Spanish", "es", "Latin", True),
    Language("de", "German", "de", "Latin", True),
    Language("fr", "French", "fr-fr", "Latin", True),
    Language("hi", "Hindi", "hi", "Devanagari", True),
    Language("cmn", "Mandarin Chinese", "cmn", "Han", False),
    Language("ru", "Russian", "ru", "Cyrillic", True),
  ]
}

LANGUAGE_CODES: tuple[str, ...] = tuple(LANGUAGES)

# `language` field value for utterances that switch language.
MIXED = "mixed"


def language_index(code: str) -> int:
  """Index of `code` in `LANGUAGE_CODES`; raises a clear error for unknown codes."""
  try:
    return LANGUAGE_CODES.index(code)
  except ValueError:
    raise ValueError(
      f"Unknown language code {code!r}; known codes: {', '.join(LANGUAGE_CODES)}"
    ) from None


def check_language(code: str) -> str:
  """Returns `code` if it is a known language code, else raises ValueError."""
  language_index(code)
  return code
