"""Speech synthesis with espeak-ng, called through ctypes.

The library and its voice data come from the `espeakng-loader` wheel, so no
system package is needed. espeak-ng keeps global state inside the shared
library, and not all of it is reset by `espeak_Initialize`: the phase of the
pitch "flutter" of the waveform generator is a function-level static that
carries over from one utterance to the next, so two calls with the same text
and voice would give slightly different audio, depending on everything the
process synthesised before. To make each call reproducible on its own, every
call loads the library, initialises it, synthesises, terminates it and unloads
it again (well under a millisecond on top of the synthesis itself).

Because nothing stays loaded between calls (`espeak_Terminate` joins espeak's
internal thread), the module is safe to use from forked or spawned worker
processes: each process loads its own copy when it synthesises.
"""

from __future__ import annotations

import _ctypes
import ctypes
import dataclasses
import functools
import locale
import os
import pathlib
import threading
import warnings
import zlib
from collections.abc import Sequence

import espeakng_loader
import numpy as np
import scipy.signal

from moe_asr.data import languages, schema

SAMPLE_RATE = schema.SAMPLE_RATE
_ESPEAK_RATE = 22050  # espeak-ng's native output rate for all its voices.
_RESAMPLE_UP, _RESAMPLE_DOWN = 320, 441  # 16000 / 22050.

# Values from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_RATE_MIN, _RATE_MAX = 80, 450  # espeakRATE_MINIMUM / espeakRATE_MAXIMUM.

# Samples quieter than this (relative to the utterance peak) count as silence
# when trimming; espeak's pauses are near-exact zeros, so the level only has to
# sit below the softest consonant onsets.
_SILENCE_DB = -50.0

# int (*)(short *wav, int numsamples, espeak_EVENT *events)
_SynthCallback = ctypes.CFUNCTYPE(
  ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

_LIBC = ctypes.CDLL(None)  # The process's C library (rand/srand shared with espeak).
_LIBC.srand.argtypes = [ctypes.c_uint]
_lock = threading.Lock()
_warned_not_unloaded = False


def _reset_lock_in_child() -> None:
  # A fork taken while another thread synthesises must not leave the child
  # with a lock that nobody will release.
  global _lock
  _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
  os.register_at_fork(after_in_child=_reset_lock_in_child)


@dataclasses.dataclass(frozen=True)
class Voice:
  """A synthetic speaker: an espeak voice variant with rate and pitch settings."""

  variant: str  # File name in espeak-ng-data/voices/!v, e.g. "m3", "f2", "klatt4".
  rate: int  # Speaking rate in words per minute (80..450; 110 is slow, 260 fast).
  pitch: int  # Base pitch, 0..99 (50 is the variant's own pitch).
  pitch_range: int = 50  # Intonation range, 0..99 (0 is monotone).

  def __post_init__(self):
    if not _RATE_MIN <= self.rate <= _RATE_MAX:
      raise ValueError(f"rate must be in [{_RATE_MIN}, {_RATE_MAX}] wpm, got {self.rate}")
    for name in ("pitch", "pitch_range"):
      value = getattr(self, name)
      if not 0 <= value <= 99:
        raise ValueError(f"{name} must be in [0, 99], got {value}")

  @property
  def id(self) -> str:
    """Stable speaker id, e.g. "m3-r160-p45-pr50"."""
    variant = self.variant.replace(" ", "_")
    return f"{variant}-r{self.rate}-p{self.pitch}-pr{self.pitch_range}"


@functools.cache
def available_variants() -> tuple[str, ...]:
  """Sorted names of the voice variants shipped with espeakng-loader."""
  variant_dir = pathlib.Path(espeakng_loader.get_data_path()) / "voices" / "!v"
  return tuple(sorted(p.name for p in variant_dir.iterdir() if p.is_file()))


@functools.cache
def _voice_file(tag: str) -> str:
  """Voice file (relative to espeak-ng-data/lang) that espeak uses for a language tag.

  `espeak_SetVoiceByName` only finds voices by file or voice name, so a tag
  that a voice merely declares (`language fr-fr` in the file `roa/fr`) is
  resolved here the way espeak ranks languages: the declared tag with the
  lowest priority number wins, and a file named like the tag comes next.
  """
  lang_dir = pathlib.Path(espeakng_loader.get_data_path()) / "lang"
  tag = tag.lower()
  declared, named = [], []
  for path in sorted(p for p in lang_dir.rglob("*") if p.is_file()):
    relative = path.relative_to(lang_dir).as_posix()
    if path.name.lower() == tag:
      named.append(relative)
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
      fields = line.split()
      if len(fields) >= 2 and fields[0] == "language" and fields[1].lower() == tag:
        priority = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else 5
        declared.append((priority, relative))
  if declared:
    return min(declared)[1]
  if named:
    return named[0]
  raise ValueError(f"espeak-ng has no voice for language tag {tag!r}")


def _espeak_voice_name(lang: str, variant: str) -> bytes:
  if lang not in languages.LANGUAGES:
    raise ValueError(
      f"Unknown language code {lang!r}; known codes: {', '.join(languages.LANGUAGE_CODES)}"
    )
  if variant not in available_variants():
    raise ValueError(f"Unknown espeak voice variant {variant!r}; see available_variants()")
  return f"{_voice_file(languages.LANGUAGES[lang].espeak_voice)}+{variant}".encode()


def _unload(lib: ctypes.CDLL, path: str) -> None:
  global _warned_not_unloaded
  _ctypes.dlclose(lib._handle)
  try:
    still_loaded = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
  except OSError:
    return  # Unloaded: the next call starts from pristine library state.
  # Someone else in this process holds the library (or it cannot be unloaded),
  # so its static state survives between calls.
  _ctypes.dlclose(still_loaded._handle)
  if not _warned_not_unloaded:
    _warned_not_unloaded = True
    warnings.warn(
      f"{path} stays loaded between calls; espeak output may then depend on "
      "earlier synthesis in this process and not be exactly reproducible.",
      RuntimeWarning,
      stacklevel=3,
    )


def _synthesize_native(text: str, voice_name: bytes, voice: Voice) -> np.ndarray:
  """Runs one synthesis on a freshly loaded library; int16 samples at 22.05 kHz."""
  chunks: list[np.ndarray] = []

  def collect(wav, num_samples, _events):
    if wav and num_samples > 0:
      chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
    return 0  # 0 = continue synthesis.

  callback = _SynthCallback(collect)
  path = espeakng_loader.get_library_path()
  data_path = espeakng_loader.get_data_path().encode()
  with _lock:
    # espeak_Initialize switches LC_CTYPE to a UTF-8 locale; give the process
    # its own locale back afterwards.
    saved_ctype = locale.setlocale(locale.LC_CTYPE)
    lib = ctypes.CDLL(path)
    try:
      lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
      lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
      lib.espeak_SetSynthCallback.restype = None
      lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
      lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
      lib.espeak_Synth.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
      ]
      sample_rate = lib.espeak_Initialize(
        _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, _INITIALIZE_DONT_EXIT
      )
      try:
        if sample_rate != _ESPEAK_RATE:
          raise RuntimeError(
            f"espeak_Initialize returned {sample_rate}, expected {_ESPEAK_RATE} Hz "
            f"(data path {data_path.decode()})"
          )
        lib.espeak_SetSynthCallback(callback)
        if lib.espeak_SetVoiceByName(voice_name) != 0:
          raise RuntimeError(f"espeak could not load voice {voice_name.decode()!r}")
        # Set after the voice, whose selection may reset them.
        lib.espeak_SetParameter(_PARAM_RATE, voice.rate, 0)
        lib.espeak_SetParameter(_PARAM_PITCH, voice.pitch, 0)
        lib.espeak_SetParameter(_PARAM_RANGE, voice.pitch_range, 0)
        encoded = text.encode("utf-8") + b"\0"
        # Breathy variants (`breath` in the voice file, e.g. f5) draw their
        # aspiration noise from espeak's generator (seeded from the clock at
        # initialisation) and libc's rand(): seed both from the request so the
        # noise is a function of the text and voice only.
        seed = zlib.crc32(encoded + voice_name + voice.id.encode())
        lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
        _LIBC.srand(seed)
        status = lib.espeak_Synth(
          encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        if status != 0:
          raise RuntimeError(f"espeak_Synth failed with status {status} for {text!r}")
        lib.espeak_Synchronize()
      finally:
        lib.espeak_Terminate()
    finally:
      _unload(lib, path)
      locale.setlocale(locale.LC_CTYPE, saved_ctype)
  if not chunks:
    return np.zeros(0, np.int16)
  return np.concatenate(chunks)


def _synthesize_untrimmed(text: str, lang: str, voice: Voice) -> tuple[np.ndarray, int, int]:
  """Synthesises at 16 kHz; returns (audio, first, last) non-silent sample indices."""
  voice_name = _espeak_voice_name(lang, voice.variant)
  native = _synthesize_native(text, voice_name, voice)
  audio = scipy.signal.resample_poly(
    native.astype(np.float64) / 32768.0, _RESAMPLE_UP, _RESAMPLE_DOWN
  )
  audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
  peak = float(np.max(np.abs(audio))) if audio.size else 0.0
  if peak < 1e-4:
    raise RuntimeError(f"espeak returned no audio for {text!r} (language {lang}, voice {voice.id})")
  loud = np.flatnonzero(np.abs(audio) > peak * 10.0 ** (_SILENCE_DB / 20.0))
  return audio, int(loud[0]), int(loud[-1])


def synthesize(text: str, lang: str, voice: Voice, *, pad_ms: int = 30) -> np.ndarray:
  """Synthesises `text` in language `lang` with `voice`.

  The output depends only on the arguments: the same text and voice give
  identical samples in any process.

  Args:
    text: text to speak, in the language's script (normalised transcripts work).
    lang: language code from `languages.LANGUAGES`; its `espeak_voice` is used.
    voice: the synthetic speaker.
    pad_ms: leading and trailing silence is trimmed to at most this long.

  Returns:
    float32 mono waveform in [-1, 1] at 16 kHz.

  Raises:
    ValueError: for an unknown language code or voice variant.
    RuntimeError: when espeak produces no audio for `text`.
  """
  audio, first, last = _synthesize_untrimmed(text, lang, voice)
  pad = int(round(pad_ms * SAMPLE_RATE / 1000))
  return audio[max(0, first - pad) : last + 1 + pad]


def synthesize_chunks(
  chunks: Sequence[tuple[str, str]],
  voice: Voice,
  *,
  gap_ms: tuple[int, int] = (0, 120),
  rng: np.random.Generator,
  pad_ms: int = 30,
) -> tuple[np.ndarray, np.ndarray]:
  """Synthesises consecutive chunks with one voice, e.g. a speaker switching language.

  Each chunk is synthesised separately with the same variant, rate and pitch,
  trimmed like `synthesize`, and the chunks are joined with a pause of a random
  length drawn uniformly from `gap_ms`. The boundary between two segments lies
  in the middle of the silence between the last sound of one chunk and the
  first sound of the next, so each pause is split evenly between its neighbours.

  Args:
    chunks: (text, language code) pairs in speaking order.
    voice: the speaker of every chunk.
    gap_ms: inclusive (min, max) length of the pause inserted between chunks.
    rng: source of the pause lengths.
    pad_ms: silence kept around each chunk, as in `synthesize`.

  Returns:
    audio: float32 [samples] at 16 kHz, in [-1, 1].
    segments: int32 [n_chunks, 3] rows of (start_sample, end_sample, language
      index). The segments tile the waveform: the first starts at 0, each ends
      where the next starts, and the last ends at `len(audio)`.

  Raises:
    ValueError: for no chunks, an unknown language or a bad `gap_ms`.
    RuntimeError: when espeak produces no audio for a chunk.
  """
  if not chunks:
    raise ValueError("synthesize_chunks needs at least one (text, lang) chunk")
  low, high = gap_ms
  if not 0 <= low <= high:
    raise ValueError(f"gap_ms must satisfy 0 <= min <= max, got {gap_ms}")
  pad = int(round(pad_ms * SAMPLE_RATE / 1000))
  lang_ids = [languages.language_index(lang) for _, lang in chunks]

  pieces = []
  boundaries = [0]  # Segment boundaries in output samples.
  offset = 0  # Start of the next piece in the output.
  prev_last = None  # Output index of the last loud sample of the previous chunk.
  for i, (text, lang) in enumerate(chunks):
    audio, first, last = _synthesize_untrimmed(text, lang, voice)
    audio = audio[max(0, first - pad) : last + 1 + pad]
    first, last = min(first, pad), min(first, pad) + (last - first)
    if i > 0:
      gap = int(rng.integers(low, high + 1)) * SAMPLE_RATE // 1000
      pieces.append(np.zeros(gap, np.float32))
      offset += gap
      # Middle of the silence between the two chunks' sounds.
      boundaries.append((prev_last + 1 + offset + first) // 2)
    pieces.append(audio)
    prev_last = offset + last
    offset += len(audio)
  boundaries.append(offset)

  segments = np.array(
    [(boundaries[i], boundaries[i + 1], lang_ids[i]) for i in range(len(chunks))], np.int32
  ).reshape(len(chunks), 3)
  return np.concatenate(pieces), segments
