"""The run's curves from metrics.jsonl: is the method working?

`training_figure` draws, against the step, the panels that the training
records hold:

- the loss, raw (light) and smoothed (a centred moving average);
- the mean positive and negative distances of the sampled tuples (D_ap,
  D_an; Wu et al. Sec. 4: distance weighted sampling keeps D_an spread
  over [√2 − ε, 2)), with the margin loss's learned β (min, median, max
  over classes) beside them when it is learned;
- the fraction of tuples with a non-zero loss (the terms a step learns
  from; Sec. 3: hard negatives vanish, easy ones give zero gradients).

`evaluation_figure` draws the held-out metrics of every evaluation
(Recall@1, MAP@R, and NMI where it was measured).
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends import backend_agg
from matplotlib.figure import Figure

_DISTANCES = (
  ("mean_positive_distance", "D_ap (positives)", "#1a9641"),
  ("mean_negative_distance", "D_an (negatives)", "#d7191c"),
)
_BETA = ("beta_min", "beta_median", "beta_max")
_EVALUATION = ("recall@1", "map@r", "nmi")


def smoothed(values: Sequence[float], window: int) -> np.ndarray:
  """Centred moving average of `values` (window shrinks at the ends).

  >>> smoothed([0.0, 3.0, 0.0, 3.0], 3).tolist()
  [1.5, 1.0, 2.0, 1.5]
  """
  values = np.asarray(values, np.float64)
  half = max(window, 1) // 2
  sums = np.concatenate([[0.0], np.cumsum(values)])
  index = np.arange(values.size)
  low = np.maximum(index - half, 0)
  high = np.minimum(index + half + 1, values.size)
  return (sums[high] - sums[low]) / (high - low)


def _series(records, name: str):
  points = [(r["step"], r[name]) for r in records if name in r]
  if not points:
    return None
  steps, values = zip(*points, strict=True)
  return np.asarray(steps), np.asarray(values, np.float64)


def _figure(num_panels: int) -> tuple[Figure, list]:
  fig = Figure(figsize=(6.5, 2.6 * num_panels))
  backend_agg.FigureCanvasAgg(fig)
  axes = [fig.add_subplot(num_panels, 1, i + 1) for i in range(num_panels)]
  for ax in axes:
    ax.grid(alpha=0.3)
  axes[-1].set_xlabel("step")
  return fig, axes


def _loss_panel(ax, records) -> None:
  steps, loss = _series(records, "loss")
  ax.plot(steps, loss, color="#9ecae1", linewidth=0.8, label="loss")
  window = max(3, len(loss) // 20)
  ax.plot(steps, smoothed(loss, window), color="#08519c", label="smoothed")
  ax.set(ylabel="training loss", title="Loss")
  ax.legend(fontsize=8)


def _distance_panel(ax, records) -> None:
  for name, label, color in _DISTANCES:
    series = _series(records, name)
    if series is not None:
      ax.plot(*series, color=color, label=label)
  ax.set(ylabel="distance", title="Sampled tuples and learned β")
  betas = [_series(records, name) for name in _BETA]
  if all(series is not None for series in betas):
    (steps, low), (_, median), (_, high) = betas
    ax.fill_between(steps, low, high, color="#756bb1", alpha=0.25)
    ax.plot(steps, median, color="#54278f", label="β (median; band min-max)")
  ax.legend(fontsize=8)


def _nonzero_panel(ax, records) -> None:
  steps, fraction = _series(records, "fraction_nonzero")
  ax.plot(steps, fraction, color="#e6550d")
  ax.set(ylabel="fraction", title="Tuples with a non-zero loss", ylim=(0, 1))


def training_figure(records: Sequence[dict[str, Any]], out: str) -> bool:
  """Writes the training panels of `records` ("train" rows) to `out`.

  Returns:
    False (and writes nothing) when no record has a loss.
  """
  records = [r for r in records if r.get("kind") == "train"]
  if _series(records, "loss") is None:
    return False
  panels = [_loss_panel]
  if any(_series(records, name) for name, _, _ in _DISTANCES):
    panels.append(_distance_panel)
  if _series(records, "fraction_nonzero") is not None:
    panels.append(_nonzero_panel)
  fig, axes = _figure(len(panels))
  for draw, ax in zip(panels, axes, strict=True):
    draw(ax, records)
  fig.tight_layout()
  fig.savefig(out, dpi=100, facecolor="white")
  return True


def evaluation_figure(records: Sequence[dict[str, Any]], out: str) -> bool:
  """Writes the held-out metrics of the "eval" / "final" records to `out`.

  Returns:
    False (and writes nothing) when there is no evaluation.
  """
  records = [r for r in records if r.get("kind") in ("eval", "final")]
  curves = {name: _series(records, name) for name in _EVALUATION}
  curves = {name: series for name, series in curves.items() if series}
  if not curves:
    return False
  fig, (ax,) = _figure(1)
  for name, (steps, values) in curves.items():
    ax.plot(steps, values, marker="o", label=name)
  ax.set(ylabel="held-out metric", title="Evaluation", ylim=(0, 1))
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=100, facecolor="white")
  return True
