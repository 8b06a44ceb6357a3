"""Retrieval metrics: Recall@k and MAP@R, leave-one-out over a test set.

Shape letters: N points, D embedding dimensions, k neighbours, R same-label
points of a query other than itself.

Protocol (Wu et al. 2017, Sec. 5, following Song et al. 2016; Duan et al.
2019, Sec. 4): every test image is a query against all the other test images
under the Euclidean distance, and Recall@k is the fraction of queries with at
least one image of their class among their k nearest neighbours. MAP@R
(Musgrave et al., "A Metric Learning Reality Check", ECCV 2020) averages, over
the queries, the precision of the R nearest neighbours at each correct one.

Recall@k needs only the rank of each query's first correct neighbour, which
`ranks.first_hit_ranks` counts in symmetric b × b distance tiles (memory
b² floats, half the matrix products of a row scan, no top-k at all), so one
pass gives Recall@k for every k up to N − 1; over a `mesh`, the devices
share the tiles. MAP@R takes the R nearest
neighbours of each query from `neighbors.block_top_k` in query blocks
(memory b × N) and reduces each block at once to its average precisions.
The [N, k] neighbour lists are never stored. Ties are broken by the lower
index.
"""

import functools
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from dmljax.metrics import clustering
from dmljax.metrics import neighbors
from dmljax.metrics import ranks


def _check_inputs(embeddings, labels):
  embeddings = neighbors.check_embeddings(embeddings)
  labels = neighbors.check_labels(labels, embeddings.shape[0])
  if embeddings.shape[0] < 2:
    raise ValueError(
      f"Leave-one-out retrieval needs at least 2 points, got "
      f"{embeddings.shape[0]}."
    )
  return embeddings, labels


def recall_at_k(
  embeddings: jax.Array,
  labels: jax.Array,
  ks: Sequence[int] = (1, 2, 4, 8),
  *,
  block_size: int = 1024,
  mesh: jax.sharding.Mesh | None = None,
) -> dict[int, jax.Array]:
  """Recall@k of leave-one-out retrieval (Wu et al., Sec. 5; Song et al.).

  Recall@k = (1/N) Σ_i [some j among the k nearest neighbours of i, j ≠ i,
  has labels[j] = labels[i]], with Euclidean distances and ties broken by the
  lower index. A query whose class has no other point counts as a miss.

  Args:
    embeddings: [N, D], N ≥ 2.
    labels: [N] integer classes.
    ks: the k values (static), each 1 ≤ k ≤ N − 1; any k costs the same.
    block_size: b, the edge of a distance tile; memory is about b² floats
      (4 MB at the default), whatever N.
    mesh: a 1-D mesh whose devices share the distance tiles (e.g. this
      process's devices); the same numbers as one device. Default: one
      device.

  Returns:
    {k: scalar float32 Recall@k} for each k in `ks` (use `float()` on host).

  >>> x = jnp.array([[0.0], [1.0], [2.5], [3.0], [7.0]])
  >>> r = recall_at_k(x, jnp.array([0, 0, 1, 0, 1]), ks=(1, 2))
  >>> float(r[1]), float(r[2])
  (0.4, 0.8)
  """
  embeddings, labels = _check_inputs(embeddings, labels)
  ks = tuple(operator.index(k) for k in ks)
  if not ks:
    raise ValueError("ks is empty: give at least one k.")
  for k in ks:
    neighbors.check_k(k, embeddings.shape[0] - 1, exclude_self=True)
  recalls = _recalls(
    embeddings,
    labels,
    ks=ks,
    block_size=neighbors.check_block_size(block_size),
    mesh=mesh,
  )
  return {k: recalls[i] for i, k in enumerate(ks)}


@functools.partial(jax.jit, static_argnames=("ks", "block_size", "mesh"))
def _recalls(embeddings, labels, *, ks, block_size, mesh):
  """[len(ks)] Recall@k, from each query's rank of its first correct hit."""
  hit_ranks = ranks.first_hit_ranks(
    embeddings, labels, block_size=block_size, mesh=mesh
  )
  return jnp.stack([jnp.mean(hit_ranks < k) for k in ks])


def map_at_r(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  max_r: int | None = None,
  block_size: int = 1024,
) -> jax.Array:
  """MAP@R of leave-one-out retrieval (Musgrave et al. 2020, Sec. 3.2).

  For a query i with R_i = (number of points labelled labels[i]) − 1,

    AP@R_i = (1/R_i) Σ_{r=1}^{R_i} P(r) [neighbour r is correct],

  with P(r) the fraction of correct points among the r nearest neighbours.
  MAP@R is the mean of AP@R_i over the queries with R_i ≥ 1 (a singleton
  class has nothing to retrieve). Static shapes: all queries retrieve
  k = max_r neighbours and mask the ranks past their own R_i.

  Args:
    embeddings: [N, D], N ≥ 2.
    labels: [N] integer classes.
    max_r: k, the number of neighbours retrieved (static). Default: max_i R_i,
      computed on the host, so it must be given under `jit`. A query with
      R_i > max_r is scored on its first max_r ranks with R_i capped at max_r
      (as pytorch-metric-learning does when its k is below R).
    block_size: queries per block; memory is about block_size × N floats.

  Returns:
    Scalar float32 MAP@R (NaN if no query has R_i ≥ 1 under `jit`).

  >>> x = jnp.array([[0.0], [1.0], [2.5], [3.0], [7.0]])
  >>> float(map_at_r(x, jnp.array([0, 0, 1, 0, 1])))  # (½ + ½ + 0 + ¼ + 0) / 5
  0.25
  """
  embeddings, labels = _check_inputs(embeddings, labels)
  num_points = embeddings.shape[0]
  if max_r is None:
    if isinstance(labels, jax.core.Tracer):
      raise ValueError(
        "max_r depends on the label values, which are traced under jit: pass "
        "max_r= (a static int, e.g. the largest class size − 1) explicitly."
      )
    max_r = int(jax.device_get(jnp.max(clustering.group_sizes(labels)))) - 1
    if max_r < 1:
      raise ValueError(
        "Every class has a single point, so no query has anything to "
        "retrieve: MAP@R is undefined."
      )
  max_r = neighbors.check_k(max_r, num_points - 1, exclude_self=True)
  return _map_at_r(
    embeddings,
    labels,
    max_r=max_r,
    block_size=neighbors.check_block_size(block_size),
  )


@functools.partial(jax.jit, static_argnames=("max_r", "block_size"))
def _map_at_r(embeddings, labels, *, max_r, block_size):
  num_relevant = clustering.group_sizes(labels) - 1
  capped = jnp.minimum(num_relevant, max_r)
  ranks = jnp.arange(1, max_r + 1)

  def average_precisions(start, rows):
    queries, query_labels, query_r = rows
    _, indices = neighbors.block_top_k(
      start, queries, embeddings, max_r, exclude_self=True
    )
    hits = labels[indices] == query_labels[:, None]
    hits &= ranks[None, :] <= query_r[:, None]
    precision = jnp.cumsum(hits, axis=1) / ranks
    total = jnp.sum(jnp.where(hits, precision, 0.0), axis=1)
    return total / jnp.maximum(query_r, 1)

  precisions = neighbors.map_row_blocks(
    average_precisions, (embeddings, labels, capped), block_size=block_size
  )
  valid = num_relevant >= 1
  return jnp.sum(jnp.where(valid, precisions, 0.0)) / jnp.sum(valid)
