"""Demo model: trains to a useful model on a 2-core CPU in about 15 minutes."""

from configs.models.common import model_config


def get_config():
  return model_config(
    d_model=144,
    num_heads=4,
    d_ff=576,
    encoder_layers=8,
    lid_layer=3,
    encoder_moe_layers=(5, 6, 7),
    decoder_layers=2,
    decoder_moe_layers=(1,),
    num_experts=6,
    decoder_num_experts=6,
    conv_kernel=15,
    dropout=0.1,
  )
