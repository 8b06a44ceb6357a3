"""Retrieval examples: each query beside its nearest neighbours (Fig. 5).

Shape letters: Q queries, k neighbours, N images, D embedding dimensions,
H × W pixels.

Wu et al., Fig. 5 shows test queries of each dataset with their nearest
neighbours. `retrieval_figure` draws such a grid: one row per query, the
query first (framed blue), then its k neighbours nearest first, each framed
green when its label equals the query's and red otherwise (grey when either
label is unknown), captioned with its distance and label (✓ / ✗ when the
labels are known). `retrieval_examples` picks a seeded set of queries from a
split's embeddings and finds their neighbours among the other images of the
split (`dmljax.runtime.index.Gallery`, the query itself excluded);
`split_retrieval_figure` does both.

Images may be grayscale ([H, W] or [H, W, 1]) or RGB ([H, W, 3]), uint8 or
float in [0, 1]; each cell is `cell_inches` square plus a caption band, so
the PNG is (k + 1)·c wide and Q·(c + caption) high at `dpi` pixels per inch.
"""

from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import numpy as np
from matplotlib.backends import backend_agg
from matplotlib.figure import Figure

from dmljax.runtime import index

QUERY_COLOR = "#2b83ba"
RIGHT_COLOR = "#1a9641"
WRONG_COLOR = "#d7191c"
UNKNOWN_COLOR = "#808080"
CAPTION_INCHES = 0.36
_FRAME_POINTS = 4.0


class RetrievalExamples(NamedTuple):
  """Queries and their neighbours, rows of one split.

  Attributes:
    queries: int [Q] query rows.
    neighbors: int [Q, k] neighbour rows, nearest first.
    distances: float32 [Q, k] Euclidean distances.
  """

  queries: np.ndarray
  neighbors: np.ndarray
  distances: np.ndarray


def as_rgb(image: Any) -> np.ndarray:
  """float [H, W, 3] in [0, 1] from a grayscale or RGB, uint8 or float image.

  >>> as_rgb(np.array([[0, 255]], np.uint8)).tolist()
  [[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]]
  """
  pixels = np.asarray(image)
  if pixels.ndim == 3 and pixels.shape[2] == 1:
    pixels = pixels[:, :, 0]
  if pixels.ndim == 2:
    pixels = np.repeat(pixels[:, :, None], 3, axis=2)
  if pixels.ndim != 3 or pixels.shape[2] != 3:
    raise ValueError(
      f"An image must be [H, W], [H, W, 1] or [H, W, 3], got {pixels.shape}."
    )
  if pixels.dtype == np.uint8:
    return pixels.astype(np.float32) / 255.0
  if not np.issubdtype(pixels.dtype, np.floating):
    raise ValueError(f"Images must be uint8 or float, got {pixels.dtype}.")
  if pixels.size and not (
    np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 1
  ):
    raise ValueError(
      "Float images must lie in [0, 1] (not standardised network inputs), "
      f"got {np.nanmin(pixels):g}..{np.nanmax(pixels):g}."
    )
  return pixels.astype(np.float32)


def _frame_color(query_label: Any, label: Any) -> tuple[str, str]:
  """(frame colour, mark) of a neighbour."""
  if query_label is None or label is None:
    return UNKNOWN_COLOR, ""
  if query_label == label:
    return RIGHT_COLOR, " ✓"
  return WRONG_COLOR, " ✗"


def _cell(fig, image, box, color: str, caption: str) -> None:
  """One framed image with its caption at `box` (figure fractions)."""
  left, bottom, width, height, caption_height = box
  axes = fig.add_axes((left, bottom + caption_height, width, height))
  axes.imshow(as_rgb(image), interpolation="nearest", aspect="auto")
  axes.set_xticks([])
  axes.set_yticks([])
  for spine in axes.spines.values():
    spine.set_edgecolor(color)
    spine.set_linewidth(_FRAME_POINTS)
  fig.text(
    left + width / 2,
    bottom + caption_height / 2,
    caption,
    ha="center",
    va="center",
    fontsize=7,
    color=color if color != UNKNOWN_COLOR else "black",
  )


def _label_text(label: Any) -> str:
  return "" if label is None else str(label)


def retrieval_figure(
  query_images: Sequence[Any],
  neighbor_images: Sequence[Sequence[Any]],
  distances: Any,
  out: str,
  *,
  query_labels: Sequence[Any] | None = None,
  neighbor_labels: Sequence[Sequence[Any]] | None = None,
  cell_inches: float = 1.3,
  dpi: int = 100,
) -> str:
  """Writes the grid PNG: each query, then its k neighbours, framed.

  Args:
    query_images: Q images (grayscale or RGB, uint8 or float in [0, 1]).
    neighbor_images: Q sequences of k images, nearest first.
    distances: [Q, k] the neighbours' distances to their query.
    out: the PNG to write.
    query_labels: Q labels (any comparable; None entries: unknown), or
      None.
    neighbor_labels: Q sequences of k labels, or None.
    cell_inches: the side of one image cell.
    dpi: pixels per inch of the PNG.

  Returns:
    `out`.
  """
  distances = np.asarray(distances, np.float64)
  num_queries = len(query_images)
  if num_queries == 0 or distances.ndim != 2 or len(distances) != num_queries:
    raise ValueError(
      f"distances must be [Q, k] with Q = {num_queries} ≥ 1 queries, got "
      f"{distances.shape}."
    )
  k = distances.shape[1]
  if len(neighbor_images) != num_queries or any(
    len(row) != k for row in neighbor_images
  ):
    raise ValueError(f"neighbor_images must be {num_queries} rows of {k}.")
  if query_labels is None:
    query_labels = [None] * num_queries
  if neighbor_labels is None:
    neighbor_labels = [[None] * k] * num_queries
  row_inches = cell_inches + CAPTION_INCHES
  fig = Figure(figsize=((k + 1) * cell_inches, num_queries * row_inches))
  backend_agg.FigureCanvasAgg(fig)
  width = 1.0 / (k + 1)
  height = 1.0 / num_queries
  inset = 0.06  # Of a cell, around the image, so that the frame shows.
  for row in range(num_queries):
    bottom = 1.0 - (row + 1) * height
    caption_height = height * CAPTION_INCHES / row_inches
    image_height = height - caption_height
    cells = [
      (
        query_images[row],
        QUERY_COLOR,
        f"query {_label_text(query_labels[row])}",
      )
    ]
    for column in range(k):
      label = neighbor_labels[row][column]
      color, mark = _frame_color(query_labels[row], label)
      caption = f"{distances[row, column]:.3f}  {_label_text(label)}{mark}"
      cells.append((neighbor_images[row][column], color, caption))
    for column, (image, color, caption) in enumerate(cells):
      box = (
        column * width + inset * width,
        bottom,
        width * (1 - 2 * inset),
        image_height * (1 - inset),
        caption_height,
      )
      _cell(fig, image, box, color, caption)
  fig.savefig(out, dpi=dpi, facecolor="white")
  return out


def retrieval_examples(
  embeddings: Any,
  *,
  num_queries: int = 8,
  k: int = 5,
  seed: int = 0,
) -> RetrievalExamples:
  """A seeded set of queries and their k nearest other rows.

  Args:
    embeddings: float [N, D] of one split (N ≥ 2).
    num_queries: Q, at most N (drawn without replacement, ascending).
    k: neighbours per query, at most N − 1 (the query is excluded).
    seed: the draw.

  Returns:
    `RetrievalExamples` (rows of `embeddings`).
  """
  gallery = index.Gallery(embeddings)
  count = len(gallery)
  if count < 2 or not 1 <= k <= count - 1:
    raise ValueError(
      f"k={k} neighbours need 1 ≤ k ≤ N − 1 and N ≥ 2; N = {count}."
    )
  if not 1 <= num_queries:
    raise ValueError(f"num_queries must be ≥ 1, got {num_queries}.")
  rng = np.random.default_rng(seed)
  queries = np.sort(rng.choice(count, min(num_queries, count), replace=False))
  distances, neighbors = gallery.search_items(queries, k, exclude_self=True)
  return RetrievalExamples(queries, neighbors, distances)


def split_retrieval_figure(
  images: Any,
  labels: Any,
  embeddings: Any,
  out: str,
  *,
  num_queries: int = 8,
  k: int = 5,
  seed: int = 0,
  **figure_options: Any,
) -> RetrievalExamples:
  """`retrieval_examples` of a split drawn by `retrieval_figure` to `out`.

  Args:
    images: N images of the split (array [N, H, W(, C)] or a sequence).
    labels: [N] their labels.
    embeddings: float [N, D] their embeddings.
    out: the PNG to write.
    num_queries, k, seed: as `retrieval_examples`.
    **figure_options: passed to `retrieval_figure` (cell_inches, dpi).

  Returns:
    The examples drawn.
  """
  labels = np.asarray(labels)
  if len(images) != len(labels) or len(labels) != len(embeddings):
    raise ValueError(
      f"{len(images)} images, {len(labels)} labels and {len(embeddings)} "
      "embeddings: one of each per image."
    )
  examples = retrieval_examples(
    embeddings, num_queries=num_queries, k=k, seed=seed
  )
  retrieval_figure(
    [images[q] for q in examples.queries],
    [[images[i] for i in row] for row in examples.neighbors],
    examples.distances,
    out,
    query_labels=labels[examples.queries].tolist(),
    neighbor_labels=labels[examples.neighbors].tolist(),
    **figure_options,
  )
  return examples
