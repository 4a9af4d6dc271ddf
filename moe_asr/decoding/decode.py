"""One decoding step for evaluation and `moe-asr transcribe`: search, task heads, confidences.

`make_decode_fn(cfg, ...)` returns `decode(model, batch) -> dict of fixed-shape arrays`, to be
called inside `jax.jit` (after `nnx.merge`). The method is chosen by `cfg.method`:

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

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from moe_asr.data import languages as langs_lib
from moe_asr.decoding import biasing, ctc_beam, joint_beam, rescore
from moe_asr.decoding import confidence as confidence_lib
from moe_asr.models import greedy, task_heads

METHODS = ("greedy", "ctc_beam", "joint")


def default_config() -> ml_collections.ConfigDict:
  """The `decode` section of a run config (`moe-asr eval --decode.beam=8 ...`)."""
  c = ml_collections.ConfigDict()
  c.method = "greedy"  # greedy | ctc_beam | joint
  c.beam = 8  # Hypotheses kept per utterance.
  c.nbest = 0  # Hypotheses returned (0 = beam); the second pass rescores these.
  c.token_topk = 0  # CTC beam: extension candidates per frame (0 = beam).
  c.prune_threshold = 10.0  # CTC beam: skip tokens this far (nats) below the frame's best.
  c.ctc_weight = 0.3  # Joint search: weight of the CTC prefix score (1 - w for attention).
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
  # Also run the task heads on the reference transcript (teacher forcing) where the batch
  # has one: the heads' own accuracy, apart from recognition errors.
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


def lid_counts(
  lid_probs: jax.Array, frame_lang: jax.Array, mask: jax.Array, tolerance: int = 2
) -> dict[str, jax.Array]:
  """Per-utterance frame-LID and code-switch boundary counts against frame targets.

  Args:
    lid_probs: [B, T, languages] frame LID posteriors (encoder rate).
    frame_lang: int [B, T] reference language per encoder frame (-1 unknown).
    mask: bool [B, T] valid frames.
    tolerance: a reference switch counts as found when the predicted language also
      changes within this many frames of it (2 frames = 80 ms).

  Returns:
    int32 [B] each: `frame_lid_correct`, `frame_lid_total` (frames with a known
    language), `boundary_hit`, `boundary_total` (reference switches between two known
    languages).
  """
  pred = jnp.argmax(lid_probs, axis=-1)
  known = mask & (frame_lang >= 0)
  prev = lambda x: jnp.pad(x, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
  ref_switch = known & (prev(frame_lang) >= 0) & (frame_lang != prev(frame_lang))
  pred_switch = mask & (prev(jnp.where(mask, pred, -1)) >= 0) & (pred != prev(pred))
  # near[t]: a predicted switch at some t + d, |d| <= tolerance (no wrap-around).
  padded = jnp.pad(pred_switch, ((0, 0), (tolerance, tolerance)))
  frames = pred_switch.shape[1]
  near = jnp.zeros_like(pred_switch)
  for d in range(2 * tolerance + 1):
    near = near | padded[:, d : d + frames]
  as_int = lambda x: x.sum(-1).astype(jnp.int32)
  return {
    "frame_lid_correct": as_int(known & (pred == frame_lang)),
    "frame_lid_total": as_int(known),
    "boundary_hit": as_int(ref_switch & near),
    "boundary_total": as_int(ref_switch),
  }


def expert_language_load(
  token_load: jax.Array, frame_lang: jax.Array, mask: jax.Array, num_languages: int
) -> jax.Array:
  """Per utterance, the routing weight each expert got from the frames of each language.

  Args:
    token_load: [layers, B, T, E] routing weights per frame (`token_expert_load`).
    frame_lang: int [B, T] reference language per encoder frame (-1 unknown).
    mask: bool [B, T] valid frames.
    num_languages: size of the language axis.

  Returns:
    float32 [B, layers, languages, E]; summed over E it counts each language's
    frames (frames of unknown language count nowhere).
  """
  lang = jax.nn.one_hot(jnp.where(mask, frame_lang, -1), num_languages, dtype=jnp.float32)
  return jnp.einsum("nbte,btl->bnle", token_load.astype(jnp.float32), lang)


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
  """`decode(model, batch) -> dict` for `cfg` (the `decode` config section).

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
    A function of (MoeAsr in eval mode, batch) returning: `tokens` int32 [B, L],
    `lengths` [B], `confidence` [B] (raw utterance confidence: the mean emitted-token
    posterior for greedy, the n-best posterior of the winner for beams), `token_conf`
    [B, L], `token_frames` [B, L] (CTC frame of each token, `model.ctc_upsample` per
    encoder frame; -1 where unknown), `token_lang` [B, L] (frame
    LID at the token's frame), `utt_lid_logits` [B, languages], `scores` [B, n]
    (n-best ranking scores; [B, 1] for greedy) and, with task heads, `intent_log_probs`
    [B, intents] and `slot_tags` [B, L]; with `teacher_forced` and reference tokens in the
    batch, also `tf_intent_log_probs` [B, intents] and `tf_slot_tags` [B, L'] of the
    heads on the reference (`tokens`, L' of them).
  """
  method = cfg.method
  if method not in METHODS:
    raise ValueError(f"decode.method={method!r}; expected one of {METHODS}")
  if uses_lm(cfg) and lm is None:
    raise ValueError(
      "decode.lm_weight (or a rescore 'lm' weight) needs a text LM: train one with "
      "`moe-asr train-lm --workdir W` or set the weights to 0"
    )
  lang_weights = jnp.asarray(language_weights(cfg))
  use_lm = lm if uses_lm(cfg) or tunable else None
  if tunable and (lm is None or method == "greedy"):
    raise ValueError("tunable decoding needs a text LM and a beam method (ctc_beam or joint)")
  if cfg.get("rescore") and method == "greedy":
    raise ValueError("decode.rescore needs an n-best: use decode.method=ctc_beam or joint")
  weights = {k: float(v) for k, v in dict(cfg.get("rescore_weights") or {}).items() if float(v)}
  table = None if word_table is None else jnp.asarray(word_table, jnp.int8)

  def words_of(model, tokens, mask):
    heads = model.task_heads
    if heads is None or heads.word_tagger is None:
      return None
    if table is None:
      raise ValueError("The model tags slots per word: make_decode_fn needs the word_table")
    return task_heads.word_index(tokens, mask, table)

  def decode(model, batch) -> dict[str, jax.Array]:
    members = list(model) if isinstance(model, list | tuple) else [model]
    model = members[0]
    encodeds = [m.encode(batch) for m in members]
    encoded = encodeds[0]
    enc = encoded.enc
    ctc_mask = encoded.ctc_mask  # CTC frames: `model.ctc_upsample` per encoder frame.
    upsample = encoded.ctc_logits.shape[1] // enc.mask.shape[1]
    log_probs = jax.nn.log_softmax(encoded.ctc_logits, axis=-1)
    greedy_logits, lid_probs = encoded.ctc_logits, enc.lid_probs
    utt_lid_logits = enc.utt_lid_logits.astype(jnp.float32)
    log_w = None
    if len(members) > 1:
      if method == "joint" or cfg.get("rescore"):
        raise ValueError("an ensemble decodes with greedy or ctc_beam, without rescoring")
      shapes = {e.ctc_logits.shape for e in encodeds}
      if len(shapes) > 1:
        raise ValueError(f"ensemble members give CTC outputs of different shapes: {shapes}")
      w = np.ones(len(members)) if ensemble_weights is None else np.asarray(ensemble_weights)
      if w.shape != (len(members),) or not np.all(w >= 0) or not w.sum() > 0:
        raise ValueError(f"ensemble weights {ensemble_weights} for {len(members)} models")
      w = (w / w.sum()).astype(np.float32)
      log_w = jnp.log(jnp.asarray(w))
      log_probs = jax.nn.log_softmax(
        sum(
          float(wi) * jax.nn.log_softmax(e.ctc_logits, axis=-1)
          for wi, e in zip(w, encodeds, strict=True)
        ),
        axis=-1,
      )
      greedy_logits = log_probs
      lid_probs = sum(
        float(wi) * e.enc.lid_probs.astype(jnp.float32) for wi, e in zip(w, encodeds, strict=True)
      )
      utt_lid_logits = mix([e.enc.utt_lid_logits.astype(jnp.float32) for e in encodeds], log_w)
    max_len = min(cfg.get("max_len") or decoder_max_len - 1, decoder_max_len - 1)
    max_len = min(max_len, log_probs.shape[1])
    out: dict[str, jax.Array] = {}
    nbest = None
    if method == "greedy":
      tokens, lengths, conf = greedy.ctc_greedy(greedy_logits, ctc_mask)
      tokens, lengths = tokens[:, :max_len], jnp.minimum(lengths, max_len)
      frames = _emission_frames(log_probs, ctc_mask, max_len)
      scores = conf[:, None]
    else:
      beam = int(cfg.beam)
      n = int(cfg.get("nbest") or beam)
      if method == "ctc_beam":
        frame_weights = jnp.einsum("btl,l->bt", lid_probs.astype(jnp.float32), lang_weights)
        frame_weights = jnp.repeat(frame_weights, upsample, axis=1)
        if tunable:
          frame_weights = jnp.broadcast_to(batch["decode_lm_weight"][:, None], frame_weights.shape)
        nbest = ctc_beam.ctc_prefix_beam_search(
          log_probs,
          ctc_mask,
          beam=beam,
          max_len=max_len,
          token_topk=int(cfg.get("token_topk") or 0) or None,
          prune_threshold=cfg.get("prune_threshold") or None,
          lm=use_lm,
          lm_weight=frame_weights if use_lm is not None else 0.0,
          length_bonus=float(cfg.length_bonus),
          eos_id=eos_id,
          bias=bias,
          nbest=n,
        )
      else:
        utt_weights = encoded.utt_probs @ lang_weights
        ilm_weight = float(cfg.ilm_weight)
        if tunable:
          utt_weights, ilm_weight = batch["decode_lm_weight"], batch["decode_ilm_weight"]
        nbest = joint_beam.joint_beam_search(
          model,
          encoded,
          beam=beam,
          max_len=max_len,
          ctc_weight=float(cfg.ctc_weight),
          lm=use_lm,
          lm_weight=utt_weights if use_lm is not None else 0.0,
          ilm_weight=ilm_weight,
          length_bonus=float(cfg.length_bonus),
          bias=bias,
          eos_id=eos_id,
          nbest=n,
        )
      if cfg.get("rescore"):
        nbest, _ = rescore.rescore_nbest(
          model,
          encoded,
          nbest,
          weights=weights,
          lm=lm if weights.get("lm") else None,
          eos_id=eos_id,
          word_table=table,
        )
      tokens, lengths = nbest.best
      conf = confidence_lib.nbest_posteriors(nbest.scores)[:, 0]
      frames = nbest.token_frames
      if frames is None:
        frames = jnp.full(tokens.shape, -1, jnp.int32)
      else:
        frames = jnp.where(jnp.arange(max_len)[None, :] < lengths[:, None], frames[:, 0], -1)
      scores = nbest.scores
    mask = greedy.token_mask(lengths, tokens.shape[1])
    known = frames >= 0
    token_conf = jnp.where(
      known,
      confidence_lib.token_confidence(
        log_probs, ctc_mask, tokens, lengths, jnp.where(known, frames, 0)
      ),
      0.0,
    )
    frame_lang = jnp.argmax(lid_probs, axis=-1).astype(jnp.int32)  # [B, T]
    token_lang = jnp.where(
      known,
      jnp.take_along_axis(frame_lang, jnp.maximum(frames, 0) // upsample, axis=1),
      jnp.argmax(encoded.utt_probs, -1)[:, None].astype(jnp.int32),
    )
    out.update(
      tokens=jnp.where(mask, tokens, 0),
      lengths=lengths,
      confidence=conf,
      token_conf=token_conf,
      token_frames=jnp.where(mask, frames, -1),
      token_lang=jnp.where(mask, token_lang, -1),
      utt_lid_logits=utt_lid_logits,
      scores=scores,
      **lid_counts(lid_probs, encoded.frame_lang, enc.mask),
      expert_language_load=expert_language_load(
        enc.token_expert_load, encoded.frame_lang, enc.mask, enc.lid_probs.shape[-1]
      ),
    )

    def heads(tokens, mask):
      """(intent log-probs, slot log-probs) of the (mixed) task heads on `tokens`, or None."""
      tasks = [
        m.decode_tokens(e, tokens, mask, token_word=words_of(m, tokens, mask))[1]
        for m, e in zip(members, encodeds, strict=True)
      ]
      if tasks[0] is None:
        return None
      if log_w is None:
        return tasks[0].intent_log_probs, tasks[0].slot_log_probs
      return (
        mix([t.intent_log_probs for t in tasks], log_w),
        mix([t.slot_log_probs for t in tasks], log_w),
      )

    task = heads(tokens, mask)
    if task is not None:
      out["intent_log_probs"] = task[0]
      out["slot_tags"] = jnp.argmax(task[1], -1).astype(jnp.int32)
    ref_mask = batch.get("token_mask")
    if task is not None and cfg.get("teacher_forced", True) and ref_mask is not None:
      ref = batch["tokens"]
      ref_mask = ref_mask[:, : decoder_max_len - 1]
      ref = ref[:, : ref_mask.shape[1]]
      tf_task = heads(ref, ref_mask)
      out["tf_intent_log_probs"] = tf_task[0]
      out["tf_slot_tags"] = jnp.argmax(tf_task[1], -1).astype(jnp.int32)
    return out

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
  if cfg.bias_file == CORPUS_PHRASES:
    phrases = list((metadata or {}).get("bias_phrases") or ())
    if not phrases:
      raise ValueError("decode.bias_file=corpus, but the dataset metadata has no bias_phrases")
  else:
    phrases = biasing.read_phrase_file(cfg.bias_file)
  return biasing.graph_from_phrases(phrases, tokenizer, boost=float(cfg.bias_boost))


def describe(cfg: ml_collections.ConfigDict, extra: Mapping | None = None) -> dict:
  """What the report records about decoding (the settings that were used)."""
  d = cfg.to_dict()
  d["lm_weights"] = dict(d.get("lm_weights") or {})
  d["rescore_weights"] = dict(d.get("rescore_weights") or {})
  d["task_heads_on"] = "best_hypothesis"
  d.update(extra or {})
  return d
