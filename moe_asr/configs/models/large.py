"""Large model: a TPU-pod preset, several hundred million parameters with experts."""

from moe_asr.configs.models.common import model_config


def get_config():
  m = model_config(
    d_model=768,
    num_heads=12,
    d_ff=3072,
    encoder_layers=18,
    lid_layer=6,
    encoder_moe_layers=(12, 13, 14, 15, 16, 17),
    decoder_layers=6,
    decoder_moe_layers=(1, 3, 5),
    num_experts=8,
    decoder_num_experts=4,
    conv_kernel=31,
    dropout=0.1,
    lm_layers=12,
  )
  m.dtype = "bfloat16"
  m.decoder.max_len = 256
  m.lm.max_len = 256
  return m
