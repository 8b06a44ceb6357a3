"""A t-SNE map of a sample of classes' embeddings, coloured by class.

Shape letters: N points, D embedding dimensions, n sampled points, C
sampled classes.

`tsne_sample` draws (seeded) up to `max_classes` classes and, if they hold
more than `max_points` points, a uniform subset of their points;
`tsne_points` maps embeddings to 2-D with scikit-learn's `TSNE` (PCA
initialisation, learning rate "auto", the given seed); `tsne_figure` does
both and writes a scatter PNG with one colour per class and a legend.
scikit-learn needs perplexity < n; `tsne_points` lowers it to (n − 1) / 3
when n is small.
"""

from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends import backend_agg
from matplotlib.figure import Figure


def class_color(i: int, num_classes: int) -> tuple[float, ...]:
  """The RGBA colour of class i of `num_classes`.

  Up to 20 classes: tab20, saturated colours first (tab20 pairs each with a
  light variant); more: evenly spaced along "turbo".
  """
  if num_classes <= 20:
    return colormaps["tab20"]((2 * i) % 20 + (2 * i) // 20)
  return colormaps["turbo"](i / (num_classes - 1))


def tsne_sample(
  labels: Any,
  *,
  max_classes: int = 20,
  max_points: int = 1000,
  seed: int = 0,
) -> np.ndarray:
  """int [n] ascending rows: ≤ max_classes classes, ≤ max_points points.

  >>> tsne_sample([0, 0, 1, 1, 2, 2], max_classes=2, max_points=3).size
  3
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0:
    raise ValueError(f"labels must be a non-empty [N] vector, got {labels}.")
  if max_classes < 1 or max_points < 2:
    raise ValueError(
      f"max_classes must be ≥ 1 and max_points ≥ 2, got {max_classes} and "
      f"{max_points}."
    )
  rng = np.random.default_rng(seed)
  classes = np.unique(labels)
  chosen = rng.choice(classes, min(max_classes, classes.size), replace=False)
  rows = np.flatnonzero(np.isin(labels, chosen))
  if rows.size > max_points:
    rows = rng.choice(rows, max_points, replace=False)
  return np.sort(rows)


def tsne_points(
  embeddings: Any, *, perplexity: float = 30.0, seed: int = 0
) -> np.ndarray:
  """float32 [n, 2]: scikit-learn's t-SNE of float [n, D] embeddings.

  The perplexity is lowered to (n − 1) / 3 when n is too small for it.
  It runs on one OpenMP thread: for ≤ 1,000 points scikit-learn's threads
  only wait on each other, and on 2 cores shared with JAX a 448-point map
  took 33 s with them and 1.3 s without.
  """
  # pylint: disable=import-outside-toplevel
  import threadpoolctl
  from sklearn import manifold

  embeddings = np.asarray(embeddings, np.float32)
  count = embeddings.shape[0] if embeddings.ndim == 2 else 0
  if count < 4 or not np.isfinite(embeddings).all():
    raise ValueError(
      "t-SNE needs finite [n, D] embeddings with n ≥ 4, got shape "
      f"{embeddings.shape}."
    )
  tsne = manifold.TSNE(
    n_components=2,
    perplexity=min(perplexity, (count - 1) / 3),
    init="pca",
    learning_rate="auto",
    random_state=seed,
  )
  with threadpoolctl.threadpool_limits(1, user_api="openmp"):
    return tsne.fit_transform(embeddings).astype(np.float32)


def tsne_figure(
  embeddings: Any,
  labels: Any,
  out: str,
  *,
  max_classes: int = 20,
  max_points: int = 1000,
  perplexity: float = 30.0,
  seed: int = 0,
  title: str = "t-SNE of the test embeddings",
  dpi: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
  """Writes the t-SNE scatter PNG of a sample of classes.

  Args:
    embeddings: float [N, D].
    labels: [N] class labels (ints or strings).
    out: the PNG to write.
    max_classes, max_points, seed: the sample (`tsne_sample`).
    perplexity, seed: the map (`tsne_points`).
    title: the figure's title.
    dpi: pixels per inch (the figure is 7 × 6 inches).

  Returns:
    (rows int [n] drawn, their 2-D points float32 [n, 2]).
  """
  embeddings, labels = np.asarray(embeddings), np.asarray(labels)
  if len(embeddings) != len(labels):
    raise ValueError(
      f"{len(embeddings)} embeddings but {len(labels)} labels: one each."
    )
  rows = tsne_sample(
    labels, max_classes=max_classes, max_points=max_points, seed=seed
  )
  points = tsne_points(embeddings[rows], perplexity=perplexity, seed=seed)
  fig = Figure(figsize=(7, 6))
  backend_agg.FigureCanvasAgg(fig)
  axes = fig.add_subplot()
  classes = np.unique(labels[rows])
  for i, label in enumerate(classes):
    mine = labels[rows] == label
    axes.scatter(
      points[mine, 0],
      points[mine, 1],
      s=12,
      color=class_color(i, classes.size),
      label=str(label),
    )
  axes.set(title=title, xticks=[], yticks=[])
  if classes.size <= 20:
    axes.legend(
      fontsize=7,
      markerscale=1.5,
      loc="center left",
      bbox_to_anchor=(1.0, 0.5),
      frameon=False,
    )
  fig.tight_layout()
  fig.savefig(out, dpi=dpi, facecolor="white")
  return rows, points
