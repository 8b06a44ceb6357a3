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
) -> None:
  labels_lib.check_labels(labels)
  batch = labels.shape[0]
  if distances.shape != (batch, batch):
    raise ValueError(
      f"distances must be [B, B] = [{batch}, {batch}] for {batch} labels, "
      f"got shape {distances.shape}."
    )
  if images_per_class < 2:
    raise ValueError(
      f"images_per_class must be ≥ 2 to form positive pairs, got "
      f"{images_per_class}."
    )
  if num_negatives < 1:
    raise ValueError(f"num_negatives must be ≥ 1, got {num_negatives}.")


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
  labels_lib.check_labels(labels)
  k, batch = images_per_class, labels.shape[0]
  order = jnp.argsort(labels, stable=True).astype(jnp.int32)
  sorted_labels = labels[order]
  # position[i]: where image i sits in the label-sorted batch; its class
  # occupies positions [start, start + count) and it is number `rank` there.
  position = jnp.zeros(batch, jnp.int32).at[order].set(jnp.arange(batch))
  start = jnp.searchsorted(sorted_labels, labels, side="left")
  count = jnp.searchsorted(sorted_labels, labels, side="right") - start
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


def inverse_cdf_draws(
  key: jax.Array, weights: jax.Array, draws: tuple[int, ...]
) -> jax.Array:
  """Independent draws j ~ weights[i, j] / Σ_j weights[i, j] per row i.

  Args:
    key: PRNG key.
    weights: [B, B] non-negative weights; a row of zeros gives index 0 (the
      caller masks such rows).
    draws: the shape of draws per row.

  Returns:
    [B, *draws] int32 column indices, never one of zero weight in a row with
    positive total.
  """
  cumulative = jnp.cumsum(weights, axis=1)
  total = cumulative[:, -1:]
  uniform = jax.random.uniform(key, (weights.shape[0], *draws), weights.dtype)
  targets = uniform.reshape(weights.shape[0], -1) * total
  index = jax.vmap(lambda c, v: jnp.searchsorted(c, v, side="right"))(
    cumulative, targets
  )
  # uniform·total can round up to total; take the last positive entry then.
  last = weights.shape[1] - 1 - jnp.argmax(weights[:, ::-1] > 0, axis=1)
  index = jnp.minimum(index, last[:, None])
  return index.reshape(weights.shape[0], *draws).astype(jnp.int32)
