"""A collapsed embedding, told from the metrics the training loop logs.

A learning rate far too high can throw every image onto the same point of
the sphere: every distance is then 0, the distances' gradient at
coincidence is 0 (`dmljax.distances`), and the network never moves again
while only β keeps learning (lr = 1e6 on digits: Recall@1 at chance, NMI
0). Nothing is NaN, so the non-finite guard does not see it.

`CollapseWatch` reads the metrics of the logged steps only (the loop reads
them back from the device there anyway: no extra host sync). A logged step
looks collapsed (`looks_collapsed`) when it had tuples (`num_tuples` > 0,
where the method reports it) and a positive loss, and either

- its mean positive and mean negative distances are both below
  `COLLAPSED_DISTANCE` (different classes at the same point), or
- its gradient norm is exactly 0 (a positive loss that cannot move
  anything).

A healthy batch never has every negative at distance 0, and a zero
gradient with a positive loss means nothing can learn; a batch whose loss
is 0 (all tuples satisfied, or masked) is never counted. `PATIENCE`
consecutive collapsed logged steps, or a collapsed last step, stop the run
with `EmbeddingCollapseError` (a `FloatingPointError`, like a NaN step).
The loop also skips a checkpoint whose step looks collapsed, so the newest
checkpoint kept is the last good one.
"""

from typing import Any

COLLAPSED_DISTANCE = 1e-6
PATIENCE = 3


class EmbeddingCollapseError(FloatingPointError):
  """Training collapsed the embedding (the message says when and what to do)."""


def _kept(last_checkpoint: int | None) -> str:
  if last_checkpoint is None:
    return "no checkpoint had been saved"
  return f"the last checkpoint (step {last_checkpoint}) is kept"


def nonfinite_evaluation(
  step: int, last_checkpoint: int | None
) -> FloatingPointError:
  """The error for test embeddings that came out NaN/inf at `step`."""
  return FloatingPointError(
    f"At step {step} the test embeddings are NaN/inf: the weights diverged "
    f"(finite in training, not on the test images); {_kept(last_checkpoint)}."
    " Lower the learning rate (--config.optim.learning_rate) and train in a "
    "new --workdir."
  )


def looks_collapsed(metrics: dict[str, Any]) -> bool:
  """Whether one step's metrics show a collapsed embedding (see above).

  >>> looks_collapsed({"loss": 1.37, "grad_norm": 1.1, "num_tuples": 80,
  ...                  "mean_positive_distance": 0.0,
  ...                  "mean_negative_distance": 0.0})
  True
  >>> looks_collapsed({"loss": 0.0, "grad_norm": 0.0})
  False
  """
  if float(metrics.get("num_tuples", 1)) <= 0:
    return False
  if not float(metrics.get("loss", 0.0)) > 0:
    return False
  positive = metrics.get("mean_positive_distance")
  negative = metrics.get("mean_negative_distance")
  if positive is not None and negative is not None:
    if max(float(positive), float(negative)) < COLLAPSED_DISTANCE:
      return True
  return float(metrics.get("grad_norm", 1.0)) == 0.0


class CollapseWatch:
  """Counts consecutive collapsed logged steps; raises at `patience`."""

  def __init__(self, patience: int = PATIENCE):
    self.patience = patience
    self.first = None  # The first step of the current collapsed streak.
    self.count = 0

  def observe(
    self,
    step: int,
    metrics: dict[str, Any],
    *,
    last_checkpoint: int | None,
    final: bool = False,
  ) -> None:
    """Records a logged step; EmbeddingCollapseError when it is time.

    Args:
      step: the logged step.
      metrics: its metrics as Python floats.
      last_checkpoint: the newest checkpoint's step (None: none yet), named
        in the message.
      final: the run's last step (a collapse there stops it at once).
    """
    if not looks_collapsed(metrics):
      self.first, self.count = None, 0
      return
    if self.first is None:
      self.first = step
    self.count += 1
    if self.count < self.patience and not final:
      return
    seen = [
      f"{name.removeprefix('mean_').replace('_', ' ')} "
      f"{float(metrics[name]):.2g}"
      for name in ("mean_positive_distance", "mean_negative_distance")
      if name in metrics
    ]
    seen.append(f"gradient norm {float(metrics.get('grad_norm', 0)):.3g}")
    raise EmbeddingCollapseError(
      f"The embedding collapsed to a point at step {self.first} (still at "
      f"step {step}, {self.count} logged steps: {', '.join(seen)}), so "
      f"training cannot recover; {_kept(last_checkpoint)}. Lower the "
      "learning rate "
      "(--config.optim.learning_rate) and train in a new --workdir."
    )
