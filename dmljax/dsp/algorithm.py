"""Algorithm 1 of DE-DSP: joint sampler and embedding learning, one jit step.

Shape letters: P classes × M images in the candidate pool (N = P·M), K
mini-batches per batch, m tuples per mini-batch (N-pair: m = P pairs), D
embedding dimensions.

One step, given a pool (a P×K batch with K = M from `dmljax.data`):

  for k = 1..K (a `lax.scan`, static shapes):
    sample m tuples with the policy p(x; η) (`selection`),
    score them: S = the embedding loss of each tuple (a forward pass of the
      embedding network on the 3m or 2P chosen images only; BatchNorm in
      inference mode by default, `reward_mode`),
    update η with REINFORCE on the centred scores (`reinforce`, eq. 8);
  update θ on the K mini-batches with the embedding loss (`objective`):
    one training-mode forward pass over the K·3m or K·2P chosen images,
    the terms of each tuple within its own mini-batch, and one reduction
    over the batch (`objective.embedding_loss`).

The losses (`objective`): triplet, eq. 2, is the squared ℓ2 loss
[D_ap² − D_an² + α]₊ of FaceNet (`squared=True`, loss.name triplet_l2sq);
[D_ap − D_an + α]₊ (`squared=False`, triplet_l2) is an option. N-pair is
eq. 9 within each mini-batch (its P probes against its own P gallery
images), the batch loss the mean of the K mini-batch losses (weighted by
their valid pairs; `objective.embedding_loss`).

The state is the train state of `dmljax.runtime.train` plus "dsn" (the sampler's
parameters), "dsn_opt" (its Optax state) and "dsn_pretrain_step" (how many
pre-training steps the sampler has had). A step whose embedding loss or
gradients are not finite leaves the whole state unchanged, as there.

Algorithm 1 pre-trains the sampler before the loop; the paper does not say
how. Here pre-training is the loop with its last line skipped
(`update_embedding=False`): the K policy updates per pool against the
initial, frozen embedding network, so the sampler starts out knowing which
candidates that network finds hard.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from dmljax import losses as losses_lib
from dmljax import optim
from dmljax import reductions
from dmljax.dsp import network as network_lib
from dmljax.dsp import objective
from dmljax.dsp import reinforce
from dmljax.dsp import selection

# Pre-training keys: fold_in(fold_in(rng, _PRETRAIN_STREAM), i), apart from
# the training steps' fold_in(rng, step).
_PRETRAIN_STREAM = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Settings:
  """Algorithm 1's settings, checked when made.

  Attributes:
    pool_classes, pool_images_per_class: P and M of the candidate pool.
    loss: the embedding loss, a `losses.LOSSES` name: "triplet_l2sq" (eq. 2,
      [D_ap² − D_an² + α]₊), "triplet_l2" ([D_ap − D_an + α]₊) or "npair"
      (eq. 9). It decides the kind of tuple the policy draws (`kind`).
    num_minibatches: K of Algorithm 1.
    tuples_per_minibatch: m (triplets); N-pair mini-batches hold P pairs.
    margin: α of the triplet loss.
    npair_scale: `losses.npair_loss`'s scale (N-pair).
    baseline: REINFORCE baseline (`reinforce.BASELINES`).
    entropy_weight: λ of an optional entropy bonus −λ·mean H(p) in the
      sampler's loss (not in the paper: 0 by default); it keeps the policy
      from collapsing onto single candidates.
    reward_mode: BatchNorm of the embedding network when the sampler's
      scores are computed: "inference" (running averages: a tuple's score
      does not depend on the tuples drawn with it) or "train" (the chosen
      images' batch statistics). The θ update always trains.
    reduction: "nonzero" or "mean" over the batch's terms (θ update; see
      `objective.embedding_loss` for how the K mini-batches combine).
  """

  pool_classes: int
  pool_images_per_class: int
  loss: str = "triplet_l2sq"
  num_minibatches: int = 4
  tuples_per_minibatch: int = 30
  margin: float = 0.2
  npair_scale: float = 1.0
  baseline: str = "mean"
  entropy_weight: float = 0.0
  reward_mode: str = "inference"
  reduction: str = "nonzero"

  def __post_init__(self):
    structure = losses_lib.loss_spec(self.loss).structure
    if structure not in ("triplet", "npair"):
      raise ValueError(
        f"DE-DSP trains with a triplet loss (triplet_l2sq, eq. 2, or "
        f"triplet_l2) or with npair (eq. 9), not {self.loss!r}: set "
        f"--config.loss.name accordingly."
      )
    objective.check_choice(
      "reward mode", self.reward_mode, objective.REWARD_MODES
    )
    objective.check_choice("reduction", self.reduction, reductions.REDUCTIONS)
    objective.check_choice("baseline", self.baseline, reinforce.BASELINES)
    if self.kind == "triplet":  # Checks m ≤ P.
      selection.hand_picked_anchors(
        jax.random.key(0), *self.pool_shape, self.tuples_per_minibatch
      )

  @property
  def kind(self) -> str:
    """ "triplet" (L = 2 networks) or "npair": the tuples the policy draws."""
    return losses_lib.LOSSES[self.loss].structure

  @property
  def pool_shape(self) -> tuple[int, int]:
    return self.pool_classes, self.pool_images_per_class

  @property
  def loss_options(self) -> dict[str, Any]:
    """margin, squared, npair_scale of `objective.tuple_terms`."""
    return dict(
      margin=self.margin,
      squared=losses_lib.LOSSES[self.loss].squared,
      npair_scale=self.npair_scale,
    )


def step_key(state: dict[str, Any]) -> jax.Array:
  """The key of training step state["step"]: its tuples follow from it."""
  return jax.random.fold_in(
    jax.random.wrap_key_data(state["rng"]), state["step"]
  )


def pretrain_key(state: dict[str, Any]) -> jax.Array:
  """The key of pre-training step state["dsn_pretrain_step"]."""
  rng = jax.random.wrap_key_data(state["rng"])
  stream = jax.random.fold_in(rng, _PRETRAIN_STREAM)
  return jax.random.fold_in(stream, state["dsn_pretrain_step"])


def embedding_variables(state: dict[str, Any], embed=None) -> dict[str, Any]:
  """{"params", "batch_stats"} of the embedding network in `state`."""
  embed = state["params"]["embed"] if embed is None else embed
  return {"params": embed, "batch_stats": state["batch_stats"]}


def policy_choices(
  network: network_lib.DeepSamplerNetwork,
  dsn_params: Any,
  key: jax.Array,
  images: jax.Array,
  ids: jax.Array,
  *,
  kind: str,
  tuples_per_minibatch: int,
) -> selection.PoolTriplets | selection.PoolPairs:
  """One mini-batch of tuples drawn from p(x; η) (line 4 of Algorithm 1).

  Args:
    network, dsn_params: the DSN and its parameters (differentiable).
    key: the mini-batch's key: the hand-picked anchors (triplets) or
      gallery slots (N-pair), and the policy's draws.
    images: [P·M, H, W, C] pool images, class-major.
    ids: [P, M] dataset image ids of the pool.
    kind, tuples_per_minibatch: as in `Settings`.

  Returns:
    m triplets or P pairs, fields [m] / [P].
  """
  shape = ids.shape
  features = network.apply(
    {"params": dsn_params},
    images,
    method=network_lib.DeepSamplerNetwork.features_of,
  ).reshape(*shape, -1)
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


def make_sampler_updates(
  model,
  network: network_lib.DeepSamplerNetwork,
  dsn_tx: optax.GradientTransformation,
  settings: Settings,
):
  """Lines 3–9 of Algorithm 1: the K policy mini-batches of one step.

  Returns:
    sampler_updates(state, pool, key) → ((dsn, dsn_opt), (tuples, dsn_loss
    [K], mean_score [K])), jitted; tuples' fields are [K, m]. The step
    calls it with `step_key(state)`, so the same call gives its tuples.
  """
  shape = settings.pool_shape
  baseline, entropy_weight = settings.baseline, settings.entropy_weight
  choose = functools.partial(
    policy_choices,
    network,
    kind=settings.kind,
    tuples_per_minibatch=settings.tuples_per_minibatch,
  )
  scores_of = functools.partial(
    objective.reward_scores,
    model,
    reward_mode=settings.reward_mode,
    **settings.loss_options,
  )

  @jax.jit
  def sampler_updates(state, pool, key):
    images = pool["image"]
    ids = jnp.asarray(pool["index"]).reshape(shape)
    variables = embedding_variables(state)

    def minibatch(carry, key):
      dsn_params, dsn_opt = carry

      def surrogate(dsn_params):
        tuples = choose(dsn_params, key, images, ids)
        fixed = jax.tree.map(jax.lax.stop_gradient, tuples)
        scores = scores_of(variables, images, fixed)
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

    keys = jax.random.split(key, settings.num_minibatches)
    carry = (state["dsn"], state["dsn_opt"])
    return jax.lax.scan(minibatch, carry, keys)

  return sampler_updates


def make_dsp_step(
  model,
  network: network_lib.DeepSamplerNetwork,
  tx: optax.GradientTransformation,
  dsn_tx: optax.GradientTransformation,
  settings: Settings,
  *,
  update_embedding: bool = True,
):
  """step(state, pool) → (state, metrics), jitted.

  Args:
    model: the embedding network (a `dmljax.models.Embedder`).
    network: the DSN.
    tx: the embedding optimiser (over state["params"]).
    dsn_tx: the DSN's optimiser.
    settings: Algorithm 1's `Settings`.
    update_embedding: False gives the sampler's pre-training step: the K
      policy updates only; θ, its optimiser, the batch statistics and
      state["step"] stay, and state["dsn_pretrain_step"] advances.

  Returns:
    The step. pool: {"image": [P·M, H, W, C], "label": [P·M], "index":
    [P·M]}, class-major. metrics: loss, grad_norm, dsn_loss, mean_score,
    fraction_valid, fraction_nonzero (pre-training: dsn_loss, mean_score).
  """
  sampler_updates = make_sampler_updates(model, network, dsn_tx, settings)
  if not update_embedding:
    return _pretrain_step(sampler_updates)
  return _embedding_step(
    model,
    tx,
    sampler_updates,
    reduction=settings.reduction,
    **settings.loss_options,
  )


def _pretrain_step(sampler_updates):
  @jax.jit
  def pretrain_step(state, pool):
    (dsn, dsn_opt), (_, dsn_losses, scores) = sampler_updates(
      state, pool, pretrain_key(state)
    )
    new = dict(
      state,
      dsn=dsn,
      dsn_opt=dsn_opt,
      dsn_pretrain_step=state["dsn_pretrain_step"] + 1,
    )
    metrics = {"dsn_loss": jnp.mean(dsn_losses), "mean_score": jnp.mean(scores)}
    return new, metrics

  return pretrain_step


def _embedding_step(model, tx, sampler_updates, *, reduction, **loss_options):
  """Algorithm 1's step: the K policy updates, then θ's (line 10)."""

  @jax.jit
  def step(state, pool):
    (dsn, dsn_opt), (tuples, dsn_losses, scores) = sampler_updates(
      state, pool, step_key(state)
    )

    def loss_fn(params):
      variables = embedding_variables(state, params["embed"])
      embeddings, stats = objective.embed_chosen(
        model, variables, pool["image"], tuples, train=True
      )
      terms = objective.tuple_terms(embeddings, tuples, **loss_options)
      loss = objective.embedding_loss(terms, tuples.mask, reduction=reduction)
      return loss, (terms, stats)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (terms, batch_stats)), grads = grad_fn(state["params"])
    new, grad_norm = optim.apply_gradients(
      tx, state, grads, loss, batch_stats=batch_stats, dsn=dsn, dsn_opt=dsn_opt
    )
    valid = tuples.mask
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

  return step


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
