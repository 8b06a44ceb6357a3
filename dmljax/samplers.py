"""Tuple samplers for a P×K batch: random, hard, semi-hard, distance weighted.

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

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy import special

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


def _check_inputs(
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
  anchors = jnp.broadcast_to(jnp.arange(batch, dtype=jnp.int32)[:, None],
                             positives.shape)
  mask = (labels[positives] == labels[anchors]) & (positives != anchors)
  return anchors.reshape(-1), positives.reshape(-1), mask.reshape(-1)


def _assemble(
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


def _inverse_cdf_draws(
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


def random_sampling(
    key: jax.Array,
    distances: jax.Array,
    labels: jax.Array,
    *,
    images_per_class: int = 5,
    num_negatives: int = 1,
) -> Triplets:
  """Uniformly random negatives: n ~ Uniform{n : label(n) ≠ label(a)}.

  Args:
    key: PRNG key.
    distances: [B, B] (unused beyond its shape; kept for one signature).
    labels: [B] int class ids of a P×K batch.
    images_per_class: K.
    num_negatives: R independent negatives per positive pair.

  Returns:
    Triplets with T = B·(K − 1)·R.
  """
  _check_inputs(distances, labels, images_per_class, num_negatives)
  negative = labels_lib.negative_mask(labels)
  draws = (images_per_class - 1, num_negatives)
  negatives = _inverse_cdf_draws(key, negative.astype(jnp.float32), draws)
  has_negative = jnp.any(negative, axis=1)[:, None, None]
  return _assemble(labels, images_per_class, negatives,
                   jnp.broadcast_to(has_negative, negatives.shape))


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
) -> Triplets:
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
  _check_inputs(distances, labels, images_per_class, num_negatives)
  distances = jax.lax.stop_gradient(distances)
  indices, found = _closest(
      distances, labels_lib.negative_mask(labels), num_negatives
  )  # [B, R]
  shape = (labels.shape[0], images_per_class - 1, num_negatives)
  return _assemble(
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
) -> Triplets:
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
  _check_inputs(distances, labels, images_per_class, num_negatives)
  distances = jax.lax.stop_gradient(distances)
  anchors, positives, _ = positive_pairs(
      labels, images_per_class=images_per_class
  )
  negative = labels_lib.negative_mask(labels)  # [B, B]
  batch, k = labels.shape[0], images_per_class
  if lower_bound is None:
    threshold = distances[anchors, positives].reshape(batch, k - 1, 1)
  else:
    threshold = jnp.asarray(lower_bound, distances.dtype)
  anchor_distances = distances[:, None, :]  # [B, 1, B]
  candidates = negative[:, None, :] & (anchor_distances > threshold)
  indices, found = _closest(
      jnp.broadcast_to(anchor_distances, candidates.shape),
      candidates,
      num_negatives,
  )  # [B, K-1, R]
  has_negative = jnp.any(negative, axis=1)[:, None, None]
  if fallback == "drop":
    return _assemble(labels, k, indices, found)
  if fallback == "farthest":
    spare = jnp.argmax(jnp.where(negative, distances, -jnp.inf), axis=1)
  else:
    spare = jnp.argmin(jnp.where(negative, distances, jnp.inf), axis=1)
  indices = jnp.where(found, indices, spare[:, None, None])
  return _assemble(labels, k, indices,
                   jnp.broadcast_to(has_negative, indices.shape))


def sphere_distance_log_density(d: jax.Array, *, dim: int) -> jax.Array:
  """log q(d): density of the distance of two uniform points on S^(dim−1).

  q(d) = d^(n−2) [1 − d²/4]^((n−3)/2) / B(1/2, (n−1)/2)  for d ∈ (0, 2),

  Wu et al. Sec. 4 (first equation), with its normaliser (B is Euler's beta
  function): cos θ = 1 − d²/2 has density ∝ (1 − cos²θ)^((n−3)/2).

  Args:
    d: distances, any shape, in (0, 2).
    dim: n, the ambient dimension (embedding size), ≥ 2.

  Returns:
    log q(d), same shape as d.

  >>> float(jnp.exp(sphere_distance_log_density(jnp.sqrt(2.0), dim=3)))
  0.7071...
  """
  if dim < 2:
    raise ValueError(f"dim must be ≥ 2, got {dim}.")
  log_norm = special.betaln(0.5, (dim - 1) / 2.0)
  return _log_unnormalised_density(d, dim) - log_norm


def _log_unnormalised_density(d: jax.Array, dim: int) -> jax.Array:
  # The explicit zero-exponent branches avoid 0·log(0) = NaN at d = 0, 2.
  log_radial = 0.0 if dim == 2 else (dim - 2.0) * jnp.log(d)
  log_cap = 0.0 if dim == 3 else (dim - 3.0) / 2.0 * jnp.log1p(-0.25 * d * d)
  return log_radial + log_cap


def distance_weighted_log_probabilities(
    distances: jax.Array,
    labels: jax.Array,
    *,
    dim: int,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
) -> jax.Array:
  """Row-normalised log Pr(n | a) of distance weighted sampling.

  Pr(n | a) ∝ min(λ, q(D_an)⁻¹) (Wu et al. Sec. 4). q⁻¹ decreases on
  (0, √2), so the clip at λ is realised as in the authors' code by clipping
  distances from below at `cutoff` (λ = q(cutoff)⁻¹). Only negatives with
  D_an < `nonzero_loss_cutoff` are usable (farther ones give no margin loss).

  Each row is normalised over its own usable entries in log space. The
  authors' code and PML subtract one maximum over the whole matrix instead;
  in float32 at D ≥ 128 a single far pair then underflows the weights of
  every other row, and those anchors are lost. Here every anchor with a
  usable negative keeps a proper distribution, at any dimension.

  Args:
    distances: [B, B] distances.
    labels: [B] int class ids.
    dim: the embedding dimension n.
    cutoff: lower clip on distances (variance control).
    nonzero_loss_cutoff: distances at or beyond it are never sampled.

  Returns:
    [B, B] log-probabilities; −inf where not usable; a row without any usable
    entry is all −inf.
  """
  if dim < 2:
    raise ValueError(f"dim must be ≥ 2 (the embedding size), got {dim}.")
  if distances.ndim != 2 or distances.shape[0] != labels.shape[0]:
    raise ValueError(
        f"distances must be [B, B] for {labels.shape[0]} labels, got "
        f"{distances.shape}."
    )
  distances = jax.lax.stop_gradient(distances)
  usable = labels_lib.negative_mask(labels) & (distances < nonzero_loss_cutoff)
  # Clip into [cutoff, 2): log(1 − d²/4) is −inf at d = 2 (antipodes).
  clipped = jnp.clip(distances, cutoff, 2.0 - 1e-6)
  log_weights = -_log_unnormalised_density(clipped, dim)
  log_weights = jnp.where(usable, log_weights, -jnp.inf)
  row_max = jnp.max(log_weights, axis=1, keepdims=True)
  has_usable = jnp.isfinite(row_max)
  shifted = log_weights - jnp.where(has_usable, row_max, 0.0)
  log_total = jnp.log(jnp.sum(jnp.exp(shifted), axis=1, keepdims=True))
  return jnp.where(usable & has_usable, shifted - log_total, -jnp.inf)


DISTANCE_WEIGHTED_METHODS = ("categorical", "inverse_cdf")


def distance_weighted_sampling(
    key: jax.Array,
    distances: jax.Array,
    labels: jax.Array,
    *,
    dim: int,
    images_per_class: int = 5,
    num_negatives: int = 1,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
    method: str = "categorical",
) -> Triplets:
  """Distance weighted negatives, Pr(n | a) ∝ min(λ, q(D_an)⁻¹) (Wu et al.).

  Each negative is an independent draw from row `a` of
  `distance_weighted_log_probabilities`. An anchor without a usable negative
  (all farther than `nonzero_loss_cutoff`) keeps its slots with mask False.

  Args:
    key: PRNG key.
    distances: [B, B] distances of unit-norm embeddings.
    labels: [B] int class ids of a P×K batch.
    dim: the embedding dimension n of q(d).
    images_per_class: K.
    num_negatives: R draws per positive pair.
    cutoff: lower clip on distances (0.5 in the paper's code).
    nonzero_loss_cutoff: distances at or beyond it are never sampled (1.4).
    method: "categorical" (`jax.random.categorical`, Gumbel-max; the
      reference) or "inverse_cdf" (one cumulative sum per row and a binary
      search per draw; the same distribution, cheaper for large B).

  Returns:
    Triplets with T = B·(K − 1)·R.
  """
  if method not in DISTANCE_WEIGHTED_METHODS:
    raise ValueError(
        f"Unknown method {method!r}; choose one of {DISTANCE_WEIGHTED_METHODS}."
    )
  _check_inputs(distances, labels, images_per_class, num_negatives)
  log_probabilities = distance_weighted_log_probabilities(
      distances, labels, dim=dim, cutoff=cutoff,
      nonzero_loss_cutoff=nonzero_loss_cutoff,
  )
  batch, k = labels.shape[0], images_per_class
  if method == "categorical":
    draws = jax.random.categorical(
        key, log_probabilities, shape=(k - 1, num_negatives, batch)
    )
    negatives = jnp.transpose(draws, (2, 0, 1)).astype(jnp.int32)
  else:
    negatives = _inverse_cdf_draws(
        key, jnp.exp(log_probabilities), (k - 1, num_negatives)
    )
  has_usable = jnp.isfinite(jnp.max(log_probabilities, axis=1))
  valid = jnp.broadcast_to(has_usable[:, None, None], negatives.shape)
  return _assemble(labels, k, negatives, valid)


Sampler = Callable[..., Triplets]

SAMPLERS: dict[str, Sampler] = {
    "random": random_sampling,
    "hard": hard_sampling,
    "semihard": semihard_sampling,
    "distance_weighted": distance_weighted_sampling,
}
