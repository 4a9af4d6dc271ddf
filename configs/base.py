"""The experiment config contract (Flax-examples / big_vision style).

Every experiment config is a python file with `get_config() -> ConfigDict`
built from this one; override fields on the command line with
`--config.a.b=value`.

Required sections:
  model    the model preset (`configs/models/<size>.py`, contract in
           `configs/models/common.py`)
  data     dataset, splits and the input pipeline (length buckets, batch sizes)
  mesh     device mesh axes/shape and the logical-to-mesh axis rules
Commonly overridden: `data.data_dir`, `data.buckets`, `model.encoder.router`,
`model.task.stop_gradient`, `mesh.shape`.
"""

import importlib

import ml_collections

from moe_asr.models import partitioning


def get_config(model: str = "tiny", corpus: str = "tiny"):
  c = ml_collections.ConfigDict()
  c.seed = 0  # Parameter initialisation and dropout.

  c.model = importlib.import_module(f"configs.models.{model}").get_config()
  c.model_preset = model

  d = c.data = ml_collections.ConfigDict()
  d.name = (
    f"moe_asr_synth/{corpus}"  # TFDS dataset of the common schema (or a catalog adapter name).
  )
  d.data_dir = "data"  # TFDS data directory.
  d.config = ""  # Catalog builder config (e.g. "fleurs.hi_in" for xtreme_s).
  d.train_split = "train"
  d.eval_splits = ("validation",)
  # ((max_seconds, global_batch_size), ...): the static shapes of the step.
  d.buckets = ((3.0, 16), (5.0, 8), (8.0, 4), (12.0, 2))
  d.tokens_per_second = 15.0  # Label length per second of bucket audio.
  d.words_per_second = 5.0
  d.long_policy = "skip"  # Utterances beyond the last bucket: "skip" or "cut".
  d.num_threads = 2  # grain reader threads.
  d.prefetch = 4

  m = c.mesh = ml_collections.ConfigDict()
  m.axes = ("data", "fsdp", "expert", "tensor")  # DESIGN §6 mesh axes.
  m.shape = (-1, 1, 1, 1)  # -1 fills with the remaining devices.
  m.rules = partitioning.DEFAULT_RULES  # Logical axis -> mesh axes.
  return c
