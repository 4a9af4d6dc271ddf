"""The embedded corpus: spoken commands synthesised on the fly (docs/design.md §4).

Each example is a pure function of (corpus config, split, index): its random
generator is seeded by those three, so a split can be generated in any order,
by any number of worker processes, and always gives the same bytes.

Splits (sizes from the corpus config):
  train, validation   seen voices; monolingual and code-switched; train is augmented
  test                unseen voices, monolingual, clean
  test_cs             unseen voices, code-switched, clean
  test_noisy          unseen voices, monolingual and code-switched, noise at set SNRs
  test_bias           unseen voices; each utterance holds a rare bias phrase
  unlabeled           seen voices, augmented; labels kept only for scoring
  heldout_train/test  the held-out language only (seen / unseen voices)
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from moe_asr.data import languages as langs_lib
from moe_asr.data import phonemes, schema
from moe_asr.data.synth import augment, grammar, tts

SPLITS = (
  "train",
  "validation",
  "test",
  "test_cs",
  "test_noisy",
  "test_bias",
  "unlabeled",
  "heldout_train",
  "heldout_test",
)


@dataclasses.dataclass(frozen=True)
class SplitSpec:
  """How the utterances of one split are made."""

  name: str
  size: int
  voices: str  # "train" or "test" voice pool.
  kind: str  # "mono", "cs", "mixed", "bias" or "heldout".
  augment: bool  # Random noise / reverb / speed (train-time style).
  noisy: bool  # Noise at the fixed test SNRs.
  avoid_rare: bool  # Keep rare bias entities (nearly) out of this split.


def split_specs(cfg: Mapping[str, Any]) -> dict[str, SplitSpec]:
  """The split table for a corpus config."""
  table = {
    "train": ("train", "mixed", True, False, True),
    "validation": ("train", "mixed", False, False, True),
    "test": ("test", "mono", False, False, False),
    "test_cs": ("test", "cs", False, False, False),
    "test_noisy": ("test", "mixed", False, True, False),
    "test_bias": ("test", "bias", False, False, False),
    "unlabeled": ("train", "mixed", True, False, True),
    "heldout_train": ("train", "heldout", True, False, False),
    "heldout_test": ("test", "heldout", False, False, False),
  }
  specs = {}
  for name in SPLITS:
    voices, kind, aug, noisy, avoid = table[name]
    specs[name] = SplitSpec(name, int(cfg["splits"][name]), voices, kind, aug, noisy, avoid)
  return specs


def validate_config(cfg: Mapping[str, Any]) -> None:
  """Fails fast, naming the offending value, on an inconsistent corpus config."""
  for code in (*cfg["languages"], cfg["heldout_language"]):
    langs_lib.check_language(code)
    if code not in grammar.SUPPORTED_LANGUAGES:
      raise ValueError(f"Corpus language {code!r} has no grammar")
  if cfg["heldout_language"] in cfg["languages"]:
    raise ValueError(f"Held-out language {cfg['heldout_language']!r} is also a corpus language")
  for pair in cfg["code_switch_pairs"]:
    if tuple(pair) not in grammar.CODE_SWITCH_PAIRS:
      raise ValueError(f"Code-switch pair {tuple(pair)} is not supported by the grammar")
    if not set(pair) <= set(cfg["languages"]):
      raise ValueError(f"Code-switch pair {tuple(pair)} uses a language outside `languages`")
  overlap = set(cfg["voices"]["train_variants"]) & set(cfg["voices"]["test_variants"])
  if overlap:
    raise ValueError(f"Voice variants in both train and test pools: {sorted(overlap)}")
  missing = set(cfg["splits"]) ^ set(SPLITS)
  if missing:
    raise ValueError(f"Corpus splits must be exactly {SPLITS}; differs in {sorted(missing)}")


def _rng(cfg: Mapping[str, Any], *key: str | int) -> np.random.Generator:
  words = [int(cfg["seed"])]
  words += [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in key]
  return np.random.default_rng(words)


@functools.lru_cache(maxsize=8)
def _speakers(cfg_key: str, pool: str) -> tuple[tts.Voice, ...]:
  cfg = _CONFIGS[cfg_key]
  v = cfg["voices"]
  variants = v[f"{pool}_variants"]
  count = v[f"num_{pool}_speakers"]
  rng = _rng(cfg, "speakers", pool)
  voices = {}
  # Every variant is used at least once; the rest are random draws.
  order = list(variants) + list(rng.choice(variants, size=max(0, count - len(variants))))
  for variant in order[: max(count, len(variants))]:
    voice = tts.Voice(
      variant=str(variant),
      rate=int(rng.integers(v["rate_wpm"][0], v["rate_wpm"][1] + 1)),
      pitch=int(rng.integers(v["pitch"][0], v["pitch"][1] + 1)),
      pitch_range=int(rng.integers(v["pitch_range"][0], v["pitch_range"][1] + 1)),
    )
    voices[voice.id] = voice
  return tuple(voices.values())


# Configs are plain dicts keyed by their JSON so caches work across processes.
_CONFIGS: dict[str, dict[str, Any]] = {}


def _register(cfg: Mapping[str, Any]) -> str:
  import json

  plain = json.loads(json.dumps(to_plain(cfg)))
  key = json.dumps(plain, sort_keys=True)
  _CONFIGS.setdefault(key, plain)
  return key


def to_plain(cfg: Any) -> Any:
  if hasattr(cfg, "to_dict"):
    cfg = cfg.to_dict()
  if isinstance(cfg, Mapping):
    return {k: to_plain(v) for k, v in cfg.items()}
  if isinstance(cfg, list | tuple):
    return [to_plain(v) for v in cfg]
  return cfg


def speakers(cfg: Mapping[str, Any], pool: str) -> tuple[tts.Voice, ...]:
  """The speakers (voices) of the `train` or `test` pool."""
  return _speakers(_register(cfg), pool)


@functools.lru_cache(maxsize=8)
def _bias_entities(cfg_key: str) -> tuple[tuple[str, str, str], ...]:
  cfg = _CONFIGS[cfg_key]
  rng = _rng(cfg, "bias")
  chosen = []
  for lang in cfg["languages"]:
    pool = [
      (lang, slot_type, value)
      for slot_type in cfg["bias_slot_types"]
      for value in grammar.entities(lang, slot_type)
    ]
    if not pool:
      continue
    picks = rng.choice(
      len(pool), size=min(len(pool), cfg["bias_entities_per_language"]), replace=False
    )
    chosen += [pool[i] for i in sorted(picks)]
  # Interleave languages so that consecutive test_bias utterances differ.
  return tuple(chosen[i] for i in rng.permutation(len(chosen)))


def bias_entities(cfg: Mapping[str, Any]) -> tuple[tuple[str, str, str], ...]:
  """The rare entities, as (language, slot type, phrase)."""
  return _bias_entities(_register(cfg))


def bias_phrases(cfg: Mapping[str, Any]) -> list[str]:
  """The bias phrase list (unique phrases of the rare entities)."""
  return sorted({phrase for _, _, phrase in bias_entities(cfg)})


@functools.lru_cache(maxsize=4)
def _babble_sources(cfg_key: str) -> tuple[np.ndarray, ...]:
  cfg = _CONFIGS[cfg_key]
  rng = _rng(cfg, "babble")
  pool = speakers(cfg, "train")
  sources = []
  for i in range(8):
    lang = cfg["languages"][i % len(cfg["languages"])]
    utt = grammar.sample_utterance(rng, lang)
    voice = pool[int(rng.integers(len(pool)))]
    sources.append(tts.synthesize(utt.text, lang, voice))
  return tuple(sources)


def _grid(cfg: Mapping[str, Any], split: str, rows: int, cols: int, index: int) -> tuple[int, int]:
  """Cell of a (rows x cols) grid for `index`: a seeded permutation of all cells,
  repeated, so that consecutive examples cover the grid evenly in any split size."""
  cells = _rng(cfg, "grid", split, rows, cols).permutation(rows * cols)
  return divmod(int(cells[index % len(cells)]), cols)


def _plant(
  rng: np.random.Generator, entity: tuple[str, str, str], fallback
) -> grammar.Utterance | None:
  """An utterance holding `entity` verbatim (not inflected), or None if none is found.

  Bias phrases are matched against transcripts, so a planted entity must appear
  in the text exactly as in the phrase list.
  """
  lang, slot_type, value = entity
  intents = grammar.intents_with_slot(lang, slot_type)

  def plant(rng, entity_lang, t, candidates):
    if entity_lang == lang and t == slot_type and value in candidates:
      return value
    return fallback(rng, entity_lang, t, candidates)

  for attempt in range(60):
    if not intents:
      return None
    intent = intents[attempt % len(intents)]
    utt = grammar.sample_utterance(rng, lang, intent=intent, pick_entity=plant)
    if (slot_type, value) in utt.entities and (slot_type, value) in utt.slots:
      return utt
  return None


def _sample_text(
  cfg: Mapping[str, Any], spec: SplitSpec, index: int, rng: np.random.Generator
) -> grammar.Utterance:
  """Draws the utterance (text and labels) of one example."""
  rare = bias_entities(cfg)
  rare_values = {(lang, t, v) for lang, t, v in rare}

  def avoid_rare(rng, lang, slot_type, candidates):
    keep = [c for c in candidates if (lang, slot_type, c) not in rare_values]
    return (
      keep[int(rng.integers(len(keep)))] if keep else candidates[int(rng.integers(len(candidates)))]
    )

  candidates: list[tuple[str, str, str]] = []
  if spec.kind == "bias" and rare:
    # The index's rare entity first, then the next ones should it not fit.
    candidates = [rare[(index + k) % len(rare)] for k in range(len(rare))]
  elif spec.name == "train" and rare and cfg["bias_max_train_count"] > 0:
    # Each rare entity is planted at most `bias_max_train_count` times, at
    # evenly spread train indices, so that it is rare but not unseen.
    stride = max(1, spec.size // (len(rare) * cfg["bias_max_train_count"]))
    slot = index // stride
    if index % stride == 0 and slot < len(rare) * cfg["bias_max_train_count"]:
      candidates = [rare[slot % len(rare)]]

  for planted in candidates:
    utt = _plant(rng, planted, avoid_rare)
    if utt is not None:
      return utt
  if spec.kind == "bias" and rare:
    raise RuntimeError(f"{spec.name}[{index}]: no rare entity fits any template verbatim")

  pick = avoid_rare if spec.avoid_rare else None
  # Intents cycle with the index so that every split is balanced over them.
  intents = grammar.INTENTS
  if spec.kind == "heldout":
    intent = intents[index % len(intents)]
    return grammar.sample_utterance(rng, cfg["heldout_language"], intent=intent, pick_entity=pick)
  code_switched = spec.kind == "cs" or (
    spec.kind == "mixed" and rng.random() < cfg["code_switch_fraction"]
  )
  if code_switched:
    pairs = cfg["code_switch_pairs"]
    if spec.kind == "cs":  # Every (pair, intent) combination in turn.
      p, i = _grid(cfg, spec.name, len(pairs), len(intents), index)
      matrix, embedded = pairs[p]
      intent = intents[i]
    else:
      matrix, embedded = pairs[int(rng.integers(len(pairs)))]
      intent = intents[index % len(intents)]
    return grammar.sample_utterance(rng, matrix, embed=embedded, intent=intent, pick_entity=pick)
  languages = cfg["languages"]
  if spec.kind == "mono":  # Every (language, intent) combination in turn.
    lang_index, i = _grid(cfg, spec.name, len(languages), len(intents), index)
    lang, intent = languages[lang_index], intents[i]
  else:
    lang = languages[int(rng.integers(len(languages)))]
    intent = intents[index % len(intents)]
  return grammar.sample_utterance(rng, lang, intent=intent, pick_entity=pick)


def generate_example(cfg: Mapping[str, Any], split: str, index: int) -> dict[str, Any]:
  """Generates example `index` of `split` in the common schema.

  Args:
    cfg: a corpus config (ConfigDict or dict).
    split: one of `SPLITS`.
    index: example index within the split.

  Returns:
    A dict matching `moe_asr.data.schema.features()`.
  """
  key = _register(cfg)
  cfg = _CONFIGS[key]
  spec = split_specs(cfg)[split]
  rng = _rng(cfg, "example", split, index)
  pool = speakers(cfg, spec.voices)
  voice = pool[int(rng.integers(len(pool)))]
  max_samples = int(cfg["max_seconds"] * schema.SAMPLE_RATE)

  for _ in range(20):
    utt = _sample_text(cfg, spec, index, rng)
    audio, segments = tts.synthesize_chunks([(c.text, c.lang) for c in utt.chunks], voice, rng=rng)
    if len(audio) <= max_samples:
      break
  else:
    raise RuntimeError(f"{split}[{index}]: every draw was longer than {cfg['max_seconds']} s")

  snr = schema.CLEAN_SNR_DB
  a = cfg["augment"]
  if spec.augment:
    if rng.random() < a["speed_prob"]:
      factor = float(rng.uniform(*a["speed_factors"]))
      new_audio = augment.speed_perturb(audio, factor)
      segments = augment.scale_segments(segments, len(audio), len(new_audio))
      audio = new_audio
    if rng.random() < a["reverb_prob"]:
      audio = augment.reverberate(audio, rng, rt60_s=float(rng.uniform(*a["rt60_s"])))
    if rng.random() < a["noise_prob"]:
      kind = a["noise_kinds"][int(rng.integers(len(a["noise_kinds"])))]
      snr = float(rng.uniform(*a["snr_db"]))
      noise = augment.make_noise(kind, len(audio), rng, babble_sources=_babble_sources(key))
      audio = augment.add_noise(audio, noise, snr)
  elif spec.noisy:
    kinds, snrs = cfg["noisy_kinds"], cfg["noisy_snrs_db"]
    kind = kinds[index % len(kinds)]
    snr = float(snrs[(index // len(kinds)) % len(snrs)])
    noise = augment.make_noise(kind, len(audio), rng, babble_sources=_babble_sources(key))
    audio = augment.add_noise(audio, noise, snr)

  return {
    "audio": augment.peak_limited_int16(audio),
    "text": utt.text,
    "words_lang": list(utt.words_lang),
    # Each chunk in the language it is spoken in, as the synthesiser reads it.
    "phonemes": phonemes.phonemize_text(utt.text, utt.words_lang),
    "segments": np.asarray(segments, np.int32).reshape(-1, 3),
    "language": utt.language,
    "intent": utt.intent,
    "slots": {"type": [t for t, _ in utt.slots], "value": [v for _, v in utt.slots]},
    "speaker": voice.id,
    "id": f"{split}-{index:06d}",
    "snr_db": np.float32(snr),
  }


def _generate_one(args: tuple[str, str, int]) -> tuple[int, dict[str, Any]]:
  cfg_key, split, index = args
  return index, generate_example(_CONFIGS[cfg_key], split, index)


def _init_worker(configs: dict[str, dict[str, Any]]) -> None:
  _CONFIGS.update(configs)


def generate_split(
  cfg: Mapping[str, Any], split: str, *, num_workers: int | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
  """Yields (key, example) for every example of `split`, in index order.

  Synthesis runs in `num_workers` spawned processes (espeak-ng keeps global
  state, so each process owns one engine); the output does not depend on it.
  """
  key = _register(cfg)
  plain = _CONFIGS[key]
  size = split_specs(plain)[split].size
  workers = plain["num_workers"] if num_workers is None else num_workers
  jobs = [(key, split, i) for i in range(size)]
  if workers <= 1 or size < 8:
    for job in jobs:
      index, example = _generate_one(job)
      yield example["id"], example
    return
  import multiprocessing

  ctx = multiprocessing.get_context("spawn")
  with ctx.Pool(workers, initializer=_init_worker, initargs=({key: plain},)) as pool:
    for _, example in pool.imap(_generate_one, jobs, chunksize=4):
      yield example["id"], example
    # Let the workers exit normally (leaving the block would kill them), so that
    # they remove the temporary files of their G2P engines.
    pool.close()
    pool.join()
