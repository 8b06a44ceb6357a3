"""Exact nearest neighbours, computed in blocks of query rows.

Shape letters: N points, Q queries, M database points, D embedding dimensions,
k neighbours, b = `block_size` rows per block.

Retrieval metrics need the k nearest database points of every query. The full
[Q, M] distance matrix does not fit for test sets like SOP (60,502 images:
14.6 GB in float32), so the queries go through `jax.lax.map` in blocks of b
rows: one [b, M] block of distances and its `jax.lax.top_k` live at a time.
The last block is padded to b rows, so every block has the same static shape,
and the padded rows are dropped from the result. The whole computation is one
jit-able graph with shapes fixed by (Q, M, D, k, b).

Neighbours are ranked by squared Euclidean distance (the same order as the
distance), computed in float32 by `distances.pairwise_squared_distances`
as ‖q‖² + ‖x‖² − 2 q·x. Exactly equal computed distances (duplicates,
symmetric points) are ordered by the lower database index (`jax.lax.top_k`
keeps the lower index first); distances that differ by float round-off only
are ordered by their rounded values.
"""

import functools
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from dmljax import distances


def check_embeddings(embeddings: Any, name: str = "embeddings") -> jax.Array:
  """[N, D] floating embeddings as a jax array, at least float32.

  Raises ValueError for a wrong rank or dtype, and, when the values are
  concrete (not traced under `jit`), for NaN or infinite entries.
  """
  embeddings = jnp.asarray(embeddings)
  if embeddings.ndim != 2:
    raise ValueError(
      f"{name} must be an [N, D] matrix, got shape {embeddings.shape}."
    )
  if not jnp.issubdtype(embeddings.dtype, jnp.floating):
    raise ValueError(f"{name} must be floating, got dtype {embeddings.dtype}.")
  embeddings = embeddings.astype(jnp.promote_types(embeddings.dtype, "float32"))
  if not isinstance(embeddings, jax.core.Tracer):
    finite = jax.device_get(jnp.all(jnp.isfinite(embeddings)))
    if not finite:
      raise ValueError(f"{name} contain NaN or infinite values.")
  return embeddings


def check_labels(labels: Any, num_points: int, name: str = "labels"):
  """[N] integer labels as a jax array; ValueError on shape, dtype or N."""
  labels = jnp.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"{name} must be an [N] vector, got shape {labels.shape}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(
      f"{name} must be integers (class ids), got dtype {labels.dtype}."
    )
  if labels.shape[0] != num_points:
    raise ValueError(
      f"{name} has {labels.shape[0]} entries but there are {num_points} "
      "points: one label per point."
    )
  return labels


def check_block_size(block_size: int) -> int:
  """block_size as a positive int, or ValueError."""
  if isinstance(block_size, bool) or not isinstance(block_size, int):
    raise ValueError(f"block_size must be an int, got {block_size!r}.")
  if block_size < 1:
    raise ValueError(f"block_size must be positive, got {block_size}.")
  return block_size


def map_row_blocks(
  fn: Callable[..., Any], rows: Any, *, block_size: int
) -> Any:
  """Applies `fn` to blocks of b rows; the last block is padded.

  Args:
    fn: (start, block) -> pytree of [b, ...] arrays, where `start` is the
      int32 index of the block's first row and `block` is `rows` cut to b
      rows (zero-padded past the end in the last block).
    rows: pytree of arrays sharing the leading dimension Q.
    block_size: b; clipped to Q, so small inputs make one unpadded block.

  Returns:
    The outputs of `fn` over all blocks, each with leading dimension Q.

  >>> rows = jnp.arange(5.0)
  >>> map_row_blocks(lambda s, r: r * 2, rows, block_size=2).tolist()
  [0.0, 2.0, 4.0, 6.0, 8.0]
  """
  num_rows = jax.tree.leaves(rows)[0].shape[0]
  b = min(check_block_size(block_size), num_rows)
  if b == num_rows:
    return fn(jnp.int32(0), rows)
  num_blocks = -(-num_rows // b)
  pad = num_blocks * b - num_rows

  def to_blocks(a):
    a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
    return a.reshape(num_blocks, b, *a.shape[1:])

  starts = jnp.arange(num_blocks, dtype=jnp.int32) * b
  outputs = jax.lax.map(
    lambda args: fn(*args), (starts, jax.tree.map(to_blocks, rows))
  )
  return jax.tree.map(
    lambda a: a.reshape(num_blocks * b, *a.shape[2:])[:num_rows], outputs
  )


def block_top_k(
  start: jax.Array,
  queries: jax.Array,
  database: jax.Array,
  k: int,
  *,
  exclude_self: bool,
) -> tuple[jax.Array, jax.Array]:
  """Squared distances and indices of the k nearest rows of `database`.

  Args:
    start: index of `queries[0]` in the database (used when `exclude_self`).
    queries: [b, D] one block of queries.
    database: [M, D].
    k: number of neighbours (static).
    exclude_self: give database row `start + i` the distance +inf for query i.

  Returns:
    ([b, k] squared distances ascending, [b, k] int32 database indices).
  """
  squared = distances.pairwise_squared_distances(queries, database)
  if exclude_self:
    rows = jnp.arange(queries.shape[0])
    # Padded rows point past the end; "drop" ignores them.
    squared = squared.at[rows, start + rows].set(jnp.inf, mode="drop")
  negated, indices = jax.lax.top_k(-squared, k)
  return -negated, indices


def nearest_neighbors(
  queries: jax.Array,
  database: jax.Array,
  k: int,
  *,
  exclude_self: bool = False,
  block_size: int = 1024,
) -> tuple[jax.Array, jax.Array]:
  """Exact k nearest neighbours under the Euclidean distance.

  For every query, the k database rows closest to it, nearest first; equal
  distances are ordered by the lower database index. Memory is bounded by one
  [b, M] distance block.

  Args:
    queries: [Q, D] query embeddings.
    database: [M, D] database embeddings.
    k: number of neighbours, 1 ≤ k ≤ M (k ≤ M − 1 with `exclude_self`).
    exclude_self: leave-one-out retrieval: `queries` is `database` (Q = M)
      and query i never retrieves database row i.
    block_size: b, queries per block.

  Returns:
    (distances [Q, k], indices [Q, k] int32).

  >>> x = jnp.array([[0.0], [1.0], [3.0]])
  >>> d, i = nearest_neighbors(x, x, 1, exclude_self=True)
  >>> i[:, 0].tolist(), d[:, 0].tolist()
  ([1, 0, 1], [1.0, 1.0, 2.0])
  """
  queries = check_embeddings(queries, "queries")
  database = check_embeddings(database, "database")
  if queries.shape[1] != database.shape[1]:
    raise ValueError(
      f"queries {queries.shape} and database {database.shape} must have the "
      "same embedding dimension D."
    )
  num_points = database.shape[0]
  if exclude_self and queries.shape[0] != num_points:
    raise ValueError(
      "exclude_self=True means the queries are the database, but they have "
      f"{queries.shape[0]} and {num_points} rows."
    )
  check_k(k, num_points - int(exclude_self), exclude_self=exclude_self)
  dtype = jnp.result_type(queries, database)
  return _nearest_neighbors(
    queries.astype(dtype),
    database.astype(dtype),
    k=k,
    exclude_self=exclude_self,
    block_size=check_block_size(block_size),
  )


@functools.partial(jax.jit, static_argnames=("k", "exclude_self", "block_size"))
def _nearest_neighbors(queries, database, *, k, exclude_self, block_size):
  def block(start, query_block):
    return block_top_k(
      start, query_block, database, k, exclude_self=exclude_self
    )

  squared, indices = map_row_blocks(block, queries, block_size=block_size)
  return jnp.sqrt(squared), indices


def check_k(k: int, max_k: int, *, exclude_self: bool) -> int:
  """k as an int in [1, max_k], or ValueError saying why."""
  if isinstance(k, bool | jax.core.Tracer) or not hasattr(k, "__index__"):
    raise ValueError(
      f"k must be a static int, got {k!r} (under jit, bind it with "
      "functools.partial or static_argnames)."
    )
  k = operator.index(k)
  if k < 1:
    raise ValueError(f"k must be at least 1, got {k}.")
  if k > max_k:
    others = "other points (leave-one-out)" if exclude_self else "points"
    raise ValueError(
      f"k={k} neighbours asked for, but each query has only {max_k} "
      f"database {others}: k must be at most {max_k}."
    )
  return k
