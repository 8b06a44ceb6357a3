"""A run directory's identity, the rule for resuming it, and its lock.

A training run owns its `--workdir`. Besides checkpoints and metrics it holds

  config.json   the run's config, its identity (what `experiments.embed`
                rebuilds the network from). Written only once a start has
                passed the checks below, never before.
  starts.jsonl  one line per accepted start: {"time", "host", "pid",
                "step" (the checkpoint it resumed from, 0 for a fresh
                start), "changes" {field: [old, new]}}.
  run.lock      while a process trains in it (`dmljax.runtime.runlock`).

The resume rule. A checkpoint means one run's network (model.*), its data
stream (data.*: dataset, files, batch, P × K, image sizes, num_workers, since
grain's iterator state has one entry per worker), its objective (sampler.*,
loss.*, beta.*, dsp.*), its optimiser state and schedule (optim.*,
parallel.mining) and its seed. A start on a workdir that holds a checkpoint
compares its config with config.json field by field:

- free to change: train.log_every, train.eval_every, ckpt.*, eval.*,
  parallel.num_devices (the numbers do not depend on the device count),
  data.cache_dir (where a cache lives) and data.check_counts (a check);
- train.num_steps may grow: the run is extended from its checkpoint. The
  learning-rate schedule is then that of the new length from the
  checkpoint on, so an extended run is not the run a fresh start with that
  length would give; the change is recorded in starts.jsonl (and in
  summary.json). It may not shrink;
- every other field must be equal, and so must the set of fields (a field
  the run's config lacks was added to dmljax after the run started, and its
  default may not be what the run did), except dsp.* in a run whose
  sampler is not DE-DSP's (it reads none of them), and a field dmljax
  retired because its value now follows from others (RETIRED_FIELDS:
  dsp.kind, which loss.name decides).

Anything else is refused with one line naming the fields, before anything
in the directory is written: train that config in a new --workdir. A workdir
without a checkpoint holds nothing a config could contradict: any config
starts there afresh. A run from before this rule (a checkpoint, no
config.json) falls back on summary.json's config, else resumes unchecked
with a warning.

The lock (`dmljax.runtime.runlock`): one process trains in a workdir at a
time; in a multi-host run process 0 holds it and writes, the others only check.
"""

import contextlib
import datetime
import json
import os
import socket
import sys
from typing import Any

import ml_collections

from dmljax.runtime import checkpoint as checkpoint_lib
from dmljax.runtime import config_checks
from dmljax.runtime import runlock

# The run directory's layout: every file and folder a run writes, named here
# once (train, reporting, export, tensorboard and the tests read these).
IDENTITY_FILE = "config.json"
STARTS_FILE = "starts.jsonl"
LOCK_FILE = runlock.LOCK_FILE
METRICS_FILE = "metrics.jsonl"  # One JSON line per log / evaluation.
SUMMARY_FILE = "summary.json"  # The config and the final metrics.
CHECKPOINTS_FOLDER = "checkpoints"  # Orbax steps + the data iterator.
TENSORBOARD_FOLDER = "tensorboard"  # Optional (tensorboardX).
CURVE_FIGURES = ("training.png", "eval.png")  # From metrics.jsonl.
EMBEDDING_FIGURES = ("retrieval.png", "tsne.png")  # From the test embeddings.


def checkpoints_folder(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINTS_FOLDER)


FREE_FIELDS = (
  "train.log_every",
  "train.eval_every",
  "parallel.num_devices",
  "data.cache_dir",
  "data.check_counts",
)
FREE_SECTIONS = ("ckpt.", "eval.")
EXTENDABLE = "train.num_steps"
# Fields dmljax no longer has because their value follows from others
# (dsp.kind from loss.name): a run that recorded one may still resume.
RETIRED_FIELDS = ("dsp.kind",)
DSP_SAMPLER = "dsp"  # dsp.* matters only to runs with this sampler.
_ABSENT = "<absent>"
# The error of a refused start: the lock's and the resume rule's alike.
RunDirError = runlock.RunDirError


def _comparable(value: Any) -> Any:
  """JSON's lists and the config's tuples alike."""
  if isinstance(value, list | tuple):
    return tuple(_comparable(v) for v in value)
  return value


def _as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(json.dumps(config.to_dict(), default=str))


def config_changes(
  recorded: dict[str, Any], config: dict[str, Any]
) -> dict[str, tuple[Any, Any]]:
  """{dotted field: (old, new)} for every field that differs.

  A field on one side only is paired with "<absent>".

  >>> config_changes({"a": {"b": 1, "c": [2]}}, {"a": {"b": 3, "c": (2,)}})
  {'a.b': (1, 3)}
  """
  old, new = config_checks.flatten(recorded), config_checks.flatten(config)
  changes = {}
  for name in sorted(set(old) | set(new)):
    before = _comparable(old.get(name, _ABSENT))
    after = _comparable(new.get(name, _ABSENT))
    if before != after:
      changes[name] = (before, after)
  return changes


def _free(name: str) -> bool:
  return name in FREE_FIELDS or name.startswith(FREE_SECTIONS)


def refused_changes(
  changes: dict[str, tuple[Any, Any]], *, uses_dsp: bool = False
) -> dict[str, tuple]:
  """The changes a resume may not make (see the module docstring).

  `uses_dsp`: the run's sampler is DE-DSP's; otherwise dsp.* means nothing
  to it and may change.

  >>> refused_changes({"train.num_steps": (300, 600), "eval.ks": (1, 2),
  ...                  "data.batch_size": (25, 15), "dsp.features": (8, 4),
  ...                  "dsp.kind": ("triplet", "<absent>")}, uses_dsp=True)
  {'data.batch_size': (25, 15), 'dsp.features': (8, 4)}
  """
  refused = {}
  for name, (old, new) in changes.items():
    if _free(name) or (name.startswith("dsp.") and not uses_dsp):
      continue
    if name in RETIRED_FIELDS and new == _ABSENT:
      continue
    grows = (
      name == EXTENDABLE
      and isinstance(old, int)
      and isinstance(new, int)
      and new > old
    )
    if not grows:
      refused[name] = (old, new)
  return refused


def _show(value: Any) -> str:
  if value == _ABSENT:
    return "(absent)"
  text = json.dumps(value, default=str)
  return text if len(text) <= 40 else text[:37] + "..."


def _describe(name: str, old: Any, new: Any) -> str:
  text = f"{name} {_show(old)} → {_show(new)}"
  if name == EXTENDABLE:
    text += " (a run is extended, never shortened)"
  elif old == _ABSENT:
    text += " (added to dmljax after the run started)"
  return text


def recorded_config(workdir: str) -> dict[str, Any] | None:
  """The config of the run in `workdir` (config.json, else summary.json)."""
  for name, key in ((IDENTITY_FILE, None), (SUMMARY_FILE, "config")):
    path = os.path.join(workdir, name)
    if os.path.isfile(path):
      try:
        with open(path) as f:
          content = json.load(f)
      except (OSError, ValueError) as error:
        raise RunDirError(
          f"{path} is unreadable ({error}): it records the run's config. "
          "Restore it, or train in a new --workdir."
        ) from error
      return content if key is None else content[key]
  return None


def check_resume(
  workdir: str, config: ml_collections.ConfigDict
) -> tuple[int, dict[str, tuple[Any, Any]]]:
  """(checkpoint step or 0, changes) if `config` may start in `workdir`.

  Reads only. Raises `RunDirError` for a change the rule refuses.
  """
  steps = checkpoint_lib.saved_steps(checkpoints_folder(workdir))
  if not steps:
    return 0, {}
  step, recorded = steps[-1], recorded_config(workdir)
  if recorded is None:
    print(
      f"warning: {workdir} holds a checkpoint (step {step}) but no record "
      "of its config (a run from an older dmljax): resuming unchecked.",
      file=sys.stderr,
    )
    return step, {}
  changes = config_changes(recorded, _as_json(config))
  samplers = {recorded.get("sampler", {}).get("name"), config.sampler.name}
  refused = refused_changes(changes, uses_dsp=DSP_SAMPLER in samplers)
  if refused:
    listed = ", ".join(_describe(n, *change) for n, change in refused.items())
    raise RunDirError(
      f"{workdir} holds a run (checkpoint at step {step}) with another "
      f"config: {listed}. A resume may raise train.num_steps and change only "
      "logging, evaluation and checkpoint settings "
      "(dmljax/runtime/rundir.py): train this config in a new --workdir, or "
      "rerun with the run's values."
    )
  return step, changes


def read_starts(workdir: str) -> list[dict[str, Any]]:
  """The records of starts.jsonl (a torn last line is skipped)."""
  path = os.path.join(workdir, STARTS_FILE)
  if not os.path.isfile(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      with contextlib.suppress(ValueError):
        records.append(json.loads(line))
  return records


def _write_start(workdir, config, step, changes) -> None:
  temporary = os.path.join(workdir, IDENTITY_FILE + ".tmp")
  with open(temporary, "w") as f:
    json.dump(config.to_dict(), f, indent=2, default=str)
  os.replace(temporary, os.path.join(workdir, IDENTITY_FILE))
  record = {
    "time": datetime.datetime.now().isoformat(timespec="seconds"),
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "step": step,
    "changes": {k: list(v) for k, v in changes.items()},
  }
  with open(os.path.join(workdir, STARTS_FILE), "a") as f:
    f.write(json.dumps(record, default=str) + "\n")


@contextlib.contextmanager
def claim(
  workdir: str, config: ml_collections.ConfigDict, *, primary: bool = True
):
  """Holds `workdir` for one training start (module docstring).

  Takes the lock (primary process), checks `config` against the run's,
  records the start, and releases the lock on exit, also on errors. A fresh
  start that fails before writing anything but the start's record (bad
  data, say) leaves the workdir as it found it.

  Yields:
    The step of the checkpoint the run resumes from (0 for a fresh start).

  Raises:
    RunDirError: the workdir is in use, or holds a run whose config this
      one contradicts. Nothing in it has been written.
  """
  lock, created = None, not os.path.exists(workdir)
  if primary:
    checkpoint_lib.make_writable_directory(
      workdir, what="workdir", error=RunDirError
    )
    lock = runlock.acquire_lock(workdir)
  try:
    step, changes = check_resume(workdir, config)
    if primary:
      _write_start(workdir, config, step, changes)
    try:
      yield step
    except BaseException:
      if primary and step == 0:
        _undo_fresh_start(workdir, created)
      raise
  finally:
    if lock is not None:
      runlock.release_lock(lock)
    if created and primary and os.path.isdir(workdir):
      with contextlib.suppress(OSError):
        os.rmdir(workdir)  # Only if empty: a start that wrote nothing.


def _undo_fresh_start(workdir: str, created: bool) -> None:
  """Removes the records of a fresh start that got no further."""
  ours = {IDENTITY_FILE, STARTS_FILE, runlock.LOCK_FILE}
  if not set(os.listdir(workdir)) <= ours:
    return  # It wrote metrics or checkpoints: keep them to look at.
  names = (IDENTITY_FILE, STARTS_FILE) if created else (STARTS_FILE,)
  for name in names:
    with contextlib.suppress(FileNotFoundError):
      os.remove(os.path.join(workdir, name))
