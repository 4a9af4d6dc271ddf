"""Small model: a single GPU or a small TPU slice."""

from moe_asr.configs.models.common import model_config


def get_config():
  m = model_config(
    d_model=256,
    num_heads=4,
    d_ff=1024,
    encoder_layers=12,
    lid_layer=4,
    encoder_moe_layers=(8, 9, 10, 11),
    decoder_layers=4,
    decoder_moe_layers=(1, 3),
    num_experts=8,
    decoder_num_experts=8,
    conv_kernel=31,
    dropout=0.1,
    lm_layers=4,
  )
  m.dtype = "bfloat16"
  return m
