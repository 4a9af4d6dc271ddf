"""Checkpoints that travel: orbax steps that resume exactly on any mesh.

One step directory holds up to six orbax items:

  state      the train state (any pytree of jax.Arrays, possibly sharded), in
             orbax's array format, so it restores onto any mesh: 8 devices -> 1,
             2 processes -> 1, a different partitioning.
  data       the grain iterator state of every process (`get_state()` dicts),
             one `process_<i>-of-<n>.json` per process, the layout grain's own
             orbax handler writes, because each process reads its own shard.
  tokenizer  the serialized SentencePiece model, base64 in JSON with its sha256.
  tokenizer_id  that model's identity, small and apart from the copy: its sha256, size
             in bytes and pieces, and the file it came from. Restores compare it with
             the tokenizer of the run restoring (`check_tokenizer`) and refuse another.
  config     the experiment config as a dict (`config.to_dict()`).
  extra      a small JSON dict (counters that must survive a restart).

Saves are asynchronous; a step becomes visible only once orbax has finalized
it, so a crash mid-save leaves the previous step as the latest. A state holding
NaN or Inf is refused before anything is written: a NaN never reaches a
checkpoint. JSON items come back as JSON gives them (tuples become lists).

Restoring without a step takes the newest intact one: a step whose files are damaged is
named in a warning and the one before it is tried. A restore reads only the items it is
asked for (`items`): evaluation and transcription need the state, not the data iterator.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as ocp_policies

_LOG = logging.getLogger(__name__)

STATE = "state"
DATA = "data"
TOKENIZER = "tokenizer"
TOKENIZER_ID = "tokenizer_id"
CONFIG = "config"
EXTRA = "extra"
_JSON_ITEMS = (TOKENIZER, TOKENIZER_ID, CONFIG, EXTRA)
ALL_ITEMS = (STATE, DATA, TOKENIZER, CONFIG, EXTRA)  # What `restore` reads by default.


# Replicated arrays are written cooperatively by their replicas (orbax's replica-parallel
# saving) only where each replica's slice is at least this big. Slicing an array takes a
# compiled op per shape: for the many small arrays of a model (norms, biases, small
# matrices) that costs more than the write it shares, e.g. 12 s of compiles on the first
# save of the tiny model on 8 CPU devices, while the big matrices of a real model on a pod
# still share their writes.
MIN_REPLICA_SLICE_BYTES = 1 << 20


@functools.cache
def _register_array_handler() -> None:
  """Makes orbax save jax.Arrays with `MIN_REPLICA_SLICE_BYTES` (once per process)."""
  ocp.type_handlers.register_type_handler(
    jax.Array,
    ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES),
    override=True,
  )


class CheckpointError(RuntimeError):
  """A checkpoint step exists but cannot be read back."""


class TokenizerMismatchError(ValueError):
  """The run's tokenizer is not the one the checkpoint was trained with."""


class SaveError(OSError):
  """A checkpoint step could not be written (a full disk); the older steps are intact."""


def _disk_full(error: BaseException) -> bool:
  """Whether `error` (or one it was raised from) is a full disk or quota."""
  while error is not None:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    text = str(error)
    if "No space left on device" in text or "Disk quota exceeded" in text:
      return True
    error = error.__cause__ or error.__context__
  return False


@dataclasses.dataclass
class Restored:
  """What `Checkpointer.restore` gives back; optional items not saved are None."""

  step: int
  state: Any  # Like the abstract target, placed with its shardings.
  data_state: dict | None  # This process's grain iterator state.
  tokenizer: bytes | None  # Serialized SentencePiece model.
  config: dict | None  # The experiment config as a dict.
  extra: dict | None  # Small JSON-able dict.
  damaged: list[int] = dataclasses.field(default_factory=list)  # Newer steps passed over.


# --- Per-process JSON item (grain iterator states) ---------------------------


def _process_file(index: int, count: int) -> str:
  return f"process_{index}-of-{count}.json"


class _ProcessJsonHandler(ocp.CheckpointHandler):
  """One JSON file per process; restore reads this process's file."""

  def save(self, directory: epath.Path, args: _ProcessJsonSave) -> None:
    name = _process_file(jax.process_index(), jax.process_count())
    (directory / name).write_text(args.value)

  def restore(self, directory: epath.Path, args: _ProcessJsonRestore | None = None) -> dict | None:
    path = directory / _process_file(jax.process_index(), jax.process_count())
    if path.exists():
      return json.loads(path.read_text())
    saved = sorted(p.name for p in directory.glob("process_*-of-*.json"))
    if not saved:
      raise FileNotFoundError(f"No per-process data state files in {directory}.")
    # The data was sharded over another number of processes, so no saved
    # position is this process's position: the iterator has to start afresh.
    _LOG.warning(
      "Data state in %s was saved by another process count (%s); this run has %d processes, "
      "so the data iterator is not restored.",
      directory,
      saved[0],
      jax.process_count(),
    )
    return None

  def metadata(self, directory: epath.Path) -> None:
    return None

  def finalize(self, directory: epath.Path) -> None:
    pass

  def close(self) -> None:
    pass


@ocp.args.register_with_handler(_ProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class _ProcessJsonSave(ocp.args.CheckpointArgs):
  value: str  # Already serialized JSON.


@ocp.args.register_with_handler(_ProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class _ProcessJsonRestore(ocp.args.CheckpointArgs):
  pass


# --- Finiteness -------------------------------------------------------------


@jax.jit
def _finite_flags(leaves: list[jax.Array]) -> jax.Array:
  # A full reduction leaves each flag replicated, so every process can read
  # all of them even when the leaves span other processes' devices.
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])  # [num_leaves]


def _is_floating(leaf: Any) -> bool:
  dtype = getattr(leaf, "dtype", None)
  if dtype is None:
    return isinstance(leaf, float | complex)
  return jnp.issubdtype(dtype, jnp.inexact)


def nonfinite_leaves(tree: Any) -> list[str]:
  """Paths of the floating leaves of `tree` that hold a NaN or an Inf.

  Device leaves are reduced on their devices, one jitted reduction per set of
  devices (a train state has one), and fetched in a single host transfer.

  Args:
    tree: A pytree of jax.Arrays, numpy arrays or Python numbers.

  Returns:
    The offending leaves' key paths (`jax.tree_util.keystr`), in tree order.
  """
  paths, flags = [], []
  # jit refuses arrays committed to different device sets in one call.
  groups: dict[frozenset, list[tuple[int, jax.Array]]] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if not _is_floating(leaf):
      continue
    paths.append(jax.tree_util.keystr(path))
    if isinstance(leaf, jax.Array):
      flags.append(True)  # Filled in below, after one transfer for all groups.
      groups.setdefault(frozenset(leaf.sharding.device_set), []).append((len(flags) - 1, leaf))
    else:
      flags.append(bool(np.all(np.isfinite(leaf))))
  results = [_finite_flags([leaf for _, leaf in members]) for members in groups.values()]
  for members, group_flags in zip(groups.values(), jax.device_get(results), strict=True):
    for (i, _), ok in zip(members, group_flags, strict=True):
      flags[i] = bool(ok)
  return [path for path, ok in zip(paths, flags, strict=True) if not ok]


# --- Items ------------------------------------------------------------------


def _numpy_to_python(value: Any) -> Any:
  # Counters fetched from devices arrive as numpy scalars, which json rejects.
  if isinstance(value, np.generic | np.ndarray):
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def _json_snapshot(name: str, value: Any) -> Any:
  # A round trip through JSON both rejects what cannot be stored and copies
  # the value, so later changes by the caller cannot race the async write.
  if not isinstance(value, Mapping):
    raise TypeError(f"Checkpoint item {name!r} must be a dict, got {type(value).__name__}.")
  try:
    return json.loads(json.dumps(value, default=_numpy_to_python))
  except (TypeError, ValueError) as e:
    raise TypeError(f"Checkpoint item {name!r} is not JSON-serializable: {e}") from e


def _encode_tokenizer(model: bytes) -> dict:
  if not isinstance(model, bytes | bytearray):
    raise TypeError(f"Checkpoint item 'tokenizer' must be bytes, got {type(model).__name__}.")
  return {
    "sentencepiece_model": base64.b64encode(model).decode("ascii"),
    "sha256": hashlib.sha256(model).hexdigest(),
  }


def _decode_tokenizer(item: dict) -> bytes:
  model = base64.b64decode(item["sentencepiece_model"], validate=True)
  if hashlib.sha256(model).hexdigest() != item["sha256"]:
    raise ValueError("tokenizer bytes do not match their recorded sha256")
  return model


def _vocab_size(model: bytes) -> int | None:
  try:
    import sentencepiece

    return int(sentencepiece.SentencePieceProcessor(model_proto=model).vocab_size())
  except Exception:  # Not a SentencePiece model (a test's bytes): the size is unknown.
    return None


def tokenizer_id(model: bytes, source: str | None = None) -> dict:
  """The identity of a serialized SentencePiece model, as a checkpoint records it.

  Args:
    model: the serialized model.
    source: where it came from (a file path), for messages.

  Returns:
    {"sha256", "bytes", "vocab_size" (None if not a SentencePiece model), "source"}.
  """
  return {
    "sha256": hashlib.sha256(model).hexdigest(),
    "bytes": len(model),
    "vocab_size": _vocab_size(model),
    "source": source,
  }


def describe_tokenizer(identity: Mapping) -> str:
  """'sha256 1a2b3c4d5e6f, 600 pieces, 250123 bytes, from PATH'."""
  parts = [f"sha256 {identity['sha256'][:12]}"]
  if identity.get("vocab_size") is not None:
    parts.append(f"{identity['vocab_size']} pieces")
  parts.append(f"{identity['bytes']} bytes")
  if identity.get("source"):
    parts.append(f"from {identity['source']}")
  return ", ".join(parts)


def tokenizer_mismatch(where: str, saved: Mapping, run: Mapping) -> TokenizerMismatchError:
  """The error refusing `where` (trained with `saved`) for a run with tokenizer `run`."""
  return TokenizerMismatchError(
    f"The tokenizer does not match the checkpoint: {where} was trained with "
    f"{describe_tokenizer(saved)}; this run has {describe_tokenizer(run)}. Decoding with "
    "another tokenizer gives wrong text; use the checkpoint's own tokenizer (the workdir's "
    "tokenizer.model, or config.data.tokenizer naming the one it was trained with)."
  )


def _step_path(directory: epath.Path, step: int) -> epath.Path:
  # The manager uses orbax's standard step names: the bare, unpadded number.
  return directory / str(step)


def _resolve_step(manager: ocp.CheckpointManager, step: int | None) -> int:
  return _candidate_steps(manager, step)[0]


def _candidate_steps(manager: ocp.CheckpointManager, step: int | None) -> list[int]:
  """[step] if one is asked for, else every complete step, newest first."""
  steps = sorted(manager.all_steps(), reverse=True)
  if step is None:
    if not steps:
      raise FileNotFoundError(f"No complete checkpoint in {manager.directory}.")
    return steps
  if step not in steps:
    raise FileNotFoundError(
      f"No complete checkpoint for step {step} in {manager.directory}; "
      f"complete steps: {sorted(steps)}."
    )
  return [step]


def _restore_items(
  manager: ocp.CheckpointManager, step: int, args: dict[str, ocp.args.CheckpointArgs]
) -> dict[str, Any]:
  """Restores `args`' items of `step`, decoding the tokenizer; damage raises CheckpointError."""
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    out = {name: restored[name] for name in args}
    if TOKENIZER in out:
      out[TOKENIZER] = _decode_tokenizer(out[TOKENIZER])
  except Exception as e:  # Orbax, tensorstore and json each raise their own types.
    raise CheckpointError(
      f"Checkpoint step {step} in {manager.directory} could not be restored: "
      f"{type(e).__name__}: {e}\nIts files may be damaged or incomplete, or the requested "
      "state may not match the saved one."
    ) from e
  return out


def _saved_tokenizer_id(manager: ocp.CheckpointManager, step: int) -> dict | None:
  """The identity of the tokenizer `step` was trained with, or None (with a warning).

  A checkpoint from before identities were recorded gives its tokenizer copy's; one without
  either (or whose copy does not read back) gives None. A damaged identity item raises
  CheckpointError (the step is damaged).
  """
  step_dir = _step_path(manager.directory, step)
  where = f"checkpoint step {step} in {manager.directory}"
  if (step_dir / TOKENIZER_ID).exists():
    return _restore_items(manager, step, {TOKENIZER_ID: ocp.args.JsonRestore()})[TOKENIZER_ID]
  if (step_dir / TOKENIZER).exists():
    try:
      model = _restore_items(manager, step, {TOKENIZER: ocp.args.JsonRestore()})[TOKENIZER]
    except CheckpointError as e:
      _LOG.warning(
        "The tokenizer of %s cannot be checked: it records no identity and its copy does not "
        "read back (%s).",
        where,
        str(e).splitlines()[0],
      )
      return None
    return tokenizer_id(model, source=f"the copy in {where}")
  _LOG.warning("The tokenizer of %s cannot be checked: the step records none.", where)
  return None


def _check_tokenizer(manager: ocp.CheckpointManager, step: int, run: Mapping) -> None:
  """Raises TokenizerMismatchError unless `step` was trained with the tokenizer `run` names."""
  saved = _saved_tokenizer_id(manager, step)
  if saved is not None and saved["sha256"] != run["sha256"]:
    raise tokenizer_mismatch(f"checkpoint step {step} in {manager.directory}", saved, run)


def _json_restore_args(step_dir: epath.Path, names: Iterable[str]) -> dict:
  return {name: ocp.args.JsonRestore() for name in names if (step_dir / name).exists()}


# --- Checkpointer -----------------------------------------------------------


def absolute(directory: epath.PathLike) -> epath.Path:
  """`directory` as an absolute path (a URI such as gs://... as it is).

  Orbax refuses relative paths when it writes or reads arrays, so a run started with
  `--workdir runs/demo` would fail at its first checkpoint.
  """
  text = os.fspath(directory)
  return epath.Path(text if "://" in text else os.path.abspath(text))


class Checkpointer:
  """Saves and restores train state, data-iterator state, tokenizer and config.

  All processes construct it and call `save`/`restore` together; orbax decides
  which process writes what. Use it as a context manager, or call `close()`,
  so that the last asynchronous save is finished before the process exits.
  """

  def __init__(
    self,
    directory: epath.PathLike,
    *,
    max_to_keep: int = 3,
    save_interval_steps: int = 1,
    async_save: bool = True,
  ):
    """Opens (creating if needed) a checkpoint directory.

    Args:
      directory: Local path or a `gs://` URI.
      max_to_keep: How many of the newest steps to keep; older ones are deleted.
      save_interval_steps: `should_save` is true every this many steps.
      async_save: Write in the background; `save` returns once the state has
        been copied off the devices.
    """
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be at least 1, got {max_to_keep}.")
    if save_interval_steps < 1:
      raise ValueError(f"save_interval_steps must be at least 1, got {save_interval_steps}.")
    _register_array_handler()
    self._manager = ocp.CheckpointManager(
      absolute(directory),
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        # Orbax's default also saves the first step seen when none exists; a
        # plain interval is what a config's `save_every` means. A preemption
        # sync point (multi-host JAX's own notice) also triggers a save.
        save_decision_policy=ocp_policies.AnySavePolicy(
          [
            ocp_policies.FixedIntervalPolicy(save_interval_steps),
            ocp_policies.PreemptionCheckpointingPolicy(),
          ]
        ),
        enable_async_checkpointing=async_save,
      ),
    )
    self._swept = False
    self._saving: tuple[int, int] | None = None  # (step, bytes of its state) being written.
    self._failed: SaveError | None = None

  @property
  def directory(self) -> epath.Path:
    return self._manager.directory

  def latest_step(self) -> int | None:
    """The newest complete step (unfinalized saves are ignored), or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """All complete steps, oldest first."""
    return sorted(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    """True when `step` is on the save interval and newer than the latest step."""
    return self._manager.should_save(step)

  def save(
    self,
    step: int,
    state: Any,
    *,
    data_state: dict | None = None,
    tokenizer: bytes | None = None,
    config: dict | None = None,
    extra: dict | None = None,
    force: bool = False,
    tokenizer_source: str | None = None,
  ) -> bool:
    """Saves a step (asynchronously unless the Checkpointer was made otherwise).

    Every process calls it with the same step; `data_state` is each process's
    own. `config`, `tokenizer` and `extra` are written from the primary process.

    Args:
      step: The train step the state belongs to.
      state: Pytree of arrays; its floating leaves must all be finite.
      data_state: This process's grain iterator state (`get_state()`).
      tokenizer: Serialized SentencePiece model.
      config: The experiment config as a dict.
      extra: Small JSON-able dict.
      force: Save even off the save interval (e.g. on preemption).
      tokenizer_source: Where `tokenizer` came from (a path), recorded with its identity.

    Returns:
      Whether a step was written: False off the interval, or when `step` is
      already saved.

    Raises:
      ValueError: a floating leaf holds NaN or Inf (nothing is written).
      TypeError: an item has the wrong type or is not JSON-serializable.
    """
    if step in self._manager.all_steps() or not (force or self.should_save(step)):
      return False
    bad = nonfinite_leaves(state)
    if bad:
      raise ValueError(
        f"Refusing to save step {step} to {self.directory}: leaf {bad[0]} holds NaN or Inf "
        f"({len(bad)} non-finite leaves in all)."
      )
    items: dict[str, ocp.args.CheckpointArgs] = {STATE: ocp.args.StandardSave(state)}
    if data_state is not None:
      items[DATA] = _ProcessJsonSave(json.dumps(_json_snapshot(DATA, data_state)))
    if tokenizer is not None:
      items[TOKENIZER] = ocp.args.JsonSave(_encode_tokenizer(tokenizer))
      items[TOKENIZER_ID] = ocp.args.JsonSave(tokenizer_id(bytes(tokenizer), tokenizer_source))
    if config is not None:
      items[CONFIG] = ocp.args.JsonSave(_json_snapshot(CONFIG, config))
    if extra is not None:
      items[EXTRA] = ocp.args.JsonSave(_json_snapshot(EXTRA, extra))
    self._sweep_unfinished_saves()
    if self._manager.is_saving_in_progress():
      self.wait()  # Orbax would wait for the previous save too; its errors name its step.
    self._saving = (step, sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(state)))
    with self._save_errors():
      return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  @contextlib.contextmanager
  def _save_errors(self):
    """Turns a full disk during a save into SaveError naming the step and the directory.

    The step's unfinished directory is removed (orbax never made it visible), so the
    newest complete step stays the newest.
    """
    try:
      yield
    except SaveError:
      raise
    except Exception as e:
      if not _disk_full(e):
        raise
      step, nbytes = self._saving if self._saving is not None else (None, 0)
      if jax.process_index() == 0:
        for tmp in ocp.step.all_temporary_paths(self.directory):
          tmp.get().rmtree()
      with contextlib.suppress(Exception):
        self._manager.reload()
      free = shutil.disk_usage(self.directory).free if "://" not in str(self.directory) else 0
      latest = self.latest_step()
      self._failed = SaveError(
        errno.ENOSPC,
        f"Saving checkpoint step {step if step is not None else '?'} to {self.directory} "
        f"failed: the disk is full ({free / 2**20:.1f} MiB free; the step needs about "
        f"{nbytes / 2**20:.1f} MiB before compression). "
        + (
          f"The newest checkpoint, step {latest}, is intact: "
          if latest is not None
          else "No checkpoint was written: "
        )
        + "free space there (or train in a --workdir on a larger disk) and run again to resume.",
      )
      raise self._failed from e

  def _sweep_unfinished_saves(self) -> None:
    # Directories of saves cut short by a crash are removed before this
    # writer's first save, not when the directory is opened: a reader opening
    # it while a trainer writes must not delete the trainer's save in flight.
    if self._swept:
      return
    self._swept = True
    if jax.process_index() != 0:
      return  # The manager's save barrier keeps the others until this is done.
    for tmp in ocp.step.all_temporary_paths(self.directory):
      _LOG.warning("Removing unfinished checkpoint %s.", tmp.get())
      tmp.get().rmtree()

  def restore(
    self,
    abstract_state: Any,
    step: int | None = None,
    *,
    items: Iterable[str] = ALL_ITEMS,
    tokenizer: Mapping | None = None,
    set_aside_damaged: bool = False,
  ) -> Restored:
    """Restores a step onto the shardings of `abstract_state`.

    Without `step`, the newest step that reads back: a damaged step is named in a warning
    and the one before it is tried.

    Args:
      abstract_state: Pytree of `jax.ShapeDtypeStruct` with `.sharding` set; the
        mesh may differ from the one that saved.
      step: Which step; None is the newest intact one.
      items: The items to read (the state always); the others come back as None.
      tokenizer: The run's tokenizer (`tokenizer_id`): a step trained with another one is
        refused.
      set_aside_damaged: Rename the damaged steps passed over to `<step>.damaged`, so that
        a run continuing from an older step can save those steps again.

    Returns:
      The step and its items; items that were not saved or not asked for are None.

    Raises:
      FileNotFoundError: no complete checkpoint (for `step`).
      CheckpointError: the step's files are damaged or do not match the target (without
        `step`: every step is).
      TokenizerMismatchError: the step was trained with another tokenizer.
    """
    items = set(items) | {STATE}
    damaged: list[tuple[int, CheckpointError]] = []
    for candidate in _candidate_steps(self._manager, step):
      try:
        restored = self._restore_step(candidate, abstract_state, items, tokenizer)
      except CheckpointError as e:
        if step is not None:
          raise
        damaged.append((candidate, e))
        _LOG.warning(
          "Checkpoint step %d in %s is damaged, trying the step before it: %s",
          candidate,
          self.directory,
          " ".join(str(e).split("\n")),
        )
        continue
      restored.damaged = [s for s, _ in damaged]
      if damaged:
        _LOG.warning(
          "Restored step %d of %s; damaged newer steps passed over: %s",
          candidate,
          self.directory,
          restored.damaged,
        )
        if set_aside_damaged:
          self._set_aside(restored.damaged)
      return restored
    steps = [s for s, _ in damaged]
    raise CheckpointError(
      f"No intact checkpoint in {self.directory}: every step ({sorted(steps)}) is damaged; the "
      f"newest: {damaged[0][1]}"
    ) from damaged[0][1]

  def _restore_step(
    self, step: int, abstract_state: Any, items: set[str], tokenizer: Mapping | None
  ) -> Restored:
    if tokenizer is not None:
      _check_tokenizer(self._manager, step, tokenizer)
    step_dir = _step_path(self.directory, step)
    args: dict[str, ocp.args.CheckpointArgs] = {STATE: ocp.args.StandardRestore(abstract_state)}
    if DATA in items and (step_dir / DATA).exists():
      args[DATA] = _ProcessJsonRestore()
    args.update(_json_restore_args(step_dir, [n for n in _JSON_ITEMS if n in items]))
    restored = _restore_items(self._manager, step, args)
    return Restored(
      step=step,
      state=restored[STATE],
      data_state=restored.get(DATA),
      tokenizer=restored.get(TOKENIZER),
      config=restored.get(CONFIG),
      extra=restored.get(EXTRA),
    )

  def _set_aside(self, steps: Iterable[int]) -> None:
    if jax.process_index() == 0:
      for step in steps:
        path = _step_path(self.directory, step)
        target = path.parent / f"{path.name}.damaged"
        if target.exists():
          target = path.parent / f"{path.name}.damaged.{os.getpid()}"
        _LOG.warning("Moving damaged checkpoint %s to %s", path, target)
        path.rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("moe_asr_checkpoint_set_aside")
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until asynchronous saves are finalized; raises their errors.

    Raises:
      SaveError: the disk filled up during the save (the step is not kept).
    """
    with self._save_errors():
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Finishes pending saves and deletions and releases the manager.

    Raises:
      SaveError: the disk filled up during the last save (unless already raised).
    """
    already = self._failed
    try:
      with self._save_errors():
        self._manager.close()
    except SaveError:
      if already is None:  # Not yet reported (e.g. by `wait`).
        raise

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


# --- Single items without a model -------------------------------------------


def _read_json_item(directory: epath.PathLike, step: int | None, name: str) -> Any:
  """Item `name` of `step`, or of the newest step where it reads back (None if not saved)."""
  directory = absolute(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f"Checkpoint directory {directory} does not exist.")
  options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False)
  manager = ocp.CheckpointManager(directory, options=options)
  try:
    errors = []
    for candidate in _candidate_steps(manager, step):
      args = _json_restore_args(_step_path(directory, candidate), [name])
      try:
        return _restore_items(manager, candidate, args)[name] if args else None
      except CheckpointError as e:
        if step is not None:
          raise
        errors.append(e)
        _LOG.warning(
          "The %s of checkpoint step %d in %s is damaged; trying the step before it.",
          name,
          candidate,
          directory,
        )
    raise errors[0]
  finally:
    manager.close()


def saved_tokenizer_id(directory: epath.PathLike, step: int | None = None) -> dict | None:
  """The identity (`tokenizer_id`) of the tokenizer a checkpoint step was trained with.

  Args:
    directory: The checkpoint directory.
    step: Which step; None is the latest complete one.

  Returns:
    The identity; from the tokenizer copy for checkpoints that predate recorded identities;
    None (with a warning) where the step holds neither.
  """
  directory = absolute(directory)
  options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False)
  manager = ocp.CheckpointManager(directory, options=options)
  try:
    return _saved_tokenizer_id(manager, _resolve_step(manager, step))
  finally:
    manager.close()


def read_config(directory: epath.PathLike, step: int | None = None) -> dict | None:
  """The config item of a checkpoint step, without restoring the state.

  Args:
    directory: The checkpoint directory (local path or `gs://` URI).
    step: Which step; None is the latest complete one.

  Returns:
    The config dict, or None if that step saved none.
  """
  return _read_json_item(directory, step, CONFIG)


def read_tokenizer(directory: epath.PathLike, step: int | None = None) -> bytes | None:
  """The serialized SentencePiece model of a checkpoint step (checksum verified).

  Args:
    directory: The checkpoint directory (local path or `gs://` URI).
    step: Which step; None is the latest complete one.

  Returns:
    The model bytes, or None if that step saved none.
  """
  return _read_json_item(directory, step, TOKENIZER)


# --- Preemption -------------------------------------------------------------


class PreemptionGuard:
  """Turns termination signals into a flag the train loop polls.

  On a signal the handler only records it; the loop then saves a checkpoint
  (`force=True`) and returns. With several processes the loop must agree on
  stopping (any process's flag), since a signal may reach only some of them.
  """

  def __init__(self, signals: Iterable[signal.Signals] = (signal.SIGTERM,)):
    """Prepares the guard; handlers are installed by `__enter__`.

    Args:
      signals: The signals that request a save-and-exit.
    """
    self._signals = tuple(signals)
    self._previous: dict[signal.Signals, Callable | int | None] = {}
    self._requested = False

  @property
  def requested(self) -> bool:
    """True once one of the signals has arrived."""
    return self._requested

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    # Only a flag: the handler may interrupt the loop anywhere, even inside
    # logging or a lock, so the loop does the saving and the talking.
    del signum, frame
    self._requested = True

  def __enter__(self) -> PreemptionGuard:
    if threading.current_thread() is not threading.main_thread():
      raise RuntimeError("PreemptionGuard must be entered in the main thread (signal handlers).")
    for sig in self._signals:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    self._previous.clear()
