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
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

_LOG = logging.getLogger(__name__)

ENV_COORDINATOR = "MOE_ASR_COORDINATOR"
ENV_NUM_PROCESSES = "MOE_ASR_NUM_PROCESSES"
ENV_PROCESS_ID = "MOE_ASR_PROCESS_ID"
ENV_MODE = "MOE_ASR_DISTRIBUTED"

# (process_index, process_count) once `initialize` has run; makes later calls no-ops.
_initialized: tuple[int, int] | None = None


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

  Returns:
    (process_index, process_count).

  Raises:
    ValueError: some but not all of the three settings are given, or one is malformed.
  """
  global _initialized
  if _initialized is not None:
    return _initialized
  if jax.distributed.is_initialized():
    plan = _Plan("explicit", "jax.distributed was already initialised")
  else:
    plan = _plan(coordinator_address, num_processes, process_id, os.environ)
    if plan.kind != "single":
      # Cross-process collectives between CPU devices need a transport; gloo ships with jaxlib.
      # A user's explicit choice (e.g. mpi) through the environment wins.
      if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
      if plan.kind == "explicit":
        jax.distributed.initialize(
          coordinator_address=plan.coordinator_address,
          num_processes=plan.num_processes,
          process_id=plan.process_id,
        )
      else:
        jax.distributed.initialize()
  _initialized = (jax.process_index(), jax.process_count())
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
