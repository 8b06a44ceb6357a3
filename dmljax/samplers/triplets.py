"""The fixed tuple layout every sampler returns, and its building blocks.

Shape letters: B batch, P classes × K images per class (B = P·K), R negatives
per positive pair (`num_negatives`), T = B·(K − 1)·R tuples.

The samplers are written for the paper's P×K batches but only need each class
to have at most K images in the batch: a smaller class (the last batch of an
epoch, a rare class) masks its missing slots, so B need not be a multiple of
K. Require the exact layout with `dmljax.labels.check_pk_batch` (host) or
`dmljax.labels.pk_batch_checks` (in-graph, checkify).

Batch construction follows Wu et al. (Sec. 5, after FaceNet): every positive
pair (a, p), a ≠ p, is used, and for each example of a positive pair one
negative pair is drawn, so positive and negative pairs are balanced. Every
sampler therefore returns the same fixed layout, a `Triplets` of [T] arrays
with t = (i·(K − 1) + j)·R + r: anchor i in batch order, its j-th positive in
batch order, its r-th negative. A slot that has no valid tuple keeps its place
with `mask=False` (where PML would drop it), so shapes never depend on data
and the samplers compose under `jit`, `vmap` and `shard_map`. In a masked slot
the negative index equals the anchor index: a defined placeholder, never a
silent 0.

Samplers read distances through `stop_gradient`: choosing a tuple is not
differentiable, and the loss takes its gradient from the same matrix.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dmljax import labels as labels_lib


class Triplets(NamedTuple):
  """Fixed-shape (anchor, positive, negative) indices into the batch.

  Attributes:
    anchors: [T] int32 batch indices of anchors.
    positives: [T] int32 batch indices of positives (same class, ≠ anchor).
    negatives: [T] int32 batch indices of negatives (other class); equal to
      the anchor where `mask` is False.
    mask: [T] bool, True where the tuple is valid.
  """

  anchors: jax.Array
  positives: jax.Array
  negatives: jax.Array
  mask: jax.Array


def check_inputs(
  distances: jax.Array,
  labels: jax.Array,
  images_per_class: int,
  num_negatives: int,
) -> tuple[jax.Array, jax.Array]:
  """Validates shapes; returns (distances, labels) as JAX arrays.

  Converting here lets NumPy inputs be closed over inside a user's `jit`.
  """
  distances, labels = jnp.asarray(distances), jnp.asarray(labels)
  labels_lib.check_labels(labels)
  batch = labels.shape[0]
  if distances.shape != (batch, batch):
    raise ValueError(
      f"distances must be [B, B] = [{batch}, {batch}] for {batch} labels, "
      f"got shape {distances.shape}."
    )
  labels_lib.check_images_per_class(images_per_class)
  if num_negatives < 1:
    raise ValueError(f"num_negatives must be ≥ 1, got {num_negatives}.")
  return distances, labels


def positive_pairs(
  labels: jax.Array, *, images_per_class: int = 5
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """All ordered positive pairs (a, p), a ≠ p, of a batch of ≤ K per class.

  Each anchor gets K − 1 slots for its positives, in batch order. A class with
  fewer than K images in the batch leaves its extra slots masked; a class
  with more than K uses only its first K images (`check_pk_batch` and
  `pk_batch_checks` reject both when an exact P×K batch is required).

  Args:
    labels: [B] int class ids, in any order.
    images_per_class: K.

  Returns:
    (anchors, positives, mask), each [B·(K − 1)]; where mask is False the
    positive index equals the anchor.

  >>> a, p, m = positive_pairs(jnp.array([0, 1, 0, 1]), images_per_class=2)
  >>> a.tolist(), p.tolist()
  ([0, 1, 2, 3], [2, 3, 0, 1])
  """
  labels = jnp.asarray(labels)
  labels_lib.check_labels(labels)
  k, batch = images_per_class, labels.shape[0]
  order, start, count = labels_lib.sorted_classes(labels)
  # position[i]: where image i sits in the label-sorted batch; its class
  # occupies positions [start, start + count) and it is number `rank` there.
  position = jnp.zeros(batch, jnp.int32).at[order].set(jnp.arange(batch))
  rank = position - start
  others = jnp.array(
    [[t for t in range(k) if t != s] for s in range(k)], jnp.int32
  )  # [K, K-1]: the other ranks of a class, in order.
  slots = others[jnp.minimum(rank, k - 1)]  # [B, K-1]
  positives = order[jnp.minimum(start[:, None] + slots, batch - 1)]
  anchors = jnp.broadcast_to(
    jnp.arange(batch, dtype=jnp.int32)[:, None], positives.shape
  )
  mask = (slots < count[:, None]) & (rank < k)[:, None]
  positives = jnp.where(mask, positives, anchors)
  return anchors.reshape(-1), positives.reshape(-1), mask.reshape(-1)


def assemble(
  labels: jax.Array,
  images_per_class: int,
  negatives: jax.Array,
  negatives_valid: jax.Array,
) -> Triplets:
  """Builds Triplets from [B, K−1, R] negatives and their validity."""
  anchors, positives, pair_mask = positive_pairs(
    labels, images_per_class=images_per_class
  )
  shape = negatives.shape
  anchors = jnp.broadcast_to(anchors.reshape(shape[:2] + (1,)), shape)
  positives = jnp.broadcast_to(positives.reshape(shape[:2] + (1,)), shape)
  mask = (
    pair_mask.reshape(shape[:2] + (1,))
    & negatives_valid
    & (labels[negatives] != labels[anchors])
  )
  negatives = jnp.where(mask, negatives, anchors)
  return Triplets(
    anchors=anchors.reshape(-1),
    positives=positives.reshape(-1),
    negatives=negatives.astype(jnp.int32).reshape(-1),
    mask=mask.reshape(-1),
  )


def _last_positive(weights: jax.Array) -> jax.Array:
  """Index of the last positive entry along the last axis (0 if none)."""
  size = weights.shape[-1]
  return size - 1 - jnp.argmax(weights[..., ::-1] > 0, axis=-1)


def _count_at_most(cumulative: jax.Array, targets: jax.Array) -> jax.Array:
  """searchsorted(cumulative, targets, side="right") along the last axis.

  A compare-and-count: the rows are short (≤ B / block_size or block_size),
  and unlike a binary search it has no loop.
  """
  return jnp.sum(cumulative <= targets[..., None], axis=-1, dtype=jnp.int32)


def inverse_cdf_draws(
  key: jax.Array,
  weights: jax.Array,
  draws: tuple[int, ...],
  *,
  block_size: int = 64,
) -> jax.Array:
  """Independent draws j ~ weights[i, j] / Σ_j weights[i, j] for each row i.

  Two-level inverse CDF: a draw first picks a block of `block_size` columns
  by the cumulative block sums, then a column inside that block by its own
  cumulative sum. That is the same distribution as one cumulative sum over
  the row, at the cost of a [B, B] sum instead of a [B, B] scan (XLA's
  cumulative sum over long rows is several times slower than a sum).
  Zero-weight columns are never drawn in a row with positive total.

  Args:
    key: PRNG key.
    weights: [B, M] non-negative weights. A row of zeros yields index 0; the
      caller masks such rows.
    draws: the shape of the draws per row.
    block_size: columns per block.

  Returns:
    [B, *draws] int32 column indices.
  """
  rows, size = weights.shape
  num_blocks = -(-size // block_size)
  padded = jnp.pad(weights, ((0, 0), (0, num_blocks * block_size - size)))
  blocks = padded.reshape(rows, num_blocks, block_size)
  block_sums = jnp.sum(blocks, axis=-1)  # [B, nb]
  block_cumulative = jnp.cumsum(block_sums, axis=-1)
  uniform = jax.random.uniform(key, (rows, math.prod(draws)), weights.dtype)
  targets = uniform * block_cumulative[:, -1:]
  block = _count_at_most(block_cumulative[:, None, :], targets)
  # uniform·total can round up to the total: stay on the last non-empty block.
  block = jnp.minimum(block, _last_positive(block_sums)[:, None])
  before = jnp.take_along_axis(block_cumulative - block_sums, block, axis=1)
  residual = jnp.maximum(targets - before, 0.0)
  inside = jnp.take_along_axis(blocks, block[..., None], axis=1)  # [B, n, S]
  column = _count_at_most(jnp.cumsum(inside, axis=-1), residual)
  column = jnp.minimum(column, _last_positive(inside))
  index = jnp.minimum(block * block_size + column, size - 1)
  # A row without weight has no distribution: return the documented 0.
  index = jnp.where(block_cumulative[:, -1:] > 0, index, 0)
  return index.reshape(rows, *draws).astype(jnp.int32)
