"""Frame- and utterance-level language ID, and conditioning on LID posteriors.

The encoder computes frame LID logits mid-way up (after block `lid_layer`); the
posteriors condition the upper blocks (`LanguageConditioner`) and drive the
language routers of the MoE feed-forwards. Language `l` is position `l` in
`moe_asr.data.languages.LANGUAGE_CODES`.

Supervision comes in three strengths, and each example uses the strongest it
has (see `lid_supervision`):
  1. frame targets (`frame_lang` mapped to encoder frames): per-frame CE, where
     sample-accurate segments are known (the embedded corpus);
  2. the sequence of language runs of the words (`lang_runs`): a CTC over
     language tags, where only word languages are known (real code-switched
     corpora);
  3. the utterance language: utterance CE on `UtteranceLid` logits.

All losses are computed in float32 and ignore targets equal to -1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from moe_asr.data import languages as langs_lib
from moe_asr.models import partitioning
from moe_asr.models.layers import layer_norm

NO_LABEL = -1  # Ignore index used by the data pipeline.

# Per-example supervision kinds returned by `lid_supervision`.
SUPERVISION_NONE = 0
SUPERVISION_FRAME = 1
SUPERVISION_CTC = 2
SUPERVISION_UTTERANCE = 3

_NEG_INF = -1e30  # Finite "minus infinity": keeps fully masked rows NaN-free.


class FrameLidHead(nnx.Module):
  """Per-frame language logits, plus a blank logit for the LID CTC.

  The language logits are shared by the frame CE and the CTC; the CTC adds one
  separate blank logit, so `ctc_logits[..., 0]` is blank and `ctc_logits[..., l + 1]`
  is language `l`.
  """

  def __init__(
    self,
    d_model: int,
    num_languages: int = len(langs_lib.LANGUAGE_CODES),
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.num_languages = num_languages
    self.norm = layer_norm(d_model, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.lang_proj = partitioning.dense(
      d_model, num_languages, ("embed", "lang"), dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )
    self.blank_proj = partitioning.dense(
      d_model, 1, ("embed", None), dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )

  @jax.named_scope("lid_head")
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Frame LID logits.

    Args:
      x: [batch, frames, d_model] encoder states.

    Returns:
      (logits float32 [batch, frames, num_languages],
       ctc_logits float32 [batch, frames, num_languages + 1], blank at index 0).
    """
    h = self.norm(x)
    logits = self.lang_proj(h).astype(jnp.float32)  # [batch, frames, langs]
    blank = self.blank_proj(h).astype(jnp.float32)  # [batch, frames, 1]
    return logits, jnp.concatenate([blank, logits], axis=-1)


class UtteranceLid(nnx.Module):
  """Utterance language logits from attention pooling over valid frames.

  A learned query scores each (normalised) frame; the softmax over valid frames
  weights the pooled vector, which a Linear maps to language logits.
  """

  def __init__(
    self,
    d_model: int,
    num_languages: int = len(langs_lib.LANGUAGE_CODES),
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.dtype = dtype
    self.norm = layer_norm(d_model, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.query = partitioning.param(
      rngs, nnx.initializers.normal(d_model**-0.5), (d_model,), ("embed",), param_dtype
    )
    self.out = partitioning.dense(
      d_model, num_languages, ("embed", "lang"), dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )

  @jax.named_scope("lid_head")
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """Utterance LID logits.

    Args:
      x: [batch, frames, d_model] encoder states.
      mask: bool [batch, frames], True on valid frames.

    Returns:
      float32 [batch, num_languages]; an utterance without valid frames pools
      to zeros (its logits are the output bias).
    """
    h = self.norm(x).astype(jnp.float32)  # [batch, frames, d_model]
    scores = jnp.einsum("btd,d->bt", h, self.query[...].astype(jnp.float32))
    scores = jnp.where(mask, scores * h.shape[-1] ** -0.5, _NEG_INF)
    weights = jax.nn.softmax(scores, axis=-1) * mask  # [batch, frames]
    pooled = jnp.einsum("bt,btd->bd", weights, h)  # [batch, d_model]
    return self.out(pooled.astype(self.dtype)).astype(jnp.float32)


class LanguageConditioner(nnx.Module):
  """Conditions encoder states on (soft) language posteriors.

  Modes:
    add:  x + probs @ E, with E [num_languages, d_model] a language embedding;
    film: x * (1 + probs @ G) + probs @ B, with G and B zero-initialised so the
          module starts as the identity and learns how much to condition.
  Masked frames are returned unchanged.
  """

  def __init__(
    self,
    mode: str,
    d_model: int,
    num_languages: int = len(langs_lib.LANGUAGE_CODES),
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if mode not in ("add", "film"):
      raise ValueError(f"Unknown conditioning mode {mode!r}; expected 'add' or 'film'.")
    self.mode = mode
    self.dtype = dtype
    shape, axes = (num_languages, d_model), ("lang", "embed")
    if mode == "add":
      self.embedding = partitioning.param(
        rngs, nnx.initializers.normal(0.02), shape, axes, param_dtype
      )
    else:
      zeros = nnx.initializers.zeros_init()
      self.gamma = partitioning.param(rngs, zeros, shape, axes, param_dtype)
      self.beta = partitioning.param(rngs, zeros, shape, axes, param_dtype)

  @jax.named_scope("lid_conditioner")
  def __call__(self, x: jax.Array, lang_probs: jax.Array, mask: jax.Array) -> jax.Array:
    """Conditioned states.

    Args:
      x: [batch, frames, d_model].
      lang_probs: [batch, frames, num_languages] language posteriors.
      mask: bool [batch, frames], True on valid frames.

    Returns:
      [batch, frames, d_model], equal to `x` on masked frames.
    """
    probs = lang_probs.astype(jnp.float32)
    if self.mode == "add":
      y = x + (probs @ self.embedding[...].astype(jnp.float32)).astype(x.dtype)
    else:
      scale = probs @ self.gamma[...].astype(jnp.float32)  # [batch, frames, d_model]
      shift = probs @ self.beta[...].astype(jnp.float32)
      y = (x * (1.0 + scale) + shift).astype(x.dtype)
    return jnp.where(mask[..., None], y, x)


def oracle_lang_probs(
  frame_targets: jax.Array,
  mask: jax.Array,
  num_languages: int = len(langs_lib.LANGUAGE_CODES),
  utt_labels: jax.Array | None = None,
) -> jax.Array:
  """One-hot language posteriors from labels, for oracle conditioning.

  Args:
    frame_targets: int [batch, frames] language per encoder frame
      (`conformer.subsample_frame_targets`), -1 where unknown.
    mask: bool [batch, frames], True on valid frames.
    num_languages: number of languages L.
    utt_labels: optional int [batch] utterance language (-1 unknown), used on
      frames whose own target is unknown.

  Returns:
    float32 [batch, frames, L]: one-hot of the frame target where known and
    valid, else one-hot of the utterance label where known, else uniform 1/L.
  """
  targets = jnp.where(mask, frame_targets, NO_LABEL)
  if utt_labels is not None:
    targets = jnp.where(targets >= 0, targets, utt_labels[:, None])
  one_hot = jax.nn.one_hot(jnp.maximum(targets, 0), num_languages, dtype=jnp.float32)
  uniform = jnp.full_like(one_hot, 1.0 / num_languages)
  return jnp.where((targets >= 0)[..., None], one_hot, uniform)


# ---------------------------------------------------------------------------
# Losses.
# ---------------------------------------------------------------------------


def _frame_ce(
  logits: jax.Array, frame_targets: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Per-example sums of frame CE and counts of labelled frames ([batch] each)."""
  labelled = mask & (frame_targets >= 0)  # [batch, frames]
  ce = optax.softmax_cross_entropy_with_integer_labels(
    logits.astype(jnp.float32), jnp.maximum(frame_targets, 0)
  )
  ce = jnp.where(labelled, ce, 0.0)
  return ce.sum(-1), labelled.sum(-1).astype(jnp.float32)


def _runs_fit(mask: jax.Array, lang_runs: jax.Array) -> jax.Array:
  """bool [batch]: runs are known and there are enough valid frames to emit them.

  CTC needs one frame per label plus a blank between equal neighbours; an
  example without that many frames has no alignment (optax returns a large
  finite "impossible" value), so it must not be trained with the CTC.
  """
  runs_known = lang_runs >= 0  # [batch, runs]
  repeats = (runs_known[:, 1:] & (lang_runs[:, 1:] == lang_runs[:, :-1])).sum(-1)
  return runs_known.any(-1) & (runs_known.sum(-1) + repeats <= mask.sum(-1))


def _ctc_per_example(
  ctc_logits: jax.Array, mask: jax.Array, lang_runs: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-example CTC NLL over language runs (0 where unusable), valid frames, usable."""
  runs_known = lang_runs >= 0  # [batch, runs]
  labels = jnp.where(runs_known, lang_runs + 1, 0)  # Blank is 0, language l is l + 1.
  nll = optax.ctc_loss(
    ctc_logits.astype(jnp.float32),
    (~mask).astype(jnp.float32),
    labels,
    (~runs_known).astype(jnp.float32),
    blank_id=0,
  )
  usable = _runs_fit(mask, lang_runs)
  return jnp.where(usable, nll, 0.0), mask.sum(-1).astype(jnp.float32), usable


def _utterance_ce(utt_logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-example utterance CE (0 where unlabelled) and whether labelled."""
  known = labels >= 0
  ce = optax.softmax_cross_entropy_with_integer_labels(
    utt_logits.astype(jnp.float32), jnp.maximum(labels, 0)
  )
  return jnp.where(known, ce, 0.0), known


def _mean(total: jax.Array, count: jax.Array) -> tuple[jax.Array, jax.Array]:
  return total / jnp.maximum(count, 1.0), count


def frame_lid_loss(
  logits: jax.Array, frame_targets: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Frame LID cross-entropy, averaged over labelled valid frames.

  Args:
    logits: [batch, frames, L] frame LID logits.
    frame_targets: int [batch, frames] language per frame, -1 where unknown.
    mask: bool [batch, frames], True on valid frames.

  Returns:
    (mean CE float32 scalar (0 if no frame is labelled), number of labelled frames).
  """
  ce, count = _frame_ce(logits, frame_targets, mask)
  return _mean(ce.sum(), count.sum())


def lid_ctc_loss(
  ctc_logits: jax.Array, mask: jax.Array, lang_runs: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """CTC over the sequence of language runs, per frame, averaged over examples.

  Each example's negative log-likelihood (sum over all alignments of its run
  sequence) is divided by its number of valid frames, so its scale matches a
  per-frame CE; examples without runs, or too short to emit them, are skipped.

  Args:
    ctc_logits: [batch, frames, L + 1] with blank at 0 and language l at l + 1.
    mask: bool [batch, frames], True on valid frames.
    lang_runs: int [batch, runs] languages of consecutive word runs, -1 padded.

  Returns:
    (mean per-frame NLL float32 scalar, number of examples used).
  """
  nll, frames, usable = _ctc_per_example(ctc_logits, mask, lang_runs)
  per_frame = jnp.where(usable, nll / jnp.maximum(frames, 1.0), 0.0)
  return _mean(per_frame.sum(), usable.sum().astype(jnp.float32))


def utterance_lid_loss(utt_logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Utterance LID cross-entropy, averaged over labelled examples.

  Args:
    utt_logits: [batch, L].
    labels: int [batch] utterance language, -1 where unknown.

  Returns:
    (mean CE float32 scalar, number of labelled examples).
  """
  ce, known = _utterance_ce(utt_logits, labels)
  return _mean(ce.sum(), known.sum().astype(jnp.float32))


def lid_supervision(
  frame_targets: jax.Array, mask: jax.Array, lang_runs: jax.Array, utt_labels: jax.Array
) -> jax.Array:
  """Which LID supervision each example gets: the strongest one it has.

  Rule: frame targets if any valid frame has a target >= 0; else the CTC over
  language runs if runs are known and the example has enough valid frames to
  emit them; else the utterance CE if its label is >= 0; else none.

  Args:
    frame_targets: int [batch, frames] at encoder frame rate, -1 unknown.
    mask: bool [batch, frames].
    lang_runs: int [batch, runs], -1 padded.
    utt_labels: int [batch], -1 unknown.

  Returns:
    int32 [batch] of SUPERVISION_{FRAME, CTC, UTTERANCE, NONE}.
  """
  has_frames = (mask & (frame_targets >= 0)).any(-1)
  return jnp.select(
    [has_frames, _runs_fit(mask, lang_runs), utt_labels >= 0],
    [SUPERVISION_FRAME, SUPERVISION_CTC, SUPERVISION_UTTERANCE],
    SUPERVISION_NONE,
  ).astype(jnp.int32)


def lid_loss(
  frame_logits: jax.Array,
  ctc_logits: jax.Array,
  utt_logits: jax.Array,
  mask: jax.Array,
  frame_targets: jax.Array,
  lang_runs: jax.Array,
  utt_labels: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """LID loss with per-example supervision chosen by `lid_supervision`.

  Each supervised example contributes one per-frame-scale number: the mean CE
  over its labelled frames, or its CTC NLL divided by its valid frames, or its
  utterance CE; the result is the mean over supervised examples, so every
  example weighs the same whatever its length or kind of label.

  Args:
    frame_logits: [batch, frames, L] (encoder frame rate).
    ctc_logits: [batch, frames, L + 1], blank at 0.
    utt_logits: [batch, L].
    mask: bool [batch, frames], True on valid encoder frames.
    frame_targets: int [batch, frames] at encoder frame rate, -1 unknown.
    lang_runs: int [batch, runs], -1 padded.
    utt_labels: int [batch], -1 unknown.

  Returns:
    (mean loss float32 scalar (0 if nothing is supervised), number of
    supervised examples).
  """
  kind = lid_supervision(frame_targets, mask, lang_runs, utt_labels)
  frame_sum, frame_count = _frame_ce(frame_logits, frame_targets, mask)
  frame_mean = frame_sum / jnp.maximum(frame_count, 1.0)
  nll, frames, _ = _ctc_per_example(ctc_logits, mask, lang_runs)
  ctc_per_frame = nll / jnp.maximum(frames, 1.0)
  utt_ce, _ = _utterance_ce(utt_logits, utt_labels)
  per_example = jnp.select(
    [kind == SUPERVISION_FRAME, kind == SUPERVISION_CTC, kind == SUPERVISION_UTTERANCE],
    [frame_mean, ctc_per_frame, utt_ce],
    0.0,
  )
  supervised = kind != SUPERVISION_NONE
  return _mean(jnp.where(supervised, per_example, 0.0).sum(), supervised.sum().astype(jnp.float32))
