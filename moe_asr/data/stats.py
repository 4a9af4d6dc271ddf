"""Corpus statistics: hours, utterances and speakers per split, language and intent."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from typing import Any

from moe_asr.data import languages as langs_lib
from moe_asr.data import schema


def _as_str(x: Any) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def split_stats(examples: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
  """Statistics of one split.

  Args:
    examples: schema examples (e.g. a TFDS data source of the split).

  Returns:
    {"utterances", "hours", "speakers", "code_switched", "languages": {lang: n},
     "code_switch_pairs": {"en-es": n}, "intents": {intent: n}, "hours_by_language",
     "speakers_by_language"}.
  """
  n = 0
  samples = 0
  speakers = set()
  languages = collections.Counter()
  hours_by_language = collections.Counter()
  speakers_by_language = collections.defaultdict(set)
  pairs = collections.Counter()
  intents = collections.Counter()
  code_switched = 0
  for ex in examples:
    n += 1
    length = len(ex["audio"])
    samples += length
    speakers.add(_as_str(ex["speaker"]))
    words_lang = [_as_str(w) for w in ex["words_lang"]]
    distinct = sorted(set(words_lang), key=_lang_order)
    language = _as_str(ex["language"])
    if len(distinct) > 1:
      code_switched += 1
      pairs["-".join(distinct)] += 1
      language = langs_lib.MIXED
    languages[language] += 1
    hours_by_language[language] += length / schema.SAMPLE_RATE / 3600
    speakers_by_language[language].add(_as_str(ex["speaker"]))
    intents[_as_str(ex["intent"])] += 1
  return {
    "utterances": n,
    "hours": samples / schema.SAMPLE_RATE / 3600,
    "speakers": len(speakers),
    "code_switched": code_switched,
    "languages": dict(languages),
    "hours_by_language": dict(hours_by_language),
    "speakers_by_language": {k: sorted(v) for k, v in speakers_by_language.items()},
    "code_switch_pairs": dict(pairs),
    "intents": dict(intents),
  }


def dataset_stats(builder) -> dict[str, Any]:
  """Statistics of every split of a built TFDS dataset of the schema."""
  out: dict[str, Any] = {"name": builder.info.full_name, "splits": {}}
  for split in builder.info.splits:
    out["splits"][split] = split_stats(builder.as_data_source(split=split))
  metadata = dict(builder.info.metadata or {})
  out["bias_phrases"] = len(metadata.get("bias_phrases", []))
  return out


def _table(header: list[str], rows: list[list[str]]) -> str:
  widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
  fmt = lambda r: "  ".join(
    str(c).rjust(w) if i else str(c).ljust(w)
    for i, (c, w) in enumerate(zip(r, widths, strict=True))
  )
  return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *[fmt(r) for r in rows]])


def format_stats(stats: Mapping[str, Any]) -> str:
  """Human-readable tables of `dataset_stats`."""
  splits = list(stats["splits"])
  s = stats["splits"]
  parts = [f"Dataset {stats['name']}"]
  rows = []
  for name in splits:
    st = s[name]
    cs = st["code_switched"] / st["utterances"] if st["utterances"] else 0.0
    rows.append([name, st["utterances"], f"{st['hours']:.2f}", st["speakers"], f"{cs:.2f}"])
  total_h = sum(st["hours"] for st in s.values())
  total_n = sum(st["utterances"] for st in s.values())
  rows.append(["total", total_n, f"{total_h:.2f}", "", ""])
  parts.append(_table(["split", "utterances", "hours", "speakers", "cs_frac"], rows))

  langs = sorted({k for st in s.values() for k in st["languages"]}, key=_lang_order)
  rows = []
  for lang in langs:
    hours = sum(st["hours_by_language"].get(lang, 0.0) for st in s.values())
    voices = set().union(*(st["speakers_by_language"].get(lang, []) for st in s.values()))
    counts = [s[n]["languages"].get(lang, 0) for n in splits]
    rows.append([lang, *counts, f"{hours:.2f}", len(voices)])
  parts.append(
    "Utterances per language (`mixed` = code-switched); hours and speakers over all splits\n"
    + _table(["language", *splits, "hours", "speakers"], rows)
  )

  pairs = sorted({k for st in s.values() for k in st["code_switch_pairs"]})
  if pairs:
    rows = [[p] + [s[n]["code_switch_pairs"].get(p, 0) for n in splits] for p in pairs]
    parts.append("Code-switched utterances per language pair\n" + _table(["pair", *splits], rows))

  intents = sorted({k for st in s.values() for k in st["intents"]})
  rows = [[i or "(none)"] + [s[n]["intents"].get(i, 0) for n in splits] for i in intents]
  parts.append("Utterances per intent\n" + _table(["intent", *splits], rows))
  parts.append(f"Bias phrases: {stats['bias_phrases']}")
  return "\n\n".join(parts)


def _lang_order(code: str):
  codes = langs_lib.LANGUAGE_CODES
  return (codes.index(code) if code in codes else len(codes), code)
