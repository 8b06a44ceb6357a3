"""Random, hard and semi-hard negatives for every positive pair.

Shape letters: B batch, K images per class, R negatives per positive pair,
T = B·(K − 1)·R. The layout of the result is described in
`dmljax.samplers.triplets`.
"""

import jax
import jax.numpy as jnp

from dmljax import labels as labels_lib
from dmljax.samplers import triplets


def random_sampling(
  key: jax.Array,
  distances: jax.Array,
  labels: jax.Array,
  *,
  images_per_class: int = 5,
  num_negatives: int = 1,
) -> triplets.Triplets:
  """Uniformly random negatives: n ~ Uniform{n : label(n) ≠ label(a)}.

  Every positive pair (a, p) gets R negatives drawn uniformly among the
  anchor's negatives, so the pairwise losses see positive and negative
  pairs 1 : R. Wu et al.'s "random sampling" (Sec. 5) is "uniform sampling
  from all positive and negative pairs" of the batch, where negative pairs
  outnumber positive ones (B − K) : (K − 1), 29 : 1 at B = 120, K = 5.
  Here the pairs are balanced instead, as every other sampler's tuples
  are; the negative pairs are still uniform among negatives.

  Args:
    key: PRNG key.
    distances: [B, B] (unused beyond its shape; kept for one signature).
    labels: [B] int class ids of a P×K batch.
    images_per_class: K.
    num_negatives: R independent negatives per positive pair.

  Returns:
    Triplets with T = B·(K − 1)·R.
  """
  distances, labels = triplets.check_inputs(
    distances, labels, images_per_class, num_negatives
  )
  batch = labels.shape[0]
  # Draw the u-th negative directly: in the label-sorted batch the anchor's
  # class fills [start, start + count), and its negatives are the rest.
  order, start, count = labels_lib.sorted_classes(labels)
  shape = (batch, images_per_class - 1, num_negatives)
  num_negative = (batch - count)[:, None, None]
  u = jax.random.randint(key, shape, 0, jnp.maximum(num_negative, 1))
  position = jnp.where(u < start[:, None, None], u, u + count[:, None, None])
  negatives = order[jnp.minimum(position, batch - 1)]
  return triplets.assemble(
    labels,
    images_per_class,
    negatives,
    jnp.broadcast_to(num_negative > 0, shape),
  )


def _closest(values: jax.Array, candidates: jax.Array, count: int):
  """The `count` smallest candidate values per row: (indices, found)."""
  masked = jnp.where(candidates, values, jnp.inf)
  neg_values, indices = jax.lax.top_k(-masked, count)
  return indices.astype(jnp.int32), jnp.isfinite(neg_values)


def hard_sampling(
  key: jax.Array,
  distances: jax.Array,
  labels: jax.Array,
  *,
  images_per_class: int = 5,
  num_negatives: int = 1,
) -> triplets.Triplets:
  """Hardest negatives: slot r gets the anchor's r-th closest negative.

  n*_a = argmin_{n: label(n) ≠ label(a)} D_an, ties to the lower index. Every
  positive pair of an anchor shares the anchor's hard negatives.

  Args:
    key: unused (kept for one sampler signature).
    distances: [B, B] distances.
    labels: [B] int class ids of a P×K batch.
    images_per_class: K.
    num_negatives: R.

  Returns:
    Triplets with T = B·(K − 1)·R.
  """
  del key
  distances, labels = triplets.check_inputs(
    distances, labels, images_per_class, num_negatives
  )
  distances = jax.lax.stop_gradient(distances)
  indices, found = _closest(
    distances, labels_lib.negative_mask(labels), num_negatives
  )  # [B, R]
  shape = (labels.shape[0], images_per_class - 1, num_negatives)
  return triplets.assemble(
    labels,
    images_per_class,
    jnp.broadcast_to(indices[:, None, :], shape),
    jnp.broadcast_to(found[:, None, :], shape),
  )


SEMIHARD_FALLBACKS = ("farthest", "nearest", "drop")


def semihard_sampling(
  key: jax.Array,
  distances: jax.Array,
  labels: jax.Array,
  *,
  images_per_class: int = 5,
  num_negatives: int = 1,
  lower_bound: float | None = None,
  fallback: str = "farthest",
) -> triplets.Triplets:
  """Semi-hard negatives (FaceNet; Wu et al. Sec. 3).

  n*_ap = argmin_{n: D_an > D_ap} D_an: the closest negative farther than the
  positive. With `lower_bound` set, the condition is D_an > lower_bound (the
  paper's variant for pairwise losses, which uses 0.5). Slot r takes the r-th
  closest such negative.

  Args:
    key: unused (kept for one sampler signature).
    distances: [B, B] distances.
    labels: [B] int class ids of a P×K batch.
    images_per_class: K.
    num_negatives: R.
    lower_bound: None for D_ap, else a fixed distance.
    fallback: when a slot has no semi-hard negative: "farthest" takes the
      anchor's farthest negative (TF-Addons `triplet_semihard_loss`),
      "nearest" its nearest negative, "drop" masks the slot.

  Returns:
    Triplets with T = B·(K − 1)·R.
  """
  del key
  if fallback not in SEMIHARD_FALLBACKS:
    raise ValueError(
      f"Unknown fallback {fallback!r}; choose one of {SEMIHARD_FALLBACKS}."
    )
  distances, labels = triplets.check_inputs(
    distances, labels, images_per_class, num_negatives
  )
  distances = jax.lax.stop_gradient(distances)
  anchors, positives, _ = triplets.positive_pairs(
    labels, images_per_class=images_per_class
  )
  negative = labels_lib.negative_mask(labels)  # [B, B]
  batch, k = labels.shape[0], images_per_class
  if lower_bound is None:
    threshold = distances[anchors, positives].reshape(batch, k - 1, 1)
  else:
    threshold = jnp.asarray(lower_bound, distances.dtype)
  anchor_distances = distances[:, None, :]  # [B, 1, B]
  candidates = jnp.broadcast_to(  # [B, K-1, B], also for a scalar bound.
    negative[:, None, :] & (anchor_distances > threshold), (batch, k - 1, batch)
  )
  indices, found = _closest(
    jnp.broadcast_to(anchor_distances, candidates.shape),
    candidates,
    num_negatives,
  )  # [B, K-1, R]
  has_negative = jnp.any(negative, axis=1)[:, None, None]
  if fallback == "drop":
    return triplets.assemble(labels, k, indices, found)
  if fallback == "farthest":
    spare = jnp.argmax(jnp.where(negative, distances, -jnp.inf), axis=1)
  else:
    spare = jnp.argmin(jnp.where(negative, distances, jnp.inf), axis=1)
  indices = jnp.where(found, indices, spare[:, None, None])
  return triplets.assemble(
    labels, k, indices, jnp.broadcast_to(has_negative, indices.shape)
  )
