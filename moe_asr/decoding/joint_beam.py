"""Joint CTC/attention beam search, label-synchronous, batched on device.

ESPnet's `BatchBeamSearch` with `CTCPrefixScoreTH` (Watanabe et al. 2017):
hypotheses grow one token per step; each step scores, for every alive
hypothesis g and candidate token c,

  score(g + c) = score(g) + (1 - w) * log P_att(c | g, x)
                 + w * (log psi_ctc(g + c) - log psi_ctc(g))
                 + lm_weight * log P_lm(c | g) - ilm_weight * log P_ilm(c | g)
                 + length_bonus + bias(g, c),

so a finished hypothesis y (ending with eos) scores
(1 - w) * log P_att(y, eos) + w * log P_ctc(y) + lm_weight * log P_lm(y, eos)
- ilm_weight * log P_ilm(y, eos) + length_bonus * |y| + bias(y).

Layout. B utterances x K beams = N rows; the attention decoder, the LM and the
internal LM (the decoder without acoustic context, "zero context" ILME) run
one `decode_step` for all N rows per step with their KV caches, which are
reordered with `take` after selection. Everything is one `lax.while_loop` over
output positions with fixed shapes, compiled once per (B, T, beam, max_len).

Per step:
- Pre-beam: `pre_beam` candidates per hypothesis by the weighted sum of the
  token models (attention, LM, ILM: ESPnet's "full" pre-beam), or, with
  `pre_beam_score="all"` or ctc_weight = 1, by every term of the score: the
  exact CTC prefix scores of the whole vocabulary plus the token models. "full"
  is cheaper, but a weak attention decoder (a CTC-heavy recipe) prunes the
  tokens the CTC would pick before they are scored; "all" keeps the top of the
  exact score. Blank/pad, bos and eos are never pre-beam candidates; eos is
  always scored as one extra candidate, so every hypothesis may end.
- Alive: the top K of the K * pre_beam non-eos extensions per utterance.
- Finished: the K eos extensions are merged into a fixed [B, nbest] buffer.
- End detection: an utterance stops when its best alive score cannot beat its
  worst kept finished score. That bound holds when no term can raise a score
  (length_bonus <= 0, no biasing, LM weights >= 0, ILM weights <= 0), checked
  per call; otherwise the search runs until max_len. At position max_len only
  eos may follow, so every alive hypothesis is finished with its end score
  (attention eos and the CTC full-sequence probability).
Rows whose frame mask is empty may only end at once: the empty hypothesis.

`label_synchronous_search` is the core over given CTC log-posteriors and any
token models (`TokenScorer`); `joint_beam_search` builds them from a `MoeAsr`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from moe_asr.decoding import biasing
from moe_asr.decoding import ctc_prefix_score as cps
from moe_asr.decoding.nbest import PARTS, NBest

NEG_INF = float("-inf")
PRE_BEAM_SCORES = ("full", "all")


@dataclasses.dataclass(frozen=True)
class TokenScorer:
  """A left-to-right token model driven by the search.

  Attributes:
    step: (previous token int [N], cache) -> (log-probs float32 [N, V] of the
      next token, advanced cache).
    cache: initial cache for N rows with `take(indices)` (e.g. `DecoderCache`).
    start_token: the previous token of the first step (bos).
    weight: scale of its log-probs in the score, scalar or [B] (negative
      subtracts, e.g. the internal LM).
  """

  step: Callable[[jax.Array, Any], tuple[jax.Array, Any]]
  cache: Any
  start_token: int
  weight: float | jax.Array


def _per_row(value, batch: int, beam: int) -> jax.Array:
  """A scalar or [B] value as float32 [B * beam]."""
  value = jnp.broadcast_to(jnp.asarray(value, jnp.float32), (batch,))
  return jnp.repeat(value, beam)


def _is_zero(value) -> bool:
  return isinstance(value, int | float) and value == 0


def label_synchronous_search(
  log_probs: jax.Array,
  mask: jax.Array,
  *,
  scorers: dict[str, TokenScorer],
  beam: int,
  max_len: int,
  ctc_weight: float = 0.3,
  pre_beam: int | None = None,
  pre_beam_score: str = "all",
  length_bonus: float = 0.0,
  bias: biasing.ContextGraph | None = None,
  eos_id: int = 3,
  bos_id: int = 2,
  blank_id: int = 0,
  nbest: int | None = None,
) -> NBest:
  """Joint CTC/token-model beam search over given CTC log-posteriors.

  Args:
    log_probs: float32 [B, T, V] CTC log-posteriors (log_softmax applied).
    mask: bool [B, T] valid frames.
    scorers: name -> `TokenScorer` for N = B * beam rows; "att" is weighted by
      (1 - ctc_weight) times its own weight; names are among `nbest.PARTS`
      ("att", "lm", "ilm") and fill those parts.
    beam: K hypotheses kept per utterance.
    max_len: output token slots (eos excluded).
    ctc_weight: w in [0, 1]; 0 skips CTC scoring; 1 needs no "att" scorer.
    pre_beam: candidates per hypothesis (default int(1.5 * beam)).
    pre_beam_score: what picks them: "full" (the token models) or "all" (the
      CTC prefix scores too); with ctc_weight = 1 always "all".
    length_bonus: added per token (eos excluded).
    bias: contextual biasing graph: `biasing.advance` on each appended token,
      `biasing.finalize` at eos.
    eos_id: end token.
    bos_id: never a candidate (with blank_id).
    blank_id: CTC blank (= pad).
    nbest: hypotheses returned (default beam).

  Returns:
    `NBest` with parts "ctc" (log P_ctc(y)), one per scorer (unweighted, incl.
    eos), "bias" and "length" (token count); parts not computed are 0.
  """
  b, t, v = log_probs.shape
  k, n_rows = beam, b * beam
  f = nbest or beam
  c = min(pre_beam or max(int(1.5 * beam), 1), v)
  if not 0 <= ctc_weight <= 1:
    raise ValueError(f"ctc_weight must be in [0, 1], got {ctc_weight}")
  if ctc_weight < 1 and not scorers:
    raise ValueError("ctc_weight < 1 needs a token scorer (the attention decoder)")
  if pre_beam_score not in PRE_BEAM_SCORES:
    raise ValueError(f"pre_beam_score must be one of {PRE_BEAM_SCORES}, got {pre_beam_score!r}")
  unknown = set(scorers) - set(PARTS)
  if unknown:
    raise ValueError(f"Scorer names {sorted(unknown)} are not among {PARTS}")
  if bias is not None and bias.vocab_size != v:
    raise ValueError(f"Context graph vocabulary {bias.vocab_size} != CTC vocabulary {v}")
  use_ctc = ctc_weight > 0
  log_probs = log_probs.astype(jnp.float32)
  scales = {
    name: _per_row(s.weight, b, k) * ((1.0 - ctc_weight) if name == "att" else 1.0)
    for name, s in scorers.items()
  }
  # No term can raise a score: a finished hypothesis that beats every alive one stays ahead.
  monotone = jnp.asarray(length_bonus <= 0 and bias is None)
  for scale in scales.values():
    monotone = monotone & jnp.all(scale >= 0)
  row_valid = jnp.repeat(mask.any(axis=1), k)  # [N]
  banned = jnp.zeros((v,), bool).at[jnp.array([blank_id, bos_id, eos_id])].set(True)

  zeros_n = jnp.zeros((n_rows,), jnp.float32)
  init = dict(
    i=jnp.zeros((), jnp.int32),
    tokens=jnp.zeros((n_rows, max_len), jnp.int32),
    last=jnp.zeros((n_rows,), jnp.int32),
    score=jnp.where(jnp.tile(jnp.arange(k) == 0, b), 0.0, NEG_INF).astype(jnp.float32),
    parts={name: zeros_n for name in scorers} | {"bias": zeros_n},
    caches={name: s.cache for name, s in scorers.items()},
    ctc=cps.init(log_probs, mask, beam=k, blank_id=blank_id) if use_ctc else None,
    bias_state=jnp.full((n_rows,), biasing.ROOT, jnp.int32),
    fin_tokens=jnp.zeros((b, f, max_len), jnp.int32),
    fin_lengths=jnp.zeros((b, f), jnp.int32),
    fin_scores=jnp.full((b, f), NEG_INF, jnp.float32),
    fin_parts={name: jnp.zeros((b, f), jnp.float32) for name in PARTS},
    done=jnp.zeros((b,), bool),
  )

  def body(s):
    i = s["i"]
    # --- token models: next-token log-probs of every alive row ------------------
    token_lp, caches = {}, {}
    for name, scorer in scorers.items():
      prev = jnp.where(i == 0, scorer.start_token, s["last"])
      token_lp[name], caches[name] = scorer.step(prev, s["caches"][name])
    weighted = sum((scales[name][:, None] * lp for name, lp in token_lp.items()), zeros_n[:, None])

    # --- pre-beam, then the eos candidate ---------------------------------------
    psi_prev = s["ctc"].prefix_score if use_ctc else zeros_n
    safe_prev = jnp.where(psi_prev > NEG_INF, psi_prev, 0.0)
    if use_ctc and (ctc_weight >= 1 or pre_beam_score == "all"):
      pre = ctc_weight * (cps.all_prefix_scores(s["ctc"]) - safe_prev[:, None]) + weighted
    else:
      pre = weighted
    pre = jnp.where(banned[None, :], NEG_INF, pre)
    _, top = jax.lax.top_k(pre, c)  # [N, C]
    cand = jnp.concatenate([top, jnp.full((n_rows, 1), eos_id, top.dtype)], axis=1)
    cand = cand.astype(jnp.int32)  # [N, C + 1], eos last
    is_eos = jnp.arange(c + 1) == c

    # --- scores of the candidates ------------------------------------------------
    cand_lp = {name: jnp.take_along_axis(lp, cand, axis=1) for name, lp in token_lp.items()}
    total = s["score"][:, None] + sum(
      (scales[name][:, None] * lp for name, lp in cand_lp.items()), jnp.zeros(cand.shape)
    )
    if use_ctc:
      psi = cps.prefix_scores(s["ctc"], cand, eos_id=eos_id)
      total = total + jnp.where(psi > NEG_INF, ctc_weight * (psi - safe_prev[:, None]), NEG_INF)
    else:
      psi = jnp.zeros(cand.shape, jnp.float32)
    if bias is not None:
      next_bias, bias_gain = biasing.advance(bias, s["bias_state"][:, None], cand)
      bias_gain = jnp.where(is_eos, biasing.finalize(bias, s["bias_state"])[:, None], bias_gain)
    else:
      next_bias = jnp.broadcast_to(s["bias_state"][:, None], cand.shape)
      bias_gain = jnp.zeros(cand.shape, jnp.float32)
    total = total + bias_gain + jnp.where(is_eos, 0.0, length_bonus)
    extendable = (i < max_len) & row_valid[:, None] & ~banned[cand]
    allowed = (s["score"] > NEG_INF)[:, None] & ~jnp.repeat(s["done"], k)[:, None]
    allowed = allowed & (is_eos | extendable)
    total = jnp.where(allowed, total, NEG_INF)

    # --- finished: merge the eos extensions into the buffer ----------------------
    eos_parts = {name: s["parts"][name] + lp[:, c] for name, lp in cand_lp.items()}
    eos_parts |= {
      "ctc": psi[:, c],
      "bias": s["parts"]["bias"] + bias_gain[:, c],
      "length": jnp.full((n_rows,), i, jnp.float32),
    }
    pool_scores = jnp.concatenate([s["fin_scores"], total[:, c].reshape(b, k)], axis=1)
    fin_scores, pick = jax.lax.top_k(pool_scores, f)  # [B, F]

    def merge(kept, new):
      pool = jnp.concatenate([kept, new.reshape(b, k, *new.shape[1:])], axis=1)
      index = pick.reshape(b, f, *([1] * (pool.ndim - 2)))
      return jnp.take_along_axis(pool, index, axis=1)

    fin_parts = {name: merge(s["fin_parts"][name], eos_parts.get(name, zeros_n)) for name in PARTS}
    fin_tokens = merge(s["fin_tokens"], s["tokens"])
    fin_lengths = merge(s["fin_lengths"], jnp.full((n_rows,), i, jnp.int32))

    # --- alive: the best K extensions per utterance ------------------------------
    ext = total[:, :c].reshape(b, k * c)
    score, flat = jax.lax.top_k(ext, k)  # [B, K]
    parent = (jnp.arange(b)[:, None] * k + flat // c).reshape(n_rows)
    choice = (flat % c).reshape(n_rows)
    token = cand[parent, choice]
    score = score.reshape(n_rows)
    tokens = jnp.where(jnp.arange(max_len)[None, :] == i, token[:, None], s["tokens"][parent])
    parts = {name: s["parts"][name][parent] + lp[parent, choice] for name, lp in cand_lp.items()}
    parts["bias"] = s["parts"]["bias"][parent] + bias_gain[parent, choice]
    caches = {name: cache.take(parent) for name, cache in caches.items()}
    ctc = cps.advance(s["ctc"], parent, token) if use_ctc else None

    # --- end detection -------------------------------------------------------------
    best_alive = score.reshape(b, k).max(axis=1)
    worst_kept = fin_scores[:, -1]
    done = s["done"] | (best_alive == NEG_INF) | (monotone & (worst_kept >= best_alive))
    score = jnp.where(jnp.repeat(done, k), NEG_INF, score)
    return dict(
      i=i + 1,
      tokens=tokens,
      last=token,
      score=score,
      parts=parts,
      caches=caches,
      ctc=ctc,
      bias_state=next_bias[parent, choice],
      fin_tokens=fin_tokens,
      fin_lengths=fin_lengths,
      fin_scores=fin_scores,
      fin_parts=fin_parts,
      done=done,
    )

  cond = lambda s: (s["i"] <= max_len) & ~jnp.all(s["done"])
  s = jax.lax.while_loop(cond, body, init)

  empty = s["fin_scores"] == NEG_INF  # [B, F]
  lengths = jnp.where(empty, 0, s["fin_lengths"])
  positions = jnp.arange(max_len)[None, None, :]
  tokens = jnp.where(positions < lengths[..., None], s["fin_tokens"], 0)
  parts = {name: jnp.where(empty, 0.0, p) for name, p in s["fin_parts"].items()}
  return NBest(tokens=tokens, lengths=lengths, scores=s["fin_scores"], parts=parts)


def joint_beam_search(
  model,
  encoded,
  *,
  beam: int,
  max_len: int,
  ctc_weight: float = 0.3,
  pre_beam: int | None = None,
  pre_beam_score: str = "all",
  lm=None,
  lm_weight: float | jax.Array = 0.0,
  ilm_weight: float | jax.Array = 0.0,
  length_bonus: float = 0.0,
  bias: biasing.ContextGraph | None = None,
  eos_id: int = 3,
  nbest: int | None = None,
) -> NBest:
  """Joint CTC/attention beam search of a `MoeAsr` (module docstring).

  Call it inside `nnx.jit` (static: beam, max_len, ctc_weight, pre_beam,
  pre_beam_score, length_bonus, eos_id, nbest); it compiles once per
  (B, T, beam, max_len).

  Args:
    model: `MoeAsr` in eval mode.
    encoded: `model.encode(batch)`.
    beam: hypotheses kept per utterance.
    max_len: output token slots (eos excluded).
    ctc_weight: score = (1 - w) * att + w * ctc prefix; 1 runs no decoder
      ("att" part 0), 0 no CTC ("ctc" part 0).
    pre_beam: candidates per hypothesis (default int(1.5 * beam)).
    pre_beam_score: "full" or "all" (`label_synchronous_search`).
    lm: `TransformerLM` for shallow fusion, or None. Given, it is run (and its
      "lm" part filled) whatever `lm_weight`.
    lm_weight: scalar or [B].
    ilm_weight: scalar or [B]: subtracts ilm_weight * log P_ilm, the decoder
      run with `context=False`, routed by the utterance LID posterior. Not run
      when it is the Python number 0.
    length_bonus: added per token.
    bias: `biasing.ContextGraph` or None.
    eos_id: end token.
    nbest: hypotheses returned (default beam).

  Returns:
    `NBest` [B, nbest] with parts "ctc", "att", "lm", "ilm", "bias", "length".
  """
  enc = encoded.enc
  b = enc.x.shape[0]
  n_rows = b * beam
  rep = lambda x: jnp.repeat(x, beam, axis=0)
  enc_mask = rep(enc.mask)
  decoder = model.decoder
  slots = max_len + 1
  scorers = {}
  if ctc_weight < 1:
    if decoder is None:
      raise ValueError("ctc_weight < 1 needs a model with an attention decoder")
    lid = rep(enc.lid_probs)

    def att_step(token, cache):
      logits, _, cache = decoder.decode_step(token, cache, None, enc_mask, enc_lang_probs=lid)
      return jax.nn.log_softmax(logits, axis=-1), cache

    cache = decoder.init_cache(n_rows, slots, enc=rep(enc.x))
    scorers["att"] = TokenScorer(att_step, cache, model.bos_id, 1.0)
  if lm is not None:
    if lm.vocab_size != model.vocab_size:
      raise ValueError(f"LM vocabulary {lm.vocab_size} != model vocabulary {model.vocab_size}")

    def lm_step(token, cache):
      logits, _, cache = lm.decode_step(token, cache)
      return jax.nn.log_softmax(logits, axis=-1), cache

    scorers["lm"] = TokenScorer(lm_step, lm.init_cache(n_rows, slots), lm.bos_id, lm_weight)
  if not _is_zero(ilm_weight):
    if decoder is None:
      raise ValueError("ilm_weight needs a model with an attention decoder")
    utt_lang = rep(encoded.utt_probs)

    def ilm_step(token, cache):
      logits, _, cache = decoder.decode_step(
        token, cache, None, enc_mask, token_lang_probs=utt_lang, context=False
      )
      return jax.nn.log_softmax(logits, axis=-1), cache

    ilm_scale = -jnp.asarray(ilm_weight, jnp.float32)
    scorers["ilm"] = TokenScorer(
      ilm_step, decoder.init_cache(n_rows, slots), model.bos_id, ilm_scale
    )
  return label_synchronous_search(
    jax.nn.log_softmax(encoded.ctc_logits.astype(jnp.float32), axis=-1),
    encoded.ctc_mask,
    scorers=scorers,
    beam=beam,
    max_len=max_len,
    ctc_weight=ctc_weight,
    pre_beam=pre_beam,
    pre_beam_score=pre_beam_score,
    length_bonus=length_bonus,
    bias=bias,
    eos_id=eos_id,
    bos_id=model.bos_id,
    nbest=nbest,
  )
