"""Word-level slot filling: words on device, one target a word, a tagger that can learn.

The word grouping of the pipeline (training), of `task_heads.word_index` (hypotheses on
device) and of `Tokenizer.word_spans` (reading the tags) must be the same; the word tagger
gives every token of a word the word's distribution; and the heads, fed only token
identities, overfit the slot labels of a small set of the corpus's own commands.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from moe_asr.data import pipeline as pl
from moe_asr.data import text as text_lib
from moe_asr.data.synth import grammar
from moe_asr.data.tokenizer import Tokenizer
from moe_asr.evaluation import evaluate
from moe_asr.evaluation import metrics as metrics_lib
from moe_asr.models import task_heads

SR = 16000
D = 32
LANGS = ("en", "es", "de", "fr", "hi", "cmn")
VOCAB = pl.Vocabularies(grammar.INTENTS, grammar.SLOT_TYPES)


def _commands(n: int, seed: int = 0) -> list[grammar.Utterance]:
  rng = np.random.default_rng(seed)
  return [grammar.sample_utterance(rng, LANGS[i % len(LANGS)]) for i in range(n)]


def _example(i: int, u: grammar.Utterance) -> dict:
  n = SR // 2  # The heads here never read the audio's content.
  return {
    "audio": np.random.default_rng(i).integers(-300, 300, n).astype(np.int16),
    "text": u.text.encode(),
    "words_lang": [w.encode() for w in u.words_lang],
    "segments": np.zeros((0, 3), np.int32),
    "language": u.language.encode(),
    "intent": u.intent.encode(),
    "slots": {"type": [t.encode() for t, _ in u.slots], "value": [v.encode() for _, v in u.slots]},
    "speaker": b"s",
    "id": f"ex-{i:03d}".encode(),
    "snr_db": np.float32(np.inf),
  }


@pytest.fixture(scope="module")
def commands():
  return _commands(36)


@pytest.fixture(scope="module")
def tokenizer(commands):
  # Characters only (as the demo's tokenizer), so most words span several pieces.
  texts = [u.text for u in _commands(400, seed=1)] + [u.text for u in commands]
  return Tokenizer.train(texts, vocab_size=700, languages=LANGS, character_coverage=1.0)


def test_word_index_matches_word_spans(tokenizer):
  table = tokenizer.word_table()
  assert table[tokenizer.pad_id] == -1 and table[tokenizer.eos_id] == -1
  assert table[tokenizer.language_tag_id("en")] == -1
  rng = np.random.default_rng(0)
  rows = []
  for u in _commands(12, seed=3):
    ids = tokenizer.encode(u.text)
    if rng.random() < 0.5:  # A symbol inside, then a piece that does not start a word.
      cut = int(rng.integers(1, len(ids)))
      ids = ids[:cut] + [tokenizer.language_tag_id("es")] + ids[cut:]
    rows.append(ids)
  rows.append([tokenizer.piece_to_id("a"), tokenizer.piece_to_id("b")])  # No word start at all.
  width = max(map(len, rows)) + 3
  tokens = np.zeros((len(rows), width), np.int32)
  mask = np.zeros((len(rows), width), bool)
  for r, ids in enumerate(rows):
    tokens[r, : len(ids)], mask[r, : len(ids)] = ids, True
  words = np.asarray(jax.jit(task_heads.word_index)(tokens, mask, table))
  last = np.asarray(task_heads.last_piece_mask(jnp.asarray(words)))
  for r, ids in enumerate(rows):
    spans = tokenizer.word_spans(ids)
    expected = np.full(width, -1)
    for w, positions in enumerate(spans):
      expected[positions] = w
    np.testing.assert_array_equal(words[r], expected)
    assert set(np.flatnonzero(last[r])) == {positions[-1] for positions in spans}


def _pipeline_batches(commands, tokenizer):
  source = [_example(i, u) for i, u in enumerate(commands)]
  cfg = pl.PipelineConfig(
    buckets=((1.0, 12),),
    tokens_per_second=90.0,
    words_per_second=30.0,
    shuffle=False,
    drop_remainder=False,
    num_epochs=1,
    num_threads=1,
    prefetch=1,
  )
  pipe = pl.Pipeline(
    source, cfg, tokenizer=tokenizer, vocab=VOCAB, process_index=0, process_count=1
  )
  batches = [pl.device_arrays(b) for b in pipe]
  assert sum(int(b["example_mask"].sum()) for b in batches) == len(source)
  return source, batches


class _TextTagger(nnx.Module):
  """Token embeddings in place of decoder states, then the task heads; or (`own_embedding`)
  states that say nothing, and the word tagger's own token embedding."""

  def __init__(self, vocab_size: int, *, own_embedding: bool = False, rngs: nnx.Rngs):
    self.own_embedding = own_embedding
    self.embed = nnx.Embed(vocab_size, D, rngs=rngs)
    self.heads = task_heads.TaskHeads(
      D, len(VOCAB.intents), len(VOCAB.slot_tags), num_heads=2, num_queries=2, d_ff=2 * D,
      slot_tagger="word", word_layers=2, max_words=128,
      vocab_size=vocab_size if own_embedding else 0, rngs=rngs,
    )  # fmt: skip

  def __call__(self, batch, token_word):
    tokens, mask = batch["tokens"], batch["token_mask"]
    enc = jnp.zeros((tokens.shape[0], 4, D))
    enc_mask = jnp.ones((tokens.shape[0], 4), bool)
    lang = jnp.full((tokens.shape[0], 7), 1 / 7)
    states = self.embed(tokens) * (0.0 if self.own_embedding else 1.0)
    return self.heads(
      states, mask, enc, enc_mask, lang, token_word=token_word,
      tokens=tokens if self.own_embedding else None,
    )  # fmt: skip


def test_pipeline_words_agree_with_word_index(commands, tokenizer):
  _, batches = _pipeline_batches(commands, tokenizer)
  table = tokenizer.word_table()
  for b in batches:
    on_device = np.asarray(task_heads.word_index(b["tokens"], b["token_mask"], table))
    np.testing.assert_array_equal(on_device, b["token_word"])
    # A slot target only where a word ends (where the tags are read).
    last = np.asarray(task_heads.last_piece_mask(jnp.asarray(b["token_word"])))
    rows = b["example_mask"][:, None]
    np.testing.assert_array_equal((b["slot_tags"] >= 0) & rows, last & rows)


def test_word_tagger_one_distribution_per_word_and_padding_invariant(commands, tokenizer):
  _, batches = _pipeline_batches(commands[:12], tokenizer)
  model = _TextTagger(tokenizer.vocab_size, rngs=nnx.Rngs(0))
  model.eval()
  b = batches[0]
  out = nnx.jit(lambda m, b: m(b, b["token_word"]))(model, b)
  log_probs, words = np.asarray(out.slot_log_probs), b["token_word"]
  for r in np.flatnonzero(b["example_mask"]):
    for w in range(words[r].max() + 1):
      rows = log_probs[r, words[r] == w]
      np.testing.assert_allclose(rows, np.broadcast_to(rows[0], rows.shape), atol=1e-6)
  # Twice the token padding: the same distributions on the valid tokens.
  wide = {k: np.pad(v, ((0, 0), (0, v.shape[1]))) for k, v in b.items() if k in ("tokens",)}
  wide["token_mask"] = np.pad(b["token_mask"], ((0, 0), (0, b["token_mask"].shape[1])))
  wide_words = np.pad(words, ((0, 0), (0, words.shape[1])), constant_values=-1)
  wide_out = nnx.jit(lambda m, b, w: m(b, w))(model, wide, wide_words)
  valid = b["token_mask"]
  np.testing.assert_allclose(
    np.asarray(wide_out.slot_log_probs)[:, : valid.shape[1]][valid], log_probs[valid], atol=1e-4
  )


@pytest.mark.parametrize("own_embedding", [False, True])
def test_word_tagger_overfits_reference_transcripts(commands, tokenizer, own_embedding):
  """F1 >= 0.95 on its own training commands (every language of the corpus, Hindi and
  Mandarin included), read back as evaluation reads it; from token states, or from
  uninformative states and the tagger's own token embedding."""
  source, batches = _pipeline_batches(commands, tokenizer)
  assert sum(len(u.slots) for u in commands) >= 30
  model = _TextTagger(tokenizer.vocab_size, own_embedding=own_embedding, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(5e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, b):
    def loss_fn(model):
      out = model(b, b["token_word"])
      slots, _ = task_heads.slot_loss(out.slot_log_probs, b["slot_tags"], b["token_mask"])
      return slots

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  for _ in range(150):
    for b in batches:
      loss = step(model, optimizer, b)
  assert float(loss) < 0.1
  model.eval()
  table = tokenizer.word_table()
  infer = nnx.jit(lambda m, b: m(b, task_heads.word_index(b["tokens"], b["token_mask"], table)))
  pairs = []
  for b in batches:
    tags = np.asarray(jnp.argmax(infer(model, b).slot_log_probs, -1))
    for r in np.flatnonzero(b["example_mask"]):
      n = int(b["token_mask"][r].sum())
      hyp = evaluate.slot_spans(b["tokens"][r, :n], tags[r, :n], VOCAB.slot_tags, tokenizer)
      ex = source[int(b["index"][r])]
      ref = tuple(
        (t.decode(), text_lib.normalize(v.decode()))
        for t, v in zip(ex["slots"]["type"], ex["slots"]["value"], strict=True)
      )
      pairs.append((ref, hyp))
  assert metrics_lib.slot_f1(pairs) >= 0.95


def test_word_hashes_name_words_by_their_pieces(tokenizer):
  """The same pieces hash alike wherever they stand (row, position, padding, the words
  around them); different words of a sentence set differ (no collision among them at 8192
  buckets), also a word cut in two by a symbol; pieces in another order differ."""
  table = tokenizer.word_table()
  texts = ["play believer by metallica", "believer", "metallica play", "spiel das lied mensch"]
  rows = [tokenizer.encode(t) for t in texts]
  rows.append(rows[0][:3] + [tokenizer.language_tag_id("es")] + rows[0][3:])  # A symbol inside.
  width = max(map(len, rows)) + 4
  tokens = np.zeros((len(rows), width), np.int32)
  mask = np.zeros((len(rows), width), bool)
  for r, ids in enumerate(rows):
    tokens[r, : len(ids)], mask[r, : len(ids)] = ids, True
  words = task_heads.word_index(tokens, mask, table)
  hash_fn = jax.jit(task_heads.word_hashes, static_argnums=(2, 3))
  hashes = np.asarray(hash_fn(tokens, words, 8, 8192))
  assert hashes.min() >= 0 and hashes.max() < 8192
  by_word = {}
  for r, ids in enumerate(rows):
    for w, positions in enumerate(tokenizer.word_spans(ids)):
      pieces = tuple(ids[p] for p in positions)
      by_word.setdefault(pieces, set()).add(int(hashes[r, w]))
  assert all(len(h) == 1 for h in by_word.values()), by_word
  assert len({h for (h,) in by_word.values()}) == len(by_word) >= 8
  # A word made of the same pieces in another order is another word.
  ab = [tokenizer.piece_to_id("▁a"), tokenizer.piece_to_id("b")]
  ba = [tokenizer.piece_to_id("▁b"), tokenizer.piece_to_id("a")]
  pair = np.asarray([ab, ba], np.int32)
  pair_words = task_heads.word_index(pair, np.ones_like(pair, bool), table)
  h = np.asarray(task_heads.word_hashes(pair, pair_words, 1, 8192))
  assert h[0, 0] != h[1, 0]
