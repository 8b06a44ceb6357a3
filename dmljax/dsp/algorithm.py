"""Algorithm 1 of DE-DSP: joint sampler and embedding learning, one jit step.

Shape letters: P classes × M images in the candidate pool (N = P·M), K
mini-batches per batch, m tuples per mini-batch, D embedding dimensions.

One step, given a pool (a P×K batch with K = M from `dmljax.data`):

  for k = 1..K (a `lax.scan`, static shapes):
    sample m tuples with the policy p(x; η) (`selection`),
    score them: S = the embedding loss of each tuple (a forward pass of the
      embedding network on the 3m or 2P chosen images only),
    update η with REINFORCE on the centred scores (`reinforce`, eq. 8);
  update θ on the K·m tuples of the batch with the embedding loss.

The state is the train state of `dmljax.train` plus "dsn" (the sampler's
parameters), "dsn_opt" (its Optax state) and "dsn_pretrain_step" (how many
pre-training steps the sampler has had). A step whose embedding loss or
gradients are not finite leaves the whole state unchanged, as there.

Algorithm 1 pre-trains the sampler before the loop; the paper does not say
how. Here pre-training is the loop with its last line skipped
(`update_embedding=False`): the K policy updates per pool against the
initial, frozen embedding network, so the sampler starts out knowing which
candidates that network finds hard.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from dmljax import distances as distances_lib
from dmljax import losses as losses_lib
from dmljax import optim
from dmljax import reductions
from dmljax.dsp import network as network_lib
from dmljax.dsp import reinforce
from dmljax.dsp import selection
from dmljax.samplers.triplets import Triplets

KINDS = ("triplet", "npair")
# Pre-training keys: fold_in(fold_in(rng, _PRETRAIN_STREAM), i), apart from
# the training steps' fold_in(rng, step).
_PRETRAIN_STREAM = 2**31 - 1


def tuple_terms(
  model,
  variables: dict[str, Any],
  images: jax.Array,
  tuples: selection.PoolTriplets | selection.PoolPairs,
  *,
  margin: float,
  squared: bool,
  npair_scale: float = 1.0,
) -> tuple[jax.Array, Any]:
  """Embedding-loss terms of pool tuples, and the new batch statistics.

  Triplets: [T] terms [D_ap − D_an + α]₊ (ℓ2², `squared`, or ℓ2) on the
  3T chosen images. Pairs: [P] N-pair terms (eq. 9) of probes vs gallery.
  Masked tuples give 0.
  """
  if isinstance(tuples, selection.PoolTriplets):
    chosen = jnp.concatenate(
      [tuples.anchors, tuples.positives, tuples.negatives]
    )
  else:
    chosen = jnp.concatenate([tuples.probes, tuples.gallery])
  embeddings, updates = model.apply(
    variables, images[chosen], train=True, mutable=["batch_stats"]
  )
  stats = updates.get("batch_stats", variables.get("batch_stats", {}))
  count = tuples.mask.shape[0]
  if isinstance(tuples, selection.PoolTriplets):
    order = jnp.arange(count)
    layout = Triplets(order, order + count, order + 2 * count, tuples.mask)
    distances = distances_lib.pairwise_distances(embeddings)
    terms = losses_lib.triplet_loss(
      distances, layout, margin=margin, squared=squared
    )
    return terms, stats
  similarities = embeddings[:count] @ embeddings[count:].T
  terms = losses_lib.npair_loss(similarities, scale=npair_scale)
  return jnp.where(tuples.mask, terms, 0.0), stats


def make_dsp_step(
  model,
  network: network_lib.DeepSamplerNetwork,
  tx: optax.GradientTransformation,
  dsn_tx: optax.GradientTransformation,
  *,
  kind: str = "triplet",
  pool_classes: int,
  pool_images_per_class: int,
  num_minibatches: int = 4,
  tuples_per_minibatch: int = 30,
  margin: float = 0.2,
  squared: bool = False,
  npair_scale: float = 1.0,
  baseline: str = "mean",
  entropy_weight: float = 0.0,
  reduction: str = "nonzero",
  update_embedding: bool = True,
):
  """step(state, pool) → (state, metrics), jitted.

  Args:
    model: the embedding network (a `dmljax.models.Embedder`).
    network: the DSN.
    tx: the embedding optimiser (over state["params"]).
    dsn_tx: the DSN's optimiser.
    kind: "triplet" (L = 2 networks) or "npair".
    pool_classes, pool_images_per_class: P and M of the pool.
    num_minibatches: K of Algorithm 1.
    tuples_per_minibatch: m (triplets); N-pair mini-batches hold P pairs.
    margin: α of the triplet loss.
    squared: ℓ2² (True) or ℓ2 triplet loss.
    npair_scale: `losses.npair_loss`'s scale (N-pair).
    baseline: REINFORCE baseline (`reinforce.BASELINES`).
    entropy_weight: λ of an optional entropy bonus −λ·mean H(p) in the
      sampler's loss (not in the paper: 0 by default); it keeps the policy
      from collapsing onto single candidates.
    reduction: "nonzero" or "mean" over the batch's terms (θ update).
    update_embedding: False gives the sampler's pre-training step: the K
      policy updates only; θ, its optimiser, the batch statistics and
      state["step"] stay, and state["dsn_pretrain_step"] advances.

  Returns:
    The step. pool: {"image": [P·M, H, W, C], "label": [P·M], "index":
    [P·M]}, class-major. metrics: loss, grad_norm, dsn_loss, mean_score,
    fraction_valid, fraction_nonzero.
  """
  if kind not in KINDS:
    raise ValueError(f"Unknown DSP kind {kind!r}; choose one of {KINDS}.")
  reinforce.advantages(jnp.zeros(1), jnp.ones(1, bool), baseline)  # Checks.
  if kind == "triplet":
    selection.hand_picked_anchors(
      jax.random.key(0),
      pool_classes,
      pool_images_per_class,
      tuples_per_minibatch,
    )  # Checks m ≤ P at build time.
  shape = (pool_classes, pool_images_per_class)

  def choose(dsn_params, key, images, ids):
    features = network.apply(
      {"params": dsn_params},
      images,
      method=network_lib.DeepSamplerNetwork.features_of,
    )
    features = features.reshape(*shape, -1)
    fixed_key, pick_key = jax.random.split(key)
    pick = selection.sampling_pick(pick_key)
    if kind == "triplet":
      classes, slots = selection.hand_picked_anchors(
        fixed_key, *shape, tuples_per_minibatch
      )
      return selection.triplet_choices(
        network, dsn_params, features, ids, classes, slots, pick
      )
    gallery = jax.random.randint(fixed_key, (shape[0],), 0, shape[1])
    return selection.pair_choices(
      network, dsn_params, features, ids, gallery, pick
    )

  def variables_of(state, params=None):
    embed = state["params"]["embed"] if params is None else params
    return {"params": embed, "batch_stats": state["batch_stats"]}

  @jax.jit
  def sampler_updates(state, images, ids, key):
    """The K policy mini-batches: tuples [K, ...] and the new DSN state."""

    def minibatch(carry, key):
      dsn_params, dsn_opt = carry

      def surrogate(dsn_params):
        tuples = choose(dsn_params, key, images, ids)
        fixed = jax.tree.map(jax.lax.stop_gradient, tuples)
        scores, _ = tuple_terms(
          model,
          variables_of(state),
          images,
          fixed,
          margin=margin,
          squared=squared,
          npair_scale=npair_scale,
        )
        scores = jax.lax.stop_gradient(scores)
        centred = reinforce.advantages(scores, fixed.mask, baseline)
        loss = reinforce.reinforce_loss(tuples.log_prob, centred, fixed.mask)
        loss -= entropy_weight * reductions.masked_mean(
          tuples.entropy, fixed.mask
        )
        return loss, (fixed, reductions.masked_mean(scores, fixed.mask))

      grad_fn = jax.value_and_grad(surrogate, has_aux=True)
      (loss, (tuples, score)), grads = grad_fn(dsn_params)
      updates, dsn_opt = dsn_tx.update(grads, dsn_opt, dsn_params)
      dsn_params = optax.apply_updates(dsn_params, updates)
      return (dsn_params, dsn_opt), (tuples, loss, score)

    keys = jax.random.split(key, num_minibatches)
    carry = (state["dsn"], state["dsn_opt"])
    return jax.lax.scan(minibatch, carry, keys)

  @jax.jit
  def pretrain_step(state, pool):
    rng = jax.random.wrap_key_data(state["rng"])
    key = jax.random.fold_in(
      jax.random.fold_in(rng, _PRETRAIN_STREAM), state["dsn_pretrain_step"]
    )
    ids = jnp.asarray(pool["index"]).reshape(shape)
    (dsn, dsn_opt), (_, dsn_losses, scores) = sampler_updates(
      state, pool["image"], ids, key
    )
    new = dict(
      state,
      dsn=dsn,
      dsn_opt=dsn_opt,
      dsn_pretrain_step=state["dsn_pretrain_step"] + 1,
    )
    metrics = {"dsn_loss": jnp.mean(dsn_losses), "mean_score": jnp.mean(scores)}
    return new, metrics

  @jax.jit
  def step(state, pool):
    key = jax.random.fold_in(
      jax.random.wrap_key_data(state["rng"]), state["step"]
    )
    images = pool["image"]
    ids = jnp.asarray(pool["index"]).reshape(shape)
    (dsn, dsn_opt), (tuples, dsn_losses, scores) = sampler_updates(
      state, images, ids, key
    )
    batch = jax.tree.map(lambda x: x.reshape(-1), tuples)

    def loss_fn(params):
      terms, stats = tuple_terms(
        model,
        variables_of(state, params["embed"]),
        images,
        batch,
        margin=margin,
        squared=squared,
        npair_scale=npair_scale,
      )
      if reduction == "nonzero":
        loss = reductions.nonzero_mean(terms, mask=batch.mask)
      else:
        loss = reductions.masked_mean(terms, batch.mask)
      return loss, (terms, stats)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (terms, batch_stats)), grads = grad_fn(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm = optax.tree.norm(grads)
    new = dict(
      state,
      params=params,
      batch_stats=batch_stats,
      opt=opt,
      dsn=dsn,
      dsn_opt=dsn_opt,
      step=state["step"] + 1,
    )
    new = optim.skip_nonfinite(new, state, loss, grads)
    valid = batch.mask
    metrics = {
      "loss": loss,
      "grad_norm": grad_norm,
      "dsn_loss": jnp.mean(dsn_losses),
      "mean_score": jnp.mean(scores),
      "fraction_valid": jnp.mean(valid),
      "fraction_nonzero": jnp.sum(valid & (terms > 0))
      / jnp.maximum(jnp.sum(valid), 1),
    }
    return new, metrics

  return step if update_embedding else pretrain_step


def add_sampler_state(
  state: dict[str, Any],
  network: network_lib.DeepSamplerNetwork,
  dsn_tx: optax.GradientTransformation,
  key: jax.Array,
  image_shape: tuple[int, ...],
) -> dict[str, Any]:
  """The train state with the DSN's parameters and optimiser state added."""
  dsn = network_lib.init_sampler(network, key, image_shape)
  return dict(
    state,
    dsn=dsn,
    dsn_opt=dsn_tx.init(dsn),
    dsn_pretrain_step=jnp.zeros((), jnp.int32),
  )
