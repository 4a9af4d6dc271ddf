"""`train_and_evaluate(config, workdir)`: the whole training run, top to bottom.

  processes -> mesh -> data -> state (eval_shape -> shardings -> jit init)
  -> resume -> compile per bucket -> loop (log, validate, checkpoint, SIGTERM)
  -> final checkpoint and validation

The set-up up to the resume is `moe_asr.runtime.build_run` (evaluation and transcription
set a run up the same way); validation is `evaluation.evaluate.validate`.

Everything the run writes lives in the workdir: `config.json`, the data side
(`tokenizer.model`, `run_data.json`: transcribe needs no dataset),
`metrics.jsonl` (one JSON object per logged step), TensorBoard events and
`checkpoints/` (orbax). Only process 0 writes logs and reports; every process
takes part in checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import pathlib
import threading
import time
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from flax import nnx

from moe_asr import runtime
from moe_asr.data import pipeline as pipeline_lib
from moe_asr.data import schema
from moe_asr.evaluation import evaluate
from moe_asr.models import partitioning
from moe_asr.training import checkpoint as checkpoint_lib
from moe_asr.training import distributed, inputs, losses, run_lock, sharding
from moe_asr.training import state as state_lib

_LOG = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
  """The loss or the gradients stopped being finite and the config says stop."""


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
    run = runtime.build_run(cfg, workdir)
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


def _train_pipeline(run: runtime.Run):
  """The training split's pipeline, once the batch sizes and the dataset are checked."""
  cfg = run.config
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
  inputs.check_dataset(cfg)  # (make_pipeline below reads the dataset, but names it less clearly.)
  return train_pipe


def _compiled_train_steps(run: runtime.Run, train_pipe) -> runtime.CompiledSteps:
  """The train step (flat, donating the state), compiled for every bucket shape up front."""
  cfg = run.config
  replicated = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec())
  train_steps = runtime.CompiledSteps(
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
  return train_steps


def _train_loop(
  run: runtime.Run, workdir: pathlib.Path, primary: bool, guard, profile: StepProfile
) -> dict:
  cfg, t = run.config, run.config.train
  if _preempted(guard, 0, t, sync=True):
    return _stopped_before_training(run, "setting up")
  train_pipe = _train_pipeline(run)
  train_iter = iter(train_pipe)
  if run.data_state is not None:
    train_iter.set_state(run.data_state)
  if primary:
    state_lib.trainable_report(_merged(run), cfg)
  log = MetricsLog(workdir, primary, run.start_step)
  train_steps = _compiled_train_steps(run, train_pipe)
  if _preempted(guard, 0, t, sync=True):
    log.close()
    return _stopped_before_training(run, "compiling")
  # Between steps the state lives as `leaves`; `run.state` is rebuilt where it is read.
  leaves, rng_leaves = train_steps.flatten(run.state), jax.tree.leaves(run.rng_state)
  eval_steps = evaluate.make_eval_steps(run)
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
      val, _, info = evaluate.validate(run, eval_steps, split, t.eval_max_batches, stop=stop)
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
      progress.set_postfix(_progress_fields(values, audio_seconds / elapsed), refresh=False)
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


def _progress_fields(values: Mapping[str, float], x_realtime: float) -> dict[str, str]:
  """What the progress bar shows of a logged window of steps."""
  return {
    "loss": f"{values['loss']:.3f}",
    "ctc": f"{values['ctc']:.3f}",
    "lr": f"{values['learning_rate']:.1e}",
    "x_realtime": f"{x_realtime:.1f}",
  }


def _stopped_before_training(run: runtime.Run, doing: str) -> dict:
  _LOG.warning(
    "Termination signal while %s: stopping at step %d without a save (nothing new to save)",
    doing,
    run.start_step,
  )
  return {"preempted": True, "step": run.start_step}


def _merged(run: runtime.Run):
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
