"""Contextual biasing: an Aho-Corasick graph over token ids, evaluated inside `jax.jit`.

A list of phrases (names, rare words) is compiled on the host into a trie with
failure links, following icefall's and WeNet's `ContextGraph`. Every trie node
carries `node_score`, the sum of the boosts of the tokens on its path from the
root. A beam search keeps one graph state per hypothesis and calls `advance` for
each token it emits; the returned score is added to the hypothesis score:

- A partial match earns the boost of each token as it goes
  (`node_score(next) - node_score(state)`).
- When the match breaks, the failure arcs lead to the longest suffix that is
  still a phrase prefix (or to the root), and the score difference takes back
  the boost of the abandoned partial match, so a hypothesis that leaves a
  phrase halfway holds exactly the score it would have without biasing.
- When the new node, or any node on its failure chain, ends a phrase, the match
  is complete and the hypothesis holds `match_score`: as in icefall's non-strict
  mode, the sum of `node_score` over every phrase end on that chain (a phrase and
  the phrases that are its suffixes all count). The match is confirmed by the
  next token if that starts a word (`word_start`; special tokens count as
  starts) or by the end of the hypothesis (`finalize`); the state then returns to
  the root, so nothing is taken back later, and a phrase that extends a shorter
  phrase of the list across a word boundary (`[5, 6, 7]` after `[5]` with 6 a
  word start) is never matched beyond the shorter one. A next token that
  continues the word ("carol" read in "caroline") takes the whole match back
  and follows the goto and failure arcs from the phrase end, so a longer phrase
  of the list ("carolina") can still match. Without a word-start table every
  token confirms (the behaviour of icefall's graph).
- `finalize` takes back the partial boost of a hypothesis that ends mid-phrase.

Boosts: `build_context_graph` gives each token of a phrase the phrase's boost
times the token's weight (1 by default). `graph_from_phrases` weights a token by
its characters, so that a phrase earns its boost per character whichever pieces
spell it: a long phrase (less likely matched by chance) earns more than a short
one, and a one-letter piece, which starts many words, earns little before the
match grows; what a partial match earned is taken back as above.

Phrases that share a prefix share its nodes; each edge gets the largest boost of
the phrases through it (duplicates are merged the same way), so `node_score` is
always the sum of the edge boosts on the path.

On device the graph is a few flat arrays, which need no dense `[nodes, vocab]` table:
the host precomputes, for every non-root node, the goto targets reachable
through its failure chain before the root (usually few), stored as edges sorted
by (node, token). A step is a binary search inside the node's edge segment
(`O(log degree)`), then a dense `[vocab]` lookup of the root's children when the
chain ends at the root, so its cost hardly grows with the number of phrases.
The precomputed edges are the price: a node inherits the children of the
non-root nodes on its failure chain, so there are a few times more edges than
nodes when first pieces are shared by many phrases (about 7x for 2000 random
phrases over 300 ids), and about as many with a realistic vocabulary.
Arrays are padded to powers of two so that lists of similar size have the same
shapes.

Where it fits in `DENSE_TABLE_BYTES` (64 MiB: 1000 phrases over a vocabulary of 1190, 16,384
node slots of int16), the host also fills the dense table `dense_next[node, token]` of those
targets (a node's row is its failure target's row with its own children written over), and
a step is one lookup in it instead of the search: the search's eight dependent gathers per
candidate token had cost about half of a CTC beam search's time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import flax
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax import lax

from moe_asr.data import text as text_lib

if TYPE_CHECKING:
  from moe_asr.data.tokenizer import Tokenizer

ROOT = 0
# Ids 0..3 (pad = CTC blank, unk, bos, eos) never take part in a phrase.
NUM_SPECIAL_TOKENS = 4
# Default boost of `build_context_graph`, per unit of token weight (per token by default).
DEFAULT_TOKEN_BOOST = 1.5
# Default boost of `graph_from_phrases` and `decode.bias_boost`, per character.
DEFAULT_BOOST = 1.5
_MIN_PAD = 16
# Largest dense transition table a graph carries (see the module docstring).
DENSE_TABLE_BYTES = 64 << 20
_NO_TOKEN = np.iinfo(np.int32).max  # Token of padded edge slots: sorts after every id.
_WORD_START = "\u2581"  # SentencePiece's word-start marker.
_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")  # SentencePiece's byte-fallback pieces.


@flax.struct.dataclass
class ContextGraph:
  """A compiled context graph (a pytree of fixed-shape arrays).

  Attributes:
    edge_start: int32 [nodes + 1]; the goto edges of node `n` (its own children
      and those reached through its failure chain before the root) are the slots
      `edge_start[n]:edge_start[n + 1]` of `edge_token` / `edge_next`. The root
      and padded nodes have no slots.
    edge_token: int32 [edges], sorted within each node's segment; padded slots
      hold int32 max.
    edge_next: int32 [edges], the node each edge leads to.
    root_next: int32 [vocab], the root's child for each token, or `ROOT`.
    fail: int32 [nodes], failure link (the longest proper suffix that is a
      prefix of some phrase); `ROOT` for the root and padded nodes.
    node_score: float32 [nodes], sum of the edge boosts from the root.
    matched: bool [nodes], True where a phrase ends on the node's failure chain,
      itself included. A matched node is a state only until the next token
      confirms or takes back the match.
    word_start: bool [vocab], the tokens that confirm a completed match (all
      True without a word-start table).
    gain: float32 [nodes], what a hypothesis in the node holds: where `matched`,
      its `match_score` (the sum of `node_score` over the phrase ends on the
      failure chain), else `node_score`.
    vocab_size: number of token ids.
    search_steps: binary-search steps of `advance` inside a node's edge segment: enough for
      the longest segment (its length's bit length), rounded up to a multiple of 4 so that
      most lists share a compile.
    num_phrases: int32 scalar, number of distinct phrases.
    dense_next: int16 or int32 [nodes, vocab], the target of every (node, token) through goto
      and failure arcs (before matches), where it fits in `DENSE_TABLE_BYTES`; else None.
  """

  edge_start: jax.Array
  edge_token: jax.Array
  edge_next: jax.Array
  root_next: jax.Array
  fail: jax.Array
  node_score: jax.Array
  matched: jax.Array
  word_start: jax.Array
  gain: jax.Array
  num_phrases: jax.Array  # A leaf, so lists of the same padded size share one compile.
  vocab_size: int = flax.struct.field(pytree_node=False)
  search_steps: int = flax.struct.field(pytree_node=False, default=32)
  dense_next: jax.Array | None = None

  @property
  def num_node_slots(self) -> int:
    """Padded number of nodes (the root included)."""
    return self.fail.shape[-1]

  @property
  def num_edge_slots(self) -> int:
    """Padded number of edges."""
    return self.edge_token.shape[-1]


def _padded_size(needed: int, pad_to: int | None, what: str) -> int:
  if pad_to is None:
    return max(_MIN_PAD, 1 << max(needed - 1, 0).bit_length())
  if pad_to < needed:
    raise ValueError(f"pad_to={pad_to} is too small: the graph needs {needed} {what} slots.")
  return pad_to


def _phrase_boosts(boost: float | Sequence[float], count: int) -> list[float]:
  if isinstance(boost, int | float | np.floating | np.integer):
    boosts = [float(boost)] * count
  else:
    boosts = [float(b) for b in boost]
    if len(boosts) != count:
      raise ValueError(f"Got {len(boosts)} boosts for {count} phrases.")
  for i, b in enumerate(boosts):
    if not math.isfinite(b):
      raise ValueError(f"Phrase {i} has a non-finite boost {b}.")
  return boosts


def _checked_inputs(phrases, vocab_size: int, boost, token_weight, word_start) -> tuple:
  """`build_context_graph`'s inputs checked: (phrases, boosts, token weights, word starts)."""
  if vocab_size <= NUM_SPECIAL_TOKENS:
    raise ValueError(f"vocab_size={vocab_size} leaves no ids for phrases.")
  weights = np.ones(vocab_size) if token_weight is None else np.asarray(token_weight, np.float64)
  starts = np.ones(vocab_size, bool) if word_start is None else np.asarray(word_start, bool)
  for name, table in (("token_weight", weights), ("word_start", starts)):
    if table.shape != (vocab_size,):
      raise ValueError(f"{name} has shape {table.shape}; expected ({vocab_size},).")
  if not np.all(np.isfinite(weights) & (weights >= 0)):
    raise ValueError("token_weight must be finite and >= 0.")
  starts = starts.copy()
  starts[:NUM_SPECIAL_TOKENS] = True
  phrases = [[int(t) for t in np.asarray(p, dtype=np.int64).reshape(-1)] for p in phrases]
  boosts = _phrase_boosts(boost, len(phrases))
  for i, phrase in enumerate(phrases):
    if not phrase:
      raise ValueError(f"Phrase {i} is empty.")
    bad = [t for t in phrase if not NUM_SPECIAL_TOKENS <= t < vocab_size]
    if bad:
      raise ValueError(
        f"Phrase {i} has token ids {bad[:5]} outside [{NUM_SPECIAL_TOKENS}, {vocab_size}) "
        "(ids 0-3 are pad/blank, unk, bos and eos)."
      )
  return phrases, boosts, weights, starts


def _trie(phrases: list[list[int]], boosts, weights: np.ndarray) -> tuple[list, list, list]:
  """The phrases' trie: (children, edge_boost, is_end) of each node, in insertion order."""
  # Trie, nodes in insertion order; `edge_boost[n]` is the boost of the edge into n.
  children: list[dict[int, int]] = [{}]
  edge_boost = [0.0]
  is_end = [False]
  for phrase, b in zip(phrases, boosts, strict=True):
    node = ROOT
    for token in phrase:
      child = children[node].get(token)
      if child is None:
        child = len(children)
        children[node][token] = child
        children.append({})
        edge_boost.append(b * weights[token])
        is_end.append(False)
      else:
        edge_boost[child] = max(edge_boost[child], b * weights[token])
      node = child
    is_end[node] = True
  return children, edge_boost, is_end


def build_context_graph(
  phrases: Sequence[Sequence[int]],
  vocab_size: int,
  *,
  boost: float | Sequence[float] = DEFAULT_TOKEN_BOOST,
  token_weight: Sequence[float] | np.ndarray | None = None,
  word_start: Sequence[bool] | np.ndarray | None = None,
  pad_to: int | None = None,
  dense_table_bytes: int = DENSE_TABLE_BYTES,
) -> ContextGraph:
  """Compiles phrases of token ids into a `ContextGraph` (on the host).

  Args:
    phrases: token-id sequences; ids must lie in `[4, vocab_size)`.
    vocab_size: number of token ids of the model.
    boost: boost per unit of token weight, one for all phrases or one per phrase.
    token_weight: float [vocab_size], each token's weight (>= 0; default 1): a
      phrase token earns `boost * token_weight[token]`.
    word_start: bool [vocab_size], the tokens that start a word: a completed
      match is confirmed only by one of them or by the end of the hypothesis
      (see the module docstring). Default: every token (immediate confirmation).
      Ids 0-3 always count as word starts.
    pad_to: number of node and of edge slots; by default each is the next power
      of two (at least 16) of what the graph needs.
    dense_table_bytes: the largest dense transition table the graph carries (0: none, the
      binary search over edges only); see the module docstring.

  Returns:
    The graph; `advance` and `finalize` evaluate it.

  Raises:
    ValueError: for an empty phrase or a token id outside `[4, vocab_size)`
      (the message names the phrase index), a boost count that differs from
      the phrase count, a non-finite boost, a token weight or word-start table
      of the wrong size (or a negative or non-finite weight), or a `pad_to` that
      is too small.
  """
  phrases, boosts, weights, starts = _checked_inputs(
    phrases, vocab_size, boost, token_weight, word_start
  )
  children, edge_boost, is_end = _trie(phrases, boosts, weights)
  num_phrases = sum(is_end)

  # Renumber in breadth-first order: parents and failure targets come first.
  order = [ROOT]
  for node in order:
    order.extend(children[node][t] for t in sorted(children[node]))
  new_id = {old: new for new, old in enumerate(order)}
  num_nodes = len(order)
  kids = [{t: new_id[c] for t, c in children[old].items()} for old in order]

  node_score = np.zeros(num_nodes, np.float64)
  fail = np.zeros(num_nodes, np.int64)
  match_score = np.zeros(num_nodes, np.float64)
  matched = np.zeros(num_nodes, bool)
  # goto[n]: token -> target for every non-root node on n's failure chain (n first).
  goto: list[dict[int, int]] = [{} for _ in range(num_nodes)]
  for node in range(num_nodes):
    for token, child in kids[node].items():
      node_score[child] = node_score[node] + edge_boost[order[child]]
      if node != ROOT:
        # The longest proper suffix of the child's path that is a phrase prefix:
        # follow `token` from the parent's failure target (`goto[ROOT]` is empty).
        fail[child] = goto[fail[node]].get(token, kids[ROOT].get(token, ROOT))
    if node != ROOT:
      goto[node] = {**goto[fail[node]], **kids[node]}
      end = is_end[order[node]]
      match_score[node] = (node_score[node] if end else 0.0) + match_score[fail[node]]
      matched[node] = end or matched[fail[node]]

  num_edges = sum(len(g) for g in goto)
  node_slots = _padded_size(num_nodes, pad_to, "node")
  edge_slots = _padded_size(num_edges, pad_to, "edge")
  edge_start = np.full(node_slots + 1, num_edges, np.int32)
  edge_token = np.full(edge_slots, _NO_TOKEN, np.int32)
  edge_next = np.zeros(edge_slots, np.int32)
  slot = 0
  for node in range(num_nodes):
    edge_start[node] = slot
    for token in sorted(goto[node]):
      edge_token[slot] = token
      edge_next[slot] = goto[node][token]
      slot += 1
  root_next = np.zeros(vocab_size, np.int32)
  for token, child in kids[ROOT].items():
    root_next[token] = child

  def padded(values: np.ndarray, dtype) -> jax.Array:
    out = np.zeros(node_slots, dtype)
    out[:num_nodes] = values
    return jnp.asarray(out)

  return ContextGraph(
    edge_start=jnp.asarray(edge_start),
    edge_token=jnp.asarray(edge_token),
    edge_next=jnp.asarray(edge_next),
    root_next=jnp.asarray(root_next),
    fail=padded(fail, np.int32),
    node_score=padded(node_score, np.float32),
    matched=padded(matched, bool),
    word_start=jnp.asarray(starts),
    gain=padded(np.where(matched, match_score, node_score), np.float32),
    vocab_size=vocab_size,
    search_steps=search_steps(max((len(g) for g in goto), default=0)),
    num_phrases=np.int32(num_phrases),
    dense_next=_dense_table(kids, fail, node_slots, vocab_size, dense_table_bytes),
  )


def _dense_table(kids, fail, node_slots: int, vocab_size: int, limit: int) -> jax.Array | None:
  """`ContextGraph.dense_next` (nodes in breadth-first order, so a failure target's row is
  filled before the rows that fall back to it), or None where it would not fit."""
  dtype = np.int16 if node_slots <= np.iinfo(np.int16).max else np.int32
  if node_slots * vocab_size * np.dtype(dtype).itemsize > limit:
    return None
  table = np.zeros((node_slots, vocab_size), dtype)
  for node, children in enumerate(kids):
    if node != ROOT:
      table[node] = table[fail[node]]
    for token, child in children.items():
      table[node, token] = child
  table[len(kids) :] = table[ROOT]  # Padded nodes: as the search, the root's children.
  return jnp.asarray(table)


def search_steps(longest_segment: int) -> int:
  """`ContextGraph.search_steps` for a longest edge segment of this many edges."""
  return max(4, -(-longest_segment.bit_length() // 4) * 4)


def _goto(graph: ContextGraph, start, end, token, in_vocab) -> jax.Array:
  """Target of `token` (a phrase token; `in_vocab` it clipped to the vocabulary) from the
  node whose edge segment is [start, end) through goto and failure arcs (before matches)."""
  edge_slots = graph.num_edge_slots

  # Lower bound of `token` in the node's sorted segment [start, end).
  def step(_, bounds):
    lo, hi = bounds
    mid = (lo + hi) // 2
    less = graph.edge_token[jnp.minimum(mid, edge_slots - 1)] < token
    active = lo < hi
    return jnp.where(active & less, mid + 1, lo), jnp.where(active & ~less, mid, hi)

  # As many steps as the longest segment needs (not the whole edge array), unrolled: each is
  # a few gathers, where a loop's per-iteration cost would dominate.
  steps = min(graph.search_steps, edge_slots.bit_length())
  lo, _ = lax.fori_loop(0, steps, step, (start, end), unroll=True)
  slot = jnp.minimum(lo, edge_slots - 1)
  found = (lo < end) & (graph.edge_token[slot] == token)
  return jnp.where(found, graph.edge_next[slot], graph.root_next[in_vocab])


def advance(graph: ContextGraph, state: jax.Array, token: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One token through the graph, elementwise (jittable).

  Args:
    graph: the context graph.
    state: int node ids (`ROOT` to start), any shape broadcastable with `token`.
    token: int token ids. Ids 0-3 (pad/blank, unk, bos, eos), ids outside the
      vocabulary and tokens of no phrase lead to the root.

  Returns:
    (next_state int32, score float32), both of the broadcast shape. The score
    is what the hypothesis holds after the token minus what it held before:
    `node_score` of a partial match, `match_score` of a completed one awaiting
    confirmation, 0 at the root (see the module docstring).
  """
  state = jnp.clip(jnp.asarray(state, jnp.int32), 0, graph.num_node_slots - 1)
  token = jnp.asarray(token, jnp.int32)
  # What depends on the state alone is looked up at the state's own shape (a beam's state,
  # not once for each of its candidate tokens), then broadcast.
  pending = graph.matched[state]  # A completed match awaiting confirmation.
  held = graph.gain[state]
  # And what depends on the token alone at the token's own shape.
  in_vocab = jnp.clip(token, 0, graph.vocab_size - 1)
  starts_word = graph.word_start[in_vocab]
  in_phrases = (token >= NUM_SPECIAL_TOKENS) & (token < graph.vocab_size)
  shape = jnp.broadcast_shapes(state.shape, token.shape)
  confirmed = pending & starts_word  # [shape]
  if graph.dense_next is not None:
    target = graph.dense_next[jnp.where(confirmed, ROOT, state), in_vocab].astype(jnp.int32)
  else:
    start = jnp.broadcast_to(graph.edge_start[state], shape)
    # A confirmed match goes on from the root, which has no edge slots (an empty segment).
    end = jnp.where(confirmed, start, graph.edge_start[state + 1])
    target = _goto(graph, start, end, jnp.broadcast_to(token, shape), in_vocab)
  target = jnp.where(in_phrases, target, ROOT)
  score = graph.gain[target] - jnp.where(confirmed, 0.0, held)
  return target.astype(jnp.int32), score.astype(jnp.float32)


def finalize(graph: ContextGraph, state: jax.Array) -> jax.Array:
  """Score at the end of a hypothesis, elementwise (float32).

  0 for a completed match (the end confirms it) and the root, `-node_score(state)`
  (the partial boost taken back) mid-phrase.
  """
  state = jnp.clip(jnp.asarray(state, jnp.int32), 0, graph.num_node_slots - 1)
  return jnp.where(graph.matched[state], 0.0, -graph.node_score[state])


def read_phrase_file(path: str | epath.PathLike) -> list[tuple[str, float | None]]:
  """Reads a biasing list: one phrase per line, optionally `<phrase>\\t<boost>`.

  Blank lines and lines starting with `#` are skipped. The text is returned as
  written (`graph_from_phrases` normalises it).

  Args:
    path: a local or `etils.epath` path of a UTF-8 text file.

  Returns:
    (phrase, per-token boost or None for the default) per phrase line.

  Raises:
    ValueError: for a line with an empty phrase, more than one tab, or a boost
      that is not a finite number; the message gives the line number.
  """
  phrases = []
  lines = epath.Path(path).read_text(encoding="utf-8").splitlines()
  for number, line in enumerate(lines, start=1):
    if not line.strip() or line.lstrip().startswith("#"):
      continue
    fields = line.split("\t")
    if len(fields) > 2:
      raise ValueError(f"{path}:{number}: expected '<phrase>' or '<phrase>\\t<boost>': {line!r}")
    phrase = fields[0].strip()
    if not phrase:
      raise ValueError(f"{path}:{number}: empty phrase in {line!r}")
    boost = None
    if len(fields) == 2:
      try:
        boost = float(fields[1])
      except ValueError:
        boost = math.nan
      if not math.isfinite(boost):
        raise ValueError(f"{path}:{number}: boost {fields[1]!r} is not a finite number")
    phrases.append((phrase, boost))
  return phrases


def token_tables(tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
  """(token_weight float [vocab], word_start bool [vocab]) of a tokenizer's pieces.

  A piece weighs its characters, the word-start marker "▁" left out (a bare "▁"
  weighs 0, a byte-fallback piece `<0xNN>` 1); special pieces weigh 0 and, like pieces
  that begin with "▁", count as word starts.
  """
  table = tokenizer.word_table()
  weight = np.zeros(tokenizer.vocab_size, np.float64)
  for i in range(tokenizer.vocab_size):
    piece = tokenizer.id_to_piece(i)
    if table[i] >= 0:
      weight[i] = 1 if _BYTE_PIECE.match(piece) else len(piece.replace(_WORD_START, ""))
  return weight, table != 0


def graph_from_phrases(
  phrases: Sequence[str | tuple[str, float | None]],
  tokenizer: Tokenizer,
  *,
  boost: float = DEFAULT_BOOST,
  pad_to: int | None = None,
) -> ContextGraph:
  """Builds a context graph from phrase texts, with a boost per character.

  Each text is normalised with `moe_asr.data.text.normalize` (as transcripts
  are) and encoded with `tokenizer.encode`. A phrase is tokenised on its own;
  SentencePiece splits at whitespace, so that is also how its words are
  tokenised inside a sentence. A token earns `boost` times its characters
  (`token_tables`), so a phrase earns `boost` per character once matched; a
  match is confirmed when the next token starts a word (or the hypothesis ends).

  Args:
    phrases: texts, or (text, per-character boost or None) pairs as returned by
      `read_phrase_file`.
    tokenizer: the model's tokenizer.
    boost: per-character boost of phrases without their own.
    pad_to: see `build_context_graph`.

  Returns:
    The graph.

  Raises:
    ValueError: if a phrase normalises to nothing (the message names its index).
  """
  token_ids, boosts = [], []
  for i, item in enumerate(phrases):
    text, own = (item, None) if isinstance(item, str) else item
    normalised = text_lib.normalize(text)
    if not normalised:
      raise ValueError(f"Phrase {i} ({text!r}) is empty after normalisation.")
    token_ids.append(tokenizer.encode(normalised))
    boosts.append(boost if own is None else own)
  weight, word_start = token_tables(tokenizer)
  return build_context_graph(
    token_ids,
    tokenizer.vocab_size,
    boost=boosts,
    token_weight=weight,
    word_start=word_start,
    pad_to=pad_to,
  )
