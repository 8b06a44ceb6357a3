"""A method = (sampler, loss, reduction), chosen by name.

Shape letters: B batch, D embedding dim, P classes × K images per class.

`make_method` returns one pure function

  method(key, embeddings, labels, beta=None, image_ids=None) -> (loss, aux)

that computes the [B, B] distance matrix once, samples tuples on it (through
`stop_gradient`), evaluates the loss terms on the same matrix and reduces them
with one call from `dmljax.reductions`. Any sampler combines with any tuple
loss, as in the paper's Table 1; "npair" (DE-DSP eq. 9) forms one
(probe, gallery) pair per class instead.

What a loss needs (β, one or two terms per tuple, N-pair's pairs instead of
tuples) comes from its `losses.LossSpec`, never from its name.

`distance_gradient` says how the tuple losses' gradient reaches the
embeddings: "dense" (default) differentiates through the [B, B] matrix;
"gathered" reads the same values but sends the gradient into the 2T pair
rows (`losses.tuple_distances`), O(T·D) instead of O(B²·D) in the backward
pass. Same loss, gradients equal up to float round-off; "dense" stays the
default until the measured results are redone with "gathered".
"""

from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from dmljax import beta as beta_lib
from dmljax import distances as distances_lib
from dmljax import labels as labels_lib
from dmljax import losses as losses_lib
from dmljax import reductions
from dmljax import samplers as samplers_lib

DISTANCE_GRADIENTS = ("dense", "gathered")
# N-pair forms one random (probe, gallery) pair per class: its sampler.
NPAIR_SAMPLER = "random"

Method = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def _choose(kind: str, name: str, valid) -> None:
  if name not in valid:
    raise ValueError(f"Unknown {kind} {name!r}; choose one of {sorted(valid)}.")


def _sampler_of(sampler: str | None, loss: str, spec) -> str:
  """The sampler a loss runs with: N-pair's own, else the one asked for."""
  if spec.structure == "npair":
    if sampler not in (None, NPAIR_SAMPLER):
      raise ValueError(
        f"The {loss!r} loss draws one random (probe, gallery) pair per "
        f"class; it cannot use the sampler {sampler!r}: pass "
        f"sampler={NPAIR_SAMPLER!r} or None."
      )
    return NPAIR_SAMPLER
  sampler = "distance_weighted" if sampler is None else sampler
  _choose("sampler", sampler, samplers_lib.SAMPLERS)
  return sampler


def _beta_terms(spec, margin, nu, distances, triplets, labels, beta, ids):
  """The margin loss's terms with β per tuple, and the ν Σ β numerator."""
  if beta is None:
    beta = beta_lib.init_beta()
  if isinstance(beta, Mapping):
    anchor_ids = None if ids is None else ids[triplets.anchors]
    beta = beta_lib.gather_beta(beta, labels[triplets.anchors], anchor_ids)
  beta = jnp.broadcast_to(
    jnp.asarray(beta, distances.dtype), triplets.mask.shape
  )
  terms = spec.terms(distances, triplets, beta, margin=margin)
  return terms, beta_lib.beta_penalty(beta, triplets.mask, nu=nu), beta


def _npair_method(images_per_class: int, scale: float) -> Method:
  """N-pair loss with one random (probe, gallery) pair per class."""

  def method(key, embeddings, labels, beta=None, image_ids=None):
    del beta, image_ids  # N-pair has no β.
    groups = labels_lib.class_groups(labels, images_per_class=images_per_class)
    order = jnp.argsort(jax.random.uniform(key, groups.shape), axis=1)
    chosen = jnp.take_along_axis(groups, order[:, :2], axis=1)
    probes, gallery = embeddings[chosen[:, 0]], embeddings[chosen[:, 1]]
    similarities = probes @ gallery.T
    terms = losses_lib.npair_loss(similarities, scale=scale)
    distances = distances_lib.pairwise_distances(probes, gallery)
    num = similarities.shape[0]
    off_diagonal = ~jnp.eye(num, dtype=bool)
    aux = {
      "num_tuples": jnp.asarray(num, jnp.int32),
      "num_active_terms": jnp.sum(terms > 0),
      "fraction_nonzero": jnp.mean(terms > 0),
      "mean_positive_distance": jnp.mean(jnp.diagonal(distances)),
      "mean_negative_distance": jnp.sum(jnp.where(off_diagonal, distances, 0))
      / max(num * (num - 1), 1),
    }
    return jnp.mean(terms), aux

  return method


def _tuple_aux(distances, triplets, terms, beta_values) -> dict[str, Any]:
  """Scalars logged beside a tuple loss (no gradient flows through them)."""
  mask = triplets.mask
  num_tuples = jnp.sum(mask)
  active = sum(jnp.sum(mask & (t > 0)) for t in terms)
  positive = distances[triplets.anchors, triplets.positives]
  negative = distances[triplets.anchors, triplets.negatives]
  aux = {
    "num_tuples": num_tuples,
    "num_active_terms": active,
    "fraction_nonzero": active / jnp.maximum(len(terms) * num_tuples, 1),
    "mean_positive_distance": reductions.masked_mean(positive, mask),
    "mean_negative_distance": reductions.masked_mean(negative, mask),
  }
  if beta_values is not None:
    aux["mean_beta"] = reductions.masked_mean(beta_values, mask)
  return jax.tree.map(jax.lax.stop_gradient, aux)


def _tuple_method(
  sample, spec, *, margin, nu, reduction, distance_gradient
) -> Method:
  """sampler + tuple loss + reduction on one [B, B] distance matrix."""

  def method(key, embeddings, labels, beta=None, image_ids=None):
    distances = distances_lib.pairwise_distances(embeddings)
    triplets = sample(
      key, jax.lax.stop_gradient(distances), labels, embeddings.shape[1]
    )
    loss_distances = distances
    if distance_gradient == "gathered":
      loss_distances = losses_lib.tuple_distances(
        jax.lax.stop_gradient(distances), triplets, embeddings
      )
    extra = beta_values = None
    if spec.takes_beta:
      terms, extra, beta_values = _beta_terms(
        spec, margin, nu, loss_distances, triplets, labels, beta, image_ids
      )
    else:
      terms = spec.terms(loss_distances, triplets, margin=margin)
    if extra is None:  # The same value as before: 0 added to the numerator.
      extra = jnp.zeros((), distances.dtype)
    value = reductions.reduce_terms(
      terms, triplets.mask, reduction=reduction, extra=extra
    )
    return value, _tuple_aux(distances, triplets, terms, beta_values)

  return method


def make_method(
  *,
  sampler: str | None = None,
  loss: str = "margin",
  images_per_class: int = 5,
  num_negatives: int = 1,
  margin: float = 0.2,
  nu: float = 0.0,
  reduction: str = "nonzero",
  sampler_kwargs: Mapping[str, Any] | None = None,
  npair_scale: float = 1.0,
  distance_gradient: str = "dense",
) -> Method:
  """Builds method(key, embeddings, labels, beta=None, image_ids=None).

  Defaults are the paper's: distance weighted sampling (cutoff 0.5,
  non-zero-loss cutoff 1.4), margin loss with α = 0.2, β⁽⁰⁾ = 1.2, m = K = 5
  images per class, averaged over the non-zero terms as the authors do.

  Args:
    sampler: a name in `dmljax.samplers.SAMPLERS`; None is distance
      weighted for the tuple losses. N-pair draws its own random pairs
      ("random" or None; any other sampler is an error).
    loss: a name in `dmljax.losses.LOSSES`.
    images_per_class: K of the P×K batch.
    num_negatives: negatives per positive pair.
    margin: α of the margin, triplet and contrastive losses.
    nu: ν of the β regulariser (margin loss only).
    reduction: "nonzero" (`reductions.nonzero_mean`, the paper's) or "mean"
      (`reductions.masked_mean` over all valid terms).
    sampler_kwargs: extra keyword arguments of the sampler (e.g. cutoff,
      lower_bound, fallback, method), each defaulting to the sampler's own
      default; `dim` defaults to D.
    npair_scale: `losses.npair_loss`'s scale (N-pair only).
    distance_gradient: "dense" (through the [B, B] matrix) or "gathered"
      (through the tuples' embedding rows, `losses.tuple_distances`): the
      same loss, gradients equal up to round-off, a backward pass of
      O(T·D) instead of O(B²·D). Tuple losses only ("npair" ignores it).

  Returns:
    A pure function (key, embeddings [B, D], labels [B], beta, image_ids [B])
    → (scalar loss, aux). `beta` is a β pytree (`init_beta`), a float or
    None (fixed β⁽⁰⁾ = 1.2); `image_ids` are dataset ids for β⁽img⁾. aux holds
    scalars: num_tuples (valid), num_active_terms (non-zero terms),
    fraction_nonzero, mean_positive_distance, mean_negative_distance and, for
    the margin loss, mean_beta.

  >>> method = make_method(sampler="semihard", loss="triplet_l2")
  >>> x = jax.random.normal(jax.random.key(0), (10, 4))
  >>> loss, aux = method(jax.random.key(1), x, jnp.arange(10) // 5)
  >>> int(aux["num_tuples"])
  40
  """
  spec = losses_lib.loss_spec(loss)
  sampler = _sampler_of(sampler, loss, spec)
  _choose("reduction", reduction, reductions.REDUCTIONS)
  _choose("distance_gradient", distance_gradient, DISTANCE_GRADIENTS)
  labels_lib.check_images_per_class(images_per_class)
  if spec.structure == "npair":
    inner = _npair_method(images_per_class, npair_scale)
  else:
    sample = _bound_sampler(
      sampler, sampler_kwargs, images_per_class, num_negatives
    )
    inner = _tuple_method(
      sample,
      spec,
      margin=margin,
      nu=nu,
      reduction=reduction,
      distance_gradient=distance_gradient,
    )
  return _with_checked_inputs(inner)


def _with_checked_inputs(inner: Method) -> Method:
  """`inner` with its labels and ids as arrays and their shapes checked."""

  def method(key, embeddings, labels, beta=None, image_ids=None):
    labels = jnp.asarray(labels)
    if image_ids is not None:
      image_ids = jnp.asarray(image_ids)
    if embeddings.ndim != 2 or embeddings.shape[0] != labels.shape[0]:
      raise ValueError(
        f"embeddings must be [B, D] with B = len(labels) = "
        f"{labels.shape[0]}, got {embeddings.shape}."
      )
    return inner(key, embeddings, labels, beta, image_ids)

  return method


def _bound_sampler(sampler, sampler_kwargs, images_per_class, num_negatives):
  """sample(key, distances, labels, dim) → Triplets, options bound."""
  options = dict(sampler_kwargs or {})

  def sample(key, distances, labels, dim):
    kwargs = dict(options)
    if sampler == "distance_weighted":
      kwargs.setdefault("dim", dim)
    return samplers_lib.SAMPLERS[sampler](
      key,
      distances,
      labels,
      images_per_class=images_per_class,
      num_negatives=num_negatives,
      **kwargs,
    )

  return sample
