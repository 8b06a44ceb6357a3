"""first_hit_ranks (the Recall@k engine) against a float64 loop.

The oracle sorts every other point by (float64 distance, index) and reports
the position of the first same-label one: the definition of Wu et al.'s
Recall@k (Sec. 5) without the tile, the label sort or the symmetric count.
"""

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

from dmljax import metrics
from dmljax.metrics import ranks


def ref_first_hit_ranks(x, labels):
  """Rank of the first same-label point in i's leave-one-out list (or N)."""
  x = np.asarray(x, np.float64)
  n = len(x)
  out = []
  for i in range(n):
    d = np.sum((x - x[i]) ** 2, axis=1)
    order = [j for j in np.argsort(d, kind="stable") if j != i]
    hits = [r for r, j in enumerate(order) if labels[j] == labels[i]]
    out.append(hits[0] if hits else n)
  return np.array(out)


def gaussian(seed, n=61, dim=8, num_classes=11):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim)).astype(np.float32)
  labels = rng.choice(500, num_classes, replace=False)[
    rng.integers(0, num_classes, n)
  ]
  return x, labels.astype(np.int32)


def integer_grid(seed, n=61, dim=6):
  """Exactly representable squared distances: many exact ties."""
  rng = np.random.default_rng(seed)
  x = rng.integers(-1, 2, size=(n, dim)).astype(np.float32)
  x[n // 2 :: 5] = x[3]  # duplicates of one point, in several classes
  return x, rng.integers(-4, 5, n).astype(np.int32)


def unit_duplicates(seed, n=61, dim=128):
  """Unit vectors in 128-D with exact and near duplicates across classes.

  Squared distances of duplicates are 0 in float64 but round-off in
  ‖q‖² + ‖x‖² − 2 q·x; the clamp at 0 and the index tie-break must still
  give the oracle's order.
  """
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim))
  x[10:20] = x[0]  # exact duplicates
  x[20:25] = x[1] + 1e-3 * rng.normal(size=(5, dim))  # near duplicates
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  return x.astype(np.float32), rng.integers(0, 12, n).astype(np.int32)


def singletons(seed, n=40, dim=4):
  """Several classes of one point (no correct neighbour: rank N)."""
  x, labels = gaussian(seed, n=n, dim=dim, num_classes=5)
  labels[:6] = -np.arange(1, 7)
  return x, labels


DATA = {
  "gaussian": gaussian,
  "ties": integer_grid,
  "unit_duplicates": unit_duplicates,
  "singletons": singletons,
}
# One tile, and tiles that split classes with a ragged last tile.
BLOCKS = {"one_tile": 1024, "b16": 16, "b7": 7}


@pytest.mark.parametrize("block_size", BLOCKS.values(), ids=BLOCKS.keys())
@pytest.mark.parametrize("data", DATA.values(), ids=DATA.keys())
def test_first_hit_ranks_match_reference(data, block_size):
  x, labels = data(0)
  got = ranks.first_hit_ranks(x, labels, block_size=block_size)
  assert got.shape == labels.shape and got.dtype == jnp.int32
  np.testing.assert_array_equal(got, ref_first_hit_ranks(x, labels))


@pytest.mark.parametrize(
  "data", [integer_grid, singletons], ids=["ties", "singletons"]
)
def test_eager_first_hit_ranks_match_reference(data):
  x, labels = data(3)
  got = ranks.first_hit_ranks.__wrapped__(x, labels, block_size=16)
  np.testing.assert_array_equal(got, ref_first_hit_ranks(x, labels))


@pytest.mark.parametrize("data", DATA.values(), ids=DATA.keys())
def test_recall_at_large_k_matches_reference(data):
  x, labels = data(1)
  n = len(x)
  ks = (1, 5, 30, n - 1)
  got = metrics.recall_at_k(x, labels, ks, block_size=16)
  want = ref_first_hit_ranks(x, labels)
  for k in ks:
    assert float(got[k]) == pytest.approx(np.mean(want < k), abs=1e-7)


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(
  st.integers(0, 2**31 - 1),
  st.permutations(range(11)),
  st.sampled_from([7, 64]),
)
def test_first_hit_ranks_follow_points_not_names(seed, names, block_size):
  """Renaming classes (which reorders the label sort) and permuting points."""
  x, labels = gaussian(seed % 1000)
  rng = np.random.default_rng(seed)
  perm = rng.permutation(len(x))
  # Gaussian points have no ties, so the index tie-break never matters.
  base = ranks.first_hit_ranks(x, labels, block_size=block_size)
  renamed = np.array(names)[np.unique(labels, return_inverse=True)[1]] * -3
  got = ranks.first_hit_ranks(x[perm], renamed[perm], block_size=block_size)
  np.testing.assert_array_equal(got, np.asarray(base)[perm])


@pytest.mark.slow
def test_memory_is_bounded_by_the_tile():
  """XLA's temporary buffers grow with b², not with N²."""
  num_points, dim = 4000, 16
  x = jnp.zeros((num_points, dim))
  labels = jnp.zeros(num_points, jnp.int32)

  def temp_bytes(block_size):
    lowered = ranks.first_hit_ranks.lower(x, labels, block_size=block_size)
    return lowered.compile().memory_analysis().temp_size_in_bytes

  for block_size in (64, 256):
    bound = 4 * (16 * block_size**2 + 32 * num_points)
    assert temp_bytes(block_size) < bound, block_size
  # One tile holds the whole matrix: the bound is not vacuous.
  assert temp_bytes(num_points) > 4 * num_points**2


def test_padded_points_never_count():
  """N = 2b + 1: the last tile is one real point and b − 1 padding rows."""
  x, labels = gaussian(2, n=33)
  got = ranks.first_hit_ranks(x, labels, block_size=16)
  np.testing.assert_array_equal(got, ref_first_hit_ranks(x, labels))
  assert np.all(np.asarray(got) <= 33)


def test_single_class_ranks_are_zero():
  x = jax.random.normal(jax.random.key(0), (9, 3))
  got = ranks.first_hit_ranks(x, jnp.zeros(9, jnp.int32), block_size=4)
  np.testing.assert_array_equal(got, np.zeros(9))
