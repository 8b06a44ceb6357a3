"""Gallery: exact top-k against a float64 NumPy brute force, tiles, disk."""

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from dmljax.runtime import index


def _unit(rng, count, dim):
  x = rng.normal(size=(count, dim))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_force(queries, gallery, k, exclude=None):
  """float64 loops: (sorted distances [Q, k], all distances [Q, N])."""
  queries, gallery = queries.astype(np.float64), gallery.astype(np.float64)
  every = np.empty((len(queries), len(gallery)))
  for q, query in enumerate(queries):
    for i, item in enumerate(gallery):
      every[q, i] = np.sqrt(np.sum((query - item) ** 2))
    if exclude is not None:
      for i in np.atleast_1d(exclude[q]):
        if i >= 0:
          every[q, i] = np.inf
  return np.sort(every, axis=1)[:, :k], every


def _assert_top_k(distances, indices, queries, gallery, k, exclude=None):
  """Same sorted distances as the brute force; indices carry them (ties)."""
  want, every = _brute_force(queries, gallery, k, exclude)
  assert not np.signbit(distances).any()  # No -0.0 either.
  np.testing.assert_allclose(distances, want, atol=2e-6)
  found = np.take_along_axis(every, np.maximum(indices, 0), axis=1)
  np.testing.assert_allclose(found[indices >= 0], want[indices >= 0], atol=2e-5)
  for row in indices:
    real = row[row >= 0]
    assert len(set(real.tolist())) == len(real)


@settings(max_examples=25, deadline=None)
@given(
  num_items=st.integers(1, 40),
  num_queries=st.integers(1, 9),
  dim=st.integers(1, 6),
  tile_size=st.sampled_from([1, 3, 8, 64]),
  data=st.data(),
)
def test_search_is_the_brute_force_top_k(
  num_items, num_queries, dim, tile_size, data
):
  k = data.draw(st.integers(1, num_items))
  rng = np.random.default_rng(num_items * 100 + dim)
  gallery, queries = _unit(rng, num_items, dim), _unit(rng, num_queries, dim)
  distances, indices = index.Gallery(gallery, tile_size=tile_size).search(
    queries, k
  )
  assert distances.shape == indices.shape == (num_queries, k)
  _assert_top_k(distances, indices, queries, gallery, k)


def test_tiles_of_any_size_agree():
  rng = np.random.default_rng(0)
  gallery, queries = _unit(rng, 300, 16), _unit(rng, 20, 16)
  results = [
    index.Gallery(gallery, tile_size=t).search(queries, 7)
    for t in (1, 7, 64, 300, 1000)
  ]
  for distances, indices in results[1:]:
    np.testing.assert_array_equal(indices, results[0][1])
    np.testing.assert_allclose(distances, results[0][0], atol=1e-6)
  _assert_top_k(*results[0], queries, gallery, 7)


def test_more_queries_than_one_block():
  rng = np.random.default_rng(1)
  gallery, queries = _unit(rng, 50, 8), _unit(rng, 300, 8)
  distances, indices = index.Gallery(gallery, tile_size=16).search(queries, 3)
  _assert_top_k(distances, indices, queries, gallery, 3)


def test_items_never_find_themselves_with_exclude_self():
  rng = np.random.default_rng(2)
  gallery = _unit(rng, 30, 4)
  gallery[7] = gallery[3]  # A duplicate is still found, at distance 0.
  gallery[12] = gallery[10]
  members = np.array([3, 10, 29])
  search = index.Gallery(gallery, tile_size=8)
  distances, indices = search.search_items(members, 5)
  assert not (indices == members[:, None]).any()
  assert indices[0, 0] == 7 and distances[0, 0] < 1e-3
  _assert_top_k(distances, indices, gallery[members], gallery, 5, members)
  itself, with_self = search.search_items(members, 1, exclude_self=False)
  np.testing.assert_array_equal(with_self[1:, 0], members[1:])
  np.testing.assert_array_equal(itself, 0.0)  # Exact, no cancellation.


def test_several_exclusions_and_too_few_candidates():
  rng = np.random.default_rng(3)
  gallery, queries = _unit(rng, 4, 3), _unit(rng, 2, 3)
  exclude = np.array([[0, 2], [-1, -1]])
  distances, indices = index.Gallery(gallery).search(
    queries, 4, exclude=exclude
  )
  assert not np.isin(indices[0], [0, 2]).any()
  np.testing.assert_array_equal(indices[0, 2:], [-1, -1])
  assert np.isinf(distances[0, 2:]).all() and np.isfinite(distances[1]).all()
  _assert_top_k(distances, indices, queries, gallery, 4, exclude)


def test_adding_items_equals_building_at_once_and_reuses_the_compile():
  rng = np.random.default_rng(4)
  first, second = _unit(rng, 5, 6), _unit(rng, 2, 6)
  queries = _unit(rng, 3, 6)
  grown = index.Gallery(first, labels=[0, 1, 2, 3, 4], tile_size=16)
  grown.search(queries, 2)
  compiled = index._top_k._cache_size()
  grown.add(second, labels=[5, 6])
  got = grown.search(queries, 2)
  assert index._top_k._cache_size() == compiled  # Same tile count: no compile.
  whole = index.Gallery(np.concatenate([first, second]), tile_size=16)
  want = whole.search(queries, 2)
  np.testing.assert_array_equal(got[1], want[1])
  np.testing.assert_array_equal(grown.labels, np.arange(7))


def test_an_empty_gallery_grows():
  gallery = index.Gallery(dim=3)
  assert len(gallery) == 0
  gallery.add(np.eye(3, dtype=np.float32), paths=["a", "b", "c"])
  _, indices = gallery.search(np.eye(3)[::-1], 1)
  assert gallery.paths[indices[:, 0]].tolist() == ["c", "b", "a"]


@pytest.mark.parametrize(
  "labels, paths",
  [([3, 1, 3], None), (["x", "y", "x"], ["/a.png", "/b.png", "/c.png"])],
  ids=["int_labels", "str_labels_and_paths"],
)
def test_save_and_load_round_trip(tmp_path, labels, paths):
  rng = np.random.default_rng(5)
  saved = index.Gallery(
    _unit(rng, 3, 4), labels=labels, paths=paths, metadata={"from": "x.npz"}
  )
  path = str(tmp_path / "g.npz")
  saved.save(path)
  assert os.listdir(tmp_path) == ["g.npz"]  # No temporary left behind.
  loaded = index.Gallery.load(path)
  np.testing.assert_array_equal(loaded.embeddings, saved.embeddings)
  np.testing.assert_array_equal(loaded.labels, np.asarray(labels))
  if paths is None:
    assert loaded.paths is None
  else:
    assert loaded.paths.tolist() == paths
  assert loaded.tile_size == saved.tile_size
  assert loaded.metadata == {"from": "x.npz"}


@pytest.mark.parametrize(
  "case, message",
  [
    ("nan", "NaN or infinite"),
    ("dim", "have D = 5; the gallery's is 4"),
    ("k", "k must be between 1 and the gallery's 3 items"),
    ("labels", "Every item has labels of one kind or none does"),
    ("exclude", "exclude holds indices outside -1..2"),
    ("load", "is not a dmljax.gallery/1 file"),
  ],
)
def test_bad_input_is_named(tmp_path, case, message):
  gallery = index.Gallery(np.eye(3, 4, dtype=np.float32), labels=[0, 1, 2])
  with pytest.raises(ValueError, match=message):
    if case == "nan":
      gallery.add(np.full((1, 4), np.nan), labels=[0])
    elif case == "dim":
      gallery.search(np.ones((1, 5)), 1)
    elif case == "k":
      gallery.search(np.ones((1, 4)), 4)
    elif case == "labels":
      gallery.add(np.ones((1, 4)), labels=["a"])
    elif case == "exclude":
      gallery.search(np.ones((1, 4)), 1, exclude=[3])
    else:
      np.savez(tmp_path / "other.npz", embeddings=np.eye(2))
      index.Gallery.load(str(tmp_path / "other.npz"))
