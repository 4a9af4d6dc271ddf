"""Multi-process start-up: one call that joins the job's processes, and a collective check.

Where the processes come from decides how they find each other:

* explicit arguments to `initialize`, or the environment variables
  `MOE_ASR_COORDINATOR` (host:port), `MOE_ASR_NUM_PROCESSES` and
  `MOE_ASR_PROCESS_ID`, which `launch/local_pod.sh` sets;
* a Cloud TPU pod (several workers) or a SLURM job with several tasks: JAX
  detects the cluster itself (`jax.distributed.initialize()` with no
  arguments). `MOE_ASR_DISTRIBUTED=auto` forces that path (the pod launch
  scripts set it, since a TPU VM keeps its worker list in metadata, not in the
  environment); `MOE_ASR_DISTRIBUTED=off` turns detection off;
* otherwise a single process, which needs nothing.

`initialize` must run before anything touches JAX devices: JAX fixes the set of
processes when its backends start.

Timeouts (`config.distributed`, `default_config`): how long processes wait for each other to
join (`initialization_timeout_s`) and JAX's coordination-service heartbeat
(`heartbeat_timeout_s`, after which JAX aborts every process). Within `peer_timeout_s`
moe_asr's own watch (`PeerWatch`) reports a dead or frozen peer by its process id and stops
this process with exit code `PEER_LOST_EXIT_CODE`, instead of waiting in a collective that
never completes.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

_LOG = logging.getLogger(__name__)

ENV_COORDINATOR = "MOE_ASR_COORDINATOR"
ENV_NUM_PROCESSES = "MOE_ASR_NUM_PROCESSES"
ENV_PROCESS_ID = "MOE_ASR_PROCESS_ID"
ENV_MODE = "MOE_ASR_DISTRIBUTED"

# (process_index, process_count) once `initialize` has run; makes later calls no-ops.
_initialized: tuple[int, int] | None = None
_watch: PeerWatch | None = None

PEER_LOST_EXIT_CODE = 3  # A peer process died or froze (see `PeerWatch`).


class PeerError(RuntimeError):
  """The job's processes could not join, or a peer failed."""


def default_config() -> ml_collections.ConfigDict:
  """`config.distributed`: the timeouts of a multi-process run (seconds)."""
  return ml_collections.ConfigDict(
    {
      # How long a process waits for all the others to join (jax.distributed.initialize).
      "initialization_timeout_s": 300,
      # JAX's coordination service: a process silent this long aborts the whole job. Generous:
      # two processes compiling on a loaded 2-core machine were silent for over a minute.
      "heartbeat_timeout_s": 300,
      # How long process 0 waits for the others at the end of the run.
      "shutdown_timeout_s": 300,
      # moe_asr's watch: a peer silent this long is reported by process id and the run stops
      # (exit code 3). Shorter than heartbeat_timeout_s so that the report comes first.
      # 0 turns the watch off.
      "peer_timeout_s": 240,
    }
  )


@dataclasses.dataclass(frozen=True)
class _Plan:
  """How this process joins the job.

  `kind` is "explicit" (coordinator, count and id known), "auto" (JAX detects the
  cluster) or "single" (nothing to do); `reason` says what decided it.
  """

  kind: str
  reason: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def _env_int(env: Mapping[str, str], name: str) -> int | None:
  value = env.get(name)
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"Environment variable {name} must be an integer, got {value!r}") from None


def _detect_cluster(env: Mapping[str, str]) -> str | None:
  """Names the multi-process cluster the environment describes, or None."""
  mode = env.get(ENV_MODE, "").strip().lower()
  if mode not in ("", "auto", "off"):
    raise ValueError(f"{ENV_MODE} must be 'auto' or 'off', got {env[ENV_MODE]!r}")
  if mode == "off":
    return None
  if mode == "auto":
    return f"{ENV_MODE}=auto"
  for name in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"):
    if "," in env.get(name, ""):
      return f"TPU pod ({name} lists several workers)"
  if env.get("CLOUD_TPU_TASK_ID", "") != "":
    return "TPU pod (CLOUD_TPU_TASK_ID is set)"
  ntasks = _env_int(env, "SLURM_NTASKS")
  if ntasks is not None and ntasks > 1:
    return f"SLURM job with {ntasks} tasks"
  return None


def _plan(
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
  env: Mapping[str, str],
) -> _Plan:
  """Decides how to initialise: each setting from its argument, else from the environment."""
  from_env = coordinator_address is None and num_processes is None and process_id is None
  coordinator_address = coordinator_address or env.get(ENV_COORDINATOR) or None
  num_processes = num_processes if num_processes is not None else _env_int(env, ENV_NUM_PROCESSES)
  process_id = process_id if process_id is not None else _env_int(env, ENV_PROCESS_ID)
  given = {
    ENV_COORDINATOR: coordinator_address,
    ENV_NUM_PROCESSES: num_processes,
    ENV_PROCESS_ID: process_id,
  }
  missing = [name for name, value in given.items() if value is None]
  if len(missing) < len(given):
    if missing:
      raise ValueError(
        "A multi-process launch needs a coordinator address, a process count and a process id; "
        f"missing {', '.join(missing)} (as argument or environment variable)"
      )
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit():
      raise ValueError(f"Coordinator address must be host:port, got {coordinator_address!r}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(
        f"Process id must lie in [0, {num_processes}) and the process count be at least 1, got "
        f"process id {process_id} of {num_processes}"
      )
    source = "environment" if from_env else "arguments"
    return _Plan("explicit", source, coordinator_address, num_processes, process_id)
  detected = _detect_cluster(env)
  if detected is not None:
    return _Plan("auto", detected)
  return _Plan("single", "no coordinator and no cluster detected")


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  timeouts: Mapping | None = None,
) -> tuple[int, int]:
  """Joins this process to the job's other processes (a no-op for a single process).

  Each setting comes from its argument, else from `MOE_ASR_COORDINATOR`,
  `MOE_ASR_NUM_PROCESSES`, `MOE_ASR_PROCESS_ID`; with none of them, a TPU pod or
  a SLURM job with several tasks is detected and left to JAX to configure;
  otherwise the process runs alone. Call it before anything touches JAX devices.
  A second call returns the first call's result and does nothing else.

  Args:
    coordinator_address: host:port of process 0's coordination service.
    num_processes: number of processes in the job.
    process_id: this process's index, in [0, num_processes).
    timeouts: `config.distributed` (`default_config`); missing keys take the defaults.

  Returns:
    (process_index, process_count).

  Raises:
    ValueError: some but not all of the three settings are given, or one is malformed.
    PeerError: the other processes did not join within the initialization timeout.
  """
  global _initialized, _watch
  if _initialized is not None:
    return _initialized
  limits = default_config()
  limits.update(dict(timeouts or {}))
  jax_timeouts = dict(
    initialization_timeout=int(limits.initialization_timeout_s),
    heartbeat_timeout_seconds=int(limits.heartbeat_timeout_s),
    shutdown_timeout_seconds=int(limits.shutdown_timeout_s),
  )
  if jax.distributed.is_initialized():
    plan = _Plan("explicit", "jax.distributed was already initialised")
  else:
    plan = _plan(coordinator_address, num_processes, process_id, os.environ)
    if plan.kind != "single":
      # Cross-process collectives between CPU devices need a transport; gloo ships with jaxlib.
      # A user's explicit choice (e.g. mpi) through the environment wins.
      if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
      explicit = {}
      if plan.kind == "explicit":
        explicit = dict(
          coordinator_address=plan.coordinator_address,
          num_processes=plan.num_processes,
          process_id=plan.process_id,
        )
      try:
        jax.distributed.initialize(**explicit, **jax_timeouts)
      except Exception as e:  # The coordination service raises its own (XlaRuntimeError).
        if "DEADLINE_EXCEEDED" not in str(e) and "timed out" not in str(e).lower():
          raise
        raise PeerError(
          f"Process {plan.process_id if plan.process_id is not None else '?'}: the job's "
          f"processes did not all join within distributed.initialization_timeout_s="
          f"{limits.initialization_timeout_s} s (coordinator "
          f"{plan.coordinator_address or 'detected by JAX'}): start every process, or check "
          f"that the coordinator address is reachable ({' '.join(str(e).split())[:300]})"
        ) from e
  _initialized = (jax.process_index(), jax.process_count())
  if _initialized[1] > 1 and limits.peer_timeout_s > 0:
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    if client is not None:
      _watch = PeerWatch(client, *_initialized, timeout_s=float(limits.peer_timeout_s))
      _watch.start()
      atexit.register(finish)
  _LOG.info(
    "process %d of %d (%s: %s): %d local / %d global devices, platform %s",
    *_initialized,
    plan.kind,
    plan.reason,
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].platform,
  )
  return _initialized


def is_primary() -> bool:
  """Whether this is process 0, the one that writes logs, checkpoints' metadata and reports."""
  return jax.process_index() == 0


def check_collectives() -> dict:
  """Runs an all-reduce over every device of every process and checks its value.

  Each device holds one number, its process index + 1, in a global array sharded
  over a 1-D mesh of all devices; the jitted sum must equal the value computed
  from `jax.devices()`. A process that did not join, or joined a different job,
  changes the sum.

  Returns:
    {"process_index", "process_count", "local_devices", "global_devices",
     "platform", "allreduce", "expected"}.

  Raises:
    RuntimeError: the all-reduce returned a different value.
  """
  devices = jax.devices()
  me = jax.process_index()
  mesh = Mesh(np.asarray(devices), ("devices",))
  local = np.full((jax.local_device_count(),), me + 1, np.int32)
  values = jax.make_array_from_process_local_data(
    NamedSharding(mesh, PartitionSpec("devices")), local, (len(devices),)
  )
  total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, PartitionSpec()))(values)
  result = {
    "process_index": me,
    "process_count": jax.process_count(),
    "local_devices": jax.local_device_count(),
    "global_devices": len(devices),
    "platform": devices[0].platform,
    # The result is replicated, so every process reads it from its own first shard.
    "allreduce": int(np.asarray(total.addressable_data(0))),
    "expected": sum(d.process_index + 1 for d in devices),
  }
  if result["allreduce"] != result["expected"]:
    raise RuntimeError(
      f"All-reduce over {result['global_devices']} devices of {result['process_count']} "
      f"processes gave {result['allreduce']}, expected {result['expected']} (process {me})"
    )
  return result


def finish(ok: bool = True, reason: str = "") -> None:
  """Tells the peers' watches that this process ends: normally (`ok`), or failed (`reason`).

  A peer told of a failure stops with a message naming this process; one that ended
  normally is no longer watched. Called by the command line when a command returns or
  raises, and at exit.
  """
  if _watch is not None:
    _watch.finish("done" if ok else f"failed: {reason}"[:500])


class PeerWatch:
  """Reports a dead or frozen peer process by its id and stops this process.

  Every process writes a counter to the coordination service's key-value store (process 0
  hosts it) each `timeout_s / 5` seconds from a daemon thread, and reads the others'. A peer
  whose counter has not moved for `timeout_s` (killed, frozen by SIGSTOP, swapped out, its
  host gone), or that says it failed, is named on stderr and this process exits with
  `PEER_LOST_EXIT_CODE`: a collective with that peer would never complete. When the store
  itself does not answer for `timeout_s`, process 0 (which hosts it) is the one reported.
  The threads are Python threads: they run while the main thread waits in a collective
  (XLA releases the interpreter lock there).
  """

  PREFIX = "moe_asr/alive/"

  def __init__(
    self,
    client,
    index: int,
    count: int,
    *,
    timeout_s: float,
    on_lost: Callable[[str], None] | None = None,
  ):
    self.client, self.index, self.count, self.timeout_s = client, index, count, timeout_s
    self.interval_s = max(0.2, timeout_s / 5)
    self.on_lost = on_lost or _exit_lost
    self._stop = threading.Event()
    self._last_answer = time.monotonic()
    self._finished = False

  def start(self) -> None:
    self._put("0")
    for target in (self._beat, self._check_store):
      threading.Thread(target=target, name=f"moe_asr-{target.__name__[1:]}", daemon=True).start()

  def finish(self, state: str) -> None:
    if self._finished:
      return
    self._finished = True
    self._stop.set()
    with contextlib.suppress(Exception):  # The store may be gone already at exit.
      self._put(state)

  def _put(self, value: str) -> None:
    self.client.key_value_set(f"{self.PREFIX}{self.index}", value, allow_overwrite=True)

  def _lost(self, message: str) -> None:
    if not self._stop.is_set():
      self._stop.set()
      self.on_lost(message)

  def _beat(self) -> None:
    counter = 0
    seen: dict[int, tuple[str | None, float]] = {
      i: (None, time.monotonic()) for i in range(self.count) if i != self.index
    }
    tick = time.monotonic()
    while not self._stop.wait(self.interval_s):
      counter += 1
      try:
        self._put(str(counter))
        values = dict(self.client.key_value_dir_get(self.PREFIX))
      except Exception:  # Not answered: `_check_store` reports it once it lasts.
        continue
      self._last_answer = now = time.monotonic()
      if now - tick > 3 * self.interval_s:
        # This thread itself did not run for a while (the interpreter lock held by native
        # code): the peers' silence over that time is not theirs, so their clocks restart.
        seen = {peer: (last, now) for peer, (last, _) in seen.items()}
      tick = now
      for peer, (last, since) in list(seen.items()):
        value = values.get(f"{self.PREFIX}{peer}")
        if value == "done":
          del seen[peer]
        elif value is not None and value.startswith("failed"):
          self._lost(f"process {peer} of {self.count} {value}")
          return
        elif value != last:
          seen[peer] = (value, now)
        elif now - since > self.timeout_s:
          self._lost(
            f"process {peer} of {self.count} has not been heard from for {now - since:.0f} s "
            f"(distributed.peer_timeout_s={self.timeout_s:g}): it died or is frozen (stopped, "
            "swapped out, its host down)"
          )
          return

  def _check_store(self) -> None:
    tick = time.monotonic()
    while not self._stop.wait(self.interval_s):
      now = time.monotonic()
      if now - tick > 3 * self.interval_s:  # This process stalled, not (necessarily) the store.
        self._last_answer = max(self._last_answer, now - self.interval_s)
      tick = now
      silent = now - self._last_answer
      if silent > self.timeout_s:
        self._lost(
          f"the coordination service of process 0 of {self.count} has not answered for "
          f"{silent:.0f} s (distributed.peer_timeout_s={self.timeout_s:g}): process 0 died or "
          "is frozen"
        )
        return


def _exit_lost(message: str) -> None:
  index = jax.process_index()
  text = (
    f"moe-asr: error: {message}. Process {index} stops (exit code {PEER_LOST_EXIT_CODE}); "
    "the last complete checkpoint is intact: restart the job to resume from it."
  )
  print(text, file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(PEER_LOST_EXIT_CODE)  # The main thread may be blocked in a collective for good.
