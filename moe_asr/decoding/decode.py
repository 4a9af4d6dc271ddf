"""One decoding step for evaluation and `moe-asr transcribe`: search, task heads, confidences.

`make_decode_fn(cfg, ...)` returns `decode(model, batch) -> dict of fixed-shape arrays`, to be
called inside `jax.jit` (after `nnx.merge`). The step composes stages: `encode` (the members'
posteriors mixed for an ensemble), the search registered for `cfg.method` in `SEARCHES` (every
search has one signature and returns an `NBest`), the optional second pass, and what is read off
the winner (confidences, languages, task heads). The searches:

- `greedy`: best-path CTC.
- `ctc_beam`: CTC prefix beam search (`ctc_beam.py`) with optional shallow fusion of the text LM
  (per-frame weights chosen by the frame LID posteriors when `lm_weights` names languages), a
  length bonus and contextual biasing.
- `joint`: joint CTC/attention beam search (`joint_beam.py`) with LM fusion (weights chosen by
  the utterance LID posterior), internal-LM subtraction and biasing.

With `cfg.rescore` the n-best is rescored with the attention decoder, the LM and the task heads
(`rescore.py`), so the task heads can change which transcript (and intent) wins. The task heads
then read the winning hypothesis (the same tokens a deployed model would have).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from moe_asr.data import languages as langs_lib
from moe_asr.data import text as text_lib
from moe_asr.decoding import biasing, ctc_beam, joint_beam, rescore
from moe_asr.decoding import confidence as confidence_lib
from moe_asr.decoding.nbest import NBest
from moe_asr.models import greedy, task_heads


def default_config() -> ml_collections.ConfigDict:
  """The `decode` section of a run config (`moe-asr eval --decode.beam=8 ...`)."""
  c = ml_collections.ConfigDict()
  c.method = "greedy"  # greedy | ctc_beam | joint
  c.beam = 8  # Hypotheses kept per utterance.
  c.nbest = 0  # Hypotheses returned (0 = beam); the second pass rescores these.
  c.token_topk = 0  # CTC beam: extension candidates per frame (0 = beam).
  c.prune_threshold = 10.0  # CTC beam: skip tokens this far (nats) below the frame's best.
  c.ctc_weight = 0.3  # Joint search: weight of the CTC prefix score (1 - w for attention).
  # Joint search: what picks each hypothesis's candidates: "all" (the exact CTC prefix scores
  # too, safe with a weak decoder) or "full" (attention and LM only, ESPnet's; cheaper).
  c.pre_beam_score = "all"
  c.lm_weight = 0.0  # Shallow fusion weight of the text LM (W/lm) for every language ...
  c.lm_weights = ml_collections.ConfigDict()  # ... unless named here ({"en": 0.3, ...}).
  c.ilm_weight = 0.0  # Joint search: internal-LM estimate subtracted with this weight.
  c.length_bonus = 0.0  # Added per emitted token.
  c.bias_file = ""  # Phrase list (one per line, optional "\t<boost>") for contextual biasing.
  c.bias_boost = biasing.DEFAULT_BOOST  # Boost per character of a phrase without its own boost.
  c.rescore = False  # Second pass over the n-best with decoder, LM and task heads.
  c.rescore_weights = ml_collections.ConfigDict(
    {"ctc": 1.0, "att": 0.0, "lm": 0.0, "task": 0.0, "length": 0.0}
  )
  c.max_len = 0  # Output tokens (0 = the decoder's max_len - 1, eos included there).
  # Evaluation also runs the task heads on the reference transcript (teacher forcing) where
  # the batch has one: the heads' own accuracy, apart from recognition errors (decode_stats).
  c.teacher_forced = True
  return c


def language_weights(cfg: ml_collections.ConfigDict) -> np.ndarray:
  """[num_languages] LM weight per language: `lm_weights[code]`, else `lm_weight`."""
  weights = np.full(len(langs_lib.LANGUAGE_CODES), float(cfg.lm_weight), np.float32)
  for code, value in dict(cfg.get("lm_weights") or {}).items():
    weights[langs_lib.language_index(code)] = float(value)
  return weights


def uses_lm(cfg: ml_collections.ConfigDict) -> bool:
  """Whether decoding with `cfg` reads the text LM."""
  fused = cfg.method != "greedy" and bool(np.any(language_weights(cfg) != 0.0))
  rescored = bool(cfg.rescore) and float(dict(cfg.rescore_weights).get("lm", 0.0)) != 0.0
  return fused or rescored


def _emission_frames(log_probs: jax.Array, mask: jax.Array, max_len: int, blank_id: int = 0):
  """Frame of each best-path token: int32 [batch, max_len] (-1 past the hypothesis)."""
  best = jnp.argmax(log_probs, axis=-1)
  previous = jnp.pad(best, ((0, 0), (1, 0)), constant_values=blank_id)[:, :-1]
  emit = mask & (best != blank_id) & (best != previous)
  position = jnp.where(emit, jnp.cumsum(emit, axis=-1) - 1, max_len)
  frames = jnp.arange(best.shape[1], dtype=jnp.int32)[None, :]
  rows = jnp.arange(best.shape[0])[:, None]
  out = jnp.full((best.shape[0], max_len), -1, jnp.int32)
  return out.at[rows, position].set(jnp.broadcast_to(frames, best.shape), mode="drop")


@dataclasses.dataclass(frozen=True)
class Encoding:
  """The models' encoder outputs and the posteriors the searches read.

  For an ensemble the CTC and LID posteriors are the members' weighted means; for one model
  (or an ensemble of one) they are the model's own.

  Attributes:
    members: the models (one, or an ensemble's members), in eval mode.
    encodeds: `member.encode(batch)` of each member.
    log_probs: [B, T', vocab] CTC log-posteriors (`upsample` CTC frames per encoder frame).
    greedy_logits: what best-path CTC reads: one model's CTC logits, else `log_probs`.
    lid_probs: [B, T, languages] frame LID posteriors.
    utt_lid_logits: float32 [B, languages] utterance LID logits (log-posteriors when mixed).
    log_weights: [members] log ensemble weights, or None for one model.
  """

  members: tuple
  encodeds: tuple
  log_probs: jax.Array
  greedy_logits: jax.Array
  lid_probs: jax.Array
  utt_lid_logits: jax.Array
  log_weights: jax.Array | None = None

  @property
  def model(self):
    """The first member (the joint search and rescoring read it alone)."""
    return self.members[0]

  @property
  def encoded(self):
    """The first member's `encode` output."""
    return self.encodeds[0]

  @property
  def ctc_mask(self) -> jax.Array:
    """bool [B, T'] valid CTC frames."""
    return self.encoded.ctc_mask

  @property
  def upsample(self) -> int:
    """CTC frames per encoder frame (`model.ctc_upsample`)."""
    return self.encoded.ctc_logits.shape[1] // self.encoded.enc.mask.shape[1]


def _members(model) -> tuple:
  return tuple(model) if isinstance(model, list | tuple) else (model,)


def encode(model, batch: Mapping[str, jax.Array], ensemble_weights=None) -> Encoding:
  """Encodes `batch` with a model or an ensemble (a sequence of models, see `make_decode_fn`)."""
  members = _members(model)
  encodeds = tuple(m.encode(batch) for m in members)
  if len(members) > 1:
    return _fuse_ensemble(members, encodeds, ensemble_weights)
  encoded = encodeds[0]
  return Encoding(
    members=members,
    encodeds=encodeds,
    log_probs=jax.nn.log_softmax(encoded.ctc_logits, axis=-1),
    greedy_logits=encoded.ctc_logits,
    lid_probs=encoded.enc.lid_probs,
    utt_lid_logits=encoded.enc.utt_lid_logits.astype(jnp.float32),
  )


def _fuse_ensemble(members: tuple, encodeds: tuple, ensemble_weights) -> Encoding:
  """The members' CTC and LID posteriors mixed with their (normalised) weights."""
  shapes = {e.ctc_logits.shape for e in encodeds}
  if len(shapes) > 1:
    raise ValueError(f"ensemble members give CTC outputs of different shapes: {shapes}")
  w = np.ones(len(members)) if ensemble_weights is None else np.asarray(ensemble_weights)
  if w.shape != (len(members),) or not np.all(w >= 0) or not w.sum() > 0:
    raise ValueError(f"ensemble weights {ensemble_weights} for {len(members)} models")
  w = (w / w.sum()).astype(np.float32)
  pairs = list(zip(w, encodeds, strict=True))
  log_w = jnp.log(jnp.asarray(w))
  log_probs = jax.nn.log_softmax(
    sum(float(wi) * jax.nn.log_softmax(e.ctc_logits, axis=-1) for wi, e in pairs), axis=-1
  )
  return Encoding(
    members=members,
    encodeds=encodeds,
    log_probs=log_probs,
    greedy_logits=log_probs,
    lid_probs=sum(float(wi) * e.enc.lid_probs.astype(jnp.float32) for wi, e in pairs),
    utt_lid_logits=mix([e.enc.utt_lid_logits.astype(jnp.float32) for e in encodeds], log_w),
    log_weights=log_w,
  )


# ---------------------------------------------------------------------------
# The searches: one signature, each returning an `NBest`.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SearchSettings:
  """What a search reads besides the encoding (resolved once by `make_decode_fn`).

  Attributes:
    cfg: the `decode` config section.
    lm: the text LM fused into the search, or None (no fusion).
    lang_weights: float32 [languages] LM weight per language (`language_weights`).
    bias: a context graph over the model's vocabulary, or None.
    eos_id: the end token.
    tunable: the LM and ILM weights come from the batch (`decode_lm_weight`,
      `decode_ilm_weight`).
  """

  cfg: ml_collections.ConfigDict
  lm: Any = None
  lang_weights: jax.Array | None = None
  bias: biasing.ContextGraph | None = None
  eos_id: int = 3
  tunable: bool = False

  @property
  def beam(self) -> int:
    return int(self.cfg.beam)

  @property
  def nbest(self) -> int:
    return int(self.cfg.get("nbest") or self.cfg.beam)


# search(settings, encoding, batch, max_len) -> NBest, hypotheses of at most max_len tokens.
Search = Callable[[SearchSettings, Encoding, Mapping[str, jax.Array], int], NBest]


def greedy_search(s: SearchSettings, e: Encoding, batch, max_len: int) -> NBest:
  """Best-path CTC: one hypothesis, scored by (and as confident as) its mean token posterior."""
  del s, batch
  tokens, lengths, conf = greedy.ctc_greedy(e.greedy_logits, e.ctc_mask)
  tokens, lengths = tokens[:, :max_len], jnp.minimum(lengths, max_len)
  frames = _emission_frames(e.log_probs, e.ctc_mask, max_len)
  return NBest(
    tokens=tokens[:, None],
    lengths=lengths[:, None],
    scores=conf[:, None],
    parts={},
    token_frames=frames[:, None],
    confidence=conf[:, None],
  )


def frame_lm_weights(s: SearchSettings, e: Encoding, batch) -> jax.Array:
  """float32 [B, T'] fusion weight per CTC frame: the language weights under the frame LID.

  With `tunable`, the batch's `decode_lm_weight` [B] on every frame instead."""
  weights = jnp.einsum("btl,l->bt", e.lid_probs.astype(jnp.float32), s.lang_weights)
  weights = jnp.repeat(weights, e.upsample, axis=1)
  if s.tunable:
    weights = jnp.broadcast_to(batch["decode_lm_weight"][:, None], weights.shape)
  return weights


def utterance_lm_weights(s: SearchSettings, e: Encoding, batch) -> tuple:
  """(LM weight [B] under the utterance LID posterior, ILM weight); the batch's when tunable."""
  if s.tunable:
    return batch["decode_lm_weight"], batch["decode_ilm_weight"]
  return e.encoded.utt_probs @ s.lang_weights, float(s.cfg.ilm_weight)


def _frames_within_lengths(nbest: NBest) -> NBest:
  """The n-best with `token_frames` -1 past each hypothesis's length."""
  if nbest.token_frames is None:
    return nbest
  inside = jnp.arange(nbest.token_frames.shape[-1]) < nbest.lengths[..., None]
  return nbest.replace(token_frames=jnp.where(inside, nbest.token_frames, -1))


def ctc_beam_search(s: SearchSettings, e: Encoding, batch, max_len: int) -> NBest:
  """CTC prefix beam search (`ctc_beam.py`) with per-frame LM fusion and biasing."""
  cfg = s.cfg
  nbest = ctc_beam.ctc_prefix_beam_search(
    e.log_probs,
    e.ctc_mask,
    beam=s.beam,
    max_len=max_len,
    token_topk=int(cfg.get("token_topk") or 0) or None,
    prune_threshold=cfg.get("prune_threshold") or None,
    lm=s.lm,
    lm_weight=frame_lm_weights(s, e, batch) if s.lm is not None else 0.0,
    length_bonus=float(cfg.length_bonus),
    eos_id=s.eos_id,
    bias=s.bias,
    nbest=s.nbest,
  )
  return _frames_within_lengths(nbest)


def joint_search(s: SearchSettings, e: Encoding, batch, max_len: int) -> NBest:
  """Joint CTC/attention beam search (`joint_beam.py`) with LM fusion, ILM and biasing."""
  lm_weight, ilm_weight = utterance_lm_weights(s, e, batch)
  return joint_beam.joint_beam_search(
    e.model,
    e.encoded,
    beam=s.beam,
    max_len=max_len,
    ctc_weight=float(s.cfg.ctc_weight),
    pre_beam_score=str(s.cfg.get("pre_beam_score", "all")),
    lm=s.lm,
    lm_weight=lm_weight if s.lm is not None else 0.0,
    ilm_weight=ilm_weight,
    length_bonus=float(s.cfg.length_bonus),
    bias=s.bias,
    eos_id=s.eos_id,
    nbest=s.nbest,
  )


SEARCHES: dict[str, Search] = {
  "greedy": greedy_search,
  "ctc_beam": ctc_beam_search,
  "joint": joint_search,
}
METHODS = tuple(SEARCHES)


def search_for(method: str) -> Search:
  """The search registered as `method` (`SEARCHES`); ValueError naming the known ones."""
  if method not in SEARCHES:
    raise ValueError(f"decode.method={method!r}; expected one of {tuple(SEARCHES)}")
  return SEARCHES[method]


# ---------------------------------------------------------------------------
# What the decode step reads off the winning hypothesis.
# ---------------------------------------------------------------------------


def _confidences(e: Encoding, nbest: NBest, frames: jax.Array) -> dict[str, jax.Array]:
  """`confidence` [B] of the winner (its own, else its n-best posterior) and `token_conf`."""
  tokens, lengths = nbest.best
  if nbest.confidence is not None:
    conf = nbest.confidence[:, 0]
  else:
    conf = confidence_lib.nbest_posteriors(nbest.scores)[:, 0]
  known = frames >= 0
  token_conf = confidence_lib.token_confidence(
    e.log_probs, e.ctc_mask, tokens, lengths, jnp.where(known, frames, 0)
  )
  return {"confidence": conf, "token_conf": jnp.where(known, token_conf, 0.0)}


def _token_languages(e: Encoding, frames: jax.Array) -> jax.Array:
  """int32 [B, L] frame LID at each token's frame (the utterance LID where unknown)."""
  frame_lang = jnp.argmax(e.lid_probs, axis=-1).astype(jnp.int32)  # [B, T]
  return jnp.where(
    frames >= 0,
    jnp.take_along_axis(frame_lang, jnp.maximum(frames, 0) // e.upsample, axis=1),
    jnp.argmax(e.encoded.utt_probs, -1)[:, None].astype(jnp.int32),
  )


def _hypothesis_outputs(e: Encoding, nbest: NBest) -> dict[str, jax.Array]:
  """The winner's tokens, confidences, frames and languages, and the n-best scores."""
  tokens, lengths = nbest.best
  frames = nbest.token_frames
  frames = jnp.full(tokens.shape, -1, jnp.int32) if frames is None else frames[:, 0]
  mask = greedy.token_mask(lengths, tokens.shape[1])
  return dict(
    tokens=jnp.where(mask, tokens, 0),
    lengths=lengths,
    **_confidences(e, nbest, frames),
    token_frames=jnp.where(mask, frames, -1),
    token_lang=jnp.where(mask, _token_languages(e, frames), -1),
    utt_lid_logits=e.utt_lid_logits,
    scores=nbest.scores,
  )


def _word_index(model, tokens: jax.Array, mask: jax.Array, word_table) -> jax.Array | None:
  heads = model.task_heads
  if heads is None or heads.word_tagger is None:
    return None
  if word_table is None:
    raise ValueError("The model tags slots per word: make_decode_fn needs the word_table")
  return task_heads.word_index(tokens, mask, jnp.asarray(word_table, jnp.int8))


def task_head_log_probs(e: Encoding, tokens: jax.Array, mask: jax.Array, word_table=None):
  """(intent log-probs, slot log-probs) of the task heads on `tokens`, or None without heads.

  An ensemble's members each read `tokens`; their posteriors are mixed with its weights."""
  tasks = [
    m.decode_tokens(enc, tokens, mask, token_word=_word_index(m, tokens, mask, word_table))[1]
    for m, enc in zip(e.members, e.encodeds, strict=True)
  ]
  if tasks[0] is None:
    return None
  if e.log_weights is None:
    return tasks[0].intent_log_probs, tasks[0].slot_log_probs
  return (
    mix([t.intent_log_probs for t in tasks], e.log_weights),
    mix([t.slot_log_probs for t in tasks], e.log_weights),
  )


def _task_outputs(e: Encoding, nbest: NBest, word_table) -> dict[str, jax.Array]:
  """`intent_log_probs` and `slot_tags` of the task heads on the winner ({} without heads)."""
  tokens, lengths = nbest.best
  task = task_head_log_probs(e, tokens, greedy.token_mask(lengths, tokens.shape[1]), word_table)
  if task is None:
    return {}
  return {"intent_log_probs": task[0], "slot_tags": jnp.argmax(task[1], -1).astype(jnp.int32)}


# ---------------------------------------------------------------------------
# The decode step.
# ---------------------------------------------------------------------------


def _check_settings(cfg: ml_collections.ConfigDict, lm, tunable: bool) -> None:
  """ValueError for an LM or rescoring setting that cannot decode."""
  if uses_lm(cfg) and lm is None:
    raise ValueError(
      "decode.lm_weight (or a rescore 'lm' weight) needs a text LM: train one with "
      "`moe-asr train-lm --workdir W` or set the weights to 0"
    )
  if tunable and (lm is None or cfg.method == "greedy"):
    raise ValueError("tunable decoding needs a text LM and a beam method (ctc_beam or joint)")
  if cfg.get("rescore") and cfg.method == "greedy":
    raise ValueError("decode.rescore needs an n-best: use decode.method=ctc_beam or joint")
  pre_beam = cfg.get("pre_beam_score", "all")
  if pre_beam not in joint_beam.PRE_BEAM_SCORES:
    raise ValueError(
      f"decode.pre_beam_score={pre_beam!r}; expected one of {joint_beam.PRE_BEAM_SCORES}"
    )


def _make_rescorer(cfg: ml_collections.ConfigDict, lm, eos_id: int, table) -> Callable | None:
  """`rescore(encoding, nbest) -> NBest` (the second pass, `rescore.py`), or None without it."""
  if not cfg.get("rescore"):
    return None
  weights = {k: float(v) for k, v in dict(cfg.get("rescore_weights") or {}).items() if float(v)}

  def rescored(e: Encoding, nbest: NBest) -> NBest:
    lm_used = lm if weights.get("lm") else None
    return rescore.rescore_nbest(
      e.model, e.encoded, nbest, weights=weights, lm=lm_used, eos_id=eos_id, word_table=table
    )[0]

  return rescored


def check_ensemble_search(cfg: ml_collections.ConfigDict, workdir=None) -> None:
  """Raises unless `cfg` (a decode section) is a search an ensemble runs: greedy or
  ctc_beam without rescoring (members share CTC posteriors, not attention decoders)."""
  asked, fixes = [], []
  if cfg.method not in ("greedy", "ctc_beam"):
    asked.append(f"decode.method={cfg.method!r}")
    fixes.append("--config.decode.method=ctc_beam (or greedy)")
  if cfg.get("rescore"):
    asked.append("decode.rescore=True")
    fixes.append("--config.decode.rescore=False")
  if asked:
    where = f"{workdir} asks for " if workdir is not None else "this search has "
    raise ValueError(
      "an ensemble decodes with greedy or ctc_beam, without rescoring; "
      f"{where}{' and '.join(asked)}: add {' '.join(fixes)}"
    )


def make_decode_fn(
  cfg: ml_collections.ConfigDict,
  *,
  decoder_max_len: int,
  lm=None,
  bias: biasing.ContextGraph | None = None,
  eos_id: int = 3,
  tunable: bool = False,
  word_table: np.ndarray | None = None,
  ensemble_weights: Sequence[float] | None = None,
) -> Callable[..., dict[str, jax.Array]]:
  """`decode(model, batch, encoding=None) -> dict` for `cfg` (the `decode` config section).

  The step encodes (`encode`), runs the search registered for `cfg.method` (`SEARCHES`, with
  LM fusion and biasing), rescores the n-best (`cfg.rescore`), and reads the winner's
  confidences and task heads. Statistics only evaluation reads (frame-LID counts, expert
  load, the heads on the reference transcript) are `evaluation.decode_stats`.

  `model` may be a sequence of models (an ensemble) with the same tokenizer and frame rate:
  each encodes the batch, the search runs on the weighted mean of their CTC log-posteriors
  (renormalised), and the task heads of every member read the common hypothesis, their
  intent and slot posteriors mixed with the same weights (a weighted vote); the frame and
  utterance LID posteriors are mixed too. Ensembles decode with `greedy` or `ctc_beam`,
  without rescoring. One model, or an ensemble of one, decodes exactly as without.

  Args:
    cfg: decoding settings (`default_config`).
    decoder_max_len: the attention decoder's positions; hypotheses are cut to
      `decoder_max_len - 1` tokens so that the decoder and task heads can read them.
    lm: a `TransformerLM` in eval mode (needed when `uses_lm(cfg)`), or None.
    bias: a context graph over the model's vocabulary, or None.
    eos_id: the end token.
    tunable: read the LM and ILM weights from the batch (`decode_lm_weight` and
      `decode_ilm_weight`, float32 [B], one per utterance, for every language) instead
      of the config, so a weight search reuses one compiled step (`tune-decoding`);
      needs `lm`.
    word_table: the tokenizer's `word_table` (which pieces start words); needed by a
      model whose slot tagger works on words.
    ensemble_weights: one weight per member for an ensemble (normalised to sum to 1;
      default: equal).

  Returns:
    A function of (MoeAsr in eval mode, batch, and optionally the `encode(model, batch,
    ensemble_weights)` the caller already has) returning: `tokens` int32 [B, L],
    `lengths` [B], `confidence` [B] (raw utterance confidence: the mean emitted-token
    posterior for greedy, the n-best posterior of the winner for beams), `token_conf`
    [B, L], `token_frames` [B, L] (CTC frame of each token, `model.ctc_upsample` per
    encoder frame; -1 where unknown), `token_lang` [B, L] (frame
    LID at the token's frame), `utt_lid_logits` [B, languages], `scores` [B, n]
    (n-best ranking scores; [B, 1] for greedy) and, with task heads, `intent_log_probs`
    [B, intents] and `slot_tags` [B, L].
  """
  search = search_for(cfg.method)
  _check_settings(cfg, lm, tunable)
  settings = SearchSettings(
    cfg=cfg,
    lm=lm if uses_lm(cfg) or tunable else None,
    lang_weights=jnp.asarray(language_weights(cfg)),
    bias=bias,
    eos_id=eos_id,
    tunable=tunable,
  )
  table = None if word_table is None else jnp.asarray(word_table, jnp.int8)
  rescorer = _make_rescorer(cfg, lm, eos_id, table)

  def decode(model, batch, encoding: Encoding | None = None) -> dict[str, jax.Array]:
    if len(_members(model)) > 1:
      check_ensemble_search(cfg)
    e = encoding if encoding is not None else encode(model, batch, ensemble_weights)
    max_len = min(cfg.get("max_len") or decoder_max_len - 1, decoder_max_len - 1)
    nbest = search(settings, e, batch, min(max_len, e.log_probs.shape[1]))
    if rescorer is not None:
      nbest = rescorer(e, nbest)
    return _hypothesis_outputs(e, nbest) | _task_outputs(e, nbest, table)

  return decode


def mix(log_probs: Sequence[jax.Array], log_weights: jax.Array) -> jax.Array:
  """log(sum_i w_i p_i): the weighted mean of distributions given as logits or log-probs.

  Each member is normalised over the last axis first, so logits mix as their posteriors."""
  stacked = jnp.stack([jax.nn.log_softmax(lp.astype(jnp.float32), axis=-1) for lp in log_probs])
  shape = (-1,) + (1,) * (stacked.ndim - 1)
  return jax.nn.logsumexp(stacked + log_weights.reshape(shape), axis=0)


CORPUS_PHRASES = "corpus"  # `decode.bias_file=corpus`: the dataset's own bias phrase list.


def load_bias(
  cfg: ml_collections.ConfigDict, tokenizer, metadata: Mapping | None = None
) -> biasing.ContextGraph | None:
  """The context graph of `cfg.bias_file` (None without one).

  `bias_file=corpus` takes the phrase list the dataset ships in its metadata
  (`bias_phrases` of the embedded corpus).
  """
  if not cfg.get("bias_file"):
    return None
  phrases = bias_phrases(cfg.bias_file, metadata)
  return biasing.graph_from_phrases(phrases, tokenizer, boost=float(cfg.bias_boost))


def bias_phrases(source: str, metadata: Mapping | None = None) -> list:
  """The phrases of a biasing list: `corpus` (the dataset metadata's `bias_phrases`) or a
  phrase file (`biasing.read_phrase_file`'s (phrase, boost) pairs).

  Raises:
    ValueError: `corpus` for a dataset whose metadata has no bias_phrases.
  """
  if source == CORPUS_PHRASES:
    phrases = list((metadata or {}).get("bias_phrases") or ())
    if not phrases:
      raise ValueError(f"decode.bias_file={source}, but the dataset metadata has no bias_phrases")
    return phrases
  return biasing.read_phrase_file(source)


def bias_phrase_texts(phrases: Sequence) -> list[str]:
  """Normalised texts of `bias_phrases`' result (what B-WER and U-WER are measured on)."""
  return [text_lib.normalize(p if isinstance(p, str) else p[0]) for p in phrases]


def describe(cfg: ml_collections.ConfigDict, extra: Mapping | None = None) -> dict:
  """What the report records about decoding (the settings that were used)."""
  d = cfg.to_dict()
  d["lm_weights"] = dict(d.get("lm_weights") or {})
  d["rescore_weights"] = dict(d.get("rescore_weights") or {})
  d["task_heads_on"] = "best_hypothesis"
  d.update(extra or {})
  return d
