"""SentencePiece tokenizer shared by every language: train, load, extend.

One unigram model covers all languages. Language tags (`<en>`, `<hi>`, ...)
and task tokens (`<asr>`, `<intent>`, ...) are user-defined symbols, so each
is a single id. Id 0 is `<pad>`, which is also the CTC blank; `<unk>`, `<s>`
and `</s>` follow. Byte fallback is on, so characters outside the learned
vocabulary (rare Han characters, say) become UTF-8 byte pieces, never `<unk>`.

Text is encoded as given: transcripts are expected to be normalised with
`moe_asr.data.text.normalize` already, and SentencePiece's own normalisation
is off (`identity`) so that decoding gives back exactly the normalised text.

The serialized model proto (`to_bytes`) is what checkpoints store; `extend`
appends pieces to it without renumbering, so a model trained with the old
vocabulary keeps its output rows when a language is added.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm
from etils import epath
from sentencepiece import sentencepiece_model_pb2

from moe_asr.data.languages import LANGUAGE_CODES

PAD_PIECE = "<pad>"
UNK_PIECE = "<unk>"
BOS_PIECE = "<s>"
EOS_PIECE = "</s>"
WORD_START = "\u2581"  # SentencePiece's word-start marker.

# Task and condition tokens placed in decoder prompts.
TASK_TOKENS: tuple[str, ...] = ("<asr>", "<intent>", "<slots>", "<nolang>", "<cs>")

_CODE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_NUM_SPECIAL = 4  # pad, unk, bos, eos.
_NUM_BYTES = 256  # Byte-fallback pieces <0x00>..<0xFF>.

# Settings shared by `train` and the auxiliary model that `extend` learns, so
# that new pieces are segmented the same way as the old ones. One thread keeps
# the EM sums in a fixed order, so the same text gives the same model.
_TRAINER_OPTIONS = dict(
  normalization_rule_name="identity",
  split_digits=True,
  num_threads=1,
  minloglevel=2,
)

_Type = sentencepiece_model_pb2.ModelProto.SentencePiece.Type


def language_tag(code: str) -> str:
  """The tag piece of a language code, e.g. `"en" -> "<en>"`."""
  if not _CODE_RE.match(code):
    raise ValueError(f"Invalid language code {code!r}: expected lower-case letters and digits.")
  return f"<{code}>"


LANGUAGE_TAGS: tuple[str, ...] = tuple(language_tag(code) for code in LANGUAGE_CODES)


def _clean_texts(texts: Iterable[str], what: str) -> list[str]:
  if isinstance(texts, str):
    raise TypeError(f"{what} expects an iterable of strings, not a single string.")
  texts = [t for t in texts if t and t.strip()]
  if not texts:
    raise ValueError(f"{what} needs at least one non-empty text.")
  return texts


def _train_proto(texts: list[str], seed: int, **options) -> bytes:
  """Trains a SentencePiece model in memory and returns its serialized proto."""
  spm.set_random_generator_seed(seed)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(texts), model_writer=model, **_TRAINER_OPTIONS, **options
  )
  return model.getvalue()


class Tokenizer:
  """A SentencePiece model with language tags and task tokens as single ids."""

  def __init__(self, model_proto: bytes):
    """Wraps a serialized SentencePiece `ModelProto` (see `from_bytes`)."""
    self._proto_bytes = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto_bytes)
    proto = sentencepiece_model_pb2.ModelProto.FromString(self._proto_bytes)
    self._symbol_ids = {
      p.piece: i for i, p in enumerate(proto.pieces) if p.type == _Type.USER_DEFINED
    }
    self._control_ids = frozenset(i for i, p in enumerate(proto.pieces) if p.type == _Type.CONTROL)
    # Longest symbols first so that no symbol shadows a longer one it prefixes.
    symbols = sorted(self._symbol_ids, key=len, reverse=True)
    self._symbol_re = re.compile("|".join(map(re.escape, symbols))) if symbols else None

  # --- Construction -----------------------------------------------------------

  @classmethod
  def train(
    cls,
    texts: Iterable[str],
    *,
    vocab_size: int,
    languages: Sequence[str] = LANGUAGE_CODES,
    model_type: str = "unigram",
    character_coverage: float = 0.9995,
    seed: int = 0,
  ) -> Tokenizer:
    """Trains a tokenizer in memory; the same inputs give the same model.

    Args:
      texts: normalised transcripts of every language to cover.
      vocab_size: exact number of pieces, including the 4 special pieces, the
        language tags and task tokens, and the 256 byte-fallback pieces.
      languages: codes whose tags (`<code>`) become user-defined symbols.
      model_type: SentencePiece model type ("unigram" or "bpe").
      character_coverage: fraction of characters covered by character pieces;
        the rest fall back to bytes (never `<unk>`).
      seed: seed of SentencePiece's random generator.

    Returns:
      The trained tokenizer.

    Raises:
      ValueError: if `texts` is empty, or `vocab_size` is too small for the
        fixed pieces or the kept characters, or too large for the text (the
        message gives the limit).
    """
    texts = _clean_texts(texts, "Tokenizer.train")
    symbols = [language_tag(code) for code in languages] + list(TASK_TOKENS)
    if len(set(symbols)) != len(symbols):
      raise ValueError(f"Duplicate language codes or task tokens in {symbols}.")
    fixed = _NUM_SPECIAL + len(symbols) + _NUM_BYTES
    if vocab_size <= fixed:
      raise ValueError(
        f"vocab_size={vocab_size} leaves no room for learned pieces: {fixed} ids go to "
        f"special pieces, {len(symbols)} tags and tokens and {_NUM_BYTES} byte pieces."
      )
    try:
      proto = _train_proto(
        texts,
        seed,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        user_defined_symbols=symbols,
        byte_fallback=True,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        pad_piece=PAD_PIECE,
        unk_piece=UNK_PIECE,
        bos_piece=BOS_PIECE,
        eos_piece=EOS_PIECE,
      )
    except RuntimeError as e:
      limit = re.search(r"Vocabulary size too high.*<= (\d+)", str(e))
      if limit:
        raise ValueError(
          f"vocab_size={vocab_size} is too large for this training text, which supports at "
          f"most {limit.group(1)} pieces; use vocab_size <= {limit.group(1)} or more text."
        ) from None
      chars = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e))
      if chars:
        raise ValueError(
          f"vocab_size={vocab_size} cannot hold the characters that character_coverage="
          f"{character_coverage} keeps from this training text: it needs at least "
          f"{chars.group(1)} pieces; raise vocab_size or lower character_coverage (the rest "
          "then falls back to bytes)."
        ) from None
      raise
    return cls(proto)

  @classmethod
  def from_bytes(cls, model_proto: bytes) -> Tokenizer:
    """Builds a tokenizer from a serialized `ModelProto` (as stored in checkpoints)."""
    return cls(model_proto)

  @classmethod
  def load(cls, path: str | epath.PathLike) -> Tokenizer:
    """Loads a `.model` file (local or any path `etils.epath` reads, e.g. gs://)."""
    return cls(epath.Path(path).read_bytes())

  def save(self, path: str | epath.PathLike) -> None:
    """Writes the model proto to `path`, creating parent directories."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(self._proto_bytes)

  def to_bytes(self) -> bytes:
    """The serialized `ModelProto`."""
    return self._proto_bytes

  # --- Vocabulary -------------------------------------------------------------

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def pad_id(self) -> int:
    return self._sp.pad_id()

  @property
  def blank_id(self) -> int:
    """CTC blank: the padding id."""
    return self._sp.pad_id()

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def unk_id(self) -> int:
    return self._sp.unk_id()

  @property
  def languages(self) -> tuple[str, ...]:
    """Codes that have a language tag in this vocabulary, in id order."""
    return tuple(
      piece[1:-1]
      for piece in self._symbol_ids
      if piece not in TASK_TOKENS and _CODE_RE.match(piece[1:-1])
    )

  def language_tag_id(self, code: str) -> int:
    """Id of the language tag `<code>`; ValueError if this vocabulary lacks it."""
    tag_id = self._symbol_ids.get(language_tag(code))
    if tag_id is None:
      raise ValueError(
        f"Language {code!r} has no tag in this tokenizer; known: {', '.join(self.languages)}"
      )
    return tag_id

  def task_token_id(self, token: str) -> int:
    """Id of a task token such as `"<asr>"`; ValueError if unknown."""
    if token not in TASK_TOKENS or token not in self._symbol_ids:
      raise ValueError(f"Unknown task token {token!r}; known: {', '.join(TASK_TOKENS)}")
    return self._symbol_ids[token]

  def id_to_piece(self, token_id: int) -> str:
    return self._sp.id_to_piece(int(token_id))

  def piece_to_id(self, piece: str) -> int:
    """Id of `piece`, or `unk_id` when the vocabulary lacks it."""
    return self._sp.piece_to_id(piece)

  def is_symbol(self, token_id: int) -> bool:
    """True for language tags and task tokens."""
    return self.id_to_piece(token_id) in self._symbol_ids

  def word_table(self) -> np.ndarray:
    """int8 [vocab]: 1 for a piece that starts a word, 0 for one that continues it, -1 for
    pad, bos, eos, language tags and task tokens (no word).

    What `word_spans` reads, as a table a jitted function can index
    (`moe_asr.models.task_heads.word_index`) to find the words of hypothesis tokens on
    device.
    """
    skip = {self.pad_id, self.bos_id, self.eos_id}
    table = np.zeros(self.vocab_size, np.int8)
    for i in range(self.vocab_size):
      if i in skip or self.is_symbol(i):
        table[i] = -1
      elif self.id_to_piece(i).startswith(WORD_START):
        table[i] = 1
    return table

  def word_spans(self, tokens: Iterable[int]) -> list[list[int]]:
    """Positions of each word's tokens; a piece starting with "▁" starts a word.

    Pad, bos, eos, language tags and task tokens belong to no word (and end the
    current one).
    """
    skip = {self.pad_id, self.bos_id, self.eos_id}
    spans: list[list[int]] = []
    current: list[int] = []
    for pos, tok in enumerate(int(t) for t in tokens):
      if tok in skip or self.is_symbol(tok):
        if current:
          spans.append(current)
        current = []
        continue
      if current and self.id_to_piece(tok).startswith(WORD_START):
        spans.append(current)
        current = []
      current.append(pos)
    if current:
      spans.append(current)
    return spans

  # --- Encoding ---------------------------------------------------------------

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`; each tag or task token in it becomes its single id.

    Tags are cut out before SentencePiece sees the text, so that a tag never
    picks up a word-boundary piece of its own and the words around it are
    segmented as if the tag were a space.
    """
    if self._symbol_re is None:
      return self._sp.encode(text)
    ids: list[int] = []
    start = 0
    for match in self._symbol_re.finditer(text):
      ids.extend(self._encode_plain(text[start : match.start()]))
      ids.append(self._symbol_ids[match.group()])
      start = match.end()
    ids.extend(self._encode_plain(text[start:]))
    return ids

  def _encode_plain(self, text: str) -> list[int]:
    return self._sp.encode(text) if text.strip() else []

  def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
    """`encode` applied to each text."""
    return [self.encode(text) for text in texts]

  def decode(self, ids: Iterable[int], *, keep_symbols: bool = False) -> str:
    """Text of `ids`, dropping pad, bos and eos.

    Args:
      ids: token ids (any iterable of ints, e.g. a numpy row).
      keep_symbols: keep language tags and task tokens as `<xx>` words;
        by default they are dropped.

    Returns:
      The decoded text.
    """
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < self.vocab_size]
    if bad:
      raise ValueError(f"Token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size}).")
    ids = [i for i in ids if i not in self._control_ids and i != self.pad_id]
    if not keep_symbols:
      return self._sp.decode([i for i in ids if not self.is_symbol(i)])
    words, run = [], []
    for i in ids:
      if self.is_symbol(i):
        words.append(self._sp.decode(run))
        words.append(self.id_to_piece(i))
        run = []
      else:
        run.append(i)
    words.append(self._sp.decode(run))
    return " ".join(w for w in words if w)

  # --- Extension --------------------------------------------------------------

  def extend(
    self,
    texts: Iterable[str],
    *,
    num_new_pieces: int,
    language: str | None = None,
    seed: int = 0,
  ) -> Tokenizer:
    """A tokenizer with this vocabulary plus pieces learned from `texts`.

    Every existing piece keeps its id; new pieces are appended. They come from
    a unigram model trained on `texts` with the same settings: first the
    characters this vocabulary lacks (most frequent first), then the
    highest-scoring multi-character pieces, until `num_new_pieces` are added.
    New pieces keep the log-probabilities that model gave them, so text in
    the old languages changes segmentation only where a new piece gives a
    higher-scoring segmentation. The language tag of `language`, if given and
    missing, is appended as a user-defined symbol (before the new pieces).

    Args:
      texts: normalised transcripts, e.g. of a new language.
      num_new_pieces: number of learned pieces to add (tags not counted).
      language: code of the new language, or None to add no tag.
      seed: seed of SentencePiece's random generator.

    Returns:
      The extended tokenizer.

    Raises:
      ValueError: if `texts` is empty, `num_new_pieces` is negative, or the
        text does not yield that many new pieces (the message gives how many).
    """
    texts = _clean_texts(texts, "Tokenizer.extend")
    if num_new_pieces < 0:
      raise ValueError(f"num_new_pieces must be >= 0, got {num_new_pieces}.")
    proto = sentencepiece_model_pb2.ModelProto.FromString(self._proto_bytes)
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
      # BPE merges follow piece ranks, which appended pieces would not respect.
      raise ValueError("Tokenizer.extend supports unigram models only.")
    if language is not None and language_tag(language) not in self._symbol_ids:
      tag = language_tag(language)
      proto.pieces.add(piece=tag, score=0.0, type=_Type.USER_DEFINED)
      proto.trainer_spec.user_defined_symbols.append(tag)
    # Tags in the text are symbols, not material for new pieces.
    symbols = [p.piece for p in proto.pieces if p.type == _Type.USER_DEFINED]
    symbol_re = re.compile("|".join(map(re.escape, sorted(symbols, key=len, reverse=True))))
    texts = _clean_texts((symbol_re.sub(" ", t) for t in texts), "Tokenizer.extend")
    existing = {p.piece for p in proto.pieces}
    for piece, score in self._learn_pieces(
      texts, num_new_pieces, existing, proto.trainer_spec, seed
    ):
      proto.pieces.add(piece=piece, score=score, type=_Type.NORMAL)
    proto.trainer_spec.vocab_size = len(proto.pieces)
    return Tokenizer(proto.SerializeToString())

  def _learn_pieces(
    self,
    texts: list[str],
    count: int,
    existing: set[str],
    spec: sentencepiece_model_pb2.TrainerSpec,
    seed: int,
  ) -> list[tuple[str, float]]:
    """Up to `count` (piece, score) pairs not in `existing`, learned from `texts`."""
    if count == 0:
      return []
    num_chars = len(set("".join(texts).replace(" ", "")))
    vocab_size = max(count, num_chars) + _NUM_SPECIAL + 1
    for _ in range(4):
      learned = sentencepiece_model_pb2.ModelProto.FromString(
        _train_proto(
          texts,
          seed,
          vocab_size=vocab_size,
          model_type="unigram",
          character_coverage=spec.character_coverage,
          hard_vocab_limit=False,
          byte_fallback=False,
          max_sentencepiece_length=spec.max_sentencepiece_length,
        )
      )
      candidates = [
        (p.piece, p.score)
        for p in learned.pieces
        if p.type == _Type.NORMAL and p.piece not in existing
      ]
      if len(candidates) >= count or len(learned.pieces) < vocab_size:
        break
      vocab_size += count - len(candidates)
    if len(candidates) < count:
      raise ValueError(
        f"The extension text yields only {len(candidates)} pieces not already in the "
        f"vocabulary; use num_new_pieces <= {len(candidates)} or more text."
      )
    # Characters first, so that new-script text stops falling back to bytes.
    candidates.sort(key=lambda ps: (len(ps[0].lstrip("\u2581")) > 1, -ps[1]))
    return candidates[:count]
