"""Atomic, resumable checkpoints of the train state and the data iterator.

A checkpoint holds two items under `<workdir>/checkpoints/<step>/`:
  * "state": the train state pytree (params, batch stats, optimiser states,
    step, PRNG key data), saved with Orbax;
  * "data": the grain iterator state (JSON), so that a resumed run reads
    exactly the batches the uninterrupted run would have read.

Orbax writes each step to a temporary directory and renames it when complete,
so a run killed mid-save leaves the previous checkpoint intact and the
partial one is ignored. Rerunning the same command with the same workdir
restores the latest complete checkpoint.

The state is restored onto whatever shardings the target state has, so a
checkpoint written by a run on N devices (or several processes) restores on
M devices. `read_state` reads one as host NumPy arrays, with no target and
on any topology (inspection, export, tests).
"""

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def make_writable_directory(
  directory: str, *, what: str, error: type[Exception] = ValueError
) -> None:
  """Creates `directory` if needed; `error` naming `what` unless writable."""
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as cause:
    raise error(
      f"Cannot create the {what} {directory!r} ({cause}). Choose a "
      "--workdir you can write to."
    ) from cause
  if not os.access(directory, os.W_OK):
    raise error(
      f"The {what} {directory!r} is not writable. Choose a --workdir you "
      "can write to."
    )


class Checkpointer:
  """Saves and restores (state, data iterator state) by step.

  Args:
    directory: where the step folders live (created if missing).
    max_to_keep: how many recent checkpoints to keep.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3):
    if isinstance(max_to_keep, bool) or not (
      isinstance(max_to_keep, int) and max_to_keep >= 1
    ):
      raise ValueError(
        f"max_to_keep must be an integer ≥ 1, got {max_to_keep!r}: a run "
        "that keeps no checkpoint can be neither resumed nor exported."
      )
    directory = os.path.abspath(directory)
    make_writable_directory(directory, what="checkpoint directory")
    self.directory = directory
    self._manager = ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,
      ),
      item_names=("state", "data"),
    )

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict[str, Any]) -> None:
    """Saves the state and the data iterator state at `step` (blocking)."""
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
      ),
      force=True,
    )
    self._manager.wait_until_finished()

  def restore(self, abstract_state: Any, step: int | None = None):
    """(state, data_state) at `step` (default: the latest).

    Args:
      abstract_state: a pytree with the structure, shapes and dtypes of the
        state (e.g. `jax.eval_shape` of its constructor, or the state itself).
      step: which checkpoint; None for the latest.

    Raises:
      FileNotFoundError: there is no checkpoint to restore.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=ocp.args.JsonRestore(),
      ),
    )
    return restored["state"], restored["data"]

  def close(self) -> None:
    self._manager.close()


def saved_steps(directory: str) -> list[int]:
  """The steps of the complete checkpoints in `directory`, ascending.

  Reads only: a missing directory has none (unlike `Checkpointer`, which
  creates it).
  """
  if not os.path.isdir(directory):
    return []
  return sorted(ocp.utils.checkpoint_steps(directory))


def read_state(directory: str, step: int | None = None) -> Any:
  """The train state of a checkpoint as NumPy arrays, on any topology.

  Args:
    directory: the checkpoint directory (`<workdir>/checkpoints`).
    step: which checkpoint; None for the latest.

  Raises:
    FileNotFoundError: there is no checkpoint to read, or none at `step`
      (the message lists the steps there are).
  """
  steps = saved_steps(directory)
  if not steps:
    raise FileNotFoundError(f"No checkpoint in {directory}.")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(
      f"No checkpoint of step {step} in {directory} (it holds steps "
      f"{', '.join(map(str, steps))}; older ones are deleted as training "
      "goes on, config.ckpt.max_to_keep)."
    )
  path = os.path.join(os.path.abspath(directory), str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  as_numpy = jax.tree.map(
    lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree
  )
  return checkpointer.restore(
    path, args=ocp.args.PyTreeRestore(restore_args=as_numpy)
  )
