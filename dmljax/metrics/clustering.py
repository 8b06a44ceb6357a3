"""Clustering quality: NMI and the pairwise F1 of k-means clusters.

Shape letters: N points, D embedding dimensions, K clusters.

Protocol (Wu et al. 2017, Sec. 5; Duan et al. 2019, Sec. 4): cluster the test
embeddings with k-means, K = the number of test classes, and compare the
clusters Ω with the classes C:

  * NMI(Ω, C) = I(Ω; C) / sqrt(H(Ω) H(C)) (Wu et al.). Duan et al. divide by
    the mean entropy (H(Ω) + H(C)) / 2, which is scikit-learn's default
    `average_method="arithmetic"`; `nmi(..., average="arithmetic")` gives it.
  * F1 (Song et al. 2016, used by Duan et al.) over pairs of points: a pair is
    a true positive when it shares a cluster and a class; precision = TP /
    pairs sharing a cluster, recall = TP / pairs sharing a class,
    F1 = 2PR / (P + R).

Both need only the contingency counts, which are computed without an
[N, N] loop or a [K, C] table: `group_sizes` sorts the points by their key
(cluster, class, or both) and gives each point the size of its group, so a
sum over the non-empty contingency cells n_ωc becomes a sum over points
(a cell with n points contributes n equal per-point terms). Labels can be any
integers; no relabelling to 0..C−1 is needed.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dmljax.metrics import neighbors
from dmljax.metrics.lloyd import kmeans

AVERAGES = ("geometric", "arithmetic")


@jax.jit
def group_sizes(*keys: jax.Array) -> jax.Array:
  """For each point, the number of points with the same tuple of keys.

  Args:
    *keys: one or more [N] integer arrays; point i's key is
      (keys[0][i], keys[1][i], ...).

  Returns:
    [N] int32 group sizes (the contingency count of each point's cell).

  >>> group_sizes(jnp.array([7, 3, 7, 7]), jnp.array([0, 0, 0, 1])).tolist()
  [2, 1, 2, 1]
  """
  num_points = keys[0].shape[0]
  iota = jnp.arange(num_points, dtype=jnp.int32)
  *sorted_keys, order = jax.lax.sort((*keys, iota), num_keys=len(keys))
  starts = jnp.zeros(num_points, bool).at[0].set(True)
  for key in sorted_keys:
    starts = starts.at[1:].set(starts[1:] | (key[1:] != key[:-1]))
  group = jnp.cumsum(starts, dtype=jnp.int32) - 1
  counts = jax.ops.segment_sum(
    jnp.ones(num_points, jnp.int32), group, num_segments=num_points
  )
  return jnp.zeros(num_points, jnp.int32).at[order].set(counts[group])


def _check_partitions(cluster_ids: Any, labels: Any):
  cluster_ids = jnp.asarray(cluster_ids)
  num_points = cluster_ids.shape[0] if cluster_ids.ndim else 0
  cluster_ids = neighbors.check_labels(cluster_ids, num_points, "cluster_ids")
  labels = neighbors.check_labels(labels, num_points)
  if num_points < 1:
    raise ValueError("cluster_ids and labels are empty: need N ≥ 1 points.")
  return cluster_ids, labels


def nmi(
  cluster_ids: jax.Array, labels: jax.Array, *, average: str = "geometric"
) -> jax.Array:
  """Normalised mutual information between clusters Ω and classes C.

  NMI = I(Ω; C) / sqrt(H(Ω) H(C)) (Wu et al., Sec. 5), or with
  `average="arithmetic"` I(Ω; C) / ((H(Ω) + H(C)) / 2) (Duan et al., Sec. 4;
  scikit-learn's default). With n_ω, n_c, n_ωc the sizes of point i's
  cluster, class and cell, I = mean_i log(N n_ωc / (n_ω n_c)) and
  H(Ω) = mean_i log(N / n_ω). As in scikit-learn, two single-group
  partitions score 1 and a single group against several scores 0.

  Args:
    cluster_ids: [N] integer cluster of each point.
    labels: [N] integer class of each point.
    average: "geometric" (default, Wu et al.) or "arithmetic".

  Returns:
    Scalar float32 in [0, 1].

  >>> float(nmi(jnp.array([5, 5, 2, 2]), jnp.array([0, 0, 1, 1])))
  1.0
  """
  if average not in AVERAGES:
    raise ValueError(f"average must be one of {AVERAGES}, got {average!r}.")
  cluster_ids, labels = _check_partitions(cluster_ids, labels)
  return _nmi(cluster_ids, labels, average=average)


@functools.partial(jax.jit, static_argnames="average")
def _nmi(cluster_ids, labels, *, average):
  num_points = cluster_ids.shape[0]
  log_cluster = jnp.log(group_sizes(cluster_ids).astype(jnp.float32))
  log_class = jnp.log(group_sizes(labels).astype(jnp.float32))
  log_cell = jnp.log(group_sizes(cluster_ids, labels).astype(jnp.float32))
  log_n = jnp.log(jnp.float32(num_points))
  mutual_information = jnp.mean(log_n + log_cell - log_cluster - log_class)
  h_cluster = jnp.mean(log_n - log_cluster)
  h_class = jnp.mean(log_n - log_class)
  if average == "geometric":
    normaliser = jnp.sqrt(h_cluster * h_class)
  else:
    normaliser = 0.5 * (h_cluster + h_class)
  one_cluster = jnp.all(cluster_ids == cluster_ids[0])
  one_class = jnp.all(labels == labels[0])
  score = jnp.clip(
    mutual_information / jnp.where(normaliser > 0, normaliser, 1.0), 0.0, 1.0
  )
  return jnp.where(
    one_cluster & one_class, 1.0, jnp.where(one_cluster | one_class, 0.0, score)
  )


def f1_score(cluster_ids: jax.Array, labels: jax.Array) -> jax.Array:
  """Pairwise clustering F1 (Song et al. 2016; Duan et al., Sec. 4).

  Over the unordered pairs of points: TP = Σ_cells C(n_ωc, 2) pairs share a
  cluster and a class, precision P = TP / Σ_ω C(n_ω, 2), recall
  R = TP / Σ_c C(n_c, 2), F1 = 2PR / (P + R). A precision (recall) with no
  pairs to count (all clusters, or all classes, singletons) is 0, and so is
  F1 when P + R = 0.

  Args:
    cluster_ids: [N] integer cluster of each point.
    labels: [N] integer class of each point.

  Returns:
    Scalar float32 in [0, 1].

  >>> float(f1_score(jnp.array([0, 0, 0, 1]), jnp.array([0, 0, 1, 1])))
  0.5
  """
  cluster_ids, labels = _check_partitions(cluster_ids, labels)
  return _f1_score(cluster_ids, labels)


@jax.jit
def _f1_score(cluster_ids, labels):
  def pairs(*keys):
    # Σ_cells n (n − 1) = Σ_points (n − 1): twice the number of pairs.
    return jnp.sum((group_sizes(*keys) - 1).astype(jnp.float32))

  true_positives = pairs(cluster_ids, labels)
  same_cluster, same_class = pairs(cluster_ids), pairs(labels)
  precision = true_positives / jnp.maximum(same_cluster, 1.0)
  recall = true_positives / jnp.maximum(same_class, 1.0)
  total = precision + recall
  return jnp.where(
    total > 0, 2.0 * precision * recall / jnp.where(total > 0, total, 1.0), 0.0
  )


def _num_classes(labels: jax.Array) -> int:
  """The number of distinct labels, on the host (labels must be concrete)."""
  if isinstance(labels, jax.core.Tracer):
    raise ValueError(
      "The number of classes depends on the label values, which are traced "
      "under jit: pass num_clusters= (a static int) explicitly."
    )
  return len(np.unique(jax.device_get(labels)))


def clustering_metrics(
  key: jax.Array,
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  num_clusters: int | None = None,
  num_iters: int = 100,
  average: str = "geometric",
  block_size: int = 1024,
) -> dict[str, jax.Array]:
  """NMI and F1 of k-means clusters of the embeddings against the labels.

  The protocol of Wu et al. (Sec. 5) and Duan et al. (Sec. 4): k-means with
  K = the number of distinct labels, then `nmi` and `f1_score`.

  Args:
    key: PRNG key for the k-means seeding.
    embeddings: [N, D].
    labels: [N] integer classes.
    num_clusters: K (static). Default: the number of distinct labels,
      counted on the host, so it must be given when called under `jit`.
    num_iters: maximum Lloyd iterations.
    average: NMI normaliser, "geometric" (Wu et al.) or "arithmetic".
    block_size: points per k-means assignment block.

  Returns:
    {"nmi": scalar, "f1": scalar}.

  >>> x = jnp.array([[0.0], [0.1], [5.0], [5.1]])
  >>> m = clustering_metrics(jax.random.key(0), x, jnp.array([3, 3, 8, 8]))
  >>> float(m["nmi"]), float(m["f1"])
  (1.0, 1.0)
  """
  embeddings = neighbors.check_embeddings(embeddings)
  labels = neighbors.check_labels(labels, embeddings.shape[0])
  if num_clusters is None:
    num_clusters = _num_classes(labels)
  result = kmeans(
    key,
    embeddings,
    num_clusters,
    num_iters=num_iters,
    block_size=block_size,
  )
  return {
    "nmi": nmi(result.cluster_ids, labels, average=average),
    "f1": f1_score(result.cluster_ids, labels),
  }
