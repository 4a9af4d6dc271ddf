"""MoeAsr: the whole model (docs/design.md §5), composed from its parts.

```
wave -> log-mel -> SpecAugment -> Conformer (shared; frame LID mid-encoder;
        LID-conditioned upper blocks with routed experts) -> CTC head
     -> attention decoder (routed-expert FFNs per token)
     -> bridge (attention pooling over decoder + encoder states)
     -> per-language intent + slot heads, mixed by the utterance LID posteriors
```

`MoeAsr.__call__(batch)` takes a pipeline batch (`moe_asr.data.pipeline`) and
returns one `MoeAsrOutput`; the losses live in `training/losses.py`.
"""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from moe_asr.data import features as features_lib
from moe_asr.data import languages as langs_lib
from moe_asr.models import conformer, greedy, layers, lid, partitioning, task_heads, tracing
from moe_asr.models import decoder as decoder_lib
from moe_asr.models.moe import MoeAux

# The smallest gate of a language-gated token (`token_languages`): log 1e-6 = -13.8 nats.
_MIN_GATE = 1e-6


def token_language_ranges(ranges, vocab_size: int, num_languages: int) -> tuple:
  """`model.token_languages` checked: ((start, stop, language index), ...)."""
  out = []
  for entry in ranges:
    if len(entry) != 3:
      raise ValueError(f"model.token_languages entries are (start, stop, language), got {entry!r}")
    start, stop, code = int(entry[0]), int(entry[1]), str(entry[2])
    if not 0 <= start < stop <= vocab_size:
      raise ValueError(
        f"model.token_languages {entry!r}: ids [{start}, {stop}) outside the vocabulary of "
        f"{vocab_size}"
      )
    index = langs_lib.language_index(code)
    if index >= num_languages:
      raise ValueError(
        f"model.token_languages {entry!r}: {code!r} has no LID class among {num_languages}"
      )
    out.append((start, stop, index))
  return tuple(out)


@flax.struct.dataclass
class MoeAsrOutput:
  """Everything the losses, decoding and evaluation read."""

  ctc_logits: jax.Array  # [batch, frames * ctc_upsample, vocab] float32
  ctc_mask: jax.Array  # [batch, frames * ctc_upsample] bool
  enc_mask: jax.Array  # [batch, frames] bool
  enc_states: jax.Array  # [batch, frames, d_model]
  decoder_logits: jax.Array | None  # [batch, tokens + 1, vocab] float32 (None without a decoder)
  decoder_states: jax.Array | None  # [batch, tokens + 1, d_model]
  decoder_labels: jax.Array | None  # [batch, tokens + 1] int: the tokens, then eos
  decoder_mask: jax.Array | None  # [batch, tokens + 1] bool
  token_mask: jax.Array  # [batch, tokens] bool (labels)
  frame_lid_logits: jax.Array  # [batch, frames, languages]
  lid_ctc_logits: jax.Array  # [batch, frames, languages + 1] (blank = 0)
  utt_lid_logits: jax.Array  # [batch, languages]
  lid_probs: jax.Array  # [batch, frames, languages]: what conditioned the upper encoder
  frame_lang: jax.Array  # [batch, frames] int: frame language targets at encoder rate (-1 unknown)
  intent_log_probs: jax.Array | None  # [batch, intents]
  slot_log_probs: jax.Array | None  # [batch, tokens, slot tags]
  encoder_moe: MoeAux
  decoder_moe: MoeAux
  encoder_expert_load: jax.Array  # [encoder MoE layers, experts]
  decoder_expert_load: jax.Array  # [decoder MoE layers, experts]
  # [batch, intents]: the task heads on the greedy CTC hypothesis (`hypothesis_task`).
  hyp_intent_log_probs: jax.Array | None = None
  # Intermediate CTC logits, one [batch, frames * ctc_upsample, vocab] per `inter_ctc.layers`.
  inter_ctc_logits: tuple = ()
  # Phone CTC logits, one [batch, frames, phone vocab] per `phone_ctc.layers`.
  phone_ctc_logits: tuple = ()


@flax.struct.dataclass
class Encoded:
  """What `MoeAsr.encode` computes once per utterance (decoding reuses it)."""

  enc: conformer.EncoderOutput
  ctc_logits: jax.Array  # [batch, frames * ctc_upsample, vocab] float32
  ctc_mask: jax.Array  # [batch, frames * ctc_upsample] bool: valid CTC frames
  frame_lang: jax.Array  # [batch, frames] frame language targets at encoder rate (-1 unknown)
  utt_probs: jax.Array  # [batch, languages] utterance LID posterior
  inter_ctc_logits: tuple = ()  # Intermediate CTC logits per `inter_ctc.layers`.
  phone_ctc_logits: tuple = ()  # Phone CTC logits per `phone_ctc.layers` (encoder rate).


def module_config(cfg: ml_collections.ConfigDict, **extra) -> ml_collections.ConfigDict:
  out = ml_collections.ConfigDict(cfg.to_dict())
  for k, v in extra.items():
    out[k] = v
  return out


def with_eos(tokens: jax.Array, mask: jax.Array, eos_id: int) -> tuple[jax.Array, jax.Array]:
  """Decoder labels: `tokens` with eos after the last valid one.

  Args:
    tokens: int [B, L], left-aligned.
    mask: bool [B, L].
    eos_id: the end token.

  Returns:
    (labels int [B, L + 1], mask bool [B, L + 1]).
  """
  lengths = mask.sum(-1, keepdims=True)
  positions = jnp.arange(tokens.shape[1] + 1)[None, :]
  labels = jnp.pad(jnp.where(mask, tokens, 0), ((0, 0), (0, 1)))
  labels = jnp.where(positions == lengths, eos_id, labels).astype(tokens.dtype)
  return labels, positions <= lengths


class MoeAsr(nnx.Module):
  """The multilingual, code-switching ASR model with task heads."""

  @tracing.quiet_tracer_origins()  # Linear, not quadratic, in the draws when traced.
  def __init__(
    self,
    cfg: ml_collections.ConfigDict,
    *,
    vocab_size: int,
    num_intents: int,
    num_slot_tags: int,
    bos_id: int = 2,
    eos_id: int = 3,
    rngs: nnx.Rngs,
  ):
    """Builds the model from `config.model` (contract in moe_asr/configs/models/common.py).

    Args:
      cfg: the model config.
      vocab_size: tokenizer vocabulary size (CTC blank = pad = 0).
      num_intents: intent classes (0 disables the task heads).
      num_slot_tags: BIO slot tags.
      bos_id: decoder start token.
      eos_id: decoder end token (appended to every label sequence).
      rngs: `nnx.Rngs` with `params`, `dropout`, `specaug` and `condition` streams.
    """
    self.dtype = layers.DTYPES[cfg.dtype]
    self.bos_id = bos_id
    self.eos_id = eos_id
    self.vocab_size = vocab_size
    self.feature_cfg = features_lib.FeatureConfig.from_config(cfg.features)
    self.specaug_cfg = features_lib.SpecAugmentConfig.from_config(cfg.specaug)
    self.rngs = rngs
    # Toggled by `model.train()` / `model.eval()` (like nnx.Dropout): SpecAugment
    # runs only in training.
    self.deterministic = False
    self.encoder = conformer.ConformerEncoder.from_config(
      module_config(cfg.encoder, dtype=cfg.dtype, num_mel_bins=self.feature_cfg.num_mel_bins),
      rngs=rngs,
    )
    d_model = cfg.encoder.d_model
    # CTC frames per encoder frame. Above 1, a Linear maps each encoder frame to that many
    # vectors, each read by the CTC head: CTC then needs at most one token per CTC frame
    # (plus a blank between repeats), not per 40 ms encoder frame, which fast speech in
    # a spelling-heavy language exceeds (as the output upsampling of non-autoregressive
    # CTC translation models). The encoder, LID and decoder stay at the encoder rate.
    self.ctc_upsample = int(cfg.get("ctc_upsample", 1))
    if self.ctc_upsample < 1:
      raise ValueError(f"model.ctc_upsample={self.ctc_upsample}; expected an integer >= 1")
    upsampler = None
    if self.ctc_upsample > 1:
      upsampler = partitioning.dense(
        d_model, self.ctc_upsample * d_model, ("embed", "mlp"), rngs=rngs, dtype=self.dtype
      )
    self.ctc_upsampler = nnx.data(upsampler)
    self.ctc_head = partitioning.dense(
      d_model, vocab_size, ("embed", "vocab"), rngs=rngs, dtype=self.dtype
    )
    # Token ids spelled in one language only, ((start, stop, language code), ...), as a
    # transfer to a language of a new script adds: their CTC logits (final and intermediate)
    # get log p(language | frame) of the LID that conditions the upper encoder added, so
    # frames of other languages do not emit them (a gated output vocabulary).
    self.token_languages = token_language_ranges(
      cfg.get("token_languages", ()), vocab_size, cfg.num_languages
    )
    # Intermediate CTC (ESPnet's interctc; Lee & Watanabe, 2021): the CTC head (shared)
    # also reads the outputs of these encoder blocks, each with its own CTC loss
    # (`train.loss.inter_ctc`). With self_condition (Nozaki & Komatsu, 2021) the next
    # block reads x + Linear(CTC posteriors), so the upper blocks refine an explicit
    # transcript hypothesis, which they see also at inference.
    inter = cfg.get("inter_ctc") or ml_collections.ConfigDict({"layers": ()})
    self.inter_ctc_layers = tuple(sorted({int(i) for i in inter.layers}))
    last = cfg.encoder.num_layers - 1
    if any(not 0 <= i < last for i in self.inter_ctc_layers):
      raise ValueError(
        f"model.inter_ctc.layers={tuple(inter.layers)}: blocks in [0, {last}) (block {last}'s"
        " output is what the CTC head reads anyway)"
      )
    conditioner = None
    if self.inter_ctc_layers and inter.get("self_condition", False):
      conditioner = partitioning.dense(
        vocab_size, d_model, ("vocab", "embed"), rngs=rngs, dtype=self.dtype
      )
    self.inter_ctc_conditioner = nnx.data(conditioner)
    # Phone CTC: a CTC head over one phone inventory shared by every language
    # (`moe_asr.data.phonemes`, G2P of the transcripts) on these encoder blocks, at the
    # encoder rate. A target that every language shares and that follows the sound more
    # closely than spelling does, for the lower blocks (as phonetic intermediate targets in
    # multilingual CTC; e.g. Zhang et al. 2021, "Phone-to-word" / Xu et al. 2021). The head
    # has `vocab_size` outputs, at least the inventory's size, so a grown inventory (a new
    # language) keeps its shape.
    phone = cfg.get("phone_ctc") or ml_collections.ConfigDict({"layers": ()})
    self.phone_ctc_layers = tuple(sorted({int(i) for i in phone.layers}))
    if any(not 0 <= i < cfg.encoder.num_layers for i in self.phone_ctc_layers):
      raise ValueError(
        f"model.phone_ctc.layers={tuple(phone.layers)}: blocks in [0, {cfg.encoder.num_layers})"
      )
    phone_head = None
    if self.phone_ctc_layers:
      phone_head = partitioning.dense(
        d_model, int(phone.vocab_size), ("embed", "vocab"), rngs=rngs, dtype=self.dtype
      )
    self.phone_ctc_head = nnx.data(phone_head)
    decoder = None
    if cfg.decoder.num_layers > 0:
      decoder = decoder_lib.TransformerDecoder.from_config(
        module_config(cfg.decoder, dtype=cfg.dtype, vocab_size=vocab_size), rngs=rngs
      )
    self.decoder = nnx.data(decoder)  # None for a CTC-only model.
    heads = None
    if num_intents > 0 and decoder is not None:
      heads = task_heads.TaskHeads.from_config(
        module_config(
          cfg.task,
          dtype=cfg.dtype,
          num_intents=num_intents,
          num_slot_tags=num_slot_tags,
          max_words=cfg.decoder.max_len,
          vocab_size=vocab_size,
        ),
        rngs=rngs,
      )
    self.task_heads = nnx.data(heads)  # None without intents (a corpus with no task labels).
    self.stop_task_gradient = cfg.task.stop_gradient

  def encode(self, batch: dict[str, jax.Array], *, oracle_mix: float | jax.Array = 0.0) -> Encoded:
    """Runs features, the encoder, the CTC head and utterance LID.

    Args:
      batch: `audio` [B,S] int16 (or float), `audio_mask` [B,S] and `frame_lang` [B,F]
        (10 ms frames; -1 unknown; only read when `oracle_mix > 0` and for targets).
      oracle_mix: probability per utterance of conditioning the upper encoder on
        oracle (frame-target) language posteriors instead of predicted ones.
    """
    feats, frame_mask = features_lib.log_mel(batch["audio"], batch["audio_mask"], self.feature_cfg)
    feats = features_lib.normalize_features(feats, frame_mask)
    if not self.deterministic:
      feats = features_lib.spec_augment(self.rngs.specaug(), feats, frame_mask, self.specaug_cfg)

    num_languages = self.encoder.num_languages
    enc_frames = conformer.subsampled_lengths(np.asarray(feats.shape[1]))  # Static.
    frame_lang = batch.get("frame_lang")
    if frame_lang is None:
      frame_lang = jnp.full(feats.shape[:2], -1, jnp.int32)
    frame_lang = conformer.subsample_frame_targets(frame_lang[:, : feats.shape[1]], int(enc_frames))
    oracle = lid.oracle_lang_probs(frame_lang, frame_lang >= 0, num_languages)
    taps = {
      i: functools.partial(self._tap, block=i)
      for i in (*self.inter_ctc_layers, *self.phone_ctc_layers)
    }
    enc = self.encoder(
      feats, frame_mask, oracle_lang_probs=oracle, oracle_mix=oracle_mix, intermediate=taps
    )
    blocks = sorted(taps)  # The encoder returns the taps in block order.
    outputs = dict(zip(blocks, enc.intermediate, strict=True))
    return Encoded(
      enc=enc,
      ctc_logits=self._ctc_logits(enc.x, enc.lid_probs),
      ctc_mask=jnp.repeat(enc.mask, self.ctc_upsample, axis=1),
      frame_lang=jnp.where(enc.mask, frame_lang, -1),
      utt_probs=jax.nn.softmax(enc.utt_lid_logits.astype(jnp.float32), axis=-1),
      inter_ctc_logits=tuple(outputs[i]["ctc"] for i in self.inter_ctc_layers),
      phone_ctc_logits=tuple(outputs[i]["phones"] for i in self.phone_ctc_layers),
    )

  def _ctc_logits(self, x: jax.Array, lang_probs: jax.Array | None = None) -> jax.Array:
    """CTC logits, float32 [batch, frames * ctc_upsample, vocab], of encoder states x; the
    ranges of `token_languages` gated by `lang_probs` [batch, frames, L] where given."""
    if self.ctc_upsampler is not None:
      batch_size, frames, width = x.shape
      x = self.ctc_upsampler(x).reshape(batch_size, frames * self.ctc_upsample, width)
    logits = self.ctc_head(x).astype(jnp.float32)
    if self.token_languages and lang_probs is not None:
      probs = jax.lax.stop_gradient(lang_probs).astype(jnp.float32)
      log_gate = jnp.log(jnp.maximum(probs, _MIN_GATE))  # [batch, frames, L]
      log_gate = jnp.repeat(log_gate, self.ctc_upsample, axis=1)
      for start, stop, language in self.token_languages:
        logits = logits.at[..., start:stop].add(log_gate[..., language, None])
    return logits

  def _tap(self, x: jax.Array, mask: jax.Array, lang_probs: jax.Array | None, *, block: int):
    """An encoder tap: ({"phones": phone CTC logits, "ctc": intermediate CTC logits} as
    configured for the block, what the next block reads). Phones read the block's output
    before self-conditioning changes it."""
    out = {}
    if block in self.phone_ctc_layers:
      out["phones"] = self.phone_ctc_head(x).astype(jnp.float32)
    if block in self.inter_ctc_layers:
      out["ctc"], x = self._inter_ctc(x, mask, lang_probs)
    return out, x

  def _inter_ctc(
    self, x: jax.Array, mask: jax.Array, lang_probs: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array]:
    """An intermediate CTC tap: (its logits, what the next encoder block reads)."""
    logits = self._ctc_logits(x, lang_probs)
    if self.inter_ctc_conditioner is not None:
      probs = jax.nn.softmax(logits, axis=-1)
      batch_size, frames, _ = x.shape
      # Upsampled CTC frames: the mean posterior of each encoder frame's CTC frames.
      probs = probs.reshape(batch_size, frames, self.ctc_upsample, -1).mean(2)
      update = self.inter_ctc_conditioner(probs.astype(self.dtype)).astype(x.dtype)
      x = jnp.where(mask[..., None], x + update, x)
    return logits, x

  def decode_tokens(
    self,
    encoded: Encoded,
    tokens: jax.Array,
    token_mask: jax.Array,
    token_lang: jax.Array | None = None,
    token_word: jax.Array | None = None,
    with_slots: bool = True,
  ):
    """Runs the attention decoder (teacher forcing) and the task heads on `tokens`.

    The decoder reads bos + tokens and predicts tokens + eos, so its outputs have
    one more position than `tokens`; the task heads read the last `L` states, the
    state of token i being the one that has read it (and all before it).

    Args:
      encoded: `encode`'s output.
      tokens: int [B, L] label (training) or hypothesis (inference) tokens, no eos.
      token_mask: bool [B, L], left-aligned.
      token_lang: int [B, L] known language of each token (-1 unknown) routes
        decoder tokens to their language's expert; None (inference) routes every
        token by the LID context.
      token_word: int [B, L] word of each token (-1 none): the pipeline's `token_word`
        for references, `task_heads.word_index` of hypotheses; read by the word-level
        slot tagger (None: each token is a word).
      with_slots: False skips the slot tagger (only the intent is read).

    Returns:
      (DecoderOutput over L + 1 positions, TaskOutput or None); (None, None)
      without a decoder.
    """
    if self.decoder is None:
      return None, None
    num_languages = self.encoder.num_languages
    enc = encoded.enc
    labels, label_mask = with_eos(tokens, token_mask, self.eos_id)
    inputs, input_mask = decoder_lib.shift_right(labels, label_mask, self.bos_id)
    token_lang_probs = None
    if token_lang is not None:
      token_lang = jnp.pad(token_lang, ((0, 0), (0, 1)), constant_values=-1)
      known = (token_lang >= 0)[..., None]
      # Tokens of unknown language (and eos) fall back to the utterance LID posterior.
      token_lang_probs = jnp.where(
        known,
        jax.nn.one_hot(jnp.maximum(token_lang, 0), num_languages),
        encoded.utt_probs[:, None, :],
      )
    dec = self.decoder(
      inputs,
      input_mask,
      enc.x,
      enc.mask,
      token_lang_probs=token_lang_probs,
      enc_lang_probs=enc.lid_probs,
    )
    task = None
    if self.task_heads is not None:
      task = self.task_heads(
        dec.states[:, 1 : tokens.shape[1] + 1],
        token_mask,
        enc.x,
        enc.mask,
        encoded.utt_probs,
        stop_gradient=self.stop_task_gradient,
        token_word=token_word,
        with_slots=with_slots,
        tokens=tokens,
      )
    return dec, task

  def __call__(
    self,
    batch: dict[str, jax.Array],
    *,
    oracle_mix: float | jax.Array = 0.0,
    oracle_token_lang: bool = True,
    hypothesis_task: bool | jax.Array = False,
  ) -> MoeAsrOutput:
    """Runs the model on a pipeline batch.

    Args:
      batch: `audio` [B,S] int16, `audio_mask` [B,S], `tokens` [B,L], `token_mask` [B,L],
        `token_lang` [B,L], `frame_lang` [B,F] (10 ms frames; -1 unknown).
      oracle_mix: probability per utterance of conditioning the upper encoder on
        oracle (frame-target) language posteriors instead of predicted ones.
      oracle_token_lang: route decoder tokens by the known language of the
        token being predicted (teacher forcing) where it is known; otherwise
        by their LID context.
      hypothesis_task: also run the decoder and task heads on the greedy CTC
        hypothesis, as inference does, and return its
        intent posteriors; no gradient flows through the hypothesis itself. A
        traced bool runs that pass only where it is True (uniform posteriors
        elsewhere).

    Returns:
      A `MoeAsrOutput`.
    """
    encoded = self.encode(batch, oracle_mix=oracle_mix)
    enc = encoded.enc
    token_mask = batch["token_mask"]
    dec, task = self.decode_tokens(
      encoded,
      batch["tokens"],
      token_mask,
      batch["token_lang"] if oracle_token_lang else None,
      token_word=batch.get("token_word"),
    )
    hyp_intent = None
    if hypothesis_task is not False and self.task_heads is not None:

      def on_hypothesis(model: MoeAsr, encoded: Encoded) -> jax.Array:
        hyp, lengths, _ = greedy.ctc_greedy(
          jax.lax.stop_gradient(encoded.ctc_logits), encoded.ctc_mask
        )
        # Cut as `decoding.decode` cuts a greedy hypothesis (room for eos).
        max_len = min(hyp.shape[1], model.decoder.max_len - 1)
        _, hyp_task = model.decode_tokens(
          encoded,
          hyp[:, :max_len],
          greedy.token_mask(jnp.minimum(lengths, max_len), max_len),
          with_slots=False,
        )
        return hyp_task.intent_log_probs

      if hypothesis_task is True:
        hyp_intent = on_hypothesis(self, encoded)
      else:
        # Traced: only the taken branch runs (forward and backward), e.g. not before
        # the term's warm-up starts. Skipped, it gives uniform posteriors.
        num_intents = self.task_heads.intent_bias.shape[-1]

        def skipped(model: MoeAsr, encoded: Encoded) -> jax.Array:
          del model
          shape = (encoded.ctc_logits.shape[0], num_intents)
          return jnp.full(shape, -np.log(num_intents), jnp.float32)

        hyp_intent = nnx.cond(
          jnp.asarray(hypothesis_task, bool), on_hypothesis, skipped, self, encoded
        )
    return MoeAsrOutput(
      ctc_logits=encoded.ctc_logits,
      ctc_mask=encoded.ctc_mask,
      enc_mask=enc.mask,
      enc_states=enc.x,
      decoder_logits=None if dec is None else dec.logits,
      decoder_states=None if dec is None else dec.states,
      decoder_labels=None if dec is None else with_eos(batch["tokens"], token_mask, self.eos_id)[0],
      decoder_mask=None if dec is None else with_eos(batch["tokens"], token_mask, self.eos_id)[1],
      token_mask=token_mask,
      frame_lid_logits=enc.frame_lid_logits,
      lid_ctc_logits=enc.lid_ctc_logits,
      utt_lid_logits=enc.utt_lid_logits,
      lid_probs=enc.lid_probs,
      frame_lang=encoded.frame_lang,
      intent_log_probs=None if task is None else task.intent_log_probs,
      slot_log_probs=None if task is None else task.slot_log_probs,
      encoder_moe=enc.moe_aux,
      decoder_moe=MoeAux.zeros(1) if dec is None else dec.moe_aux,
      encoder_expert_load=enc.expert_load,
      decoder_expert_load=jnp.zeros((0, 1), jnp.float32) if dec is None else dec.expert_load,
      hyp_intent_log_probs=hyp_intent,
      inter_ctc_logits=encoded.inter_ctc_logits,
      phone_ctc_logits=encoded.phone_ctc_logits,
    )
