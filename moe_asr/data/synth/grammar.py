"""Grammar of the embedded spoken-command corpus.

Spoken commands to a multilingual voice assistant: intents with slots, written
per language as native phrasings (not translations), plus intra-sentential
code-switched commands. Every word carries its language, so an utterance is a
tuple of chunks (maximal runs of same-language words).

Each language lives in its own module (`lang_<code>.py`) that provides:

  - `TEMPLATES`: intent -> templates of monolingual commands;
  - `CODE_SWITCH`: embedded language -> intent -> code-switched templates with
    the matrix language of the module;
  - `SWITCHABLE`: embedded language -> slot types whose values may be taken
    from the embedded language inside monolingual templates (an English song
    title in a Spanish command);
  - `MACROS`: named template fragments (`$pre` for optional openers);
  - `ENTITIES`: slot type -> entity list (base forms);
  - `GENERATORS`: slot type -> function(rng, form) for spelled-out values
    (numbers, times, dates, durations, percentages, temperatures);
  - `inflect(slot_type, value, form)`: the surface form of an entity in a
    grammatical context.

Template syntax (the whole template is one sequence of whitespace words):

  word          a literal word of the matrix language
  (a|b c)       exactly one alternative
  [a|b c]       none (half of the time) or one alternative
  <a b>         words of the embedded language (code-switched templates)
  {type}        a slot; `{type:form}` asks for a grammatical form and
                `{type@lang}` takes the value from another language
  $name         a macro of the language module

Slot fillers return `(before, value, after)`: only `value` is the slot value,
`before`/`after` are words the grammar of the context demands around it
("en la" + "cocina", "в" + "семь тридцать"); they belong to the language of
the filler. Where a monolingual template takes a value from the embedded
language (`SWITCHABLE`), the value is used in its base form.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from types import ModuleType

import numpy as np

from moe_asr.data import languages
from moe_asr.data.synth import lang_cmn, lang_de, lang_en, lang_es, lang_fr, lang_hi, lang_ru

INTENTS: tuple[str, ...] = (
  "play_music",
  "pause_music",
  "next_track",
  "volume_up",
  "volume_down",
  "volume_set",
  "set_alarm",
  "cancel_alarm",
  "set_timer",
  "set_reminder",
  "call_contact",
  "send_message",
  "get_weather",
  "get_time",
  "lights_on",
  "lights_off",
  "lights_dim",
  "set_temperature",
  "device_on",
  "device_off",
  "navigate_to",
  "add_to_list",
  "open_app",
  "translate",
)

SLOT_TYPES: tuple[str, ...] = (
  "song",
  "artist",
  "contact",
  "device",
  "room",
  "number",
  "time",
  "date",
  "city",
  "place",
  "app",
  "item",
  "duration",
  "percent",
  "temperature",
  "language",
  "task",
  "message",
  "phrase",
)

# Slot types whose values are named entities (rare phrases for contextual biasing).
NAMED_ENTITY_TYPES: tuple[str, ...] = ("contact", "song", "artist", "city", "place", "app")

SUPPORTED_LANGUAGES: tuple[str, ...] = ("en", "es", "de", "fr", "hi", "cmn", "ru")

# (matrix language, embedded language).
CODE_SWITCH_PAIRS: tuple[tuple[str, str], ...] = (
  ("es", "en"),
  ("hi", "en"),
  ("cmn", "en"),
  ("en", "es"),
)

_MODULES: dict[str, ModuleType] = {
  "en": lang_en,
  "es": lang_es,
  "de": lang_de,
  "fr": lang_fr,
  "hi": lang_hi,
  "cmn": lang_cmn,
  "ru": lang_ru,
}

PickEntity = Callable[[np.random.Generator, str, str, Sequence[str]], str]


@dataclasses.dataclass(frozen=True)
class Chunk:
  """A maximal run of words of one language."""

  text: str  # Normalised words, space separated, non-empty.
  lang: str

  def __post_init__(self):
    if not self.text or self.text != " ".join(self.text.split()):
      raise ValueError(f"Chunk text must be non-empty single-spaced words: {self.text!r}")


@dataclasses.dataclass(frozen=True)
class Utterance:
  """One spoken command with its labels."""

  chunks: tuple[Chunk, ...]
  intent: str
  slots: tuple[tuple[str, str], ...]  # (slot_type, value as in `text`), in order of appearance.
  # (slot_type, entity) of the named-entity slots, in the same order, with the
  # entity as listed by `entities()`: it differs from the slot value where the
  # language inflects it ("москва" for "в москве", "mein bruder" for "meinen bruder").
  entities: tuple[tuple[str, str], ...] = ()

  @property
  def text(self) -> str:
    return " ".join(c.text for c in self.chunks)

  @property
  def words_lang(self) -> tuple[str, ...]:
    return tuple(c.lang for c in self.chunks for _ in c.text.split(" "))

  @property
  def language(self) -> str:
    langs = {c.lang for c in self.chunks}
    return langs.pop() if len(langs) == 1 else languages.MIXED


# ----------------------------------------------------------------------------
# Templates: parsing.


@dataclasses.dataclass(frozen=True)
class _Word:
  text: str
  embedded: bool


@dataclasses.dataclass(frozen=True)
class _Slot:
  slot_type: str
  lang: str | None  # None: the language of the context.
  form: str
  embedded: bool


@dataclasses.dataclass(frozen=True)
class _Choice:
  alternatives: tuple[tuple[_Node, ...], ...]
  optional: bool


_Node = _Word | _Slot | _Choice

_TOKEN_RE = re.compile(r"\{[^{}]*\}|[()\[\]|<>]|[^\s()\[\]|<>{}]+")
_SLOT_RE = re.compile(r"^\{([a-z_]+)(?:@([a-z]+))?(?::([a-z_]+))?\}$")
_MACRO_RE = re.compile(r"\$([a-z_]+)")


def _expand_macros(template: str, macros: dict[str, str]) -> str:
  for _ in range(8):  # Macros may use macros; a fixed depth catches cycles.
    if "$" not in template:
      return template
    template = _MACRO_RE.sub(lambda m: f"({macros[m.group(1)]})", template)
  raise ValueError(f"Macro expansion too deep in {template!r}")


def _parse(template: str) -> tuple[_Node, ...]:
  """Parses a template (macros expanded) into a sequence of nodes."""
  tokens = _TOKEN_RE.findall(template)
  pos = 0
  embedded = False

  def parse_seq(stops: str) -> tuple[_Node, ...]:
    nonlocal pos, embedded
    nodes: list[_Node] = []
    while pos < len(tokens) and tokens[pos] not in stops:
      tok = tokens[pos]
      pos += 1
      if tok in "([":
        close = ")" if tok == "(" else "]"
        alternatives = [parse_seq("|" + close)]
        while pos < len(tokens) and tokens[pos] == "|":
          pos += 1
          alternatives.append(parse_seq("|" + close))
        if pos >= len(tokens) or tokens[pos] != close:
          raise ValueError(f"Unbalanced {tok!r} in template {template!r}")
        pos += 1
        nodes.append(_Choice(tuple(alternatives), optional=tok == "["))
      elif tok == "<":
        if embedded:
          raise ValueError(f"Nested '<' in template {template!r}")
        embedded = True
        nodes.extend(parse_seq(">"))
        if pos >= len(tokens) or tokens[pos] != ">":
          raise ValueError(f"Unbalanced '<' in template {template!r}")
        pos += 1
        embedded = False
      elif tok.startswith("{"):
        m = _SLOT_RE.match(tok)
        if not m or m.group(1) not in SLOT_TYPES:
          raise ValueError(f"Bad slot {tok!r} in template {template!r}")
        nodes.append(_Slot(m.group(1), m.group(2), m.group(3) or "", embedded))
      elif tok in ")]|>":
        raise ValueError(f"Unexpected {tok!r} in template {template!r}")
      else:
        nodes.append(_Word(tok, embedded))
    return tuple(nodes)

  nodes = parse_seq("")
  if pos != len(tokens):
    raise ValueError(f"Unbalanced template {template!r}")
  return nodes


def _always(nodes: Sequence[_Node], test: Callable[[_Word | _Slot], bool]) -> bool:
  """Whether every expansion of `nodes` contains a word or slot passing `test`."""
  for node in nodes:
    if isinstance(node, _Choice):
      if not node.optional and all(_always(alt, test) for alt in node.alternatives):
        return True
    elif test(node):
      return True
  return False


def _word_lang(node: _Word | _Slot, lang: str, embed: str) -> str:
  """The language a word or slot of a code-switched template is rendered in."""
  if isinstance(node, _Slot) and node.lang is not None:
    return node.lang
  return embed if node.embedded else lang


def _switched(node: _Word | _Slot, switch_types: Sequence[str]) -> bool:
  """Whether a node of a monolingual template is filled from the embedded language."""
  return isinstance(node, _Slot) and node.slot_type in switch_types


@dataclasses.dataclass(frozen=True)
class _Template:
  source: str
  nodes: tuple[_Node, ...]
  switch_types: tuple[str, ...] = ()  # Slot types filled from the embedded language.


@functools.cache
def _compiled(lang: str) -> dict[str | None, dict[str, tuple[_Template, ...]]]:
  """Templates of a matrix language: key None is monolingual, else the embedded language.

  Code-switched templates are the module's explicit ones plus every monolingual
  template that always contains a slot the embedded language may fill and
  always some word of the matrix language.
  """
  module = _MODULES[lang]
  out: dict[str | None, dict[str, tuple[_Template, ...]]] = {}

  def compile_all(templates: Sequence[str]) -> list[_Template]:
    return [_Template(t, _parse(_expand_macros(t, module.MACROS))) for t in templates]

  out[None] = {intent: tuple(compile_all(module.TEMPLATES[intent])) for intent in INTENTS}
  for matrix, embed in CODE_SWITCH_PAIRS:
    if matrix != lang:
      continue
    switch_types = tuple(module.SWITCHABLE.get(embed, ()))
    by_intent = {}
    for intent in INTENTS:
      explicit = compile_all(module.CODE_SWITCH[embed].get(intent, ()))
      for t in explicit:
        if not (
          _always(t.nodes, lambda n, e=embed: _word_lang(n, lang, e) == e)
          and _always(t.nodes, lambda n, e=embed: _word_lang(n, lang, e) == lang)
        ):
          raise ValueError(f"Code-switched template may stay monolingual: {t.source!r}")
      implicit = [
        dataclasses.replace(t, switch_types=switch_types)
        for t in out[None][intent]
        if _always(t.nodes, lambda n, st=switch_types: _switched(n, st))
        and _always(t.nodes, lambda n, st=switch_types: not _switched(n, st))
      ]
      by_intent[intent] = tuple(explicit + implicit)
      if not by_intent[intent]:
        raise ValueError(f"No code-switched template for {(lang, embed)} and intent {intent!r}")
    out[embed] = by_intent
  return out


# ----------------------------------------------------------------------------
# Sampling.


def _check_lang(lang: str) -> ModuleType:
  if lang not in _MODULES:
    raise ValueError(f"Unsupported language {lang!r}; supported: {', '.join(SUPPORTED_LANGUAGES)}")
  return _MODULES[lang]


def entities(lang: str, slot_type: str) -> tuple[str, ...]:
  """The entity list of a slot type in a language.

  Args:
    lang: language code.
    slot_type: one of `SLOT_TYPES`.

  Returns:
    The entities (base forms) of that type in that language, e.g.
    `entities("en", "song")`; an empty tuple where the type is spelled out by a
    generator (times, numbers...) rather than listed.
  """
  module = _check_lang(lang)
  if slot_type not in SLOT_TYPES:
    raise ValueError(f"Unknown slot type {slot_type!r}; known: {', '.join(SLOT_TYPES)}")
  return tuple(module.ENTITIES.get(slot_type, ()))


def templates(lang: str, intent: str, embed: str | None = None) -> tuple[str, ...]:
  """The template sources for one intent (code-switched ones when `embed` is given)."""
  _check_lang(lang)
  _check_intent(intent)
  if embed is not None:
    _check_pair(lang, embed)
  return tuple(t.source for t in _compiled(lang)[embed][intent])


def _slot_types(nodes: Sequence[_Node]) -> set[str]:
  found = set()
  for node in nodes:
    if isinstance(node, _Choice):
      for alt in node.alternatives:
        found |= _slot_types(alt)
    elif isinstance(node, _Slot):
      found.add(node.slot_type)
  return found


def intents_with_slot(lang: str, slot_type: str, embed: str | None = None) -> tuple[str, ...]:
  """The intents whose templates can contain a slot type.

  Lets a caller that needs a given entity in the text (e.g. to plant a rare
  bias phrase) sample only intents that can carry it.

  Args:
    lang: matrix language.
    slot_type: one of `SLOT_TYPES`.
    embed: embedded language, for code-switched templates.

  Returns:
    The intents, in `INTENTS` order.
  """
  _check_lang(lang)
  if slot_type not in SLOT_TYPES:
    raise ValueError(f"Unknown slot type {slot_type!r}; known: {', '.join(SLOT_TYPES)}")
  if embed is not None:
    _check_pair(lang, embed)
  by_intent = _compiled(lang)[embed]
  return tuple(
    intent
    for intent in INTENTS
    if any(slot_type in _slot_types(t.nodes) for t in by_intent[intent])
  )


def _check_intent(intent: str) -> None:
  if intent not in INTENTS:
    raise ValueError(f"Unknown intent {intent!r}; known: {', '.join(INTENTS)}")


def _check_pair(lang: str, embed: str) -> None:
  if (lang, embed) not in CODE_SWITCH_PAIRS:
    pairs = ", ".join(f"{m}-{e}" for m, e in CODE_SWITCH_PAIRS)
    raise ValueError(f"Unsupported code-switch pair {lang}-{embed}; supported: {pairs}")


def _uniform_pick(rng: np.random.Generator, lang: str, slot_type: str, cands: Sequence[str]) -> str:
  del lang, slot_type
  return cands[int(rng.integers(len(cands)))]


def _fill(
  rng: np.random.Generator, lang: str, slot_type: str, form: str, pick: PickEntity
) -> tuple[tuple[str, str, str], str | None]:
  """Fills a slot: ((before, value, after), the listed entity or None if generated)."""
  module = _MODULES[lang]
  if slot_type in module.GENERATORS:
    return module.GENERATORS[slot_type](rng, form), None
  cands = module.ENTITIES.get(slot_type)
  if not cands:
    raise ValueError(f"Language {lang!r} has no values for slot type {slot_type!r}")
  entity = pick(rng, lang, slot_type, cands)
  if entity not in cands:
    raise ValueError(f"pick_entity returned {entity!r}, not a {lang} {slot_type} candidate")
  return module.inflect(slot_type, entity, form), entity


@dataclasses.dataclass
class _Output:
  words: list[str] = dataclasses.field(default_factory=list)
  langs: list[str] = dataclasses.field(default_factory=list)
  slots: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  entities: list[tuple[str, str]] = dataclasses.field(default_factory=list)

  def add(self, text: str, lang: str) -> None:
    for word in text.split():
      self.words.append(word)
      self.langs.append(lang)


def _render(
  nodes: Sequence[_Node],
  rng: np.random.Generator,
  lang: str,
  embed: str | None,
  switch_types: Sequence[str],
  pick: PickEntity,
  out: _Output,
) -> None:
  for node in nodes:
    if isinstance(node, _Word):
      out.add(node.text, embed if node.embedded else lang)
    elif isinstance(node, _Choice):
      if node.optional and rng.random() < 0.5:
        continue
      alt = node.alternatives[int(rng.integers(len(node.alternatives)))]
      _render(alt, rng, lang, embed, switch_types, pick, out)
    else:
      slot_lang, form = node.lang, node.form
      if slot_lang is None:
        slot_lang = embed if node.embedded else lang
      if node.slot_type in switch_types:
        slot_lang, form = embed, ""  # The form was written for the matrix language.
      (before, value, after), entity = _fill(rng, slot_lang, node.slot_type, form, pick)
      if not value:
        raise RuntimeError(f"Empty {slot_lang} {node.slot_type} value for form {form!r}")
      out.add(before, slot_lang)
      out.add(value, slot_lang)
      out.slots.append((node.slot_type, value))
      if entity is not None and node.slot_type in NAMED_ENTITY_TYPES:
        out.entities.append((node.slot_type, entity))
      out.add(after, slot_lang)


def sample_utterance(
  rng: np.random.Generator,
  lang: str,
  *,
  embed: str | None = None,
  intent: str | None = None,
  pick_entity: PickEntity | None = None,
) -> Utterance:
  """Samples one command.

  Args:
    rng: the only source of randomness; the result is deterministic given its state.
    lang: matrix language (one of `SUPPORTED_LANGUAGES`).
    embed: embedded language of a code-switched utterance; `(lang, embed)` must
      be one of `CODE_SWITCH_PAIRS`. None samples a monolingual utterance.
    intent: forces the intent; None picks one uniformly.
    pick_entity: `pick_entity(rng, entity_lang, slot_type, candidates)` returns
      the chosen entity, letting the caller control entity frequencies;
      default uniform.

  Returns:
    The utterance; code-switched ones contain both languages.
  """
  _check_lang(lang)
  if embed is not None:
    _check_pair(lang, embed)
  if intent is None:
    intent = INTENTS[int(rng.integers(len(INTENTS)))]
  _check_intent(intent)
  pick = pick_entity or _uniform_pick

  candidates = _compiled(lang)[embed][intent]
  template = candidates[int(rng.integers(len(candidates)))]
  out = _Output()
  _render(template.nodes, rng, lang, embed, template.switch_types, pick, out)
  if not out.words:
    raise RuntimeError(f"Template rendered no words: {template.source!r}")

  chunks: list[Chunk] = []
  start = 0
  for i in range(1, len(out.words) + 1):
    if i == len(out.words) or out.langs[i] != out.langs[start]:
      chunks.append(Chunk(" ".join(out.words[start:i]), out.langs[start]))
      start = i
  if embed is not None and len(chunks) < 2:
    raise RuntimeError(f"Code-switched template rendered one language: {template.source!r}")
  return Utterance(tuple(chunks), intent, tuple(out.slots), tuple(out.entities))
