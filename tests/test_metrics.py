"""dmljax.metrics against float64 loops and scikit-learn.

Retrieval (Wu et al. Sec. 5, Song et al.: Recall@k; Musgrave et al. 2020:
MAP@R) is checked against brute-force leave-one-out loops over float64
distances, ties ordered by the lower index; clustering (Wu et al. Sec. 5,
Duan et al. Sec. 4: NMI, F1) against scikit-learn and a loop over all pairs.
The oracles live here, not in reference.py, because only these tests use
them.
"""

import itertools

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.cluster
import sklearn.datasets
import sklearn.metrics
from hypothesis import strategies as st

from dmljax import metrics
from dmljax.metrics import clustering
from dmljax.metrics import neighbors

# ----------------------------------------------------------------------------
# Float64 oracles.
# ----------------------------------------------------------------------------


def ref_neighbors(queries, database, k, *, exclude_self=False):
  """k nearest database rows per query: float64, ties to the lower index."""
  queries = np.asarray(queries, np.float64)
  database = np.asarray(database, np.float64)
  dists, idx = [], []
  for i, q in enumerate(queries):
    d = np.sqrt(np.sum((database - q) ** 2, axis=1))
    order = [
      j for j in np.argsort(d, kind="stable") if not exclude_self or j != i
    ]
    dists.append(d[order[:k]])
    idx.append(order[:k])
  return np.array(dists), np.array(idx)


def ref_recall_at_k(x, labels, ks):
  _, idx = ref_neighbors(x, x, max(ks), exclude_self=True)
  out = {}
  for k in ks:
    hits = [np.any(labels[idx[i, :k]] == labels[i]) for i in range(len(x))]
    out[k] = float(np.mean(hits))
  return out


def ref_map_at_r(x, labels, max_r=None):
  """Musgrave et al. 2020: mean over queries with R ≥ 1 of AP@R."""
  n = len(x)
  aps = []
  for i in range(n):
    r = int(np.sum(labels == labels[i])) - 1
    if r < 1:
      continue
    if max_r is not None:
      r = min(r, max_r)
    _, idx = ref_neighbors(x[i : i + 1], x, n)
    order = [j for j in idx[0] if j != i][:r]
    correct, total = 0, 0.0
    for rank, j in enumerate(order, start=1):
      if labels[j] == labels[i]:
        correct += 1
        total += correct / rank
    aps.append(total / r)
  return float(np.mean(aps))


def ref_f1(cluster_ids, labels):
  """Pairwise F1 by a loop over all unordered pairs."""
  tp = same_cluster = same_class = 0
  for i, j in itertools.combinations(range(len(labels)), 2):
    c, y = cluster_ids[i] == cluster_ids[j], labels[i] == labels[j]
    tp += c and y
    same_cluster += c
    same_class += y
  p = tp / same_cluster if same_cluster else 0.0
  r = tp / same_class if same_class else 0.0
  return 2 * p * r / (p + r) if p + r else 0.0


# ----------------------------------------------------------------------------
# Data.
# ----------------------------------------------------------------------------


def gaussian_data(seed, n=57, dim=8, num_classes=9):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim)).astype(np.float32)
  labels = rng.choice(1000, num_classes, replace=False)[
    rng.integers(0, num_classes, n)
  ]
  return x, labels.astype(np.int32)


def tied_data(seed, n=57, dim=8, num_classes=9):
  """Small integer coordinates: many exactly equal distances and duplicates.

  Every squared distance is an exact small integer in float32 too, so the
  kernel and the oracle see the same ties and must both order them by index.
  """
  rng = np.random.default_rng(seed)
  x = rng.integers(-1, 2, size=(n, dim)).astype(np.float32)
  x[n // 2 :: 7] = x[n // 2 - 1]  # exact duplicates too
  return x, rng.integers(-3, num_classes - 3, n).astype(np.int32)


DATA = {"gaussian": gaussian_data, "ties": tied_data}
BLOCKS = {"block1": 1, "block16": 16, "one_block": 1024}


def perfect_data(n=57, dim=8, num_classes=9):
  """Each class a tight cluster far from the others (6 or 7 points each)."""
  rng = np.random.default_rng(3)
  classes = rng.permutation(np.arange(n) % num_classes)
  centres = 10.0 * rng.normal(size=(num_classes, dim))
  x = centres[classes] + 0.01 * rng.normal(size=(n, dim))
  return x.astype(np.float32), (classes * 3 + 1).astype(np.int32)


# ----------------------------------------------------------------------------
# Nearest neighbours.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", BLOCKS.values(), ids=BLOCKS.keys())
@pytest.mark.parametrize("data", DATA.values(), ids=DATA.keys())
def test_nearest_neighbors_leave_one_out_match_reference(
  kernel, data, block_size
):
  x, _ = data(0)
  fn = kernel(
    metrics.nearest_neighbors,
    k=10,
    exclude_self=True,
    block_size=block_size,
  )
  dists, idx = fn(x, x)
  want_d, want_i = ref_neighbors(x, x, 10, exclude_self=True)
  assert idx.shape == (len(x), 10) and idx.dtype == jnp.int32
  np.testing.assert_array_equal(idx, want_i)
  np.testing.assert_allclose(dists, want_d, rtol=1e-5, atol=1e-5)


def test_nearest_neighbors_queries_against_database(kernel):
  x, _ = gaussian_data(1)
  queries, database = x[:13], x[13:]
  fn = kernel(metrics.nearest_neighbors, k=5, block_size=4)
  dists, idx = fn(queries, database)
  want_d, want_i = ref_neighbors(queries, database, 5)
  np.testing.assert_array_equal(idx, want_i)
  np.testing.assert_allclose(dists, want_d, rtol=1e-5, atol=1e-5)


def test_nearest_neighbors_without_exclusion_finds_self_first(kernel):
  x, _ = gaussian_data(2)
  _, idx = kernel(metrics.nearest_neighbors, k=1, block_size=8)(x, x)
  np.testing.assert_array_equal(idx[:, 0], np.arange(len(x)))


def test_map_row_blocks_pads_and_trims():
  rows = (jnp.arange(10.0), jnp.arange(20).reshape(10, 2))
  out = neighbors.map_row_blocks(
    lambda start, r: (r[0] + start, r[1].sum(1)), rows, block_size=4
  )
  starts = np.repeat([0, 4, 8], 4)[:10]
  np.testing.assert_array_equal(out[0], np.arange(10.0) + starts)
  np.testing.assert_array_equal(out[1], np.arange(20).reshape(10, 2).sum(1))


# ----------------------------------------------------------------------------
# Recall@k and MAP@R.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", BLOCKS.values(), ids=BLOCKS.keys())
@pytest.mark.parametrize("data", DATA.values(), ids=DATA.keys())
def test_recall_at_k_matches_reference(kernel, data, block_size):
  x, labels = data(4)
  ks = (1, 2, 4, 8, 16)
  got = kernel(metrics.recall_at_k, ks=ks, block_size=block_size)(x, labels)
  want = ref_recall_at_k(x, labels, ks)
  assert list(got) == list(ks)
  for k in ks:
    assert got[k].shape == () and got[k].dtype == jnp.float32
    np.testing.assert_allclose(float(got[k]), want[k], rtol=1e-6, err_msg=k)


def test_recall_at_k_is_monotone_and_reaches_one(kernel):
  x, labels = gaussian_data(5)
  n = len(x)
  got = kernel(metrics.recall_at_k, ks=(1, 3, 10, n - 1))(x, labels)
  values = [float(v) for v in got.values()]
  assert values == sorted(values)
  # Every class of gaussian_data has 2+ points, so k = N − 1 always hits.
  assert values[-1] == 1.0


@pytest.mark.parametrize("block_size", BLOCKS.values(), ids=BLOCKS.keys())
@pytest.mark.parametrize("data", DATA.values(), ids=DATA.keys())
def test_map_at_r_matches_reference(kernel, data, block_size):
  x, labels = data(6)
  max_r = int(np.max(np.unique(labels, return_counts=True)[1])) - 1
  fn = kernel(metrics.map_at_r, max_r=max_r, block_size=block_size)
  got = fn(x, labels)
  assert got.shape == ()
  np.testing.assert_allclose(got, ref_map_at_r(x, labels), rtol=1e-5)


def test_map_at_r_default_max_r_on_host():
  x, labels = tied_data(7)
  got = metrics.map_at_r(x, labels, block_size=9)
  np.testing.assert_allclose(got, ref_map_at_r(x, labels), rtol=1e-5)


def test_map_at_r_caps_r_at_max_r(kernel):
  x, labels = gaussian_data(8, num_classes=4)
  got = kernel(metrics.map_at_r, max_r=5)(x, labels)
  np.testing.assert_allclose(got, ref_map_at_r(x, labels, max_r=5), rtol=1e-5)


def test_map_at_r_skips_singleton_classes(kernel):
  x, labels = gaussian_data(9)
  labels = labels.copy()
  labels[:3] = [-1, -2, -3]  # three classes of one point each
  got = kernel(metrics.map_at_r, max_r=20)(x, labels)
  np.testing.assert_allclose(got, ref_map_at_r(x, labels), rtol=1e-5)


def test_perfect_embedding_scores_one(key):
  x, labels = perfect_data()
  recall = metrics.recall_at_k(x, labels, ks=(1, 2))
  assert float(recall[1]) == 1.0 and float(recall[2]) == 1.0
  assert float(metrics.map_at_r(x, labels)) == 1.0
  scores = metrics.clustering_metrics(key, x, labels, block_size=16)
  assert float(scores["nmi"]) == pytest.approx(1.0, abs=1e-6)
  assert float(scores["f1"]) == pytest.approx(1.0, abs=1e-6)


# ----------------------------------------------------------------------------
# NMI, F1 and contingency counts.
# ----------------------------------------------------------------------------


def partitions(seed, n, num_clusters, num_classes):
  rng = np.random.default_rng(seed)
  cluster_ids = rng.integers(0, num_clusters, n) * 7 - 5
  labels = rng.choice(500, num_classes, replace=False)[
    rng.integers(0, num_classes, n)
  ]
  return cluster_ids.astype(np.int32), labels.astype(np.int32)


def correlated_partitions(seed, n=300):
  """Clusters that mostly follow the classes, with 20% of points moved."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 12, n)
  cluster_ids = np.where(rng.random(n) < 0.8, labels, rng.integers(0, 15, n))
  return cluster_ids.astype(np.int32), labels.astype(np.int32)


PARTITIONS = {
  "random_small": lambda: partitions(0, 12, 3, 4),
  "random_many_groups": lambda: partitions(1, 300, 40, 25),
  "correlated": lambda: correlated_partitions(2),
  "all_singletons": lambda: partitions(3, 12, 10**6, 3),
  "identical": lambda: (np.arange(12) % 4 * 5, np.arange(12) % 4),
  "one_cluster": lambda: (np.zeros(12, int), np.arange(12) % 3),
  "one_class": lambda: (np.arange(12) % 3, np.full(12, 4)),
  "both_one_group": lambda: (np.zeros(12, int), np.ones(12, int)),
  "one_point": lambda: (np.array([3]), np.array([1])),
}


@pytest.mark.parametrize("average", ["geometric", "arithmetic"])
@pytest.mark.parametrize("case", PARTITIONS.values(), ids=PARTITIONS.keys())
def test_nmi_matches_sklearn(kernel, case, average):
  cluster_ids, labels = case()
  got = kernel(metrics.nmi, average=average)(cluster_ids, labels)
  want = sklearn.metrics.normalized_mutual_info_score(
    labels, cluster_ids, average_method=average
  )
  assert got.shape == () and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_geometric_and_arithmetic_nmi_differ():
  cluster_ids, labels = partitions(4, 300, 3, 10)
  geometric = float(metrics.nmi(cluster_ids, labels))
  arithmetic = float(metrics.nmi(cluster_ids, labels, average="arithmetic"))
  # The arithmetic mean of two entropies exceeds their geometric mean.
  assert arithmetic < geometric


@pytest.mark.parametrize("case", PARTITIONS.values(), ids=PARTITIONS.keys())
def test_f1_matches_pairs_loop(kernel, case):
  cluster_ids, labels = case()
  got = kernel(metrics.f1_score)(cluster_ids, labels)
  assert got.shape == () and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_f1(cluster_ids, labels), rtol=1e-6)


def test_group_sizes_are_contingency_counts(kernel):
  cluster_ids, labels = partitions(5, 300, 6, 5)
  got = kernel(clustering.group_sizes)(cluster_ids, labels)
  want = [
    np.sum((cluster_ids == c) & (labels == c2))
    for c, c2 in zip(cluster_ids, labels, strict=True)
  ]
  np.testing.assert_array_equal(got, want)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
  st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 5)), min_size=12, max_size=12
  ),
  st.permutations(range(12)),
)
def test_nmi_and_f1_invariant_to_order_and_relabelling(pairs, perm):
  cluster_ids, labels = (
    np.array(p, np.int32) for p in zip(*pairs, strict=True)
  )
  perm = np.array(perm)
  renamed = (cluster_ids * 13 + 100)[perm]  # another name per cluster
  for fn in (metrics.nmi, metrics.f1_score):
    base = float(fn(cluster_ids, labels))
    np.testing.assert_allclose(fn(renamed, labels[perm]), base, atol=1e-6)
  np.testing.assert_allclose(
    metrics.nmi(labels, cluster_ids),
    metrics.nmi(cluster_ids, labels),
    atol=1e-6,
  )


# ----------------------------------------------------------------------------
# k-means.
# ----------------------------------------------------------------------------


def blobs(num_clusters=8, n=600, dim=16, seed=0):
  x, y = sklearn.datasets.make_blobs(
    n_samples=n,
    centers=num_clusters,
    n_features=dim,
    cluster_std=1.0,
    random_state=seed,
  )
  return x.astype(np.float32), y.astype(np.int32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_matches_sklearn_on_blobs(kernel, seed):
  x, y = blobs(seed=seed)
  fn = kernel(metrics.kmeans, num_clusters=8, block_size=128)
  got = fn(jax.random.key(seed), x)
  want = sklearn.cluster.KMeans(8, n_init=1, random_state=seed).fit(x)
  assert got.centroids.shape == (8, 16) and got.cluster_ids.shape == (600,)
  assert float(got.inertia) <= 1.02 * want.inertia_
  assert float(metrics.nmi(got.cluster_ids, y)) == pytest.approx(1.0, abs=1e-6)
  assert 1 <= int(got.num_iters) < 100  # converged before the cap


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_kmeans_result_is_a_lloyd_fixed_point(kernel, init):
  x, _ = gaussian_data(10, n=200, dim=4)
  fn = kernel(metrics.kmeans, num_clusters=6, num_iters=300, init=init)
  got = fn(jax.random.key(1), x)
  assert int(got.num_iters) < 300
  ids = np.asarray(got.cluster_ids)
  x64 = x.astype(np.float64)
  d = ((x64[:, None] - np.asarray(got.centroids, np.float64)[None]) ** 2).sum(2)
  np.testing.assert_array_equal(ids, np.argmin(d, 1))
  for c in np.unique(ids):
    np.testing.assert_allclose(
      got.centroids[c], x64[ids == c].mean(0), rtol=1e-4, atol=1e-5
    )
  np.testing.assert_allclose(got.inertia, d.min(1).sum(), rtol=1e-5)


def test_kmeans_zero_iterations_returns_the_seeding(kernel):
  x, _ = gaussian_data(11)
  got = kernel(metrics.kmeans, num_clusters=4, num_iters=0)(
    jax.random.key(0), x
  )
  assert int(got.num_iters) == 0
  # k-means++ centres are data points.
  assert all(np.any(np.all(x == c, axis=1)) for c in np.asarray(got.centroids))


def test_kmeans_with_more_clusters_than_distinct_points(kernel):
  x = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)
  got = kernel(metrics.kmeans, num_clusters=5)(jax.random.key(0), x)
  assert np.all(np.isfinite(got.centroids))
  assert float(got.inertia) == 0.0


# ----------------------------------------------------------------------------
# Eager calls agree with jit.
# ----------------------------------------------------------------------------

_X, _LABELS = gaussian_data(13)
_IDS, _ = partitions(6, 57, 5, 9)

EAGER = {
  "nearest_neighbors": (
    metrics.nearest_neighbors,
    dict(k=4, exclude_self=True, block_size=16),
    (_X, _X),
  ),
  "recall_at_k": (
    metrics.recall_at_k,
    dict(ks=(1, 4), block_size=16),
    (_X, _LABELS),
  ),
  "map_at_r": (metrics.map_at_r, dict(max_r=12, block_size=16), (_X, _LABELS)),
  "nmi": (metrics.nmi, {}, (_IDS, _LABELS)),
  "f1_score": (metrics.f1_score, {}, (_IDS, _LABELS)),
  "kmeans": (
    metrics.kmeans,
    dict(num_clusters=5, num_iters=10, block_size=16),
    (jax.random.key(3), _X),
  ),
  "clustering_metrics": (
    metrics.clustering_metrics,
    dict(num_clusters=9, block_size=16),
    (jax.random.key(4), _X, _LABELS),
  ),
}


@pytest.mark.parametrize("fn,static,args", EAGER.values(), ids=EAGER.keys())
def test_eager_matches_jit(kernel, fn, static, args):
  jitted = kernel(fn, **static)(*args)
  eager = kernel(fn, jit=False, **static)(*args)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), jitted, eager
  )


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------

X5 = np.zeros((5, 3), np.float32)
L5 = np.arange(5, dtype=np.int32)

BAD = {
  "labels_length": (
    lambda: metrics.recall_at_k(X5, L5[:4]),
    "4 entries but there are 5 points",
  ),
  "one_point": (
    lambda: metrics.recall_at_k(X5[:1], L5[:1], ks=(1,)),
    "at least 2 points",
  ),
  "k_equals_n": (
    lambda: metrics.recall_at_k(X5, L5, ks=(1, 5)),
    "k must be at most 4",
  ),
  "k_zero": (lambda: metrics.recall_at_k(X5, L5, ks=(0,)), "at least 1"),
  "no_ks": (lambda: metrics.recall_at_k(X5, L5, ks=()), "ks is empty"),
  "float_labels": (
    lambda: metrics.recall_at_k(X5, L5.astype(np.float32)),
    "must be integers",
  ),
  "embeddings_rank": (
    lambda: metrics.recall_at_k(X5[0], L5),
    r"\[N, D\] matrix",
  ),
  "nan_embeddings": (
    lambda: metrics.recall_at_k(np.full((5, 3), np.nan, np.float32), L5),
    "NaN",
  ),
  "block_size": (
    lambda: metrics.recall_at_k(X5, L5, ks=(1,), block_size=0),
    "block_size must be positive",
  ),
  "map_all_singletons": (
    lambda: metrics.map_at_r(X5, L5),
    "single point",
  ),
  "map_labels_length": (
    lambda: metrics.map_at_r(X5, L5[:3]),
    "3 entries but there are 5",
  ),
  "neighbors_dims": (
    lambda: metrics.nearest_neighbors(X5, np.zeros((4, 2), np.float32), 1),
    "same embedding dimension",
  ),
  "neighbors_k_too_big": (
    lambda: metrics.nearest_neighbors(X5, X5, 5, exclude_self=True),
    "at most 4",
  ),
  "neighbors_exclude_self_shapes": (
    lambda: metrics.nearest_neighbors(X5, X5[:3], 1, exclude_self=True),
    "queries are the database",
  ),
  "nmi_length": (lambda: metrics.nmi(L5, L5[:2]), "2 entries but there are 5"),
  "nmi_average": (lambda: metrics.nmi(L5, L5, average="max"), "average"),
  "f1_empty": (lambda: metrics.f1_score(L5[:0], L5[:0]), "empty"),
  "kmeans_too_many_clusters": (
    lambda: metrics.kmeans(jax.random.key(0), X5, 6),
    "between 1 and the number of points 5",
  ),
  "kmeans_init": (
    lambda: metrics.kmeans(jax.random.key(0), X5, 2, init="forgy"),
    "init must be one of",
  ),
  "clustering_labels_length": (
    lambda: metrics.clustering_metrics(jax.random.key(0), X5, L5[:1]),
    "1 entries but there are 5",
  ),
}


@pytest.mark.parametrize("call,message", BAD.values(), ids=BAD.keys())
def test_bad_input_raises_value_error(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_label_dependent_sizes_must_be_static_under_jit(key):
  x, labels = gaussian_data(12)
  with pytest.raises(ValueError, match="pass max_r="):
    jax.jit(metrics.map_at_r)(x, labels)
  with pytest.raises(ValueError, match="pass num_clusters="):
    jax.jit(metrics.clustering_metrics)(key, x, labels)
  with pytest.raises(ValueError, match="num_clusters must be a static int"):
    jax.jit(metrics.kmeans)(key, x, 3)
  with pytest.raises(ValueError, match="k must be a static int"):
    jax.jit(metrics.nearest_neighbors)(x, x, 3)
