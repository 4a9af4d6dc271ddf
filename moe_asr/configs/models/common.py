"""The model config contract shared by every preset (`config.model`).

A preset module (`moe_asr/configs/models/<size>.py`) calls `model_config(...)` with its
sizes; experiment configs take `config.model` from a preset. Commonly
overridden: `encoder.num_layers`, `encoder.moe_layers`, `*.num_experts`,
`*.router`, `task.stop_gradient` (cascade baseline), `dtype`.
"""

import ml_collections


def model_config(
  *,
  d_model: int,
  num_heads: int,
  d_ff: int,
  encoder_layers: int,
  lid_layer: int,
  encoder_moe_layers: tuple[int, ...],
  decoder_layers: int,
  decoder_moe_layers: tuple[int, ...],
  num_experts: int,
  decoder_num_experts: int,
  conv_kernel: int = 15,
  dropout: float = 0.1,
  lm_layers: int = 2,
) -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.dtype = "float32"  # Compute dtype: "float32" or "bfloat16" (params stay float32).
  m.num_languages = 7  # Size of the language axis (moe_asr.data.languages order).

  m.features = ml_collections.ConfigDict(
    dict(num_mel_bins=80, frame_length_ms=25.0, frame_shift_ms=10.0)  # Log-mel on device.
  )
  m.specaug = ml_collections.ConfigDict(
    dict(
      num_freq_masks=2,
      max_freq_width=27,
      num_time_masks=5,
      max_time_width=40,
      max_time_width_ratio=0.05,
    )  # SpecAugment, training only.
  )

  e = m.encoder = ml_collections.ConfigDict()
  e.d_model = d_model  # Model width.
  e.num_heads = num_heads  # Self-attention heads.
  e.d_ff = d_ff  # Feed-forward (and per-expert) hidden width.
  e.num_layers = encoder_layers  # Conformer blocks.
  e.conv_kernel = conv_kernel  # Depthwise convolution kernel.
  e.dropout = dropout
  e.lid_layer = lid_layer  # Block after which the frame LID head reads (conditions the rest).
  e.moe_layers = encoder_moe_layers  # Blocks whose FFNs are routed experts (the upper ones).
  e.num_experts = num_experts
  e.router = "hybrid"  # "language" | "learned" | "hybrid".
  e.top_k = 2  # Experts per token for learned / hybrid routers.
  # The expert of each language for the language and hybrid routers: "modulo" (language l ->
  # expert l % num_experts, the map of runs trained before this setting), "pairs" (the two
  # languages of each code-switch pair on different experts) or one expert id per language
  # (a tuple; in a command-line override a string, `expert_map="0 1 2 3 1 2 0"`). See `moe`.
  e.expert_map = ml_collections.FieldReference("modulo", field_type=object)
  e.capacity_factor = None  # None = dropless.
  e.shared_expert = False  # An always-on expert beside the routed ones.
  # The experts' grouped matmul: "blocks" (loops over padded row blocks; fastest on XLA:CPU),
  # "ragged" (`jax.lax.ragged_dot`; the demo's whole training step 2.4x faster on an H200)
  # or "auto" (ragged on GPUs, blocks elsewhere). See `moe`.
  e.grouped_matmul = "auto"
  # Most rows per block of "blocks" (fewer for few tokens). On an H100, at 65536 tokens, d_model
  # 1024, top 2 of 8 experts, 1024-row blocks ran 2.3x faster than 256 (forward + backward).
  e.moe_block_size = 256
  # The block the utterance LID reads (negative: from the top); None = lid_layer.
  e.utt_lid_layer = None
  e.conditioning = "film"  # LID conditioning of upper blocks: "none" | "add" | "film".
  e.num_languages = m.get_ref("num_languages")
  e.num_mel_bins = 80
  # Channels of the two stride-2 subsampling convolutions (0 = d_model, as ESPnet's
  # Conv2dSubsampling; NeMo's subsampling_conv_channels). The second one runs at 1/4 of the
  # frame rate on a 2-D grid, so its cost grows with the square of this.
  e.subsampling_channels = 0

  # CTC frames per encoder frame (1: the encoder rate, 25 Hz). 2 lets the CTC head emit up to
  # one token per 20 ms, for character tokens of fast speech (`MoeAsr.ctc_upsample`).
  m.ctc_upsample = 1
  # ((start, stop, language), ...): token ids only that language spells, their CTC logits
  # gated by its frame LID posterior (`moe-asr transfer` sets it for a new script).
  m.token_languages = ()
  # Intermediate CTC: encoder blocks (0-based, below the last) whose outputs the CTC head
  # also reads, each with its own CTC loss (weight `train.loss.inter_ctc`); self_condition
  # adds a projection of their posteriors to the next block's input (self-conditioned CTC).
  m.inter_ctc = ml_collections.ConfigDict(dict(layers=(), self_condition=True))
  # Phone CTC: encoder blocks whose outputs a CTC head over the dataset's shared phone
  # inventory reads (G2P of the transcripts; weight `train.loss.phone_ctc`); vocab_size is
  # the head's outputs (>= the inventory's ids; room for the phones of new languages).
  m.phone_ctc = ml_collections.ConfigDict(dict(layers=(), vocab_size=256))

  d = m.decoder = ml_collections.ConfigDict()
  d.d_model = d_model
  d.num_heads = num_heads
  d.d_ff = d_ff
  d.num_layers = decoder_layers  # 0 disables the attention decoder (CTC only).
  d.dropout = dropout
  d.max_len = 128  # Longest token sequence (positions, KV cache).
  d.moe_layers = decoder_moe_layers
  d.num_experts = decoder_num_experts
  d.router = "language"  # Tokens go to the expert of their language (LID context at inference).
  d.top_k = 1
  d.expert_map = ml_collections.FieldReference("modulo", field_type=object)  # As the encoder's.
  d.capacity_factor = None
  d.shared_expert = True
  d.grouped_matmul = m.encoder.get_ref("grouped_matmul")
  d.moe_block_size = m.encoder.get_ref("moe_block_size")
  d.num_languages = m.get_ref("num_languages")

  m.task = _task_config(d_model, num_heads, d_ff, dropout, m.get_ref("num_languages"))

  lm = m.lm = ml_collections.ConfigDict()  # Text LM for fusion and rescoring.
  lm.d_model = d_model
  lm.num_heads = num_heads
  lm.d_ff = d_ff
  lm.num_layers = lm_layers
  lm.dropout = dropout
  lm.max_len = 128
  return m


def _task_config(d_model, num_heads, d_ff, dropout, num_languages) -> ml_collections.ConfigDict:
  """The task heads' section (intent, slots) of `model_config`."""
  t = ml_collections.ConfigDict()
  t.d_model = d_model
  t.num_heads = num_heads
  t.num_queries = 2  # Learned queries of the attention-pooling bridge.
  t.token_layers = 0  # Bidirectional layers over the bridge's token states (see task_heads).
  t.d_ff = d_ff  # Their hidden width.
  t.dropout = dropout
  # Slots tagged per word (pooled token states, bidirectional layers over the words with
  # attention to the audio, one BIO tag a word) or per token ("token": a linear head on each
  # causal decoder state, the earlier design).
  t.slot_tagger = "word"
  t.word_layers = 2  # Layers of the word tagger.
  t.word_token_embedding = True  # The word tagger also embeds the tokens (word identity).
  t.word_hash_buckets = 0  # > 0: the word tagger also embeds whole words by hash.
  t.stop_gradient = False  # True: the cascade baseline (task loss does not train the ASR).
  t.num_languages = num_languages
  return t
