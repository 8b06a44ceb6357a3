"""first_hit_ranks (the Recall@k engine) against a float64 loop.

The oracle sorts every other point by (float64 distance, index) and reports
the position of the first same-label one: the definition of Wu et al.'s
Recall@k (Sec. 5) without the tile, the label sort or the symmetric count.
Over a mesh of 2, 4 or 8 of conftest.py's CPU devices the ranks must equal
one device's exactly (integers: no tolerance).
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


def _mesh(num_devices):
  return jax.sharding.Mesh(np.array(jax.devices()[:num_devices]), ("data",))


# (data, block size): 61 points (prime) in 9 tiles of 7 (45 tile pairs) or
# 4 tiles of 16 (fewer than 8 devices), or one tile for all the devices.
SHARDED = {
  "ties_b7": (integer_grid, 7),
  "unit_duplicates_b7": (unit_duplicates, 7),
  "singletons_b7": (singletons, 7),
  "gaussian_b16": (gaussian, 16),
  "ties_one_tile": (integer_grid, 1024),
}


@pytest.mark.parametrize("num_devices", [2, 4, 8])
@pytest.mark.parametrize(
  "data,block_size", SHARDED.values(), ids=SHARDED.keys()
)
def test_sharded_ranks_equal_one_device(data, block_size, num_devices):
  x, labels = data(0)  # Seeds whose float32 order is the float64 one.
  one = ranks.first_hit_ranks(x, labels, block_size=block_size)
  got = ranks.first_hit_ranks(
    x, labels, block_size=block_size, mesh=_mesh(num_devices)
  )
  assert got.shape == labels.shape and got.dtype == jnp.int32
  np.testing.assert_array_equal(got, one)
  np.testing.assert_array_equal(got, ref_first_hit_ranks(x, labels))


def test_one_device_mesh_equals_no_mesh():
  x, labels = unit_duplicates(5)
  np.testing.assert_array_equal(
    ranks.first_hit_ranks(x, labels, block_size=16, mesh=_mesh(1)),
    ranks.first_hit_ranks(x, labels, block_size=16),
  )


def test_sharded_recall_equals_one_device():
  """Recall@k through `metrics.recall_at_k(mesh=...)`: 3 devices, 9 tiles."""
  x, labels = integer_grid(6)
  ks = (1, 2, 8, 60)
  one = metrics.recall_at_k(x, labels, ks, block_size=7)
  got = metrics.recall_at_k(x, labels, ks, block_size=7, mesh=_mesh(3))
  want = ref_first_hit_ranks(x, labels)
  for k in ks:
    assert float(got[k]) == float(one[k])
    assert float(got[k]) == pytest.approx(np.mean(want < k), abs=1e-7)


def test_two_dimensional_mesh_is_refused():
  mesh = jax.sharding.Mesh(
    np.array(jax.devices()[:4]).reshape(2, 2), ("a", "b")
  )
  x, labels = gaussian(0, n=8)
  with pytest.raises(ValueError, match="1-D mesh"):
    ranks.first_hit_ranks(x, labels, mesh=mesh)


def test_single_class_ranks_are_zero():
  x = jax.random.normal(jax.random.key(0), (9, 3))
  got = ranks.first_hit_ranks(x, jnp.zeros(9, jnp.int32), block_size=4)
  np.testing.assert_array_equal(got, np.zeros(9))
