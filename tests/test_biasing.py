"""Tests for the contextual biasing graph against a plain-Python Aho-Corasick reference."""

from __future__ import annotations

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from moe_asr.data import tokenizer as tok
from moe_asr.decoding import biasing

# --- Reference ---------------------------------------------------------------


class ReferenceGraph:
  """Textbook Aho-Corasick over dicts; failure arcs are followed one at a time."""

  def __init__(self, phrases, boosts):
    self.next = [{}]
    self.edge_boost = [0.0]
    self.end = [False]
    for phrase, b in zip(phrases, boosts, strict=True):
      node = 0
      for token in phrase:
        if token not in self.next[node]:
          self.next[node][token] = len(self.next)
          self.next.append({})
          self.edge_boost.append(b)
          self.end.append(False)
        node = self.next[node][token]
        self.edge_boost[node] = max(self.edge_boost[node], b)
      self.end[node] = True
    self.score = [0.0] * len(self.next)
    self.fail = [0] * len(self.next)
    queue = [0]
    for node in queue:
      for token, child in self.next[node].items():
        self.score[child] = self.score[node] + self.edge_boost[child]
        if node != 0:
          f = self.fail[node]
          while token not in self.next[f] and f != 0:
            f = self.fail[f]
          self.fail[child] = self.next[f].get(token, 0)
        queue.append(child)

  def step(self, state, token):
    """(next state, score) of one token."""
    node = state
    while token not in self.next[node] and node != 0:
      node = self.fail[node]
    target = self.next[node].get(token, 0)
    ends, m = [], target
    while m != 0:
      if self.end[m]:
        ends.append(m)
      m = self.fail[m]
    if ends:
      return 0, sum(self.score[e] for e in ends) - self.score[state]
    return target, self.score[target] - self.score[state]

  def run(self, stream):
    """Per-step scores, the finalize score after each step, and the number of matches."""
    state, scores, finals, matches = 0, [], [], 0
    for token in stream:
      previous = state
      state, score = self.step(state, int(token))
      scores.append(score)
      finals.append(-self.score[state])
      matches += state == 0 and score != -self.score[previous]
    return np.array(scores), np.array(finals), matches


@jax.jit
def run_graph(graph, streams):
  """Per-step scores and finalize scores of int [batch, time] token streams."""

  def step(state, token):
    state, score = biasing.advance(graph, state, token)
    return state, (score, biasing.finalize(graph, state))

  state0 = jnp.full(streams.shape[:1], biasing.ROOT, jnp.int32)
  _, (scores, finals) = lax.scan(step, state0, streams.T)
  return scores.T, finals.T


def check_against_reference(phrases, boosts, vocab_size, streams):
  """Both forms of the graph (the dense table; the binary search over edges alone) score
  the streams as the reference; returns the dense one."""
  graph = biasing.build_context_graph(phrases, vocab_size, boost=boosts)
  assert graph.dense_next is not None
  search = biasing.build_context_graph(phrases, vocab_size, boost=boosts, dense_table_bytes=0)
  assert search.dense_next is None
  for g in (graph, search):
    _check_graph(g, phrases, boosts, streams)
  return graph


def _check_graph(graph, phrases, boosts, streams):
  ref = ReferenceGraph(phrases, boosts)
  scores, finals = jax.device_get(run_graph(graph, jnp.asarray(streams, jnp.int32)))
  assert scores.dtype == np.float32
  num_matches = num_take_backs = 0
  for row, stream in enumerate(streams):
    ref_scores, ref_finals, matches = ref.run(stream)
    # Boosts are dyadic fractions, so float32 sums are exact.
    np.testing.assert_array_equal(scores[row], ref_scores.astype(np.float32))
    np.testing.assert_array_equal(finals[row], ref_finals.astype(np.float32))
    assert scores[row].sum() + finals[row, -1] == pytest.approx(
      ref_scores.sum() + ref_finals[-1], abs=1e-4
    )
    num_matches += matches
    num_take_backs += int((ref_scores < 0).sum())
  # The streams exercise both complete matches and broken partial matches.
  assert num_matches >= len(streams) and num_take_backs >= len(streams)


def advance_stream(graph, stream):
  """(final state, per-step scores) of one stream, step by step."""
  state, scores = biasing.ROOT, []
  for token in stream:
    state, score = biasing.advance(graph, jnp.int32(state), jnp.int32(token))
    scores.append(float(score))
  return int(state), scores


# --- Semantics ---------------------------------------------------------------


@pytest.mark.parametrize(
  "phrases, boosts",
  [
    ([[5, 6, 7], [6, 7, 8], [6, 9], [5]], 1.5),
    ([[5, 6, 7], [6, 7, 8], [6, 9], [5]], [1.5, 2.0, 0.75, 1.0]),
    ([[5, 6, 7, 8], [6, 7], [7, 8, 9], [9, 9, 5], [5, 6, 9, 9]], [1.5, 0.5, 2.0, 1.0, 1.25]),
  ],
)
def test_matches_reference_on_random_streams(phrases, boosts):
  rng = np.random.default_rng(0)
  vocab_size = 12
  # Mostly phrase tokens, so partial and complete matches are frequent.
  weights = np.array([1, 1, 1, 1, 2, 8, 8, 8, 8, 8, 2, 2], float)
  streams = rng.choice(vocab_size, size=(64, 40), p=weights / weights.sum())
  n = len(phrases)
  check_against_reference(
    phrases, boosts if isinstance(boosts, list) else [boosts] * n, 12, streams
  )


def test_partial_match_then_failure_takes_back_boost():
  graph = biasing.build_context_graph([[5, 6, 7]], 12, boost=1.5)
  state, scores = advance_stream(graph, [5, 6, 9])
  assert scores == [1.5, 1.5, -3.0]
  assert state == biasing.ROOT


def test_complete_match_keeps_boost():
  graph = biasing.build_context_graph([[5, 6, 7]], 12, boost=1.5)
  state, scores = advance_stream(graph, [4, 5, 6, 7, 9, 8])
  assert scores == [0.0, 1.5, 1.5, 1.5, 0.0, 0.0]
  assert state == biasing.ROOT
  assert float(biasing.finalize(graph, state)) == 0.0


def test_finalize_takes_back_partial():
  graph = biasing.build_context_graph([[5, 6, 7]], 12, boost=2.0)
  state, scores = advance_stream(graph, [5, 6])
  assert scores == [2.0, 2.0]
  assert float(biasing.finalize(graph, state)) == -4.0
  assert float(biasing.finalize(graph, biasing.ROOT)) == 0.0


def test_failure_to_a_suffix_phrase():
  # After 5 6 the token 8 fails to [6] and completes [6, 8]: the hypothesis ends with
  # exactly the boost of [6, 8] (3.0), the partial [5, 6] being taken back.
  graph = biasing.build_context_graph([[5, 6, 7], [6, 8]], 12, boost=1.5)
  state, scores = advance_stream(graph, [5, 6, 8])
  assert scores == [1.5, 1.5, 0.0]
  assert float(biasing.finalize(graph, state)) == 0.0  # A completed match is kept.
  # A failure that lands on a partial suffix keeps that suffix's boost: 5 6 6 -> [6].
  state, scores = advance_stream(graph, [5, 6, 6])
  assert scores == [1.5, 1.5, -1.5]
  assert float(biasing.finalize(graph, state)) == -1.5


def test_phrase_and_its_suffix_both_count():
  graph = biasing.build_context_graph([[5, 6, 7], [6, 7]], 12, boost=1.5)
  _, scores = advance_stream(graph, [5, 6, 7])
  assert sum(scores) == 4.5 + 3.0


def test_special_and_out_of_vocab_tokens_go_to_root():
  graph = biasing.build_context_graph([[5, 6, 7]], 12, boost=1.5)
  state, _ = advance_stream(graph, [5, 6])
  for token in [0, 1, 2, 3, 12, 1000, -1, 11]:
    next_state, score = biasing.advance(graph, jnp.int32(state), jnp.int32(token))
    assert int(next_state) == biasing.ROOT
    assert float(score) == -3.0


def test_duplicates_merged_with_max_boost():
  graph = biasing.build_context_graph([[5, 6], [5, 6], [7]], 12, boost=[1.0, 2.0, 1.0])
  assert graph.num_phrases == 2
  _, scores = advance_stream(graph, [5, 6])
  assert scores == [2.0, 2.0]


def test_broadcasting_and_vmap():
  graph = biasing.build_context_graph([[5, 6, 7], [6, 9]], 12, boost=1.5)
  state, _ = advance_stream(graph, [5, 6])
  states = jnp.array([[biasing.ROOT], [state]], jnp.int32)  # [2, 1]
  tokens = jnp.array([5, 6, 7, 9], jnp.int32)  # [4]
  next_states, scores = jax.jit(biasing.advance)(graph, states, tokens)
  assert next_states.shape == scores.shape == (2, 4)
  assert next_states.dtype == jnp.int32 and scores.dtype == jnp.float32
  np.testing.assert_array_equal(scores, [[1.5, 1.5, 0.0, 0.0], [-1.5, -1.5, 1.5, 0.0]])
  vmapped = jax.vmap(lambda s, t: biasing.advance(graph, s, t))(states[:, 0], tokens[:2])
  np.testing.assert_array_equal(vmapped[1], [1.5, -1.5])
  assert biasing.finalize(graph, states).shape == (2, 1)


def test_large_list_matches_reference():
  rng = random.Random(1)
  vocab_size = 300
  phrases = [
    [rng.randrange(4, vocab_size) for _ in range(rng.choice([1, 2, 2, 3, 3, 4, 5, 6]))]
    for _ in range(2000)
  ]
  # Shared prefixes and suffixes: re-use pieces of earlier phrases.
  for i in range(0, 2000, 4):
    a, b = rng.choice(phrases[:i] or phrases), rng.choice(phrases)
    phrases[i] = a[rng.randrange(len(a)) :] + b[: rng.randrange(1, len(b) + 1)]
  boosts = [rng.choice([0.5, 1.0, 1.5, 2.0]) for _ in phrases]
  # Streams of phrase fragments and random tokens.
  streams = []
  for _ in range(24):
    stream = []
    while len(stream) < 48:
      if rng.random() < 0.3:
        stream.append(rng.randrange(vocab_size))
      else:
        p = rng.choice(phrases)
        stream += p[rng.randrange(len(p)) : rng.randrange(1, len(p) + 1) or None]
    streams.append(stream[:48])
  graph = check_against_reference(phrases, boosts, vocab_size, np.array(streams))
  ref = ReferenceGraph(phrases, boosts)
  assert graph.num_phrases == len({tuple(p) for p in phrases})
  assert graph.num_node_slots == 1 << (len(ref.next) - 1).bit_length()
  assert graph.dense_next.shape == (graph.num_node_slots, vocab_size)
  assert graph.dense_next.dtype == jnp.int16  # Fewer than 2^15 node slots: int16 ids.
  # Without the dense table every array is flat and at most a few times the graph.
  search = biasing.build_context_graph(phrases, vocab_size, boost=boosts, dense_table_bytes=0)
  for leaf in jax.tree.leaves(search.replace(num_phrases=np.zeros(1, np.int32))):
    assert leaf.ndim == 1
    assert leaf.size <= max(search.num_node_slots + 1, search.num_edge_slots, vocab_size)
  # A limit below the table's size leaves it out.
  too_small = graph.dense_next.size * 2 - 1
  limited = biasing.build_context_graph(
    phrases, vocab_size, boost=boosts, dense_table_bytes=too_small
  )
  assert limited.dense_next is None


def test_search_steps_cover_the_longest_segment():
  """The binary search runs as deep as the longest edge segment needs, in steps of 4."""
  assert [biasing.search_steps(n) for n in (0, 1, 15, 16, 48, 157, 255, 256, 4000)] == [
    4, 4, 4, 8, 8, 8, 8, 12, 12,
  ]  # fmt: skip
  # A node with 200 children and a failure chain: its segment needs 8 steps, the whole edge
  # array (202 edges padded to 256) 9; every child and the failure arc are found within 8.
  phrases = [[5, t] for t in range(6, 206)] + [[210, 211]]
  graph = biasing.build_context_graph(phrases, 220, boost=1.0, dense_table_bytes=0)
  assert graph.search_steps == 8 and graph.num_edge_slots.bit_length() == 9
  five = int(graph.root_next[5])
  states = jnp.full((201,), five, jnp.int32)
  tokens = jnp.arange(6, 207, dtype=jnp.int32)  # 206 is no child: back to the root.
  targets, scores = jax.jit(biasing.advance)(graph, states, tokens)
  np.testing.assert_array_equal(scores[:-1], 1.0)
  assert float(scores[-1]) == -1.0 and int(targets[-1]) == biasing.ROOT
  assert len(set(np.asarray(targets[:-1]).tolist())) == 200  # 200 distinct phrase ends.
  # 210 is no child of 5: back through the failure arc to the root's child 210, then 211
  # completes [210, 211].
  state, stream_scores = advance_stream(graph, [5, 210, 211])
  assert stream_scores[2] > 0 and bool(graph.matched[state])


def test_dense_table_ids_widen_past_int16_and_agree_with_the_search():
  phrases = [[5, 6, 7], [6, 9], [7, 7, 8]]
  streams = jnp.asarray([[5, 6, 9, 7, 7, 8, 5, 6, 7, 11], [6, 7, 7, 7, 8, 9, 6, 9, 0, 5]])
  wide = biasing.build_context_graph(phrases, 12, pad_to=40000)
  assert wide.dense_next.dtype == jnp.int32 and wide.dense_next.shape == (40000, 12)
  search = biasing.build_context_graph(phrases, 12, pad_to=40000, dense_table_bytes=0)
  for a, b in zip(run_graph(wide, streams), run_graph(search, streams), strict=True):
    np.testing.assert_array_equal(a, b)
  # Every (node, token), padded nodes included, leads where the search leads.
  nodes, tokens = np.meshgrid(np.arange(0, 40000, 997), np.arange(-1, 14), indexing="ij")
  np.testing.assert_array_equal(
    biasing.advance(wide, nodes, tokens)[0], biasing.advance(search, nodes, tokens)[0]
  )


def test_padding_shares_shapes():
  small = biasing.build_context_graph([[5, 6]], 12, boost=1.5)
  assert small.num_node_slots == 16 and small.num_edge_slots == 16
  # 26 nodes and 20 edges, 25 nodes and 18 edges: both padded to 32.
  a = biasing.build_context_graph(np.arange(4, 29).reshape(5, 5), 40)
  b = biasing.build_context_graph(np.arange(4, 28).reshape(6, 4), 40)
  shapes = lambda g: [x.shape for x in jax.tree.leaves(g)]
  assert shapes(a) == shapes(b)
  assert a.num_node_slots == a.num_edge_slots == 32
  padded = biasing.build_context_graph([[5, 6]], 12, pad_to=40)
  assert padded.num_node_slots == padded.num_edge_slots == 40
  _, scores = advance_stream(padded, [5, 6, 5, 9])
  assert scores == [1.5, 1.5, 1.5, -1.5]
  with pytest.raises(ValueError, match="pad_to=2"):
    biasing.build_context_graph([[5, 6, 7]], 12, pad_to=2)


def test_empty_list_is_neutral():
  graph = biasing.build_context_graph([], 12)
  assert graph.num_phrases == 0
  states, scores = biasing.advance(graph, jnp.zeros(3, jnp.int32), jnp.array([0, 5, 11]))
  np.testing.assert_array_equal(states, 0)
  np.testing.assert_array_equal(scores, 0.0)


def test_build_errors():
  with pytest.raises(ValueError, match="Phrase 1 is empty"):
    biasing.build_context_graph([[5], [], [6]], 12, boost=1.5)
  with pytest.raises(ValueError, match=r"Phrase 2 has token ids \[0\]"):
    biasing.build_context_graph([[5], [6], [7, 0]], 12, boost=1.5)
  with pytest.raises(ValueError, match=r"Phrase 0 has token ids \[12\]"):
    biasing.build_context_graph([[12]], 12, boost=1.5)
  with pytest.raises(ValueError, match="2 boosts for 3 phrases"):
    biasing.build_context_graph([[5], [6], [7]], 12, boost=[1.0, 2.0])
  with pytest.raises(ValueError, match="Phrase 1 has a non-finite boost"):
    biasing.build_context_graph([[5], [6]], 12, boost=[1.0, float("nan")])


# --- Phrase files and tokenizer ------------------------------------------------


def test_read_phrase_file(tmp_path):
  path = tmp_path / "phrases.txt"
  path.write_text(
    "# contacts\n\nAda Lovelace\n  grace hopper\t2.5\n# 3\tnot a phrase\nkitchen\t-0.5\n",
    encoding="utf-8",
  )
  assert biasing.read_phrase_file(path) == [
    ("Ada Lovelace", None),
    ("grace hopper", 2.5),
    ("kitchen", -0.5),
  ]


@pytest.mark.parametrize(
  "bad_line, message",
  [
    ("kitchen\tlots", "boost 'lots' is not a finite number"),
    ("kitchen\tinf", "boost 'inf' is not a finite number"),
    ("kitchen\t1\t2", "expected"),
    ("\t2.0", "empty phrase"),
  ],
)
def test_read_phrase_file_errors(tmp_path, bad_line, message):
  path = tmp_path / "phrases.txt"
  path.write_text(f"# header\nlamp\n\n{bad_line}\n", encoding="utf-8")
  with pytest.raises(ValueError, match=f":4: {message}"):
    biasing.read_phrase_file(path)


SENTENCES = [
  "turn on the light in the kitchen",
  "please turn off the lamp in the bedroom",
  "play some music in the living room",
  "set an alarm for seven tomorrow morning",
  "call mom and ask about the weather today",
  "open the door and close the window",
  "turn the volume up and then down",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
  return tok.Tokenizer.train(SENTENCES, vocab_size=300, languages=("en",))


def test_graph_from_phrases_with_tokenizer(tokenizer, tmp_path):
  path = tmp_path / "phrases.txt"
  path.write_text("Turn ON the Light!\nkitchen\t3.0\n", encoding="utf-8")
  graph = biasing.graph_from_phrases(biasing.read_phrase_file(path), tokenizer)
  assert graph.vocab_size == tokenizer.vocab_size and graph.num_phrases == 2
  light = tokenizer.encode("turn on the light")
  kitchen = tokenizer.encode("kitchen")
  sentence = tokenizer.encode("please turn on the light in the kitchen")
  for phrase in (light, kitchen):  # Each phrase appears as it is tokenised on its own.
    assert any(sentence[i : i + len(phrase)] == phrase for i in range(len(sentence)))
  weight, word_start = biasing.token_tables(tokenizer)
  chars = lambda ids: sum(weight[t] for t in ids)
  assert chars(light) == len("turnonthelight") and chars(kitchen) == len("kitchen")
  assert all(word_start[t] == tokenizer.id_to_piece(t).startswith("\u2581") for t in sentence)
  state, scores = advance_stream(graph, sentence)
  assert float(biasing.finalize(graph, state)) == 0.0
  # Per character: the default boost for the first phrase, its own for "kitchen".
  expected = biasing.DEFAULT_BOOST * chars(light) + 3.0 * chars(kitchen)
  assert sum(scores) == pytest.approx(expected, abs=1e-4)
  # The same phrases given directly, with another default boost.
  graph = biasing.graph_from_phrases(["turn on the light", ("kitchen", None)], tokenizer, boost=1.0)
  _, scores = advance_stream(graph, sentence)
  assert sum(scores) == pytest.approx(chars(light) + chars(kitchen), abs=1e-4)
  with pytest.raises(ValueError, match=r"Phrase 1 \('!!!'\) is empty after normalisation"):
    biasing.graph_from_phrases(["kitchen", "!!!"], tokenizer)


# --- Scaled boosts, word boundaries, the unbiased reserve -------------------------


def test_boost_scales_with_token_weight_and_a_broken_phrase_is_neutral():
  weight = np.ones(12)
  weight[[5, 6, 7]] = [1.0, 3.0, 2.0]  # e.g. characters per piece
  graph = biasing.build_context_graph([[5, 6, 7]], 12, boost=0.5, token_weight=weight)
  # Each token earns the boost times its weight; the phrase 0.5 * 6 in all.
  state, scores = advance_stream(graph, [5, 6, 7])
  assert scores == [0.5, 1.5, 1.0]
  assert float(biasing.finalize(graph, state)) == 0.0
  # Broken halfway by a token of no phrase: the hypothesis holds what it held before.
  state, scores = advance_stream(graph, [4, 5, 6, 9])
  assert scores == [0.0, 0.5, 1.5, -2.0] and sum(scores) == 0.0
  # Broken at the end of the hypothesis: finalize takes back the same.
  state, scores = advance_stream(graph, [5, 6])
  assert sum(scores) + float(biasing.finalize(graph, state)) == 0.0
  # A phrase of longer pieces earns more.
  long_weight = weight.copy()
  long_weight[[5, 6, 7]] *= 2
  graph2 = biasing.build_context_graph([[5, 6, 7]], 12, boost=0.5, token_weight=long_weight)
  assert sum(advance_stream(graph2, [5, 6, 7])[1]) == 2 * 3.0
  with pytest.raises(ValueError, match="token_weight"):
    biasing.build_context_graph([[5]], 12, token_weight=np.ones(11))
  with pytest.raises(ValueError, match="finite and >= 0"):
    biasing.build_context_graph([[5]], 12, token_weight=-np.ones(12))


def test_a_match_is_confirmed_at_a_word_start_and_taken_back_inside_a_word():
  # Tokens 5 and 9 start words, 6, 7 and 8 continue them: [5, 6] is "carol", [5, 6, 8]
  # "carolina", read in "caroline" as 5 6 7.
  word_start = np.zeros(12, bool)
  word_start[[5, 9]] = True
  graph = biasing.build_context_graph([[5, 6], [5, 6, 8]], 12, boost=1.0, word_start=word_start)
  state, scores = advance_stream(graph, [5, 6, 9])  # "carol" then a new word: kept.
  assert scores == [1.0, 1.0, 0.0]
  assert float(biasing.finalize(graph, state)) == 0.0
  state, scores = advance_stream(graph, [5, 6])  # "carol" at the end: kept.
  assert float(biasing.finalize(graph, state)) == 0.0
  state, scores = advance_stream(graph, [5, 6, 7])  # "caroline": all taken back.
  assert scores == [1.0, 1.0, -2.0]
  assert float(biasing.finalize(graph, state)) == 0.0
  _, scores = advance_stream(graph, [5, 6, 8, 9])  # "carolina" goes on from "carol".
  assert scores == [1.0, 1.0, 1.0, 0.0]
  # Special tokens confirm (the eos of a label-synchronous search, a blank).
  state, _ = advance_stream(graph, [5, 6])
  _, score = biasing.advance(graph, jnp.int32(state), jnp.int32(3))
  assert float(score) == 0.0
  # Without a table every token confirms at once (icefall's behaviour).
  plain = biasing.build_context_graph([[5, 6], [5, 6, 8]], 12, boost=1.0)
  assert advance_stream(plain, [5, 6, 7])[1] == [1.0, 1.0, 0.0]


def _crowding_case():
  """Frames where partial boosts of an absent phrase crowd the best hypothesis out.

  Frame 0: 4 (0.55) or 5 (0.45); frame 2: 6 (0.55) or 7 (0.45); blanks between. The
  unbiased best is 4 6. Phrases [5, 8] and [5, 7, 8] are absent, but at 10 per token
  the partial matches 5 and 5 7 take both slots of a beam of 2 at frame 2.
  """
  p = np.full((4, 10), 1e-4)
  p[0, [4, 5]] = [0.55, 0.45]
  p[2, [6, 7]] = [0.55, 0.45]
  p[[1, 3], 0] = 1.0
  lp = jnp.asarray(np.log(p / p.sum(-1, keepdims=True))[None], jnp.float32)
  graph = biasing.build_context_graph([[5, 8], [5, 7, 8]], 10, boost=10.0)
  return lp, jnp.ones((1, 4), bool), graph


def test_unbiased_reserve_keeps_an_absent_phrase_harmless():
  from moe_asr.decoding.ctc_beam import ctc_prefix_beam_search

  lp, mask, graph = _crowding_case()
  kw = dict(beam=2, max_len=4, token_topk=2)
  plain = ctc_prefix_beam_search(lp, mask, **kw)
  assert plain.tokens[0, 0, :2].tolist() == [4, 6]
  # Without reserved slots the partial matches push 4 6 out; they are taken back at the
  # end, too late: the result is 5 7, worse than without biasing.
  crowded = ctc_prefix_beam_search(lp, mask, bias=graph, bias_reserve=0, **kw)
  assert crowded.tokens[0, 0, :2].tolist() == [5, 7]
  assert float(crowded.scores[0, 0]) < float(plain.scores[0, 0]) - 0.1
  # With one slot kept by the unbiased score, the result and its score are unchanged.
  kept = ctc_prefix_beam_search(lp, mask, bias=graph, bias_reserve=1, **kw)
  np.testing.assert_array_equal(kept.tokens[0, 0], plain.tokens[0, 0])
  np.testing.assert_allclose(kept.scores[0, 0], plain.scores[0, 0], atol=1e-5)
  assert float(kept.parts["bias"][0, 0]) == 0.0
  with pytest.raises(ValueError, match="bias_reserve"):
    ctc_prefix_beam_search(lp, mask, bias=graph, bias_reserve=2, **kw)


def test_biased_and_unbiased_error_rates():
  from moe_asr.evaluation import metrics

  phrases = ["avec le temps", "paris"]
  b, u = metrics.biased_edit_counts("joue avec le temps", "joue avec la temps", phrases)
  assert (b.sub, b.ref_len, u.errors, u.ref_len) == (1, 3, 0, 1)
  # "le" outside the phrase is unbiased; an inserted phrase word counts as biased.
  b, u = metrics.biased_edit_counts("le chat", "le chat paris", phrases)
  assert (b.ins, b.ref_len, u.errors, u.ref_len) == (1, 0, 0, 2)
  b, u = metrics.biased_edit_counts("go to paris", "", phrases)
  assert (b.dele, u.dele) == (1, 2)
  rates = metrics.biased_error_rates(["go to paris", "le chat"], ["go paris", "le chien"], phrases)
  assert rates == {"b_wer": 0.0, "u_wer": 0.5, "b_units": 1, "u_units": 4}


def test_tuning_respects_the_u_wer_constraint():
  from moe_asr.evaluation.score import choose_bias_boost

  def point(boost, u_wer, b_wer, b_units=200):
    return {"bias_boost": boost, "u_wer": u_wer, "b_wer": b_wer, "b_units": b_units}

  # B-WER falls with the boost, U-WER rises: 2.0 has the best B-WER but U-WER +3.3%.
  points = [
    point(0.0, 0.300, 0.80),
    point(1.0, 0.303, 0.60),
    point(1.5, 0.306, 0.55),
    point(2.0, 0.310, 0.40),
  ]
  assert choose_bias_boost(points, max_u_wer_increase=0.02) == 1.5
  assert choose_bias_boost(points, max_u_wer_increase=0.05) == 2.0
  assert choose_bias_boost(points, max_u_wer_increase=0.005) == 0.0
  # A boost that qualifies but raises B-WER is not chosen over a better one.
  assert choose_bias_boost(points + [point(1.2, 0.301, 0.90)], max_u_wer_increase=0.02) == 1.5
  # Too few phrase words to rank by B-WER: the largest boost within the constraint.
  few = [point(b, u, w, b_units=2) for b, u, w in [(0, 0.3, 1.0), (1, 0.301, 2.0), (3, 0.4, 0)]]
  assert choose_bias_boost(few, max_u_wer_increase=0.02) == 1.0
  with pytest.raises(ValueError, match="unbiased point"):
    choose_bias_boost(points[1:])
