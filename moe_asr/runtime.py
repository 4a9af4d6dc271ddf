"""The runtime that training, evaluation and transcription share: a `Run` and its steps.

`build_run(config, workdir)` sets a run up: mesh, the data side (tokenizer, label
vocabularies), the sharded model and optimizer state, and its restoration (the workdir's
checkpoints, `config.resume`, `config.init_from` or a transfer source). `CompiledSteps`
compiles a step function once per batch shape. `saved_params` reads a checkpoint's
parameters as host arrays (averaging, transfer).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx

from moe_asr.training import checkpoint as checkpoint_lib
from moe_asr.training import inputs, sharding
from moe_asr.training import state as state_lib

_LOG = logging.getLogger(__name__)


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
    self.example_state = abstract_state(run.state, run.state_shardings)
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


def abstract_state(state, shardings):
  """Shape, dtype and sharding of each leaf of `state`: what a compile or restore targets."""
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
  graphdef, abstract_rng, abstract = nnx.split(abstract_ts, nnx.RngState, ...)
  state_shardings = sharding.state_shardings(abstract, mesh, rules)
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
  target = abstract_state(state, state_shardings)
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


def saved_params(directory: str, step: int) -> dict[str, np.ndarray]:
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
  saved = saved_params(directory, step)
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
