"""The fixed tuple layout every sampler returns, and its building blocks.

Shape letters: B batch, P classes × K images per class (B = P·K), R negatives
per positive pair (`num_negatives`), T = B·(K − 1)·R tuples.

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
  labels_lib._check_labels(labels)  # pylint: disable=protected-access
  batch = labels.shape[0]
  if distances.shape != (batch, batch):
    raise ValueError(
      f"distances must be [B, B] = [{batch}, {batch}] for {batch} labels, "
      f"got shape {distances.shape}."
    )
  labels_lib.check_batch_shape(batch, images_per_class)
  if num_negatives < 1:
    raise ValueError(f"num_negatives must be ≥ 1, got {num_negatives}.")


def positive_pairs(
  labels: jax.Array, *, images_per_class: int = 5
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """All ordered positive pairs (a, p), a ≠ p, of a P×K batch.

  Args:
    labels: [B] int class ids, each class exactly K times, in any order.
    images_per_class: K.

  Returns:
    (anchors, positives, mask), each [B·(K − 1)]: anchor i in batch order,
    its K − 1 positives in batch order; mask is False for a slot whose pair is
    not positive (only if the batch is not a valid P×K batch).

  >>> a, p, m = positive_pairs(jnp.array([0, 1, 0, 1]), images_per_class=2)
  >>> a.tolist(), p.tolist()
  ([0, 1, 2, 3], [2, 3, 0, 1])
  """
  k = images_per_class
  groups = labels_lib.class_groups(labels, images_per_class=k).reshape(-1)
  batch = labels.shape[0]
  # slot[i] = position of image i in the label-sorted layout (class g, slot s).
  slot = jnp.zeros(batch, jnp.int32).at[groups].set(jnp.arange(batch))
  others = jnp.array(
    [[t for t in range(k) if t != s] for s in range(k)], jnp.int32
  )  # [K, K-1]: the other slots of a class, in order.
  start = (slot // k) * k
  positives = groups[start[:, None] + others[slot % k]]  # [B, K-1]
  anchors = jnp.broadcast_to(
    jnp.arange(batch, dtype=jnp.int32)[:, None], positives.shape
  )
  mask = (labels[positives] == labels[anchors]) & (positives != anchors)
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
