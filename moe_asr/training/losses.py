"""The joint objective (docs/design.md §6).

`loss = w_ctc*ctc + w_inter_ctc*mean(intermediate ctc) + w_phone_ctc*mean(phone ctc) + w_att*ce
        + w_lid*(lid + utt_lid)
        + w_task*(intent + slots) + w_task_hyp*intent_on_hypothesis + w_aux*moe`

Every term is a mean over what it supervises (CTC and attention CE per label
token, LID per supervised utterance, intent per labelled utterance, slots per
labelled token), so the weights mean the same whatever the bucket shape of the
step. Rows with `example_mask == False` contribute nothing; rows without a
transcript (no tokens: a speech-to-intent example) contribute to no CTC or
attention term, only to LID and the task heads. Weights may ramp
in linearly (`<name>_warmup = (start_step, ramp_steps)`), which is how a recipe
trains the ASR first and brings the task loss in later.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

from moe_asr.models import decoder as decoder_lib
from moe_asr.models import lid, task_heads
from moe_asr.models.model import MoeAsrOutput
from moe_asr.models.moe import MoeAux

# Terms of the joint loss, in the order they are logged.
TERMS = ("ctc", "inter_ctc", "phone_ctc", "att", "lid", "task", "task_hyp", "aux")


def loss_config() -> ml_collections.ConfigDict:
  """Default weights of the joint loss (`config.train.loss`)."""
  c = ml_collections.ConfigDict()
  c.ctc = 0.3  # CTC on the encoder.
  c.inter_ctc = 0.0  # Mean CTC of the intermediate taps (`model.inter_ctc.layers`).
  c.phone_ctc = 0.0  # Mean phone CTC of `model.phone_ctc.layers` (per phone-labelled token).
  c.att = 0.7  # Attention-decoder cross-entropy (teacher forcing).
  c.lid = 0.3  # Frame / language-run / utterance LID.
  c.task = 0.5  # Intent + slot tags through the bridge.
  # Intent through the bridge on the greedy CTC hypothesis, which is what inference
  # reads (the task term above reads the reference transcript); 0 skips the extra
  # decoder pass.
  c.task_hyp = 0.0
  c.aux = 1.0  # Scales the MoE auxiliary losses below.
  c.load_balance = 0.01  # Switch-style load balance of learned routers.
  c.router_z = 0.001  # Router z-loss (ST-MoE).
  c.lid_alignment = 0.1  # Hybrid router: routing agrees with the LID posterior.
  c.label_smoothing = 0.1  # Attention CE.
  # Log prior of each language in the training data, added to the LID logits inside the
  # LID losses only (logit adjustment, Menon et al. 2021): the trained logits then carry no
  # prior of the training mix, e.g. a transfer's new language at 90% with 10% replay.
  # () = none.
  c.lid_log_prior = ()
  # (start_step, ramp_steps) per term: 0 before start, linear up to the weight after.
  c.ctc_warmup = (0, 0)
  c.inter_ctc_warmup = (0, 0)
  c.phone_ctc_warmup = (0, 0)
  c.att_warmup = (0, 0)
  c.lid_warmup = (0, 0)
  c.task_warmup = (0, 0)
  c.task_hyp_warmup = (0, 0)
  c.aux_warmup = (0, 0)
  return c


def term_weight(cfg: Mapping, name: str, step: jax.Array) -> jax.Array:
  """The weight of term `name` at `step` (its warm-up schedule applied)."""
  start, ramp = cfg.get(f"{name}_warmup", (0, 0))
  step = jnp.asarray(step, jnp.float32)
  ramp_frac = jnp.clip((step - start) / max(ramp, 1), 0.0, 1.0) if ramp > 0 else 1.0
  weight = cfg.get(name, 0.0)  # A term newer than the config is off.
  return jnp.where(step >= start, weight * ramp_frac, 0.0).astype(jnp.float32)


def _safe_mean(total: jax.Array, count: jax.Array) -> jax.Array:
  return total / jnp.maximum(count, 1.0)


@jax.named_scope("ctc_loss")
def ctc_loss(
  logits: jax.Array,
  mask: jax.Array,
  labels: jax.Array,
  label_mask: jax.Array,
  example_mask: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """CTC negative log-likelihood per label token (blank = 0).

  Args:
    logits: [batch, frames, vocab] float32.
    mask: bool [batch, frames], True on valid encoder frames.
    labels: int [batch, tokens].
    label_mask: bool [batch, tokens].
    example_mask: bool [batch], rows that count.

  Returns:
    (sum NLL / number of label tokens of the rows that count, number of those
    tokens, number of rows dropped because no alignment exists).

  A row needs at least `labels + repeated neighbours` frames (a blank must
  separate repeats). Rows with fewer have no alignment; optax returns a huge
  finite loss for them (its log-zero is -1e5) whose gradient would swamp the
  step, so they are zeroed and counted, as PyTorch's `zero_infinity=True` does.
  """
  per_seq = optax.ctc_loss(
    logits,
    (~mask).astype(jnp.float32),
    labels,
    (~label_mask).astype(jnp.float32),
    blank_id=0,
  )  # [batch]
  has_labels = label_mask.any(-1) & example_mask
  repeats = jnp.sum((labels[:, 1:] == labels[:, :-1]) & label_mask[:, 1:], axis=-1)
  needed = label_mask.sum(-1) + repeats
  infeasible = has_labels & (needed > mask.sum(-1))
  use = has_labels & ~infeasible
  tokens = jnp.sum(jnp.where(use[:, None], label_mask, False)).astype(jnp.float32)
  total = jnp.sum(jnp.where(use, per_seq, 0.0))
  return _safe_mean(total, tokens), tokens, infeasible.sum().astype(jnp.float32)


def moe_aux_loss(aux: MoeAux, cfg: Mapping) -> jax.Array:
  """The weighted sum of one MoeAux's auxiliary losses."""
  return (
    cfg["load_balance"] * aux.load_balance_loss
    + cfg["router_z"] * aux.router_z_loss
    + cfg["lid_alignment"] * aux.lid_alignment_loss
  )


def lid_logits_with_prior(out, log_prior) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(frame, LID-CTC, utterance) LID logits with `lid_log_prior` added (blank: none)."""
  frame, ctc, utt = out.frame_lid_logits, out.lid_ctc_logits, out.utt_lid_logits
  if not log_prior:
    return frame, ctc, utt
  if len(log_prior) != frame.shape[-1]:
    raise ValueError(
      f"train.loss.lid_log_prior has {len(log_prior)} entries for {frame.shape[-1]} languages"
    )
  prior = jnp.asarray(log_prior, jnp.float32)
  return frame + prior, ctc.at[..., 1:].add(prior), utt + prior


@jax.named_scope("losses")
def _task_terms(
  out: MoeAsrOutput,
  batch: Mapping[str, jax.Array],
  example_mask: jax.Array,
  token_mask: jax.Array,
  metrics: dict[str, jax.Array],
) -> tuple[jax.Array, jax.Array]:
  """The task heads' terms of `joint_loss`: (task, task_hyp); their metrics go into `metrics`."""
  if out.intent_log_probs is not None:
    intent_labels = jnp.where(example_mask, batch["intent"], -1)
    intent, _ = task_heads.intent_loss(out.intent_log_probs, intent_labels)
    slots, _ = task_heads.slot_loss(out.slot_log_probs, batch["slot_tags"], token_mask)
    labelled = intent_labels >= 0
    hit = (out.intent_log_probs.argmax(-1) == intent_labels) & labelled
    metrics.update(
      intent=intent,
      slots=slots,
      intent_acc=_safe_mean(hit.sum(), labelled.sum()),
    )
    task = intent + slots
  else:
    task = jnp.zeros((), jnp.float32)
  metrics["task"] = task
  task_hyp = jnp.zeros((), jnp.float32)
  if out.hyp_intent_log_probs is not None:
    intent_labels = jnp.where(example_mask, batch["intent"], -1)
    task_hyp, _ = task_heads.intent_loss(out.hyp_intent_log_probs, intent_labels)
    labelled = intent_labels >= 0
    hit = (out.hyp_intent_log_probs.argmax(-1) == intent_labels) & labelled
    metrics["hyp_intent_acc"] = _safe_mean(hit.sum(), labelled.sum())
  metrics["task_hyp"] = task_hyp
  return task, task_hyp


def joint_loss(
  out: MoeAsrOutput,
  batch: Mapping[str, jax.Array],
  cfg: Mapping,
  step: jax.Array | int = 0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The joint training loss of one batch and what to log about it.

  Args:
    out: the model's output on `batch`.
    batch: a pipeline batch (`tokens`, `token_mask`, `example_mask`, `lang_runs`,
      `language`, `intent`, `slot_tags`).
    cfg: the loss config (`loss_config()`).
    step: the optimizer step (for weight warm-ups).

  Returns:
    (scalar float32 loss, metrics): the metrics hold each term's unweighted
    value, its weight, attention token accuracy and counts.
  """
  example_mask = batch["example_mask"]
  token_mask = batch["token_mask"] & example_mask[:, None]
  tokens = batch["tokens"]
  metrics: dict[str, jax.Array] = {}

  ctc, ctc_tokens, infeasible = ctc_loss(
    out.ctc_logits, out.ctc_mask, tokens, token_mask, example_mask
  )
  metrics.update(ctc=ctc, tokens=ctc_tokens, ctc_infeasible=infeasible)
  inter_ctc = jnp.zeros((), jnp.float32)
  for logits in out.inter_ctc_logits:
    inter_ctc += ctc_loss(logits, out.ctc_mask, tokens, token_mask, example_mask)[0]
  inter_ctc /= max(len(out.inter_ctc_logits), 1)
  metrics["inter_ctc"] = inter_ctc
  phone_ctc = jnp.zeros((), jnp.float32)
  if out.phone_ctc_logits and "phones" in batch:
    # Rows without phones (a dataset or language without G2P) supervise nothing here.
    has_phones = example_mask & batch["phone_mask"].any(-1)
    phone_mask = batch["phone_mask"] & has_phones[:, None]
    for logits in out.phone_ctc_logits:
      phone_ctc += ctc_loss(logits, out.enc_mask, batch["phones"], phone_mask, has_phones)[0]
    phone_ctc /= len(out.phone_ctc_logits)
  metrics["phone_ctc"] = phone_ctc

  if out.decoder_logits is not None:
    # The decoder predicts the tokens, then eos. A row without a transcript (task labels
    # only) has no target here: its lone eos is not one (CTC skips it as it has no tokens).
    has_text = token_mask.any(-1) & example_mask
    labels, label_mask = out.decoder_labels, out.decoder_mask & has_text[:, None]
    att, _ = decoder_lib.attention_loss(
      out.decoder_logits, labels, label_mask, cfg.get("label_smoothing", 0.0)
    )
    correct = (out.decoder_logits.argmax(-1) == labels) & label_mask
    metrics["att_acc"] = _safe_mean(correct.sum(), label_mask.sum()).astype(jnp.float32)
  else:
    att = jnp.zeros((), jnp.float32)
  metrics["att"] = att

  utt_labels = jnp.where(example_mask, batch["language"], -1)
  frame_logits, lid_ctc_logits, utt_logits = lid_logits_with_prior(out, cfg.get("lid_log_prior"))
  frame_lid, _ = lid.lid_loss(
    frame_logits,
    lid_ctc_logits,
    utt_logits,
    out.enc_mask,
    out.frame_lang,
    batch["lang_runs"],
    utt_labels,
  )
  # The utterance head is trained on every utterance with a language label,
  # also where frame targets supervise the frame head.
  utt_lid, _ = lid.utterance_lid_loss(utt_logits, utt_labels)
  metrics.update(lid_frame=frame_lid, lid_utt=utt_lid, lid=frame_lid + utt_lid)
  utt_pred = out.utt_lid_logits.argmax(-1)
  known = utt_labels >= 0
  metrics["lid_acc"] = _safe_mean(((utt_pred == utt_labels) & known).sum(), known.sum())

  task, task_hyp = _task_terms(out, batch, example_mask, token_mask, metrics)

  aux = moe_aux_loss(out.encoder_moe, cfg) + moe_aux_loss(out.decoder_moe, cfg)
  metrics.update(
    aux=aux,
    enc_load_balance=out.encoder_moe.load_balance_loss,
    enc_router_z=out.encoder_moe.router_z_loss,
    enc_lid_alignment=out.encoder_moe.lid_alignment_loss,
    dec_load_balance=out.decoder_moe.load_balance_loss,
  )

  values = {
    "ctc": ctc,
    "inter_ctc": inter_ctc,
    "phone_ctc": phone_ctc,
    "att": att,
    "lid": frame_lid + utt_lid,
    "task": task,
    "task_hyp": task_hyp,
    "aux": aux,
  }
  loss = jnp.zeros((), jnp.float32)
  for name in TERMS:
    w = term_weight(cfg, name, step)
    metrics[f"w_{name}"] = w
    loss = loss + w * values[name]
  metrics["loss"] = loss
  metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
  return loss, metrics
