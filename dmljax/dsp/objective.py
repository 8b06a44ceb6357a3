"""DE-DSP's embedding loss on pool tuples: θ's objective and the score S.

Shape letters: K mini-batches, m tuples per mini-batch (N-pair: m = P pairs,
one per class of the pool), n chosen images per mini-batch (3m triplet
images, or P probes then P gallery images), D embedding dimensions. Tuple
fields are [m] for one mini-batch or [K, m] for a batch.

The sampler's score of a tuple is its embedding loss (S = L_emb, eq. 6) and
Algorithm 1 updates θ with the same loss on the batch (line 10). Both are
computed in two steps:

  1. `embed_chosen`: one forward pass of the embedding network over the
     chosen images only, laid out [..., n] by `chosen_images`;
  2. `tuple_terms`: the loss terms of each tuple, within its mini-batch.

Triplet loss (eq. 2, FaceNet's): ℓ = [D_ap² − D_an² + α]₊ on squared ℓ2
distances (`squared=True`, loss.name = triplet_l2sq). The ℓ2 form
[D_ap − D_an + α]₊ (`squared=False`, triplet_l2) is an option.

N-pair loss (eq. 9), per mini-batch: probe i of mini-batch k is compared
with the P gallery images of mini-batch k only,
ℓ_i = log(1 + Σ_{j≠i} exp(f_iᵀf_j⁺ − f_iᵀf_i⁺)) (similarities times
`npair_scale`). Each mini-batch holds one pair per class, so the gallery
image of probe i's class drawn in another mini-batch is a positive: pooling
the K mini-batches into one N-pair loss would count it as a negative.

Reward modes, how BatchNorm runs when the score S is computed:

  "inference": running averages (train=False). A tuple's score depends on
    that tuple and θ only: S(x) as eq. 6 defines it.
  "train": the statistics of the mini-batch's n chosen images. A tuple's
    score then also depends on the other tuples drawn with it, which
    REINFORCE (eq. 8) does not account for: a bias in its signal.

The embedding update always runs in training mode, over all K·n chosen
images of the batch in one pass.
"""

from typing import Any

import jax
import jax.numpy as jnp

from dmljax import distances as distances_lib
from dmljax import losses as losses_lib
from dmljax import reductions
from dmljax.dsp import selection
from dmljax.samplers.triplets import Triplets

REWARD_MODES = ("inference", "train")

Tuples = selection.PoolTriplets | selection.PoolPairs


def check_choice(kind: str, name: str, valid: tuple[str, ...]) -> None:
  """ValueError naming the choices when `name` is not one of `valid`."""
  if name not in valid:
    raise ValueError(f"Unknown {kind} {name!r}; choose one of {valid}.")


def chosen_images(tuples: Tuples) -> jax.Array:
  """[..., n] pool indices of the chosen images, in `tuple_terms`' layout.

  Triplets: anchors, positives, negatives (n = 3m). Pairs: probes, gallery
  (n = 2P). Concatenated along the last axis, so each mini-batch of a
  [K, m] batch keeps its own block.
  """
  if isinstance(tuples, selection.PoolTriplets):
    fields = (tuples.anchors, tuples.positives, tuples.negatives)
  else:
    fields = (tuples.probes, tuples.gallery)
  return jnp.concatenate(fields, axis=-1)


def embed_chosen(
  model,
  variables: dict[str, Any],
  images: jax.Array,
  tuples: Tuples,
  *,
  train: bool,
) -> tuple[jax.Array, Any]:
  """Embeddings of the chosen images, in one forward pass.

  Args:
    model: the embedding network, `model.apply(variables, x, train=...)`.
    variables: {"params", "batch_stats"} of the embedding network.
    images: [N, H, W, C] pool images.
    tuples: fields [m] or [K, m].
    train: BatchNorm on the statistics of all chosen images (True), or on
      its running averages (False).

  Returns:
    (embeddings [..., n, D], batch statistics): the updated statistics when
    `train`, else those of `variables` unchanged.
  """
  chosen = chosen_images(tuples)
  batch = images[chosen.reshape(-1)]
  stats = variables.get("batch_stats", {})
  if train:
    embeddings, updates = model.apply(
      variables, batch, train=True, mutable=["batch_stats"]
    )
    stats = updates.get("batch_stats", stats)
  else:
    embeddings = model.apply(variables, batch, train=False)
  return embeddings.reshape(*chosen.shape, -1), stats


def _minibatch_terms(embeddings, tuples, *, margin, squared, npair_scale):
  count = tuples.mask.shape[0]
  if isinstance(tuples, selection.PoolTriplets):
    order = jnp.arange(count)
    layout = Triplets(order, order + count, order + 2 * count, tuples.mask)
    distances = distances_lib.pairwise_distances(embeddings)
    return losses_lib.triplet_loss(
      distances, layout, margin=margin, squared=squared
    )
  similarities = embeddings[:count] @ embeddings[count:].T
  terms = losses_lib.npair_loss(similarities, scale=npair_scale)
  return jnp.where(tuples.mask, terms, 0.0)


def tuple_terms(
  embeddings: jax.Array,
  tuples: Tuples,
  *,
  margin: float = 0.2,
  squared: bool = True,
  npair_scale: float = 1.0,
) -> jax.Array:
  """Embedding-loss terms of each tuple, within its own mini-batch.

  Triplets: [D_ap² − D_an² + α]₊ (eq. 2, `squared`) or [D_ap − D_an + α]₊.
  Pairs: eq. 9's ℓ_i, probe i against its own mini-batch's gallery.

  Args:
    embeddings: [..., n, D] from `embed_chosen` (same leading shape).
    tuples: fields [..., m].
    margin: α (triplets).
    squared: squared ℓ2 distances (eq. 2) or ℓ2 (triplets).
    npair_scale: `losses.npair_loss`'s scale (pairs).

  Returns:
    [..., m] terms, 0 where masked.
  """
  if embeddings.shape[:-1] != chosen_images(tuples).shape:
    raise ValueError(
      f"embeddings {embeddings.shape} do not match the tuples' chosen "
      f"images {chosen_images(tuples).shape} (+ [D])."
    )

  def terms(embeddings, tuples):
    return _minibatch_terms(
      embeddings,
      tuples,
      margin=margin,
      squared=squared,
      npair_scale=npair_scale,
    )

  for _ in range(tuples.mask.ndim - 1):
    terms = jax.vmap(terms)
  return terms(embeddings, tuples)


def embedding_loss(
  terms: jax.Array, mask: jax.Array, *, reduction: str = "nonzero"
) -> jax.Array:
  """Algorithm 1's L_emb on the batch: the K mini-batch losses combined.

  One `dmljax.reductions` call over all K·m terms. That is the average of
  the K mini-batch losses L_k (each its own terms reduced the same way),
  weighted by their divisors d_k: L = Σ_k d_k L_k / Σ_k d_k, with d_k the
  valid tuples ("mean") or non-zero terms ("nonzero") of mini-batch k.
  Every mini-batch holds m valid tuples whenever each class has two
  distinct images, so under "mean" L is the plain mean of the K losses
  (for N-pair, of the K eq.-9 losses). N-pair terms are positive, so
  "nonzero" equals "mean" there unless a term rounds to 0. For triplets,
  "nonzero" divides by the batch's count of active triplets, as the
  non-DSP triplet methods do.

  Args:
    terms: [K, m] terms from `tuple_terms` (any shape works).
    mask: [K, m] bool, valid tuples.
    reduction: "nonzero" (`reductions.nonzero_mean`) or "mean"
      (`reductions.masked_mean`), through `reductions.reduce_terms`.

  Returns:
    Scalar.

  >>> terms = jnp.array([[1.0, 0.0], [2.0, 4.0]])
  >>> float(embedding_loss(terms, terms >= 0, reduction="mean"))
  1.75
  """
  return reductions.reduce_terms(
    (terms.reshape(-1),), mask.reshape(-1), reduction=reduction
  )


def reward_scores(
  model,
  variables: dict[str, Any],
  images: jax.Array,
  tuples: Tuples,
  *,
  reward_mode: str = "inference",
  **loss_options: Any,
) -> jax.Array:
  """S(x) of each tuple of one mini-batch (eq. 6), without gradients.

  Args:
    model, variables, images: as in `embed_chosen`.
    tuples: fields [m] (or [K, m]).
    reward_mode: one of `REWARD_MODES` (see the module docstring).
    **loss_options: margin, squared, npair_scale of `tuple_terms`.

  Returns:
    [m] scores, 0 where masked; constants for differentiation.
  """
  check_choice("reward mode", reward_mode, REWARD_MODES)
  embeddings, _ = embed_chosen(
    model, variables, images, tuples, train=reward_mode == "train"
  )
  terms = tuple_terms(embeddings, tuples, **loss_options)
  return jax.lax.stop_gradient(terms)
