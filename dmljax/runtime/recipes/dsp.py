"""The DE-DSP recipe (Duan et al. 2019): a sampler network picks the tuples.

A step consumes a candidate pool of P classes × M images (the P × K
pipeline with K = M) and runs Algorithm 1 (`dmljax.dsp.algorithm`): the
sampler network's policy chooses K mini-batches of tuples, REINFORCE
updates it, the chosen tuples update the embedding. Its state adds the
sampler's parameters and optimiser state; `dsp.pretrain_steps` > 0
pre-trains the sampler before step 1, against the initial embedding
network, on pools of its own stream. One device (not data parallel yet).

The loss (config.loss.name) decides the tuples: triplet_l2sq trains with
eq. 2, the squared ℓ2 triplet loss [D_ap² − D_an² + α]₊; triplet_l2 with
[D_ap − D_an + α]₊; npair with eq. 9 within each of the K mini-batches.
The sampler's scores use the embedding network in dsp.reward_mode
("inference": BatchNorm's running averages, the default; "train": the
chosen images' batch statistics), see `dmljax.dsp.objective`.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dmljax import data as data_lib
from dmljax.dsp import algorithm
from dmljax.dsp import network as network_lib
from dmljax.runtime import reporting
from dmljax.runtime.recipes import base

# config.sampler.name of a DE-DSP run.
SAMPLER_NAME = "dsp"
# Pre-training pools come from pk_batches(seed=config.seed + this): a stream
# apart from the training pools (seeds are 32-bit).
_PRETRAIN_SEED_OFFSET = 2**32


def settings(config: ml_collections.ConfigDict) -> algorithm.Settings:
  """Algorithm 1's settings of `config` (ValueError if it cannot run)."""
  dsp = config.dsp
  return algorithm.Settings(
    pool_classes=dsp.pool_classes,
    pool_images_per_class=dsp.pool_images_per_class,
    loss=config.loss.name,
    num_minibatches=dsp.num_minibatches,
    tuples_per_minibatch=dsp.tuples_per_minibatch,
    margin=config.loss.margin,
    npair_scale=config.loss.npair_scale,
    baseline=dsp.baseline,
    entropy_weight=dsp.entropy_weight,
    reward_mode=dsp.reward_mode,
    reduction=config.loss.reduction,
  )


def check_config(config: ml_collections.ConfigDict) -> None:
  """ValueError for settings DE-DSP cannot run with."""
  settings(config)
  if config.parallel.num_devices > 1:
    raise ValueError(
      "DE-DSP runs on one device (its step is not data-parallel yet): set "
      "--config.parallel.num_devices=1 or 0."
    )


def uses_devices(config: ml_collections.ConfigDict, count: int) -> bool:
  """DE-DSP runs on one device."""
  del config
  return count == 1


def setup(
  config: ml_collections.ConfigDict,
  model,
  tx: optax.GradientTransformation,
  state: dict[str, Any],
  image_shape: tuple[int, ...],
  dsp_settings: algorithm.Settings,
):
  """(state with the sampler added, the Algorithm-1 step, its pre-training
  step), both jitted."""
  network = network_lib.DeepSamplerNetwork(
    features=config.dsp.features, downsample=config.dsp.downsample
  )
  dsn_tx = optax.adam(config.dsp.learning_rate)
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  state = algorithm.add_sampler_state(state, network, dsn_tx, key, image_shape)
  step = algorithm.make_dsp_step(model, network, tx, dsn_tx, dsp_settings)
  pretrain_step = algorithm.make_dsp_step(
    model, network, tx, dsn_tx, dsp_settings, update_embedding=False
  )
  return state, step, pretrain_step


def pretrain_sampler(
  config: ml_collections.ConfigDict,
  state: dict[str, Any],
  pretrain_step,
  split,
  *,
  enabled: bool = True,
) -> tuple[dict[str, Any], dict[str, float] | None]:
  """Algorithm 1's "pre-train the deep sampler network", before step 1.

  Runs the `config.dsp.pretrain_steps` policy-only steps (see
  `algorithm.make_dsp_step(update_embedding=False)`) that `state` has not
  had yet. A run resumed past step 0 is left as it is: its sampler was
  pre-trained before its first checkpoint.

  Returns:
    (state, the mean dsn_loss and mean_score over the steps run, or None
    when none ran). `enabled` shows a progress bar.
  """
  done, total = int(state["dsn_pretrain_step"]), config.dsp.pretrain_steps
  if total < 0:
    raise ValueError(f"dsp.pretrain_steps must be non-negative, got {total}.")
  if done >= total or int(state["step"]) > 0:
    return state, None
  classes, per_class = config.dsp.pool_classes, config.dsp.pool_images_per_class
  pools = data_lib.pk_batches(
    split,
    batch_size=classes * per_class,
    images_per_class=per_class,
    seed=config.seed + _PRETRAIN_SEED_OFFSET,
    num_steps=total,
    max_shift=config.data.max_shift,
    flip=config.data.flip,
  )
  progress = reporting.progress_bar(done, total, enabled=enabled)
  progress.set_description("sampler pre-training")
  sums = None  # Summed on device: no host sync per step, as in training.
  for index, pool in enumerate(pools):
    if index < done:
      continue
    state, metrics = pretrain_step(state, pool)
    sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
    progress.update(1)
  progress.close()
  return state, {name: float(v) / (total - done) for name, v in sums.items()}


def build(config: ml_collections.ConfigDict, image_shape) -> base.Recipe:
  """The DE-DSP recipe of `config`."""
  dsp_settings = settings(config)
  classes, images_per_class = dsp_settings.pool_shape
  model = base.make_model(config)

  def prepare(state, tx) -> base.Prepared:
    state, step, pretrain_step = setup(
      config, model, tx, state, image_shape, dsp_settings
    )

    def pretrain(state, split, log):
      state, pretrained = pretrain_sampler(
        config, state, pretrain_step, split, enabled=log.enabled
      )
      if pretrained is not None:
        log.write(0, "dsn_pretrain", pretrained)
      return state

    return base.Prepared(state=state, step=step, before_training=pretrain)

  return base.Recipe(
    model=model,
    batch_size=classes * images_per_class,
    images_per_class=images_per_class,
    num_devices=1,
    prepare=prepare,
  )
