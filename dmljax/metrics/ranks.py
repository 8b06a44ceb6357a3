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

Over a device mesh (`mesh`, 1-D: e.g. this process's devices), each device
finds the nearest positives of its own contiguous share of tile-rows and
counts over its own contiguous share of the tiles (I, J ≥ I); the d*, j* are
all-gathered between the passes and the integer counts summed with a
`psum`. Every tile is computed once, by one device, with the same
operations as on one device, so the ranks are exactly those of one device.

Memory is one [b, b] float32 tile (plus masks fused into it) and O(N)
vectors per device, whatever N. Distances are ‖q‖² + ‖x‖² − 2 q·x in float32
(`Precision.HIGHEST`), clamped at 0 so that round-off never makes them
negative; ties are broken by the lower original index. Only other-label
distances are compared with d*, so a same-label pair computed in two tiles
with different round-off cannot miscount.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from dmljax import labels as labels_lib

_NO_INDEX = np.iinfo(np.int32).max


class _Tiles(NamedTuple):
  """The points sorted by label and zero-padded to nb·b rows.

  Attributes:
    x: [nb·b, D] float embeddings, zero rows past N.
    norms: [nb·b] ‖x‖².
    labels: [nb·b] integer labels (0 past N).
    index: [nb·b] int32 original indices, `_NO_INDEX` past N.
    valid: [nb·b] bool, False past N.
    run_start: [N] int32, for each sorted position, where its class's run
      of sorted positions starts.
    run_end: [N] int32, one past where that run ends.
    block: b, the tile edge (static).
  """

  x: jax.Array
  norms: jax.Array
  labels: jax.Array
  index: jax.Array
  valid: jax.Array
  run_start: jax.Array
  run_end: jax.Array
  block: int

  @property
  def num_points(self) -> int:
    return self.run_start.shape[0]

  @property
  def num_tiles(self) -> int:
    return self.x.shape[0] // self.block

  def cut(self, a: jax.Array, i: jax.Array) -> jax.Array:
    """[b] tile-row i of a [nb·b] vector."""
    return jax.lax.dynamic_slice_in_dim(a, i * self.block, self.block)

  def squared_distances(self, i: jax.Array, j: jax.Array) -> jax.Array:
    """[b, b] ‖x_r − x_c‖² for rows of tile-row i and columns of tile-row j."""
    rows = jax.lax.dynamic_slice_in_dim(self.x, i * self.block, self.block)
    cols = jax.lax.dynamic_slice_in_dim(self.x, j * self.block, self.block)
    inner = jnp.matmul(rows, cols.T, precision=jax.lax.Precision.HIGHEST)
    row_norms, col_norms = self.cut(self.norms, i), self.cut(self.norms, j)
    return jnp.maximum(row_norms[:, None] + col_norms[None, :] - 2.0 * inner, 0)


def _sorted_tiles(
  embeddings: jax.Array, labels: jax.Array, b: int
) -> tuple[jax.Array, _Tiles]:
  """([N] int32 label-sort order, the sorted points in tiles of b rows)."""
  num_points = embeddings.shape[0]
  pad = -num_points % b
  # Sorted by label, a class is one contiguous run of sorted positions.
  order, start, count = labels_lib.sorted_classes(labels)
  run_start = start[order]
  x = jnp.pad(embeddings[order], ((0, pad), (0, 0)))
  tiles = _Tiles(
    x=x,
    norms=jnp.sum(x * x, axis=1),
    labels=jnp.pad(labels[order], (0, pad)),
    index=jnp.pad(order, (0, pad), constant_values=_NO_INDEX),
    valid=jnp.arange(num_points + pad) < num_points,
    run_start=run_start,
    run_end=run_start + count[order],
    block=b,
  )
  return order, tiles


def _lexicographic_less(d, index, threshold, threshold_index):
  """(d, index) < (threshold, threshold_index), elementwise, broadcasting."""
  return (d < threshold) | ((d == threshold) & (index < threshold_index))


def _tile_nearest_positives(tiles: _Tiles, i, j):
  """([b] d, [b] int32 j): each row's nearest same-label column of (i, j).

  Rows of tile-row i, columns of tile-row j; a row with no same-label column
  there gets (inf, `_NO_INDEX`). Ties go to the lower original index.
  """
  b = tiles.block
  squared = tiles.squared_distances(i, j)
  row_pos = i * b + jnp.arange(b)
  col_pos = j * b + jnp.arange(b)
  same = tiles.cut(tiles.labels, i)[:, None] == tiles.cut(tiles.labels, j)
  same &= tiles.cut(tiles.valid, j)[None]
  same &= row_pos[:, None] != col_pos[None, :]
  masked = jnp.where(same, squared, jnp.inf)
  tile_d = jnp.min(masked, axis=1)
  hit = same & (masked == tile_d[:, None])
  col_index = jnp.where(hit, tiles.cut(tiles.index, j)[None], _NO_INDEX)
  return tile_d, jnp.min(col_index, axis=1)


def _nearest_positives(tiles: _Tiles, tile_rows: jax.Array):
  """([R, b] d*, [R, b] int32 j*) of the rows of each of tile_rows [R].

  Only the tiles that hold a same-label point of tile-row i are visited
  (the runs of its first and last rows' classes bound them).
  """
  b = tiles.block

  def nearest_positive(i):
    first = i * b
    last = jnp.minimum(first + b, tiles.num_points) - 1

    def visit(j, best):
      best_d, best_j = best
      tile_d, tile_j = _tile_nearest_positives(tiles, i, j)
      better = _lexicographic_less(tile_d, tile_j, best_d, best_j)
      return jnp.where(better, tile_d, best_d), jnp.where(
        better, tile_j, best_j
      )

    lo = tiles.run_start[first] // b
    hi = (tiles.run_end[last] - 1) // b
    init = (
      jnp.full(b, jnp.inf, tiles.x.dtype),
      jnp.full(b, _NO_INDEX, jnp.int32),
    )
    return jax.lax.fori_loop(lo, hi + 1, visit, init)

  return jax.lax.map(nearest_positive, tile_rows)


def _tile_ahead_counts(tiles: _Tiles, best_d, best_j, i, j):
  """[b] row counts and [b] column counts of other-label points ahead.

  Tile (i, j): for each row r, the columns c of another label with
  (d_rc, index_c) < (d*_r, j*_r); for each column, the same with the roles
  swapped. best_d, best_j: [nb·b] d*, j* of every sorted position.
  """
  cut = tiles.cut
  squared = tiles.squared_distances(i, j)
  other = cut(tiles.labels, i)[:, None] != cut(tiles.labels, j)[None, :]
  other &= cut(tiles.valid, i)[:, None] & cut(tiles.valid, j)[None, :]
  ahead_of_row = other & _lexicographic_less(
    squared,
    cut(tiles.index, j)[None],
    cut(best_d, i)[:, None],
    cut(best_j, i)[:, None],
  )
  ahead_of_col = other & _lexicographic_less(
    squared,
    cut(tiles.index, i)[:, None],
    cut(best_d, j)[None],
    cut(best_j, j)[None],
  )
  row_counts = jnp.sum(ahead_of_row, axis=1, dtype=jnp.int32)
  col_counts = jnp.sum(ahead_of_col, axis=0, dtype=jnp.int32)
  return row_counts, col_counts


def _ahead_counts(tiles: _Tiles, best_d, best_j, first_pair, end_pair):
  """[nb, b] int32 counts over the tiles (I, J ≥ I) numbered [first, end).

  The tiles are numbered row by row; each serves its rows and, off the
  diagonal, its columns.
  """
  tile_rows, tile_cols = np.triu_indices(tiles.num_tiles)
  tile_rows = jnp.asarray(tile_rows, jnp.int32)
  tile_cols = jnp.asarray(tile_cols, jnp.int32)

  def count(p, counts):
    i, j = tile_rows[p], tile_cols[p]
    row_counts, col_counts = _tile_ahead_counts(tiles, best_d, best_j, i, j)
    counts = counts.at[i].add(row_counts)
    return counts.at[j].add(jnp.where(i == j, 0, col_counts))

  zeros = jnp.zeros((tiles.num_tiles, tiles.block), jnp.int32)
  return jax.lax.fori_loop(first_pair, end_pair, count, zeros)


def _device_share(total: int, axis: str | None):
  """[first, end) of this device's contiguous share of `total` items."""
  if axis is None:
    return 0, total
  device, num_devices = jax.lax.axis_index(axis), jax.lax.axis_size(axis)
  return total * device // num_devices, total * (device + 1) // num_devices


def _device_tile_rows(num_tiles: int, axis: str | None) -> jax.Array:
  """[m] int32 tile-rows of this device, m = ⌈nb / n⌉, in device order.

  Device d takes tile-rows d·m, ..., d·m + m − 1; past nb it repeats the
  last tile-row (work that the caller drops after the all-gather).
  """
  if axis is None:
    return jnp.arange(num_tiles)
  per_device = -(-num_tiles // jax.lax.axis_size(axis))
  first = jax.lax.axis_index(axis) * per_device
  return jnp.minimum(first + jnp.arange(per_device), num_tiles - 1)


def _first_hit_ranks(embeddings, labels, *, block_size, axis):
  """`first_hit_ranks` on one device, or on each device of mesh axis `axis`.

  Under `shard_map` over `axis` every device receives all the points and
  returns all the ranks (the same on every device).
  """
  num_points, _ = embeddings.shape
  order, tiles = _sorted_tiles(embeddings, labels, min(block_size, num_points))
  num_tiles = tiles.num_tiles
  best = _nearest_positives(tiles, _device_tile_rows(num_tiles, axis))
  if axis is not None:
    best = jax.lax.all_gather(best, axis, tiled=True)
  best_d, best_j = (a[:num_tiles].reshape(-1) for a in best)

  num_pairs = num_tiles * (num_tiles + 1) // 2
  counts = _ahead_counts(tiles, best_d, best_j, *_device_share(num_pairs, axis))
  if axis is not None:
    counts = jax.lax.psum(counts, axis)
  counts = counts.reshape(-1)[:num_points]
  no_positive = jnp.isinf(best_d[:num_points])
  ranks = jnp.where(no_positive, num_points, counts)
  return jnp.zeros(num_points, jnp.int32).at[order].set(ranks)


@functools.partial(jax.jit, static_argnames=("block_size", "mesh"))
def first_hit_ranks(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  block_size: int = 1024,
  mesh: jax.sharding.Mesh | None = None,
) -> jax.Array:
  """Leave-one-out rank of each point's nearest same-label point.

  rank_i = the number of points j ≠ i with (‖x_j − x_i‖², j) lexicographically
  below that of the nearest same-label point; N when i's class has no other
  point. Recall@k = mean_i [rank_i < k] for every k.

  Args:
    embeddings: [N, D] float embeddings (finite).
    labels: [N] integer classes.
    block_size: b, the tile edge (static); memory is about b² floats.
    mesh: a 1-D mesh (static) whose devices share the tiles, e.g. this
      process's devices; the ranks are exactly those of one device. The
      inputs must not be committed to other devices. Default: one device.

  Returns:
    [N] int32 ranks in [0, N − 1], or N for a point without a same-label
    point (replicated over `mesh`).

  >>> x = jnp.array([[0.0], [1.0], [2.5], [3.0], [7.0]])
  >>> first_hit_ranks(x, jnp.array([0, 0, 1, 0, 1])).tolist()
  [0, 0, 3, 1, 1]
  """
  if mesh is None:
    return _first_hit_ranks(
      embeddings, labels, block_size=block_size, axis=None
    )
  if len(mesh.axis_names) != 1:
    raise ValueError(
      f"first_hit_ranks needs a 1-D mesh, got axes {mesh.axis_names}."
    )
  axis = mesh.axis_names[0]
  replicated = PartitionSpec()
  ranks = jax.shard_map(
    functools.partial(_first_hit_ranks, block_size=block_size, axis=axis),
    mesh=mesh,
    in_specs=(replicated, replicated),
    out_specs=replicated,
    # The all-gathered d*, j* are typed device-varying, but they and the
    # psum-ed counts, hence the ranks, are the same on every device.
    check_vma=False,
  )
  return ranks(embeddings, labels)
