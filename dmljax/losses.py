"""Pair and triplet losses on sampled tuples: unreduced terms.

Shape letters: B batch, T tuples, N pairs of the N-pair loss.

Losses never compute distances: they read the [B, B] matrix that also fed the
sampler, at the indices of a `Triplets`, and return one term per tuple (or a
positive and a negative term per tuple for the pairwise losses), exactly 0
where `mask` is False. `dmljax.reductions` then says what is averaged over
what, in one explicit call.

Each ordered positive pair (a, p) carries one negative pair (a, n), so the
pairwise losses (contrastive, margin) see as many positive as negative pairs
(Wu et al. Sec. 5).

Where the authors' code and PML differ (see also `reductions`):
  * contrastive: the paper squares both terms, D_ap² and [α − D_an]₊². PML's
    `ContrastiveLoss` uses [D_ap − pos_margin]₊ and [neg_margin − D_an]₊
    (not squared; neg_margin = 1 by default) averaged over non-zero terms.
    The positive terms of the two differ by a square; the negative terms
    [α − D]₊² vs [1 − D]₊ are not a power of one another, and PML's
    `LpDistance(power=2)` does not close the gap (its negative term becomes
    [1 − D²]₊). There is no setting under which the two are equal; the
    closest is `margin=1.0`.
  * triplet: PML's `TripletMarginLoss` is the ℓ2 form (`squared=False`) with
    margin 0.05 by default; the paper (after FaceNet) uses α = 0.2.
  * margin: identical terms in all three; the authors' code computes β per
    triplet from the anchor's class (PML: `learn_beta` + `num_classes`).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from dmljax.samplers import Triplets


def _pair_distances(
  distances: jax.Array, triplets: Triplets
) -> tuple[jax.Array, jax.Array]:
  if distances.ndim != 2 or distances.shape[0] != distances.shape[1]:
    raise ValueError(f"distances must be [B, B], got {distances.shape}.")
  if triplets.anchors.ndim != 1:
    raise ValueError(
      f"triplets must hold [T] index vectors, got {triplets.anchors.shape}."
    )
  positive = distances[triplets.anchors, triplets.positives]
  negative = distances[triplets.anchors, triplets.negatives]
  return positive, negative


def _masked(terms: jax.Array, mask: jax.Array) -> jax.Array:
  return jnp.where(mask, terms, 0.0)


def contrastive_loss(
  distances: jax.Array, triplets: Triplets, *, margin: float = 0.2
) -> tuple[jax.Array, jax.Array]:
  """Contrastive loss terms (Hadsell et al.; Wu et al. Sec. 3).

  ℓ(i, j) = y_ij D_ij² + (1 − y_ij) [α − D_ij]₊²

  Args:
    distances: [B, B] Euclidean distances.
    triplets: T sampled tuples; each gives one positive and one negative pair.
    margin: α.

  Returns:
    (positive, negative), each [T]: D_ap² and [α − D_an]₊², 0 where masked.

  >>> t = Triplets(*(jnp.array([i]) for i in (0, 1, 2)), jnp.array([True]))
  >>> d = jnp.array([[0.0, 0.5, 0.1], [0.5, 0.0, 1.0], [0.1, 1.0, 0.0]])
  >>> [float(x[0]) for x in contrastive_loss(d, t)]
  [0.25, 0.010000...]
  """
  positive, negative = _pair_distances(distances, triplets)
  return (
    _masked(jnp.square(positive), triplets.mask),
    _masked(jnp.square(jax.nn.relu(margin - negative)), triplets.mask),
  )


def triplet_loss(
  distances: jax.Array,
  triplets: Triplets,
  *,
  margin: float = 0.2,
  squared: bool = True,
) -> jax.Array:
  """Triplet loss terms, ℓ2² (FaceNet) or ℓ2 (Wu et al. Sec. 4).

  squared:      ℓ(a, p, n) = [D_ap² − D_an² + α]₊
  not squared:  ℓ(a, p, n) = [D_ap − D_an + α]₊  (gradients of unit length)

  Args:
    distances: [B, B] Euclidean distances.
    triplets: T sampled tuples.
    margin: α.
    squared: use squared distances (ℓ2²) or plain distances (ℓ2).

  Returns:
    [T] terms, 0 where masked.

  >>> t = Triplets(*(jnp.array([i]) for i in (0, 1, 2)), jnp.array([True]))
  >>> d = jnp.array([[0.0, 0.5, 0.6], [0.5, 0.0, 1.0], [0.6, 1.0, 0.0]])
  >>> float(triplet_loss(d, t, squared=False)[0])
  0.1000...
  """
  positive, negative = _pair_distances(distances, triplets)
  if squared:
    positive, negative = jnp.square(positive), jnp.square(negative)
  return _masked(jax.nn.relu(positive - negative + margin), triplets.mask)


def margin_loss(
  distances: jax.Array,
  triplets: Triplets,
  beta: jax.Array | float,
  *,
  margin: float = 0.2,
) -> tuple[jax.Array, jax.Array]:
  """Margin based loss terms (Wu et al. Sec. 4).

  ℓ(i, j) = (α + y_ij (D_ij − β))₊,  y = +1 for positive, −1 for negative
  pairs, so ∂ℓ/∂β = −y_ij 1{α > y_ij (β − D_ij)}. The ν β regulariser is
  `dmljax.beta.beta_penalty`.

  Args:
    distances: [B, B] Euclidean distances.
    triplets: T sampled tuples; each gives one positive and one negative pair.
    beta: the boundary β, a scalar or [T] (β⁽⁰⁾ + β⁽class⁾ + β⁽img⁾ of each
      tuple's anchor, see `dmljax.beta.gather_beta`).
    margin: α.

  Returns:
    (positive, negative), each [T]: (α + D_ap − β)₊ and (α − D_an + β)₊, 0
    where masked.

  >>> t = Triplets(*(jnp.array([i]) for i in (0, 1, 2)), jnp.array([True]))
  >>> d = jnp.array([[0.0, 1.1, 1.3], [1.1, 0.0, 1.0], [1.3, 1.0, 0.0]])
  >>> [round(float(x[0]), 4) for x in margin_loss(d, t, 1.2)]
  [0.1, 0.1]
  """
  positive, negative = _pair_distances(distances, triplets)
  beta = jnp.asarray(beta, distances.dtype)
  if beta.ndim not in (0, 1) or (
    beta.ndim == 1 and beta.shape != positive.shape
  ):
    raise ValueError(
      f"beta must be a scalar or [T] = {positive.shape}, got {beta.shape}."
    )
  return (
    _masked(jax.nn.relu(margin + positive - beta), triplets.mask),
    _masked(jax.nn.relu(margin - negative + beta), triplets.mask),
  )


def npair_loss(similarities: jax.Array, *, scale: float = 1.0) -> jax.Array:
  """Multi-class N-pair loss terms (Sohn 2016; DE-DSP eq. 9).

  ℓ_i = log(1 + Σ_{j≠i} exp(s_ij − s_ii)) = logsumexp_j(s_ij) − s_ii,
  with s_ij = scale · f(x_i)ᵀ f(x_j⁺): probe i against gallery j, one class
  per row. The second form is the softmax cross-entropy of row i with label
  i, which is how it is computed (stable for any similarity scale).

  Args:
    similarities: [N, N] probe × gallery inner products; the diagonal holds
      the positive pairs.
    scale: multiplies the similarities (an inverse temperature). 1 is eq. 9
      as written, for unnormalised features; on unit-norm embeddings the
      logits are cosines in [−1, 1], and a scale of ~10–30 restores the
      range that unnormalised N-pair features grow into.

  Returns:
    [N] terms; the N-pair loss is their mean.

  >>> float(npair_loss(jnp.zeros((2, 2)))[0])  # log(1 + e⁰)
  0.6931...
  """
  if similarities.ndim != 2 or similarities.shape[0] != similarities.shape[1]:
    raise ValueError(
      f"similarities must be [N, N] probes × gallery, got {similarities.shape}."
    )
  similarities = scale * similarities
  positive = jnp.diagonal(similarities)
  return jax.nn.logsumexp(similarities, axis=1) - positive


def _triplet_l2(distances, triplets, *, margin=0.2):
  return triplet_loss(distances, triplets, margin=margin, squared=False)


def _triplet_l2sq(distances, triplets, *, margin=0.2):
  return triplet_loss(distances, triplets, margin=margin, squared=True)


Loss = Callable[..., jax.Array | tuple[jax.Array, jax.Array]]

# The tuple losses by name; margin_loss also takes β.
LOSSES: dict[str, Loss] = {
  "margin": margin_loss,
  "contrastive": contrastive_loss,
  "triplet_l2": _triplet_l2,
  "triplet_l2sq": _triplet_l2sq,
}
