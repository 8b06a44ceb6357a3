"""The rank of each point's first same-label neighbour, in b × b tiles.

Shape letters: N points, D embedding dimensions, b = `block_size`, the edge
of a distance tile; nb = ⌈N / b⌉ tiles per side.

Recall@k (Wu et al. 2017, Sec. 5) asks, for each query i, whether a point of
its class is among its k nearest neighbours. With neighbours ordered by
(squared distance, index), that holds exactly when the rank of the first
same-label neighbour (the number of points ahead of it) is below k. That
rank is the number of *other-label* points ahead of the nearest same-label
point (j*, d*), so Recall@k for every k at once needs no top-k list:

  rank_i = #{j : labels[j] ≠ labels[i], (d_ij, j) < (d*_i, j*_i)},
  Recall@k = mean_i [rank_i < k].

Two passes over the distance matrix, never held whole:

  1. Nearest positive: the points are sorted by label, so the same-label
     points of a tile row lie in a few neighbouring tiles (a
     `jax.lax.fori_loop` with data-dependent bounds visits only those).
  2. Counting: the distance matrix is symmetric, so only the tiles (I, J)
     with J ≥ I are computed, and each serves its rows (counts along J) and,
     off the diagonal, its columns (counts along I): half the matrix
     products of a row-block scan.

Memory is one [b, b] float32 tile (plus masks fused into it) and O(N)
vectors, whatever N. Distances are ‖q‖² + ‖x‖² − 2 q·x in float32
(`Precision.HIGHEST`), clamped at 0 so that round-off never makes them
negative; ties are broken by the lower original index. Only other-label
distances are compared with d*, so a same-label pair computed in two tiles
with different round-off cannot miscount.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

_NO_INDEX = np.iinfo(np.int32).max


def _tile_squared_distances(x, norms, i, j, b):
  """[b, b] ‖x_r − x_c‖² for rows of tile-row i and columns of tile-row j."""
  rows = jax.lax.dynamic_slice_in_dim(x, i * b, b)
  cols = jax.lax.dynamic_slice_in_dim(x, j * b, b)
  row_norms = jax.lax.dynamic_slice_in_dim(norms, i * b, b)
  col_norms = jax.lax.dynamic_slice_in_dim(norms, j * b, b)
  inner = jnp.matmul(rows, cols.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(row_norms[:, None] + col_norms[None, :] - 2.0 * inner, 0)


def _lexicographic_less(d, index, threshold, threshold_index):
  """(d, index) < (threshold, threshold_index), elementwise, broadcasting."""
  return (d < threshold) | ((d == threshold) & (index < threshold_index))


@functools.partial(jax.jit, static_argnames="block_size")
def first_hit_ranks(
  embeddings: jax.Array, labels: jax.Array, *, block_size: int = 1024
) -> jax.Array:
  """Leave-one-out rank of each point's nearest same-label point.

  rank_i = the number of points j ≠ i with (‖x_j − x_i‖², j) lexicographically
  below that of the nearest same-label point; N when i's class has no other
  point. Recall@k = mean_i [rank_i < k] for every k.

  Args:
    embeddings: [N, D] float embeddings (finite).
    labels: [N] integer classes.
    block_size: b, the tile edge (static); memory is about b² floats.

  Returns:
    [N] int32 ranks in [0, N − 1], or N for a point without a same-label
    point.

  >>> x = jnp.array([[0.0], [1.0], [2.5], [3.0], [7.0]])
  >>> first_hit_ranks(x, jnp.array([0, 0, 1, 0, 1])).tolist()
  [0, 0, 3, 1, 1]
  """
  num_points, _ = embeddings.shape
  b = min(block_size, num_points)
  num_tiles = -(-num_points // b)
  pad = num_tiles * b - num_points

  # Sort by label: a class is one contiguous run of sorted positions.
  order = jnp.argsort(labels, stable=True).astype(jnp.int32)
  sorted_labels = labels[order]
  positions = jnp.arange(num_points, dtype=jnp.int32)
  new_class = jnp.concatenate(
    [jnp.ones(1, bool), sorted_labels[1:] != sorted_labels[:-1]]
  )
  group = jnp.cumsum(new_class, dtype=jnp.int32) - 1
  class_start = jax.ops.segment_min(positions, group, num_points)[group]
  class_end = jax.ops.segment_max(positions, group, num_points)[group] + 1

  x = jnp.pad(embeddings[order], ((0, pad), (0, 0)))
  norms = jnp.sum(x * x, axis=1)
  y = jnp.pad(sorted_labels, (0, pad))
  index = jnp.pad(order, (0, pad), constant_values=_NO_INDEX)
  valid = jnp.arange(num_tiles * b) < num_points
  tile = functools.partial(_tile_squared_distances, x, norms, b=b)

  def cut(a, i):
    return jax.lax.dynamic_slice_in_dim(a, i * b, b)

  def nearest_positive(i):
    """([b] d*, [b] j*) of the rows of tile-row i."""
    first = i * b
    last = jnp.minimum(first + b, num_points) - 1
    row_pos = first + jnp.arange(b)

    def visit(j, best):
      best_d, best_j = best
      squared = tile(i, j)
      col_pos = j * b + jnp.arange(b)
      same = (cut(y, i)[:, None] == cut(y, j)[None, :]) & cut(valid, j)[None]
      same &= row_pos[:, None] != col_pos[None, :]
      masked = jnp.where(same, squared, jnp.inf)
      tile_d = jnp.min(masked, axis=1)
      hit = same & (masked == tile_d[:, None])
      tile_j = jnp.min(jnp.where(hit, cut(index, j)[None], _NO_INDEX), axis=1)
      better = _lexicographic_less(tile_d, tile_j, best_d, best_j)
      return jnp.where(better, tile_d, best_d), jnp.where(
        better, tile_j, best_j
      )

    lo = class_start[first] // b
    hi = (class_end[last] - 1) // b
    init = (jnp.full(b, jnp.inf, x.dtype), jnp.full(b, _NO_INDEX, jnp.int32))
    return jax.lax.fori_loop(lo, hi + 1, visit, init)

  best_d, best_j = jax.lax.map(nearest_positive, jnp.arange(num_tiles))
  best_d, best_j = best_d.reshape(-1), best_j.reshape(-1)

  tile_rows, tile_cols = np.triu_indices(num_tiles)
  tile_rows = jnp.asarray(tile_rows, jnp.int32)
  tile_cols = jnp.asarray(tile_cols, jnp.int32)

  def count(p, counts):
    i, j = tile_rows[p], tile_cols[p]
    squared = tile(i, j)
    other = cut(y, i)[:, None] != cut(y, j)[None, :]
    other &= cut(valid, i)[:, None] & cut(valid, j)[None, :]
    ahead_of_row = other & _lexicographic_less(
      squared,
      cut(index, j)[None],
      cut(best_d, i)[:, None],
      cut(best_j, i)[:, None],
    )
    ahead_of_col = other & _lexicographic_less(
      squared,
      cut(index, i)[:, None],
      cut(best_d, j)[None],
      cut(best_j, j)[None],
    )
    row_counts = jnp.sum(ahead_of_row, axis=1, dtype=jnp.int32)
    col_counts = jnp.sum(ahead_of_col, axis=0, dtype=jnp.int32)
    counts = counts.at[i].add(row_counts)
    return counts.at[j].add(jnp.where(i == j, 0, col_counts))

  counts = jax.lax.fori_loop(
    0,
    tile_rows.shape[0],
    count,
    jnp.zeros((num_tiles, b), jnp.int32),
  ).reshape(-1)[:num_points]
  no_positive = jnp.isinf(best_d[:num_points])
  ranks = jnp.where(no_positive, num_points, counts)
  return jnp.zeros(num_points, jnp.int32).at[order].set(ranks)
