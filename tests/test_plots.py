"""The retrieval grid (Wu et al., Fig. 5) and the t-SNE map, as PNGs.

Pixels are read back: the grid's size grows with queries × (k + 1), and a
neighbour with the query's label is framed green, another red. Neighbours
are checked against a float64 brute force; t-SNE on well-separated clusters
must keep each point beside its own class.
"""

import matplotlib.colors
import numpy as np
import pytest
from PIL import Image

from dmljax.runtime.plots import retrieval
from dmljax.runtime.plots import tsne


def _blueish(rng, side=12):
  """float RGB [side, side, 3] in [0, 1], never near green or red."""
  image = rng.uniform(0, 0.3, (side, side, 3))
  image[:, :, 2] = rng.uniform(0.5, 1.0, (side, side))
  return image


def _gray(rng, side=12):
  return rng.integers(0, 256, (side, side), dtype=np.uint8)


def _pixels_near(pixels, color, tolerance=12):
  """How many pixels of uint8 [H, W, 3+] are within `tolerance` of color."""
  rgb = np.round(np.array(matplotlib.colors.to_rgb(color)) * 255)
  return int((np.abs(pixels[:, :, :3] - rgb) <= tolerance).all(axis=2).sum())


def _cell(pixels, row, column, rows, columns):
  height, width = pixels.shape[0] // rows, pixels.shape[1] // columns
  return pixels[
    row * height : (row + 1) * height, column * width : (column + 1) * width
  ].astype(int)


def _draw(path, rows, k, rng, **labels):
  queries = [_blueish(rng) if r % 2 else _gray(rng) for r in range(rows)]
  neighbours = [[_gray(rng)[:, :, None] for _ in range(k)] for _ in range(rows)]
  distances = rng.uniform(0, 2, (rows, k))
  retrieval.retrieval_figure(queries, neighbours, distances, path, **labels)
  return np.asarray(Image.open(path).convert("RGB"))


def test_the_grid_grows_with_queries_and_neighbours(tmp_path):
  rng = np.random.default_rng(0)
  small = _draw(str(tmp_path / "a.png"), 2, 2, rng)
  large = _draw(str(tmp_path / "b.png"), 3, 4, rng)
  assert large.shape[1] * 3 == small.shape[1] * 5  # (k + 1) columns.
  assert large.shape[0] * 2 == small.shape[0] * 3  # Q rows.


def test_right_neighbours_are_framed_green_and_wrong_ones_red(tmp_path):
  rng = np.random.default_rng(1)
  pixels = _draw(
    str(tmp_path / "grid.png"),
    3,
    2,
    rng,
    query_labels=["cat", 7, None],
    neighbor_labels=[["cat", "dog"], [3, 7], [7, 7]],
  )
  right, wrong = retrieval.RIGHT_COLOR, retrieval.WRONG_COLOR
  for row, column, color, other in [
    (0, 1, right, wrong),
    (0, 2, wrong, right),
    (1, 1, wrong, right),
    (1, 2, right, wrong),
  ]:
    cell = _cell(pixels, row, column, 3, 3)
    assert _pixels_near(cell, color) > 100, (row, column)
    assert _pixels_near(cell, other) == 0, (row, column)
  for row in range(3):
    assert _pixels_near(_cell(pixels, row, 0, 3, 3), retrieval.QUERY_COLOR)
  unknown = _cell(pixels, 2, 1, 3, 3)  # The query's label is unknown.
  assert _pixels_near(unknown, right) == _pixels_near(unknown, wrong) == 0
  assert _pixels_near(unknown, retrieval.UNKNOWN_COLOR) > 100


def test_images_in_any_accepted_form_become_rgb():
  gray = np.array([[0, 51], [102, 255]], np.uint8)
  want = np.repeat((gray / 255.0)[:, :, None], 3, axis=2)
  for image in (gray, gray[:, :, None], gray / 255.0, want):
    np.testing.assert_allclose(retrieval.as_rgb(image), want, atol=1e-6)
  with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
    retrieval.as_rgb(gray - 0.5 * 255.0)
  with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
    retrieval.as_rgb(np.zeros((2, 2, 2)))


def _brute_force_neighbours(embeddings, query, k):
  x = embeddings.astype(np.float64)
  distances = [
    np.inf if i == query else float(np.sqrt(np.sum((x[i] - x[query]) ** 2)))
    for i in range(len(x))
  ]
  order = np.argsort(distances, kind="stable")[:k]
  return order, np.asarray(distances)[order]


def test_examples_are_seeded_and_exclude_the_query():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(40, 5))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  examples = retrieval.retrieval_examples(x, num_queries=8, k=5, seed=3)
  again = retrieval.retrieval_examples(x, num_queries=8, k=5, seed=3)
  np.testing.assert_array_equal(examples.queries, again.queries)
  assert len(set(examples.queries.tolist())) == 8
  for query, row, distances in zip(*examples, strict=True):
    want, want_distances = _brute_force_neighbours(x, query, 5)
    np.testing.assert_array_equal(row, want)
    np.testing.assert_allclose(distances, want_distances, atol=2e-5)
  other = retrieval.retrieval_examples(x, num_queries=8, k=5, seed=4)
  assert not np.array_equal(other.queries, examples.queries)


def test_a_split_figure_draws_its_examples(tmp_path):
  rng = np.random.default_rng(3)
  labels = np.repeat(np.arange(4), 5)
  centres = rng.normal(size=(4, 6))
  x = centres[labels] + 0.05 * rng.normal(size=(20, 6))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  images = rng.integers(0, 256, (20, 10, 10, 3), dtype=np.uint8)
  out = str(tmp_path / "fig5.png")
  examples = retrieval.split_retrieval_figure(
    images, labels, x, out, num_queries=3, k=4
  )
  pixels = np.asarray(Image.open(out).convert("RGB"))
  assert examples.neighbors.shape == (3, 4)
  assert (labels[examples.neighbors] == labels[examples.queries, None]).all()
  for row in range(3):  # Clusters: every neighbour is right.
    for column in range(1, 5):
      cell = _cell(pixels, row, column, 3, 5)
      assert _pixels_near(cell, retrieval.RIGHT_COLOR) > 100
  with pytest.raises(ValueError, match="one of each per image"):
    retrieval.split_retrieval_figure(images[:3], labels, x, out)


def test_the_tsne_sample_keeps_its_limits():
  labels = np.repeat(np.arange(30), 4)
  rows = tsne.tsne_sample(labels, max_classes=5, max_points=1000, seed=0)
  assert len(np.unique(labels[rows])) == 5 and rows.size == 20  # Whole.
  rows = tsne.tsne_sample(labels, max_classes=10, max_points=25, seed=0)
  assert rows.size == 25 and len(np.unique(labels[rows])) <= 10
  np.testing.assert_array_equal(
    rows, tsne.tsne_sample(labels, max_classes=10, max_points=25, seed=0)
  )


def test_tsne_keeps_separated_classes_apart(tmp_path):
  rng = np.random.default_rng(4)
  labels = np.repeat(np.array(["a", "b", "c"]), 8)
  centres = 10 * np.eye(3, 6)
  x = centres[np.repeat(np.arange(3), 8)] + rng.normal(size=(24, 6))
  out = str(tmp_path / "tsne.png")
  rows, points = tsne.tsne_figure(x, labels, out, perplexity=5.0)
  assert rows.size == 24 and points.shape == (24, 2)
  gaps = np.linalg.norm(points[:, None] - points[None], axis=2)
  np.fill_diagonal(gaps, np.inf)
  np.testing.assert_array_equal(labels[rows][gaps.argmin(1)], labels[rows])
  pixels = np.asarray(Image.open(out).convert("RGB")).astype(int)
  assert pixels.shape == (600, 700, 3)
  for i in range(3):
    assert _pixels_near(pixels, tsne.class_color(i, 3), tolerance=4) > 20


def test_tsne_lowers_the_perplexity_for_few_points():
  points = tsne.tsne_points(np.random.default_rng(5).normal(size=(7, 3)))
  assert points.shape == (7, 2) and np.isfinite(points).all()
