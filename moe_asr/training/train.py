"""`train_and_evaluate(config, workdir)`: the whole training run, top to bottom.

  processes -> mesh -> data -> state (eval_shape -> shardings -> jit init)
  -> resume -> compile per bucket -> loop (log, validate, checkpoint, SIGTERM)
  -> final checkpoint and validation

Everything the run writes lives in the workdir: `config.json`, the data side
(`tokenizer.model`, `run_data.json`: transcribe needs no dataset),
`metrics.jsonl` (one JSON object per logged step), TensorBoard events and
`checkpoints/` (orbax). Only process 0 writes logs and reports; every process
takes part in checkpoints.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from flax import nnx

from moe_asr.data import pipeline as pipeline_lib
from moe_asr.data import schema
from moe_asr.evaluation import metrics as metrics_lib
from moe_asr.models import partitioning
from moe_asr.training import checkpoint as checkpoint_lib
from moe_asr.training import distributed, evaluate, inputs, losses, run_lock, sharding
from moe_asr.training import state as state_lib

_LOG = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
  """The loss or the gradients stopped being finite and the config says stop."""


@dataclasses.dataclass
class Run:
  """What `build_run` sets up: enough to train, evaluate or transcribe."""

  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  rules: tuple
  data: inputs.RunData
  graphdef: nnx.GraphDef
  state: object  # nnx.State: parameters, optimizer state, counters (sharded)
  rng_state: object  # nnx.State: RNG keys (replicated; reseeded every step)
  state_shardings: object
  checkpointer: checkpoint_lib.Checkpointer | None
  start_step: int = 0
  data_state: dict | None = None
  tokenizer_id: dict | None = None  # The run's tokenizer (`checkpoint.tokenizer_id`).

  def batch_shardings(self, batch: Mapping[str, np.ndarray]):
    return sharding.batch_shardings(self.mesh, batch)


# ---------------------------------------------------------------------------
# Metrics files.
# ---------------------------------------------------------------------------


class MetricsLog:
  """`metrics.jsonl` + clu writers (TensorBoard); no-ops outside process 0."""

  def __init__(self, workdir: pathlib.Path, primary: bool, start_step: int):
    self.primary = primary
    self.path = workdir / "metrics.jsonl"
    # Imported here: clu's TensorBoard writer loads TensorFlow (seconds), which evaluation
    # and transcription, importing this module, do not need.
    from clu import metric_writers

    self.writer = metric_writers.create_default_writer(str(workdir), just_logging=not primary)
    if primary and self.path.exists():
      # A resumed run rewrites what came after its checkpoint.
      kept = [
        line
        for line in self.path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= start_step
      ]
      self.path.write_text("".join(line + "\n" for line in kept))

  def write(self, step: int, values: Mapping[str, float]) -> None:
    values = {k: float(v) for k, v in values.items()}
    self.writer.write_scalars(step, values)
    if self.primary:
      clean = {k: (v if math.isfinite(v) else None) for k, v in values.items()}
      with self.path.open("a") as f:
        f.write(json.dumps({"step": step, **clean}) + "\n")

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()


# ---------------------------------------------------------------------------
# The step.
# ---------------------------------------------------------------------------


def _oracle_mix(cfg: ml_collections.ConfigDict, step: jax.Array) -> jax.Array:
  t = cfg.train
  if t.oracle_mix_steps <= 0:
    return jnp.float32(t.oracle_mix)
  frac = jnp.clip(1.0 - step.astype(jnp.float32) / t.oracle_mix_steps, 0.0, 1.0)
  return t.oracle_mix * frac


def make_train_step(cfg: ml_collections.ConfigDict, graphdef: nnx.GraphDef) -> Callable:
  """`train_step(state, rng_state, batch) -> (state, metrics)`.

  The step's randomness (dropout, SpecAugment, oracle conditioning) is keyed by
  `config.seed` and the step number only, so a resumed run, a run on another
  mesh and an uninterrupted run draw the same numbers. A step whose loss or
  gradients are not finite leaves the state as it was and is counted.
  """
  loss_cfg = cfg.train.loss.to_dict()
  base_key = cfg.seed + 1000

  @jax.named_scope("optimizer_update")
  def apply_update(state, rng_state, grads):
    ts = nnx.merge(graphdef, rng_state, state)
    ts.optimizer.update(ts.model, grads)
    return nnx.split(ts, nnx.RngState, ...)[2]

  def train_step(state, rng_state, batch):
    ts = nnx.merge(graphdef, rng_state, state)
    step = ts.step[...]
    keys = jax.random.split(jax.random.fold_in(jax.random.key(base_key), step), 3)
    nnx.reseed(ts.model, dropout=keys[0], specaug=keys[1], condition=keys[2])

    def loss_fn(model):
      # The hypothesis pass (an extra decoder run) only where its loss term counts.
      # A model without task heads (CTC only, or a corpus without intents) has no such pass.
      hyp_task = False
      if loss_cfg.get("task_hyp", 0.0) > 0 and model.task_heads is not None:
        hyp_task = losses.term_weight(loss_cfg, "task_hyp", ts.optimizer.step[...]) > 0
      out = model(batch, oracle_mix=_oracle_mix(cfg, step), hypothesis_task=hyp_task)
      loss, metrics = losses.joint_loss(out, batch, loss_cfg, ts.optimizer.step[...])
      if hyp_task is not False:  # Not measured (logged as null) where the pass was skipped.
        for name in ("task_hyp", "hyp_intent_acc"):
          metrics[name] = jnp.where(hyp_task, metrics[name], jnp.nan)
      return loss, metrics

    (loss, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(ts.model)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # A non-finite step keeps the old parameters and optimizer state. A conditional rather
    # than a select between the updated and the old state: the select needs both alive at
    # once, so XLA copied every parameter and moment each step (profiled on the demo's
    # 12 x 2.4 s batch, 2 CPU cores: 49 ms of copies a step); with the conditional the
    # step measured 2 to 6% faster.
    state = jax.lax.cond(finite, apply_update, lambda s, r, g: s, state, rng_state, grads)
    ts = nnx.merge(graphdef, rng_state, state)
    ts.step[...] = step + 1
    ts.nonfinite[...] = ts.nonfinite[...] + (~finite).astype(jnp.int32)
    ts.nonfinite_run[...] = jnp.where(finite, 0, ts.nonfinite_run[...] + 1)
    _, _, new_state = nnx.split(ts, nnx.RngState, ...)
    metrics.update(
      grad_norm=jnp.where(finite, grad_norm, jnp.nan),
      finite=finite.astype(jnp.float32),
      learning_rate=state_lib.learning_rate_schedule(cfg)(ts.optimizer.step[...]),
      oracle_mix=jnp.asarray(_oracle_mix(cfg, step), jnp.float32),
    )
    return new_state, metrics

  return train_step


class CompiledSteps:
  """`fn(state, rng_state, batch)` compiled ahead of time once per batch shape, counted.

  With `flat=True` the compiled step takes and returns the state and RNG state as
  flat lists of arrays (`flatten` / `unflatten` convert): a loop that keeps the
  leaves between steps skips flattening the nnx `State` pytree (about a thousand
  leaves) on every call, host time that on a CPU competes with the step itself.
  """

  def __init__(self, fn: Callable, run: Run, out_shardings, donate: bool, flat: bool = False):
    self.run, self.donate, self.flat = run, donate, flat
    replicated = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec())
    self.rng_shardings = jax.tree.map(lambda _: replicated, run.rng_state)
    self.state_shardings = run.state_shardings
    self.fn, self.out_shardings = fn, out_shardings
    # What later shapes compile against: the state's buffers may have been donated by then.
    self.example_state = _abstract(run.state, run.state_shardings)
    self.example_rng = run.rng_state
    if flat:
      self.state_def = jax.tree.structure(run.state)
      self.rng_def = jax.tree.structure(run.rng_state)
      self.state_shardings = self.state_def.flatten_up_to(run.state_shardings)
      self.rng_shardings = self.rng_def.flatten_up_to(self.rng_shardings)
      self.out_shardings = (self.state_def.flatten_up_to(out_shardings[0]), *out_shardings[1:])
      self.example_state = self.flatten(self.example_state)
      self.example_rng = jax.tree.leaves(self.example_rng)
      self.fn = self._flat_fn(fn)
    self.cache: dict = {}
    self.compiles = 0

  def _flat_fn(self, fn: Callable) -> Callable:
    def flat_step(state_leaves, rng_leaves, batch):
      state, *rest = fn(self.unflatten(state_leaves), self.rng_def.unflatten(rng_leaves), batch)
      if jax.tree.structure(state) != self.state_def:
        raise ValueError(f"{fn.__name__} returned a state of another structure than it took")
      return (jax.tree.leaves(state), *rest)

    flat_step.__name__ = getattr(fn, "__name__", "step")
    return flat_step

  def flatten(self, state) -> list:
    """The state's leaves in the order the flat step takes them."""
    return self.state_def.flatten_up_to(state)

  def unflatten(self, leaves: list):
    """The nnx `State` of `flatten`ed (or returned) leaves."""
    return self.state_def.unflatten(leaves)

  @staticmethod
  def _key(batch: Mapping[str, jax.Array]) -> tuple:
    return tuple(sorted((k, v.shape, str(v.dtype)) for k, v in batch.items()))

  def _lower(self, batch: Mapping[str, jax.Array]):
    jitted = jax.jit(
      self.fn,
      in_shardings=(self.state_shardings, self.rng_shardings, self.run.batch_shardings(batch)),
      out_shardings=self.out_shardings,
      donate_argnums=(0,) if self.donate else (),
    )
    return jitted.lower(self.example_state, self.example_rng, batch)

  def _add(self, key: tuple, compiled, shape: tuple, seconds: float) -> None:
    self.cache[key] = compiled
    self.compiles += 1
    memory = compiled.memory_analysis() if self.compiles == 1 else None
    if memory is not None:
      _LOG.info(
        "Step memory (first shape): arguments %.1f MiB, outputs %.1f MiB, temporaries %.1f MiB",
        getattr(memory, "argument_size_in_bytes", 0) / 2**20,
        getattr(memory, "output_size_in_bytes", 0) / 2**20,
        getattr(memory, "temp_size_in_bytes", 0) / 2**20,
      )
    _LOG.info(
      "Compiled %s for batch %s in %.1f s (%d compiles)",
      getattr(self.fn, "__name__", "step"),
      shape,
      seconds,
      self.compiles,
    )

  def precompile(self, batches: Sequence[Mapping[str, jax.Array]]) -> None:
    """Compiles the steps of several batch shapes at once (those not compiled yet).

    Tracing and lowering run here one shape after another; the XLA compilations
    (C++, the GIL released, each mostly on one core) run in parallel threads. On
    the 2-core CPU the demo's two bucket shapes took 54 + 60 s one after another, 97 s
    together.
    """
    todo = {}
    for batch in batches:
      key = self._key(batch)
      if key not in self.cache:
        todo.setdefault(key, batch)
    if not todo:
      return
    start = time.perf_counter()
    lowered = {key: self._lower(batch) for key, batch in todo.items()}
    with concurrent.futures.ThreadPoolExecutor(min(len(lowered), os.cpu_count() or 1)) as pool:
      futures = {key: pool.submit(low.compile) for key, low in lowered.items()}
      for key, future in futures.items():
        compiled = future.result()
        self._add(key, compiled, todo[key]["audio"].shape, time.perf_counter() - start)

  def __call__(self, batch: Mapping[str, jax.Array]) -> Callable:
    key = self._key(batch)
    if key not in self.cache:
      self.precompile([batch])
    return self.cache[key]


# ---------------------------------------------------------------------------
# Setting up a run (shared by train, eval and transcribe).
# ---------------------------------------------------------------------------


def _abstract(state, shardings):
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings
  )


def init_state(cfg: ml_collections.ConfigDict, mesh, rules, **model_kwargs):
  """A fresh sharded train state: eval_shape -> shardings -> jit(init, out_shardings).

  Returns:
    (graphdef, state, rng_state, state_shardings); the RNG state is replicated.
  """

  def init():
    ts = state_lib.make_train_state(cfg, **model_kwargs)
    _, rng_state, state = nnx.split(ts, nnx.RngState, ...)
    return state, rng_state

  abstract_ts = nnx.eval_shape(lambda: state_lib.make_train_state(cfg, **model_kwargs))
  graphdef, abstract_rng, abstract_state = nnx.split(abstract_ts, nnx.RngState, ...)
  state_shardings = sharding.state_shardings(abstract_state, mesh, rules)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rng_shardings = jax.tree.map(lambda _: replicated, abstract_rng)
  with mesh:
    state, rng_state = jax.jit(init, out_shardings=(state_shardings, rng_shardings))()
  return graphdef, state, rng_state, state_shardings


def tokenizer_identity(
  cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path, data: inputs.RunData
) -> dict:
  """The identity of the run's tokenizer (`checkpoint.tokenizer_id`), naming its file."""
  model = data.tokenizer.to_bytes()
  candidates = [cfg.data.get("tokenizer"), pathlib.Path(workdir) / "tokenizer.model"]
  source = f"the tokenizer of dataset {cfg.data.name} in {cfg.data.data_dir}"
  for path in candidates:
    if path and os.path.isfile(path) and pathlib.Path(path).read_bytes() == model:
      source = os.path.abspath(path)
      break
  return checkpoint_lib.tokenizer_id(model, source)


def build_run(
  cfg: ml_collections.ConfigDict,
  workdir: str | pathlib.Path,
  *,
  for_training: bool = True,
  step: int | None = None,
) -> Run:
  """Mesh, data side, sharded state and its restoration (resume order).

  Resume order: the workdir's own checkpoints -> `config.resume` (another run's
  checkpoints: state and data position) -> `config.init_from` (parameters of
  matching names only) -> scratch. Each refuses a checkpoint trained with another
  tokenizer. Without `step`, the newest intact checkpoint step is restored (damaged newer
  ones are named in a warning; a training run moves them aside, `<step>.damaged`, so it
  can save those steps again). Not for training, only the state is read.
  """
  workdir = pathlib.Path(workdir)
  if cfg.get("compilation_cache"):
    cache = os.path.expanduser(cfg.compilation_cache)
    jax.config.update("jax_compilation_cache_dir", cache)
  mesh = sharding.make_mesh(cfg.mesh)
  rules = sharding.rules(cfg.mesh)
  data = inputs.load_run_data(cfg, workdir)
  model_kwargs = dict(
    vocab_size=data.tokenizer.vocab_size,
    num_intents=data.num_intents,
    num_slot_tags=data.num_slot_tags,
    bos_id=data.tokenizer.bos_id,
    eos_id=data.tokenizer.eos_id,
  )

  graphdef, state, rng_state, state_shardings = init_state(cfg, mesh, rules, **model_kwargs)

  ckpt_dir = workdir / "checkpoints"
  checkpointer = checkpoint_lib.Checkpointer(
    ckpt_dir,
    max_to_keep=cfg.train.keep_checkpoints,
    save_interval_steps=max(1, cfg.train.checkpoint_every),
    async_save=cfg.train.async_checkpoints,
  )
  run = Run(cfg, mesh, rules, data, graphdef, state, rng_state, state_shardings, checkpointer)
  run.tokenizer_id = tokenizer_identity(cfg, workdir, data)
  target = _abstract(state, state_shardings)
  source = None
  if checkpointer.latest_step() is not None:
    source = checkpointer
  elif cfg.get("resume"):
    source = checkpoint_lib.Checkpointer(cfg.resume, async_save=False)
    if source.latest_step() is None:
      raise FileNotFoundError(f"config.resume={cfg.resume!r} holds no checkpoint")
  if step is not None and source is not checkpointer:
    raise FileNotFoundError(f"No checkpoint in {ckpt_dir}, so none of step {step}")
  if source is not None:
    restored = source.restore(
      target,
      step,
      items=checkpoint_lib.ALL_ITEMS if for_training else (checkpoint_lib.STATE,),
      tokenizer=run.tokenizer_id,
      set_aside_damaged=for_training and source is checkpointer,
    )
    run.state, run.start_step, run.data_state = restored.state, restored.step, restored.data_state
    _LOG.info("Resumed from %s at step %d", source.directory, restored.step)
  elif for_training and cfg.get("transfer") and cfg.transfer.get("source"):
    from moe_asr.training import transfer

    run.state = transfer.init_from_source(run)  # The source's parameters, grown.
  elif cfg.get("init_from"):
    run.state = _init_from(run, cfg.init_from)
  elif not for_training:
    raise FileNotFoundError(f"No checkpoint in {ckpt_dir}; train first (moe-asr train).")
  return run


def _saved_params(directory: str, step: int) -> dict[str, np.ndarray]:
  """{'encoder/blocks/0/...': array} of the model parameters of a checkpoint step."""
  import orbax.checkpoint as ocp

  path = checkpoint_lib.absolute(directory) / str(step) / "state"
  # As host numpy arrays: the source run's mesh (8 devices, 2 processes) need not exist here.
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path)
  metadata = getattr(metadata, "item_metadata", metadata)
  metadata = getattr(metadata, "tree", metadata)
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
  tree = checkpointer.restore(path, restore_args=as_numpy)
  flat = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree.get("model", {})):
    flat[state_lib.path_name(path)] = np.asarray(leaf)
  return flat


def _init_from(run: Run, directory: str):
  """Copies parameters of matching path and shape from another run's checkpoint.

  Parameters the source lacks (a new language's expert, adapters) keep their
  fresh initialisation; the optimizer state starts fresh. A source trained with another
  tokenizer of the same size is refused (its token rows would be copied to other tokens);
  with another size the token-indexed parameters differ in shape and start fresh.
  """
  with checkpoint_lib.Checkpointer(directory, async_save=False) as source:
    step = source.latest_step()
  if step is None:
    raise FileNotFoundError(f"config.init_from={directory!r} holds no checkpoint")
  saved_tokenizer = checkpoint_lib.saved_tokenizer_id(directory, step)
  run_tokenizer = run.tokenizer_id
  if saved_tokenizer is not None and saved_tokenizer["sha256"] != run_tokenizer["sha256"]:
    where = f"config.init_from={directory!r} (step {step})"
    if saved_tokenizer.get("vocab_size") == run_tokenizer.get("vocab_size"):
      raise checkpoint_lib.tokenizer_mismatch(where, saved_tokenizer, run_tokenizer)
    _LOG.warning(
      "%s was trained with another tokenizer (%s; this run: %s): its token-indexed "
      "parameters differ in shape and start fresh",
      where,
      checkpoint_lib.describe_tokenizer(saved_tokenizer),
      checkpoint_lib.describe_tokenizer(run_tokenizer),
    )
  saved = _saved_params(directory, step)
  copied, fresh = 0, []

  def take(path, leaf):
    nonlocal copied
    name = state_lib.path_name(path)
    value = saved.get(name)
    if value is not None and tuple(value.shape) == tuple(leaf.shape):
      copied += 1
      return jax.device_put(value.astype(leaf.dtype), leaf.sharding)
    fresh.append(name)
    return leaf

  state = run.state
  state["model"] = jax.tree_util.tree_map_with_path(take, state["model"])
  _LOG.info(
    "init_from %s: %d parameters copied, %d kept fresh %s", directory, copied, len(fresh), fresh[:8]
  )
  if not copied:
    raise ValueError(f"config.init_from={directory!r}: no parameter matches this model")
  return state


# ---------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------


class _UntilStopped:
  """An evaluation pipeline that ends early once `stop()` is true (`stopped` says so)."""

  def __init__(self, pipeline, stop: Callable[[], bool]):
    self.pipeline, self.stop, self.stopped = pipeline, stop, False
    self.source = pipeline.source

  @property
  def stats(self):
    return self.pipeline.stats

  def __iter__(self):
    for batch in self.pipeline:
      if self.stop():
        self.stopped = True
        return
      yield batch


@functools.cache
def _dataset_prepared(name: str, data_dir: str) -> bool | None:
  """Whether TFDS dataset `name` is built in `data_dir` (None: not a TFDS name it knows)."""
  import tensorflow_datasets as tfds

  import moe_asr.data.builders  # noqa: F401  (registers the project's builders)

  try:
    return tfds.builder(name, data_dir=data_dir).is_prepared()
  except Exception:  # An unregistered name or config: the pipeline's own error says more.
    return None


def check_dataset(cfg: ml_collections.ConfigDict) -> None:
  """Raises FileNotFoundError naming the dataset and folder when it is not built there.

  (TFDS's own error for a missing dataset blames the file format.)
  """
  from moe_asr.data import catalog

  name, data_dir = cfg.data.name, str(cfg.data.data_dir)
  if name.split("/")[0] in catalog.ADAPTERS or "://" in data_dir:
    return
  if _dataset_prepared(name, os.path.abspath(data_dir)) is False:
    raise FileNotFoundError(
      f"Dataset {name} is missing: it is not built in data_dir {os.path.abspath(data_dir)!r}. "
      "Build it there (moe-asr corpus build, moe-asr data import) or point "
      "--config.data.data_dir at the folder that holds it."
    )


def validate(
  run: Run,
  eval_steps: CompiledSteps,
  split: str,
  max_batches: int = 0,
  knobs: Mapping[str, float] | None = None,
  stop: Callable[[], bool] | None = None,
  **kwargs,
):
  """Decodes a split with `eval_steps`; returns (summary dict, records, info).

  `knobs`: per-utterance decoding weights put in every batch (`evaluate.WithKnobs`);
  `stop`: polled before each batch, ends the pass early when true (`info["stopped"]`);
  `kwargs` go to `evaluate.evaluate_split` (calibration, keep_outputs).
  """
  check_dataset(run.config)
  pipe = inputs.make_pipeline(
    run.config,
    split,
    run.data,
    train=False,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  if knobs:
    pipe = evaluate.WithKnobs(pipe, knobs)
  if stop is not None:
    pipe = _UntilStopped(pipe, stop)
  records, info = evaluate.evaluate_split(
    pipe,
    eval_steps,
    run.state,
    run.rng_state,
    run.batch_shardings,
    run.data,
    max_batches=max_batches,
    **kwargs,
  )
  info["stopped"] = bool(getattr(pipe, "stopped", False))
  return metrics_lib.summarize(records), records, info


def make_eval_steps(
  run: Run,
  decode_cfg=None,
  *,
  lm=None,
  bias=None,
  tunable: bool = False,
  ensemble_weights=None,
) -> CompiledSteps:
  """Compiled eval steps (greedy CTC by default; see `decoding.decode`).

  `run` may be an ensemble (`training.ensemble.combine`), decoded with `ensemble_weights`.
  """
  step = evaluate.make_eval_step(
    run.graphdef,
    run.config.model.decoder.max_len,
    decode_cfg,
    lm=lm,
    bias=bias,
    eos_id=run.data.tokenizer.eos_id,
    tunable=tunable,
    word_table=run.data.tokenizer.word_table(),
    ensemble_weights=ensemble_weights,
  )
  replicated = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec())
  return CompiledSteps(step, run, replicated, donate=False)


# ---------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------


# Config settings that name files or folders, resolved to absolute paths when a run starts so
# that the workdir's config.json and checkpoints mean the same from any directory.
PATH_SETTINGS = ("data.data_dir", "data.tokenizer", "resume", "init_from", "decode.bias_file")


def absolute_paths(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `cfg` whose `PATH_SETTINGS` are absolute (URIs and empty settings as they are)."""
  cfg = copy.deepcopy(cfg)
  for key in PATH_SETTINGS:
    *path, leaf = key.split(".")
    parent = cfg
    for part in path:
      parent = parent.get(part) if parent is not None else None
    value = parent.get(leaf) if parent is not None else None
    if isinstance(value, str) and value and "://" not in value:
      parent[leaf] = os.path.abspath(os.path.expanduser(value))
  return cfg


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
  """Trains `cfg` in `workdir` (resuming what is there) and validates it.

  The run holds the workdir's lock (`run_lock`) throughout: a second run on it stops at
  once. SIGTERM is caught from the start: before the loop (set-up, compilation) the run
  stops without saving (nothing new to save); in the loop it saves the step and stops; in
  the final validation (the last step already saved) it stops after finishing the save.

  Returns:
    The last logged training metrics and validation summaries (`train/...`,
    `val/...`), plus `steps_per_second` and `compiles`; `preempted` when a signal stopped it.
  """
  # --- Processes and workdir.
  distributed.initialize(timeouts=cfg.get("distributed"))
  primary = jax.process_index() == 0
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  cfg = absolute_paths(cfg)
  # Signal handlers exist only in the main thread (a notebook may train from another).
  in_main_thread = threading.current_thread() is threading.main_thread()
  guard_context = checkpoint_lib.PreemptionGuard() if in_main_thread else contextlib.nullcontext()
  with run_lock.WorkdirLock(workdir, jax.process_index()), guard_context as guard:
    if primary:
      (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))

    # --- Mesh, data side, state, resume.
    run = build_run(cfg, workdir)
    if primary:
      inputs.save_run_data(run.data, workdir)  # Transcribe without the dataset.
    with run.mesh, partitioning.axis_rules(run.rules, run.mesh):
      profile = StepProfile(
        workdir, run.start_step, cfg.train.steps, enabled=bool(cfg.train.get("profile")) and primary
      )
      try:
        with profile:
          return _train_loop(run, workdir, primary, guard, profile)
      finally:
        run.checkpointer.close()  # A save in flight completes even when the run stops on an error.


class StepProfile:
  """A `jax.profiler` trace of a few train steps after warm-up (`train.profile`).

  The trace starts before step `start + SKIP + 1` and stops after `STEPS` steps (or at the
  run's last step), once the traced steps' results are ready; leaving the context ends a trace
  still running (a stopped run, an error). It lands in `<workdir>/plugins/profile/<time>/`,
  where TensorBoard pointed at the workdir shows it beside the metrics.
  """

  SKIP = 2  # Steps before the trace: the first steps also fill the input pipeline.
  STEPS = 5

  def __init__(self, workdir: pathlib.Path, start_step: int, last_step: int, enabled: bool):
    self.workdir = workdir
    self.first = start_step + self.SKIP if enabled else None
    self.last = min(start_step + self.SKIP + self.STEPS, last_step)
    self.active = False

  def __enter__(self) -> StepProfile:
    return self

  def __exit__(self, *exc) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False

  def before(self, step: int) -> None:
    """Called with the number of steps done, before the next one runs."""
    if self.first is not None and step == self.first and step < self.last:
      jax.profiler.start_trace(str(self.workdir))
      self.active = True

  def after(self, step: int, result) -> None:
    if self.active and step >= self.last:
      jax.block_until_ready(result)
      self.__exit__()
      _LOG.info("Profiled steps %d to %d: %s/plugins/profile", self.first + 1, step, self.workdir)


def _train_loop(
  run: Run, workdir: pathlib.Path, primary: bool, guard, profile: StepProfile
) -> dict:
  cfg, t = run.config, run.config.train
  if _preempted(guard, 0, t, sync=True):
    return _stopped_before_training(run, "setting up")
  for n in sorted({b for _, b in cfg.data.buckets}):
    if n % sharding.batch_size_multiple(run.mesh):
      raise ValueError(
        f"Global batch size {n} is not divisible by the mesh's batch axes "
        f"({sharding.batch_size_multiple(run.mesh)} devices)"
      )
  train_pipe = inputs.make_pipeline(
    cfg,
    cfg.data.train_split,
    run.data,
    train=True,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  check_dataset(cfg)  # (make_pipeline below reads the dataset, but names it less clearly.)
  train_iter = iter(train_pipe)
  if run.data_state is not None:
    train_iter.set_state(run.data_state)
  if primary:
    state_lib.trainable_report(_merged(run), cfg)
  log = MetricsLog(workdir, primary, run.start_step)
  replicated = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec())
  train_steps = CompiledSteps(
    make_train_step(cfg, run.graphdef),
    run,
    (run.state_shardings, replicated),
    donate=True,
    flat=True,
  )
  # Every bucket shape the run will meet, compiled up front.
  _LOG.info("Compiling the train step")
  train_steps.precompile(
    [
      sharding.put_batch(pipeline_lib.device_arrays(b), run.batch_shardings(b))
      for b in train_pipe.example_batches().values()
    ]
  )
  if _preempted(guard, 0, t, sync=True):
    log.close()
    return _stopped_before_training(run, "compiling")
  # Between steps the state lives as `leaves`; `run.state` is rebuilt where it is read.
  leaves, rng_leaves = train_steps.flatten(run.state), jax.tree.leaves(run.rng_state)
  eval_steps = make_eval_steps(run)
  tokenizer_bytes = run.data.tokenizer.to_bytes()
  summary: dict = {}

  def sync_state():
    run.state = train_steps.unflatten(leaves)
    return run.state

  def save(step: int, force: bool = False) -> None:
    if force or run.checkpointer.should_save(step):
      sync_state()
      run.checkpointer.save(
        step,
        run.state,
        data_state=train_iter.get_state(),
        tokenizer=tokenizer_bytes,
        config=cfg.to_dict(),
        force=force,
        tokenizer_source=run.tokenizer_id["source"],
      )

  # A single process may stop a validation pass between batches; several processes decode
  # each batch together, so they stop only where they agree (between passes).
  stop = (lambda: guard.requested) if guard is not None and jax.process_count() == 1 else None

  def run_validation(step: int) -> None:
    sync_state()
    for split in cfg.data.eval_splits:
      if _preempted(guard, 0, t, sync=True):
        return
      val, _, info = validate(run, eval_steps, split, t.eval_max_batches, stop=stop)
      if info["stopped"]:
        _LOG.warning("Termination signal: validation of %s at step %d stopped", split, step)
        return  # A partial pass is not logged.
      values = {f"val/{k}": v for k, v in val.items() if isinstance(v, int | float)}
      values[f"val/{split}_rtf"] = info["rtf"]
      if split != cfg.data.eval_splits[0]:
        values = {k.replace("val/", f"val_{split}/"): v for k, v in values.items()}
      log.write(step, values)
      summary.update(values)

  step = run.start_step
  pending: list = []
  audio_seconds = 0.0
  window_start = time.perf_counter()
  window_steps = 0
  progress = tqdm.tqdm(
    total=t.steps, initial=step, disable=not primary, desc="train", unit="step", dynamic_ncols=True
  )
  while step < t.steps:
    host_batch = next(train_iter)
    batch = sharding.put_batch(
      pipeline_lib.device_arrays(host_batch), run.batch_shardings(host_batch)
    )
    samples = float(host_batch["audio_mask"].sum()) * jax.process_count()
    audio_seconds += samples / schema.SAMPLE_RATE
    profile.before(step)
    leaves, metrics = train_steps(batch)(leaves, rng_leaves, batch)
    step += 1
    profile.after(step, leaves)
    window_steps += 1
    pending.append(metrics)
    if t.nonfinite == "stop" or step % t.log_every == 0 or step == t.steps:
      _check_finite(pending, step, host_batch, t, sync_state)
    if step % t.log_every == 0 or step == t.steps:
      values = _mean_metrics(pending)
      pending = []
      elapsed = time.perf_counter() - window_start
      values["steps_per_second"] = window_steps / elapsed
      values["audio_hours_per_hour"] = audio_seconds / elapsed
      values["compiles"] = train_steps.compiles
      log.write(step, {f"train/{k}": v for k, v in values.items()})
      summary.update({f"train/{k}": v for k, v in values.items()})
      progress.set_postfix(
        loss=f"{values['loss']:.3f}",
        ctc=f"{values['ctc']:.3f}",
        lr=f"{values['learning_rate']:.1e}",
        x_realtime=f"{audio_seconds / elapsed:.1f}",
        refresh=False,
      )
      window_start, window_steps, audio_seconds = time.perf_counter(), 0, 0.0
    progress.update(1)
    if t.eval_every and step % t.eval_every == 0 and step < t.steps:
      run_validation(step)
    save(step)
    if _preempted(guard, step, t):
      _LOG.warning("Termination signal: saving step %d and stopping", step)
      save(step, force=True)
      run.checkpointer.wait()
      progress.close()
      summary["preempted"] = True
      return summary
  progress.close()
  if run.start_step < t.steps or run.checkpointer.latest_step() != t.steps:
    save(step, force=True)
  run_validation(step)
  run.checkpointer.wait()
  log.close()
  summary["compiles"] = train_steps.compiles
  summary["step"] = step
  if guard is not None and guard.requested:
    _LOG.warning("Termination signal: step %d is saved; stopping", step)
    summary["preempted"] = True
  return summary


def _stopped_before_training(run: Run, doing: str) -> dict:
  _LOG.warning(
    "Termination signal while %s: stopping at step %d without a save (nothing new to save)",
    doing,
    run.start_step,
  )
  return {"preempted": True, "step": run.start_step}


def _merged(run: Run):
  return nnx.merge(run.graphdef, run.rng_state, run.state)


def _mean_metrics(pending: list) -> dict[str, float]:
  stacked = jax.device_get(pending)
  keys = stacked[0].keys()
  out = {}
  for k in keys:
    values = np.asarray([m[k] for m in stacked], np.float64)
    finite = values[np.isfinite(values)]
    out[k] = float(finite.mean()) if len(finite) else math.nan
  out["nonfinite_steps"] = float(len(stacked) - np.sum([m["finite"] for m in stacked]))
  return out


def _check_finite(pending: list, step: int, host_batch: Mapping, t, get_state: Callable) -> None:
  """Applies `train.nonfinite` to the steps since the last check."""
  finite = np.asarray(jax.device_get([m["finite"] for m in pending]))
  if finite.all():
    return
  bad = step - len(finite) + int(np.flatnonzero(finite == 0)[0]) + 1
  ids = [str(x) for x in np.asarray(host_batch.get("id", []))[:8] if str(x)]
  if t.nonfinite == "stop":
    raise NonFiniteError(
      f"Step {bad}: the loss or the gradients are not finite (batch ids {ids}); stopping "
      "as config.train.nonfinite='stop' says. The last checkpoint is untouched."
    )
  run_length = int(jax.device_get(get_state()["nonfinite_run"][...]))
  if run_length >= t.max_nonfinite:
    raise NonFiniteError(
      f"Step {step}: {run_length} steps in a row had non-finite loss or gradients "
      f"(train.max_nonfinite={t.max_nonfinite}); the last checkpoint is untouched."
    )
  _LOG.warning(
    "Step %d: non-finite loss or gradients; the update was skipped (batch ids %s)", bad, ids
  )


def _preempted(guard, step: int, t, sync: bool = False) -> bool:
  """Whether to stop: this process's signal alone, or (several processes) any process's,
  agreed every `train.preemption_sync_every` steps and wherever `sync`."""
  if guard is None:
    return False
  if jax.process_count() == 1:
    return guard.requested
  if not sync and step % max(1, t.preemption_sync_every):
    return False
  from jax.experimental import multihost_utils

  flags = multihost_utils.process_allgather(np.asarray(guard.requested, np.int32))
  return bool(np.asarray(flags).any())
