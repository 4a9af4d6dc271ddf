"""The n-best list every search returns (a pytree, so it crosses `jax.jit`)."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

# Components a search or rescoring may fill in `NBest.parts` (all unweighted log-scores except
# "bias", which is the boost already scaled by the graph, and "length", the token count).
PARTS = ("ctc", "att", "lm", "ilm", "bias", "length", "task")


@flax.struct.dataclass
class NBest:
  """Hypotheses per utterance, best first.

  Attributes:
    tokens: int32 [batch, n, max_len], left-aligned, padded with 0; no bos/eos.
    lengths: int32 [batch, n].
    scores: float32 [batch, n], the ranking score, sorted descending; -inf marks
      an empty slot (fewer distinct hypotheses than n).
    parts: name -> float32 [batch, n], the score's components (see `PARTS`).
    token_frames: int32 [batch, n, max_len], encoder frame at which each token
      was first emitted (CTC searches), or None.
    confidence: float32 [batch, n], each hypothesis's confidence where the search measures
      one itself (best-path CTC: the mean posterior of the emitted tokens), or None (the
      decode step then takes the n-best posterior, `confidence.nbest_posteriors`).
  """

  tokens: jax.Array
  lengths: jax.Array
  scores: jax.Array
  parts: dict[str, jax.Array]
  token_frames: jax.Array | None = None
  confidence: jax.Array | None = None

  @property
  def best(self) -> tuple[jax.Array, jax.Array]:
    """(tokens [batch, max_len], lengths [batch]) of the first hypothesis."""
    return self.tokens[:, 0], self.lengths[:, 0]

  def take(self, order: jax.Array) -> NBest:
    """Hypotheses reordered by int [batch, n'] indices into the n axis."""
    rows = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), 1)
    return NBest(
      tokens=rows(self.tokens),
      lengths=rows(self.lengths),
      scores=rows(self.scores),
      parts={k: rows(v) for k, v in self.parts.items()},
      token_frames=None if self.token_frames is None else rows(self.token_frames),
      confidence=None if self.confidence is None else rows(self.confidence),
    )
