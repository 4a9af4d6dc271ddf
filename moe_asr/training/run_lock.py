"""One training run per workdir: an exclusive lock file naming its holder.

`moe-asr train` holds `W/.moe_asr.lock` (process i > 0 of a multi-process run:
`W/.moe_asr.lock.<i>`) for its whole run: an advisory `flock` on the file, which also
records the holder's host, pid and start time. A second run on the same workdir stops at
once with an error naming the holder. The kernel releases the lock of a process that dies,
however it dies, so a lock file left by a dead process is simply taken over (with a warning
naming the run that left it).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import pathlib
import socket

_LOG = logging.getLogger(__name__)

LOCK_FILE = ".moe_asr.lock"


class WorkdirBusyError(RuntimeError):
  """Another run holds the workdir's lock."""


def lock_path(workdir: str | pathlib.Path, process_index: int = 0) -> pathlib.Path:
  """The lock file of process `process_index` of a run in `workdir`."""
  name = LOCK_FILE if process_index == 0 else f"{LOCK_FILE}.{process_index}"
  return pathlib.Path(workdir) / name


def _holder(text: str) -> str:
  try:
    owner = json.loads(text)
    return f"pid {owner['pid']} on host {owner['host']} (since {owner['started']})"
  except (ValueError, KeyError, TypeError):
    return "an unknown process (the lock file names none)"


def _alive_here(text: str) -> bool | None:
  """Whether the holder recorded in `text` runs on this host (None: not this host's)."""
  try:
    owner = json.loads(text)
  except ValueError:
    return None
  if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
    return None
  try:
    os.kill(int(owner["pid"]), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, KeyError, TypeError, ValueError):
    return True
  return True


class WorkdirLock:
  """Holds a workdir's lock from `acquire` (or `__enter__`) to `release`."""

  def __init__(self, workdir: str | pathlib.Path, process_index: int = 0):
    self.path = lock_path(workdir, process_index)
    self._fd: int | None = None

  def acquire(self) -> WorkdirLock:
    """Takes the lock or raises WorkdirBusyError naming its holder; never waits."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      text = _read(fd)
      os.close(fd)
      raise WorkdirBusyError(
        f"Workdir {self.path.parent} is in use by another run: {_holder(text)} holds "
        f"{self.path}. Wait for that run to end or stop it, or train in another --workdir."
      ) from None
    except OSError:
      os.close(fd)
      raise
    previous = _read(fd)
    if previous.strip():
      state = "no longer running" if _alive_here(previous) is False else "which no longer holds it"
      _LOG.warning("Taking over the lock %s left by %s, %s", self.path, _holder(previous), state)
    owner = {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    """Empties the lock file and releases the lock (a no-op when not held)."""
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)  # An empty file: released cleanly, nothing to report.
    finally:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc_info) -> None:
    self.release()


def _read(fd: int) -> str:
  try:
    return os.pread(fd, 4096, 0).decode("utf-8", "replace")
  except OSError:
    return ""
