"""Pair and triplet losses on sampled tuples: unreduced terms.

Shape letters: B batch, T tuples, N pairs of the N-pair loss.

Losses never compute distances: they read the [B, B] matrix that also fed the
sampler, at the indices of a `Triplets`, and return one term per tuple (or a
positive and a negative term per tuple for the pairwise losses), exactly 0
where `mask` is False. `dmljax.reductions` then says what is averaged over
what, in one explicit call.

`LOSSES` maps each loss name to a `LossSpec`: its term structure, whether it
takes β, whether its distances are squared, and `terms`, the one return
convention every caller relies on: a tuple of [T] term arrays (the pairwise
losses two, positive and negative; the triplet losses one). N-pair
(`npair_loss`) has no `Triplets`: it reads [N, N] probe × gallery logits,
and its spec says so (`structure="npair"`, `terms=None`).

Instead of the matrix, a loss also takes the tuples' `PairDistances`
(D_ap, D_an), as `tuple_distances` reads them. Given the embeddings too,
`tuple_distances` returns the same values, but their gradient flows into the
2T embedding rows of the pairs, ∂D_ij/∂x_i = (x_i − x_j) / D_ij, instead of
through the [B, B] matrix: O(T·D) work in the backward pass instead of
O(B²·D), and the same gradient up to float round-off.

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

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dmljax.samplers import Triplets


class PairDistances(NamedTuple):
  """The distances of the T tuples' pairs (a pytree).

  Attributes:
    positive: [T] D_ap, anchor to positive.
    negative: [T] D_an, anchor to negative.
  """

  positive: jax.Array
  negative: jax.Array

  @property
  def dtype(self):
    return self.positive.dtype


@jax.custom_vjp
def _row_gradient_distances(embeddings, values, rows, cols):
  """`values` (= D[rows, cols]), differentiable in the embedding rows."""
  del embeddings, rows, cols
  return values


def _row_gradient_forward(embeddings, values, rows, cols):
  return values, (embeddings, values, rows, cols)


def _row_gradient_backward(residuals, cotangent):
  """∂/∂x_i of Σ g_p D_p over pairs p = (i, j): g_p (x_i − x_j) / D_p.

  A pair at distance 0 (the same row, or coincident rows) gets the zero
  subgradient, as `distances.pairwise_distances` gives it.
  """
  embeddings, values, rows, cols = residuals
  apart = values > 0
  scale = jnp.where(apart, cotangent / jnp.where(apart, values, 1.0), 0.0)
  pulls = scale[:, None] * (embeddings[rows] - embeddings[cols])
  pulls = pulls.astype(embeddings.dtype)
  grads = jnp.zeros_like(embeddings).at[rows].add(pulls).at[cols].add(-pulls)
  return grads, None, None, None


_row_gradient_distances.defvjp(_row_gradient_forward, _row_gradient_backward)


def tuple_distances(
  distances: jax.Array,
  triplets: Triplets,
  embeddings: jax.Array | None = None,
) -> PairDistances:
  """D_ap and D_an of each tuple, read from the [B, B] distance matrix.

  Without `embeddings` the gradient flows through the matrix (the dense
  path). With them, the values are the same (read from the matrix) but
  the gradient flows only into the embedding rows of the 2T pairs:
  ∂D_ij/∂x_i = (x_i − x_j) / D_ij = −∂D_ij/∂x_j, scattered into [B, D], so the
  backward pass costs O(T·D) instead of the matrix's O(B²·D), and no
  gradient reaches `distances` (pass it through `stop_gradient` or not:
  the same). Gradients agree with the dense path up to float round-off
  (tests/test_gathered_backward.py); the matrix must be the Euclidean
  distances of `embeddings` (`distances.pairwise_distances`). On a GPU the
  scatter-add may sum a row's contributions in another order from run to
  run (last-bit differences) unless XLA_FLAGS has
  --xla_gpu_deterministic_ops=true.

  Args:
    distances: [B, B] Euclidean distances.
    triplets: T sampled tuples.
    embeddings: [B, D], the rows `distances` was computed from, or None.

  Returns:
    `PairDistances` of [T] arrays.

  >>> t = Triplets(*(jnp.array([i]) for i in (0, 1, 2)), jnp.array([True]))
  >>> x = jnp.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
  >>> d = jnp.array([[0.0, 5.0, 1.0], [5.0, 0.0, 4.24], [1.0, 4.24, 0.0]])
  >>> [float(v[0]) for v in tuple_distances(d, t, x)]
  [5.0, 1.0]
  """
  positive, negative = _pair_distances(distances, triplets)
  if embeddings is None:
    return PairDistances(positive, negative)
  if embeddings.ndim != 2 or embeddings.shape[0] != distances.shape[0]:
    raise ValueError(
      f"embeddings must be [B, D] with B = {distances.shape[0]} (the "
      f"distance matrix's), got {embeddings.shape}."
    )
  num = positive.shape[0]
  values = jax.lax.stop_gradient(jnp.concatenate([positive, negative]))
  rows = jnp.concatenate([triplets.anchors, triplets.anchors])
  cols = jnp.concatenate([triplets.positives, triplets.negatives])
  both = _row_gradient_distances(embeddings, values, rows, cols)
  return PairDistances(both[:num], both[num:])


def _pair_distances(
  distances: jax.Array | PairDistances, triplets: Triplets
) -> tuple[jax.Array, jax.Array]:
  if isinstance(distances, PairDistances):
    if distances.positive.shape != triplets.anchors.shape:
      raise ValueError(
        f"PairDistances must hold [T] = {triplets.anchors.shape} arrays, "
        f"got {distances.positive.shape}."
      )
    return distances.positive, distances.negative
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
  distances: jax.Array | PairDistances,
  triplets: Triplets,
  *,
  margin: float = 0.2,
) -> tuple[jax.Array, jax.Array]:
  """Contrastive loss terms (Hadsell et al.; Wu et al. Sec. 3).

  ℓ(i, j) = y_ij D_ij² + (1 − y_ij) [α − D_ij]₊²

  Args:
    distances: [B, B] Euclidean distances, or the tuples' `PairDistances`.
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
  distances: jax.Array | PairDistances,
  triplets: Triplets,
  *,
  margin: float = 0.2,
  squared: bool = True,
) -> jax.Array:
  """Triplet loss terms, ℓ2² (FaceNet) or ℓ2 (Wu et al. Sec. 4).

  squared:      ℓ(a, p, n) = [D_ap² − D_an² + α]₊
  not squared:  ℓ(a, p, n) = [D_ap − D_an + α]₊  (gradients of unit length)

  Args:
    distances: [B, B] Euclidean distances, or the tuples' `PairDistances`.
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
  distances: jax.Array | PairDistances,
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
    distances: [B, B] Euclidean distances, or the tuples' `PairDistances`.
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


Terms = tuple[jax.Array, ...]
STRUCTURES = ("pairwise", "triplet", "npair")


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """What the rest of dmljax needs to know about a loss, by name.

  Attributes:
    structure: "pairwise" (a positive and a negative pair term per tuple:
      contrastive, margin), "triplet" (one term per triplet) or "npair"
      (one term per class row of N-pair logits, `npair_loss`).
    terms: (distances [B, B] | PairDistances, triplets, *, margin[, beta])
      → `Terms`, a tuple of [T] arrays, 0 where masked. None for "npair".
    takes_beta: the margin loss's learned boundary β (`dmljax.beta`).
    squared: the triplet loss on squared distances (ℓ2², DE-DSP eq. 2).
  """

  structure: str
  terms: Callable[..., Terms] | None
  takes_beta: bool = False
  squared: bool = False


def _one_term(loss: Callable[..., jax.Array]) -> Callable[..., Terms]:
  """A loss returning [T] terms as one returning the tuple (terms,)."""

  def terms(distances, triplets, **kwargs):
    return (loss(distances, triplets, **kwargs),)

  return terms


LOSSES: dict[str, LossSpec] = {
  "margin": LossSpec("pairwise", margin_loss, takes_beta=True),
  "contrastive": LossSpec("pairwise", contrastive_loss),
  "triplet_l2": LossSpec(
    "triplet", _one_term(functools.partial(triplet_loss, squared=False))
  ),
  "triplet_l2sq": LossSpec(
    "triplet",
    _one_term(functools.partial(triplet_loss, squared=True)),
    squared=True,
  ),
  "npair": LossSpec("npair", None),
}


def loss_spec(name: str) -> LossSpec:
  """The spec of loss `name`; ValueError naming the choices otherwise."""
  if name not in LOSSES:
    raise ValueError(f"Unknown loss {name!r}; choose one of {sorted(LOSSES)}.")
  return LOSSES[name]
