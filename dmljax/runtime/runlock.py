"""One training process per workdir: `<workdir>/run.lock`.

A second process on a workdir is refused at start, naming the holder. A
lock whose process is gone (same host, and no such pid, or the pid now
belongs to a process started later) is stale: it is removed with a warning.
A lock from another host cannot be checked from here; the message says
which file to delete if that run is gone. In a multi-host run process 0
holds the lock (`dmljax.runtime.rundir.claim`).

The lock file holds {"pid", "host", "started", "process_start"} (the
process's start time from /proc, which tells a reused pid). It is created
with O_EXCL, so two starts cannot both take it.
"""

import contextlib
import datetime
import json
import os
import socket
import sys
import time
from typing import Any

LOCK_FILE = "run.lock"
_TORN_LOCK_AGE_S = 30.0


class RunDirError(ValueError):
  """The workdir cannot take this start (the message says why, what to do)."""


def _process_start(pid: int) -> str | None:
  """The start time of process `pid` (Linux /proc), to tell reused pids."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # Another user's process.
  return True


def _holder(path: str) -> dict[str, Any] | None:
  """The lock's content, or None if it is empty or torn."""
  try:
    with open(path) as f:
      holder = json.load(f)
  except FileNotFoundError:
    raise
  except (OSError, ValueError):
    return None
  return holder if isinstance(holder, dict) and "pid" in holder else None


def _stale(path: str, holder: dict[str, Any] | None) -> bool:
  if holder is None:  # Torn: its writer died within a few bytes.
    return time.time() - os.path.getmtime(path) > _TORN_LOCK_AGE_S
  if holder.get("host") != socket.gethostname():
    return False
  pid = int(holder["pid"])
  if pid == os.getpid() or not _alive(pid):
    return True
  started = holder.get("process_start")
  return started is not None and _process_start(pid) not in (None, started)


def acquire_lock(workdir: str) -> str:
  """Takes `<workdir>/run.lock`; returns its path. RunDirError if held."""
  path = os.path.join(workdir, LOCK_FILE)
  content = json.dumps(
    {
      "pid": os.getpid(),
      "host": socket.gethostname(),
      "started": datetime.datetime.now().isoformat(timespec="seconds"),
      "process_start": _process_start(os.getpid()),
    }
  )
  for _ in range(3):
    try:
      descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        holder = _holder(path)
      except FileNotFoundError:
        continue  # Released meanwhile: try again.
      if not _stale(path, holder):
        who = (
          "another process that is creating it now"
          if holder is None
          else f"pid {holder['pid']} on {holder.get('host')} (since "
          f"{holder.get('started')})"
        )
        raise RunDirError(
          f"{workdir} is in use by {who}: wait for that run to end or use "
          f"another --workdir. If that process is gone, delete {path}."
        ) from None
      print(
        f"warning: removed the stale lock {path} of "
        + (
          "a process that died while taking it"
          if holder is None
          else f"pid {holder['pid']} (no longer running)"
        ),
        file=sys.stderr,
      )
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
      continue
    with os.fdopen(descriptor, "w") as f:
      f.write(content)
    return path
  raise RunDirError(
    f"Could not take the lock {path} (it keeps changing): is another run "
    "starting in this --workdir?"
  )


def release_lock(path: str) -> None:
  """Removes the lock at `path` if this process holds it."""
  with contextlib.suppress(FileNotFoundError):
    holder = _holder(path)
    if holder and holder["pid"] == os.getpid():
      holder_host = holder.get("host")
      if holder_host == socket.gethostname():
        os.remove(path)
