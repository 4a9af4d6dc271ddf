"""Tiny model for tests: a few hundred thousand parameters."""

from moe_asr.configs.models.common import model_config


def get_config():
  m = model_config(
    d_model=32,
    num_heads=2,
    d_ff=64,
    encoder_layers=4,
    lid_layer=1,
    encoder_moe_layers=(2, 3),
    decoder_layers=2,
    decoder_moe_layers=(1,),
    num_experts=4,
    decoder_num_experts=4,
    conv_kernel=7,
    dropout=0.0,
    lm_layers=1,
  )
  m.decoder.max_len = 64
  m.lm.max_len = 64
  return m
