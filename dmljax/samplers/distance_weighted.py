"""Distance weighted sampling (Wu et al. Sec. 4).

Shape letters: B batch, K images per class, R negatives per positive pair,
T = B·(K − 1)·R.

Negatives are drawn with Pr(n | a) ∝ min(λ, q(D_an)⁻¹), where q is the density
of distances between uniform points on the unit sphere, so that the sampled
distances spread over the whole range instead of concentrating near √2.
"""

import jax
import jax.numpy as jnp
from jax.scipy import special

from dmljax import labels as labels_lib
from dmljax.samplers import triplets


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
  shifted, has_usable = _row_log_weights(
    distances, labels, dim, cutoff, nonzero_loss_cutoff
  )
  log_total = jnp.log(jnp.sum(jnp.exp(shifted), axis=1, keepdims=True))
  return jnp.where(has_usable, shifted - log_total, -jnp.inf)


def _row_log_weights(distances, labels, dim, cutoff, nonzero_loss_cutoff):
  """Log-weights shifted so each row's maximum is 0, and [B, 1] has-usable.

  Unusable entries are −inf; a row with no usable entry is all −inf.
  """
  if dim < 2:
    raise ValueError(f"dim must be ≥ 2 (the embedding size), got {dim}.")
  if distances.ndim != 2 or distances.shape[0] != labels.shape[0]:
    raise ValueError(
      f"distances must be [B, B] for {labels.shape[0]} labels, got "
      f"{distances.shape}."
    )
  distances = jax.lax.stop_gradient(jnp.asarray(distances))
  labels = jnp.asarray(labels)
  usable = labels_lib.negative_mask(labels) & (distances < nonzero_loss_cutoff)
  # Clip into [cutoff, 2): log(1 − d²/4) is −inf at d = 2 (antipodes).
  clipped = jnp.clip(distances, cutoff, 2.0 - 1e-6)
  log_weights = -_log_unnormalised_density(clipped, dim)
  log_weights = jnp.where(usable, log_weights, -jnp.inf)
  row_max = jnp.max(log_weights, axis=1, keepdims=True)
  has_usable = jnp.isfinite(row_max)
  return log_weights - jnp.where(has_usable, row_max, 0.0), has_usable


DISTANCE_WEIGHTED_METHODS = ("categorical", "inverse_cdf")
NO_USABLE_NEGATIVE = ("mask", "uniform")


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
  method: str = "inverse_cdf",
  no_usable_negative: str = "mask",
) -> triplets.Triplets:
  """Distance weighted negatives, Pr(n | a) ∝ min(λ, q(D_an)⁻¹) (Wu et al.).

  Each negative is an independent draw from row `a` of
  `distance_weighted_log_probabilities`. An anchor without a usable negative
  (all farther than `nonzero_loss_cutoff`) either keeps its slots with mask
  False ("mask": its positive pairs give no loss term either) or draws its
  negatives uniformly among its negatives and stays valid ("uniform": the
  positive pull is kept, as in the authors' code, whose fallback
  `np.random.choice(n, k - 1)` may also pick a positive or the anchor;
  here only negatives).

  Args:
    key: PRNG key.
    distances: [B, B] distances of unit-norm embeddings.
    labels: [B] int class ids of a P×K batch.
    dim: the embedding dimension n of q(d).
    images_per_class: K.
    num_negatives: R draws per positive pair.
    cutoff: lower clip on distances (0.5 in the paper's code).
    nonzero_loss_cutoff: distances at or beyond it are never sampled (1.4).
    method: "inverse_cdf" (a two-level cumulative sum per row and a binary
      search per draw, `inverse_cdf_draws`; the default everywhere in
      dmljax) or "categorical" (`jax.random.categorical`, Gumbel-max over
      the row for every draw: the reference). The same distribution (a
      goodness-of-fit test checks it); inverse_cdf is 5–40× cheaper on CPU.

  Returns:
    Triplets with T = B·(K − 1)·R.
  """
  if method not in DISTANCE_WEIGHTED_METHODS:
    raise ValueError(
      f"Unknown method {method!r}; choose one of {DISTANCE_WEIGHTED_METHODS}."
    )
  if no_usable_negative not in NO_USABLE_NEGATIVE:
    raise ValueError(
      f"Unknown no_usable_negative {no_usable_negative!r}; choose one of "
      f"{NO_USABLE_NEGATIVE}."
    )
  distances, labels = triplets.check_inputs(
    distances, labels, images_per_class, num_negatives
  )
  # Categorical and inverse-CDF draws need no normaliser: both read the
  # row-max-shifted log-weights (the row's best entry has weight exactly 1).
  shifted, has_usable = _row_log_weights(
    distances, labels, dim, cutoff, nonzero_loss_cutoff
  )
  batch, k = labels.shape[0], images_per_class
  if no_usable_negative == "uniform":  # Rows without usable: all negatives.
    negative = labels_lib.negative_mask(labels)
    uniform = jnp.where(negative, 0.0, -jnp.inf)
    shifted = jnp.where(has_usable, shifted, uniform)
    has_usable = jnp.any(negative, axis=1, keepdims=True)
  if method == "categorical":
    draws = jax.random.categorical(
      key, shifted, shape=(k - 1, num_negatives, batch)
    )
    negatives = jnp.transpose(draws, (2, 0, 1)).astype(jnp.int32)
  else:
    negatives = triplets.inverse_cdf_draws(
      key, jnp.exp(shifted), (k - 1, num_negatives)
    )
  valid = jnp.broadcast_to(has_usable[:, :, None], negatives.shape)
  return triplets.assemble(labels, k, negatives, valid)
