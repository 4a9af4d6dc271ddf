"""Demo model: sized for `moe-asr demo`, about 20 minutes of training on a 2-core CPU.

bfloat16 compute (float32 parameters): CPUs with AMX-BF16 or AVX-512 BF16 run bf16
matmuls faster than float32 (`benchmarks/train_step.py` measures both).
"""

from moe_asr.configs.models.common import model_config


def get_config():
  m = model_config(
    d_model=144,
    num_heads=4,
    d_ff=576,
    encoder_layers=6,
    lid_layer=2,
    encoder_moe_layers=(4, 5),
    decoder_layers=1,
    decoder_moe_layers=(0,),
    num_experts=4,
    decoder_num_experts=6,
    conv_kernel=15,
    dropout=0.05,
  )
  # No dropout and no SpecAugment in the recogniser: a few passes over the data are too few.
  m.encoder.dropout = 0.0
  m.decoder.dropout = 0.0
  m.specaug.num_time_masks = 0
  m.specaug.num_freq_masks = 0
  m.dtype = "bfloat16"
  # 4 experts: "modulo" would put English and Hindi, a code-switch pair, on expert 0.
  m.encoder.expert_map = "pairs"
  m.decoder.max_len = 96  # Character tokens: up to 88 in a 4 s bucket.
  return m
