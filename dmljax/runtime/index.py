"""A gallery of embeddings to search: exact top-k, kept on disk.

Shape letters: N gallery items, D embedding dimensions, Q queries, k
neighbours, t = `tile_size` gallery rows per tile, E excluded items per
query.

`Gallery` holds float32 embeddings [N, D] on the host, with optional labels
(ints or strings) and paths, and answers `search(queries, k)`: the k
nearest items by Euclidean distance, nearest first. The search is one jitted
function that scans the gallery in tiles of t rows, keeping a running top-k
(`jax.lax.top_k` on negative squared distances ‖q‖² + ‖x‖² − 2 q·x of each
[Q, t] tile merged with the best so far), so memory is bounded by one tile;
the distances returned are then computed directly as ‖q − x‖ for the k
chosen, exact where the expanded form cancels (an item against itself).
The gallery is padded to a multiple of t rows and the queries go in blocks
of at most 256, each padded to a power of two, so adding items or asking
for a different number of queries recompiles only when the number of tiles
or the query bucket changes, not for every size. Equal distances come back
lower index first.

`exclude` removes given items from a query's results (a query that is
itself a gallery item should not be its own top-1); `search_items` queries
with gallery items themselves and excludes each one from its own results.
A query left with fewer than k candidates gets distance +inf and index −1
in the missing places.

`save` writes an .npz atomically (a temporary file, then `os.replace`);
`Gallery.load` reads it back.
"""

import functools
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "dmljax.gallery/1"
_QUERY_BLOCK = 256


def _check_rows(embeddings: Any, dim: int | None, name: str) -> np.ndarray:
  """[M, D] finite float32 on the host, or ValueError naming the problem."""
  rows = np.asarray(embeddings)
  if rows.ndim != 2:
    raise ValueError(f"{name} must be an [M, D] matrix, got {rows.shape}.")
  if not np.issubdtype(rows.dtype, np.floating):
    raise ValueError(f"{name} must be floating, got dtype {rows.dtype}.")
  if dim is not None and rows.shape[1] != dim:
    raise ValueError(
      f"{name} have D = {rows.shape[1]}; the gallery's is {dim}."
    )
  if not np.isfinite(rows).all():
    raise ValueError(f"{name} contain NaN or infinite values.")
  return rows.astype(np.float32)


def _check_column(values: Any, count: int, name: str) -> np.ndarray | None:
  """[M] labels (ints or strings) or paths (strings), or ValueError."""
  if values is None:
    return None
  column = np.asarray(values)
  if column.ndim != 1 or column.shape[0] != count:
    raise ValueError(
      f"{name} must be one per embedding ({count}), got shape {column.shape}."
    )
  if column.size and column.dtype.kind not in "iuU":
    raise ValueError(f"{name} must be ints or strings, got {column.dtype}.")
  return column


def _bucket(count: int) -> int:
  """count (≤ 256) rounded up to a power of two."""
  return 1 << max(count - 1, 0).bit_length()


@functools.partial(jax.jit, static_argnames=("k", "tile_size"))
def _top_k(queries, gallery, size, exclude, *, k, tile_size):
  """Distances [Q, k] and indices [Q, k] of the k nearest, over tiles.

  Args:
    queries: [Q, D] float32.
    gallery: [T·t, D] float32, rows from `size` on are padding.
    size: int32 scalar, the number of real gallery rows N.
    exclude: int32 [Q, E] gallery rows each query must not return (−1:
      none).
    k: neighbours (static).
    tile_size: t (static).
  """
  num_queries = queries.shape[0]
  tiles = gallery.reshape(-1, tile_size, gallery.shape[1])
  query_norms = jnp.sum(queries * queries, axis=1, keepdims=True)

  def merge(best, tile_and_start):
    best_negated, best_indices = best
    tile, start = tile_and_start
    squared = (
      query_norms
      + jnp.sum(tile * tile, axis=1)[None, :]
      - 2.0 * queries @ tile.T
    )
    indices = start + jnp.arange(tile_size, dtype=jnp.int32)
    excluded = jnp.any(indices[None, :, None] == exclude[:, None, :], axis=2)
    usable = (indices < size)[None, :] & ~excluded
    negated = jnp.where(usable, -jnp.maximum(squared, 0.0), -jnp.inf)
    candidates = jnp.concatenate([best_negated, negated], axis=1)
    candidate_indices = jnp.concatenate(
      [best_indices, jnp.broadcast_to(indices, negated.shape)], axis=1
    )
    top, position = jax.lax.top_k(candidates, k)
    return (top, jnp.take_along_axis(candidate_indices, position, 1)), None

  start = (
    jnp.full((num_queries, k), -jnp.inf, jnp.float32),
    jnp.full((num_queries, k), -1, jnp.int32),
  )
  starts = jnp.arange(tiles.shape[0], dtype=jnp.int32) * tile_size
  (negated, indices), _ = jax.lax.scan(merge, start, (tiles, starts))
  indices = jnp.where(jnp.isfinite(negated), indices, -1)
  # The chosen k again, as ‖q − x‖: exact near 0, where the expanded form
  # loses √(float32 round-off) ≈ 5e-4 to cancellation.
  chosen = gallery[jnp.maximum(indices, 0)]
  exact = jnp.sqrt(jnp.sum((queries[:, None, :] - chosen) ** 2, axis=2))
  return jnp.where(indices >= 0, exact, jnp.inf), indices


class Gallery:
  """Embeddings [N, D] with optional labels and paths; exact top-k search.

  Args:
    embeddings: float [N, D] (N may be 0 with a given `dim`).
    labels: [N] ints or strings, or None.
    paths: [N] strings, or None.
    tile_size: t, gallery rows per tile of the search.
    dim: D, needed only for an empty gallery.
    metadata: JSON-able facts kept with the gallery (e.g. where the
      embeddings came from), saved and loaded with it.

  >>> gallery = Gallery(np.eye(3, dtype=np.float32), labels=[0, 1, 1])
  >>> distances, indices = gallery.search(np.eye(3)[1:], 1)
  >>> indices.tolist()
  [[1], [2]]
  """

  def __init__(
    self,
    embeddings: Any = None,
    *,
    labels: Any = None,
    paths: Sequence[str] | None = None,
    tile_size: int = 4096,
    dim: int | None = None,
    metadata: dict[str, Any] | None = None,
  ):
    if isinstance(tile_size, bool) or not isinstance(tile_size, int):
      raise ValueError(f"tile_size must be an int, got {tile_size!r}.")
    if tile_size < 1:
      raise ValueError(f"tile_size must be ≥ 1, got {tile_size}.")
    if embeddings is None:
      if dim is None:
        raise ValueError("An empty gallery needs its dimension: pass dim=D.")
      embeddings = np.zeros((0, dim), np.float32)
    self.tile_size = tile_size
    self.metadata = dict(metadata or {})
    self.embeddings = _check_rows(embeddings, dim, "embeddings")
    count = self.embeddings.shape[0]
    self.labels = _check_column(labels, count, "labels")
    self.paths = _check_column(paths, count, "paths")
    if self.paths is not None and self.paths.dtype.kind != "U":
      raise ValueError("paths must be strings.")
    self._padded = None  # The padded gallery on the device, made on use.

  def __len__(self) -> int:
    return self.embeddings.shape[0]

  @property
  def dim(self) -> int:
    """D."""
    return self.embeddings.shape[1]

  def add(
    self,
    embeddings: Any,
    *,
    labels: Any = None,
    paths: Sequence[str] | None = None,
  ) -> None:
    """Appends items [M, D]; labels / paths iff the gallery has them."""
    rows = _check_rows(embeddings, self.dim, "embeddings")
    columns = {}
    for name, new in (("labels", labels), ("paths", paths)):
      old = getattr(self, name)
      new = _check_column(new, rows.shape[0], name)
      if not len(self) or old is None and new is None:
        columns[name] = new
      elif old is None or new is None or old.dtype.kind != new.dtype.kind:
        raise ValueError(
          f"Every item has {name} of one kind or none does: the gallery's "
          f"are {None if old is None else old.dtype}, the new items' "
          f"{None if new is None else new.dtype}."
        )
      else:
        columns[name] = np.concatenate([old, new])
    self.embeddings = np.concatenate([self.embeddings, rows])
    self.labels, self.paths = columns["labels"], columns["paths"]
    self._padded = None

  def _padded_gallery(self) -> jax.Array:
    """[T·t, D] on the device: the embeddings, zero rows up to the tile."""
    if self._padded is None:
      tiles = max(1, -(-len(self) // self.tile_size))
      padded = np.zeros((tiles * self.tile_size, self.dim), np.float32)
      padded[: len(self)] = self.embeddings
      self._padded = jnp.asarray(padded)
    return self._padded

  def search(
    self, queries: Any, k: int, *, exclude: Any = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest gallery items of each query, nearest first.

    Args:
      queries: float [Q, D].
      k: neighbours, 1 ≤ k ≤ N.
      exclude: int [Q] or [Q, E] gallery indices query q must not return
        (−1: none), or None.

    Returns:
      (distances float32 [Q, k], indices int32 [Q, k]); +inf and −1 where a
      query has fewer than k candidates left.
    """
    queries = _check_rows(queries, self.dim, "queries")
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
      raise ValueError(f"k must be an int, got {k!r}.")
    if not 1 <= k <= len(self):
      raise ValueError(
        f"k must be between 1 and the gallery's {len(self)} items, got {k}."
      )
    exclude = self._check_exclude(exclude, queries.shape[0])
    gallery = self._padded_gallery()
    distances, indices = [], []
    for start in range(0, queries.shape[0], _QUERY_BLOCK):
      block = queries[start : start + _QUERY_BLOCK]
      rows = _bucket(block.shape[0])
      padded_queries = np.zeros((rows, self.dim), np.float32)
      padded_queries[: block.shape[0]] = block
      padded_exclude = np.full((rows, exclude.shape[1]), -1, np.int32)
      padded_exclude[: block.shape[0]] = exclude[start : start + len(block)]
      found_distances, found = _top_k(
        padded_queries,
        gallery,
        np.int32(len(self)),
        padded_exclude,
        k=int(k),
        tile_size=self.tile_size,
      )
      distances.append(np.asarray(found_distances)[: len(block)])
      indices.append(np.asarray(found)[: block.shape[0]])
    if not distances:
      return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
    return np.concatenate(distances), np.concatenate(indices)

  def _check_exclude(self, exclude: Any, num_queries: int) -> np.ndarray:
    """int32 [Q, E] (E ≥ 1) from None, [Q] or [Q, E]."""
    if exclude is None:
      return np.full((num_queries, 1), -1, np.int32)
    exclude = np.asarray(exclude)
    if exclude.ndim == 1:
      exclude = exclude[:, None]
    if (
      exclude.ndim != 2
      or exclude.shape[0] != num_queries
      or exclude.dtype.kind not in "iu"
    ):
      raise ValueError(
        f"exclude must be ints [Q] or [Q, E] with Q = {num_queries}, got "
        f"{exclude.dtype} {exclude.shape}."
      )
    if exclude.size and (exclude.min() < -1 or exclude.max() >= len(self)):
      raise ValueError(
        f"exclude holds indices outside -1..{len(self) - 1} (−1: none)."
      )
    return exclude.astype(np.int32).reshape(num_queries, -1)

  def search_items(
    self, indices: Any, k: int, *, exclude_self: bool = True
  ) -> tuple[np.ndarray, np.ndarray]:
    """`search` with gallery items `indices` [Q] as the queries.

    With `exclude_self`, item i never comes back in its own results, so
    k ≤ N − 1 gives k real neighbours.
    """
    indices = np.asarray(indices)
    if indices.ndim != 1 or indices.dtype.kind not in "iu":
      raise ValueError(f"indices must be ints [Q], got {indices.shape}.")
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise ValueError(f"indices must lie in 0..{len(self) - 1}.")
    return self.search(
      self.embeddings[indices], k, exclude=indices if exclude_self else None
    )

  def save(self, path: str) -> str:
    """Writes the gallery to `path` (.npz) atomically; returns `path`."""
    if not path.endswith(".npz"):
      raise ValueError(f"A gallery file ends in .npz, got {path!r}.")
    arrays = {
      "format": np.array(FORMAT),
      "embeddings": self.embeddings,
      "tile_size": np.array(self.tile_size),
      "metadata": np.array(json.dumps(self.metadata)),
    }
    for name in ("labels", "paths"):
      if getattr(self, name) is not None:
        arrays[name] = getattr(self, name)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = path + ".tmp"
    with open(temporary, "wb") as f:
      np.savez(f, **arrays)
    os.replace(temporary, path)
    return path

  @classmethod
  def load(cls, path: str) -> "Gallery":
    """The gallery `save` wrote to `path`."""
    if not os.path.isfile(path):
      raise ValueError(f"No gallery file at {path}.")
    with np.load(path, allow_pickle=False) as data:
      if "format" not in data or str(data["format"]) != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file (Gallery.save).")
      return cls(
        data["embeddings"],
        labels=data["labels"] if "labels" in data else None,
        paths=data["paths"] if "paths" in data else None,
        tile_size=int(data["tile_size"]),
        dim=data["embeddings"].shape[1],
        metadata=json.loads(str(data["metadata"])),
      )
