"""The experiment config contract (Flax-examples / big_vision style).

Every experiment config is a python file with `get_config() -> ConfigDict`
built from this one; override fields on the command line with
`--config.a.b=value`.

Required sections:
  model    the model preset (`moe_asr/configs/models/<size>.py`, contract in
           `moe_asr/configs/models/common.py`)
  data     dataset, splits and the input pipeline (length buckets, batch sizes)
  mesh     device mesh axes/shape and the logical-to-mesh axis rules
  train    steps, optimizer, joint-loss weights, logging/eval/checkpoint intervals
  eval     splits and settings of `moe-asr eval`
Optional: `resume` (continue another run's checkpoints: state and data
position), `init_from` (start from another run's parameters: a staged recipe).
Commonly overridden: `data.data_dir`, `data.buckets`, `train.steps`,
`train.loss.task`, `model.encoder.router`, `model.task.stop_gradient`,
`mesh.shape`.

  moe-asr train --config tiny --workdir W --config.train.steps=200
"""

import importlib

import ml_collections

from moe_asr.decoding import decode
from moe_asr.models import partitioning
from moe_asr.training import losses


def get_config(model: str = "tiny", corpus: str = "tiny"):
  c = ml_collections.ConfigDict()
  c.seed = 0  # Parameter initialisation and dropout.

  c.model = importlib.import_module(f"moe_asr.configs.models.{model}").get_config()
  c.model_preset = model

  d = c.data = ml_collections.ConfigDict()
  d.name = (
    f"moe_asr_synth/{corpus}"  # TFDS dataset of the common schema (or a catalog adapter name).
  )
  d.data_dir = "data"  # TFDS data directory.
  d.config = ""  # Catalog builder config (e.g. "fleurs.hi_in" for xtreme_s).
  # SentencePiece model file of the run ("": the tokenizer built with the corpus, or one
  # trained on the train split and kept in the workdir for other datasets).
  d.tokenizer = ""
  # Pieces of a tokenizer trained on the train split for this run and kept in the workdir
  # (W/tokenizer.model); 0: the corpus's own tokenizer (synth corpora), else 1000 pieces.
  d.vocab_size = 0
  d.character_coverage = 0.9995  # Of that tokenizer; characters beyond it become bytes.
  d.train_split = "train"
  d.eval_splits = ("validation",)
  # ((max_seconds, global_batch_size), ...): the static shapes of the step.
  d.buckets = ((3.0, 16), (5.0, 8), (8.0, 4), (12.0, 2))
  d.tokens_per_second = 15.0  # Label length per second of bucket audio.
  d.words_per_second = 5.0
  d.long_policy = "skip"  # Utterances beyond the last bucket: "skip" or "cut".
  d.num_threads = 2  # grain reader threads.
  d.prefetch = 4
  # Train on several datasets: ((name, split, weight[, data_dir]), ...), batches drawn in
  # proportion to the weights (`inputs.MixturePipeline`); "" = data.name / data.data_dir.
  # Empty: `train_split` of `name` alone.
  d.mixture = ()
  # Easy examples first: global batch i < steps draws only from the easiest f(i) of train
  # (see `pipeline.Curriculum`); from batch `steps` on, the plain plan of the seed.
  cur = d.curriculum = ml_collections.ConfigDict()
  cur.steps = 0  # Global batches the curriculum lasts (0 = off).
  cur.by = "length"  # Difficulty: "length" (duration), "snr" (clean first) or "length+snr".
  cur.start_fraction = 0.2  # f(0), in (0, 1]: the easiest fraction batch 0 draws from.
  cur.schedule = "linear"  # f to 1: "linear" or "sqrt" (competence, Platanios et al. 2019).

  m = c.mesh = ml_collections.ConfigDict()
  m.axes = ("data", "fsdp", "expert", "tensor")  # docs/design.md §6 mesh axes.
  m.shape = (-1, 1, 1, 1)  # -1 fills with the remaining devices.
  m.rules = partitioning.DEFAULT_RULES  # Logical axis -> mesh axes.

  t = c.train = ml_collections.ConfigDict()
  t.steps = 2000  # Optimizer steps (the run ends there).
  t.learning_rate = 1e-3  # Peak learning rate.
  t.warmup_steps = 200  # Linear warm-up, then cosine decay.
  t.end_lr_ratio = 0.05  # Final learning rate / peak.
  t.b1 = 0.9
  t.b2 = 0.98
  t.weight_decay = 1e-3  # AdamW, on matrices only (not biases, norms, embeddings' scales).
  t.clip_norm = 5.0  # Global gradient-norm clipping (0 disables).
  # ((regex over parameter paths, learning-rate multiplier), ...); first match wins;
  # a multiplier of 0 freezes (e.g. (("encoder/.*", 0.0),) trains only what follows it).
  t.lr_multipliers = ()
  t.trainable = ""  # Regex: only matching parameters train ("" = all), e.g. ".*lora.*".
  t.loss = losses.loss_config()  # Joint-loss weights and warm-ups.
  t.oracle_mix = 0.5  # Start probability of conditioning on oracle LID (teacher forcing).
  t.oracle_mix_steps = 1000  # ... decayed linearly to 0 over these steps.
  t.nonfinite = "skip"  # Non-finite loss/gradients: "skip" (keep state, count) or "stop".
  t.max_nonfinite = 20  # Consecutive skipped steps that stop the run anyway.
  t.log_every = 25  # Steps between logged training metrics.
  t.eval_every = 500  # Steps between validation passes (0: only at the end).
  t.eval_max_batches = 0  # Validation batches per pass (0 = the whole split).
  t.checkpoint_every = 500  # Steps between checkpoints (and always at the end).
  t.keep_checkpoints = 3
  t.async_checkpoints = True
  t.preemption_sync_every = 10  # Multi-process: steps between agreeing on a SIGTERM.
  t.profile = False  # A jax.profiler trace of steps 3 to 7 into <workdir>/plugins/profile.

  e = c.eval = ml_collections.ConfigDict()
  e.splits = ("test",)  # Splits `moe-asr eval` scores by default.
  e.bootstrap_samples = 1000  # Confidence intervals of the report.
  e.max_batches = 0  # Batches decoded per split (0 = all; a quick look at a big split).
  e.long_policy = "window"  # Utterances past the last bucket: scored in VAD windows, or "bucket".
  e.plots = True

  # Persistent XLA compilation cache ("" disables): a re-run skips the minutes of
  # compiling the step for each bucket shape.
  c.compilation_cache = "~/.cache/moe_asr/xla"
  # Decoding for `moe-asr eval` / `transcribe` (`--config.decode.beam=8`, or `--decode.beam=8`);
  # `moe-asr tune-decoding` stores tuned weights in W/decoding.json, which eval reads first.
  c.decode = decode.default_config()
  c.lm_train = ml_collections.ConfigDict({"steps": 1000, "batch_size": 32})  # `moe-asr train-lm`.
  c.resume = ""  # Checkpoint directory of a run to continue when the workdir has none.
  c.init_from = ""  # Checkpoint directory whose parameters (matching names) start this run.
  return c
