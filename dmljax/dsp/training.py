"""DE-DSP inside `dmljax.train.train_and_evaluate` (config.sampler = "dsp").

The loop, checkpoints, evaluation and logging are the ordinary ones; what
changes is the batch (a candidate pool of P classes × M images, from the same
P×K pipeline with K = M), the state (plus the sampler network's parameters
and optimiser state) and the step (Algorithm 1, `algorithm.make_dsp_step`).
With `dsp.pretrain_steps` > 0 the sampler is first pre-trained against the
initial embedding network (`pretrain_sampler`), on pools of its own stream.
DE-DSP runs on one device: its step is not data-parallel yet.

Losses: dsp.kind "triplet" trains with eq. 2, the squared ℓ2 triplet loss
[D_ap² − D_an² + α]₊ (loss.name = triplet_l2sq); loss.name = triplet_l2
gives the ℓ2 form [D_ap − D_an + α]₊ as an option. dsp.kind "npair" trains
with eq. 9 within each of the K mini-batches (loss.name = npair). The
sampler's scores use the embedding network in dsp.reward_mode
("inference": BatchNorm's running averages, the default; "train": the
chosen images' batch statistics), see `objective`.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dmljax import data as data_lib
from dmljax import reporting
from dmljax.dsp import algorithm
from dmljax.dsp import network as network_lib

DSP_SAMPLER = "dsp"
# Pre-training pools come from pk_batches(seed=config.seed + this): a stream
# apart from the training pools (seeds are 32-bit).
_PRETRAIN_SEED_OFFSET = 2**32
_SQUARED = {"triplet_l2": False, "triplet_l2sq": True, "npair": False}


def is_dsp(config: ml_collections.ConfigDict) -> bool:
  return config.sampler.name == DSP_SAMPLER


def pool_shape(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(P, M): classes and images per class of the candidate pool."""
  return config.dsp.pool_classes, config.dsp.pool_images_per_class


def check_config(config: ml_collections.ConfigDict) -> None:
  """ValueError for settings DE-DSP cannot run with."""
  kind, loss = config.dsp.kind, config.loss.name
  expected = ("npair",) if kind == "npair" else ("triplet_l2", "triplet_l2sq")
  if loss not in expected:
    raise ValueError(
      f"DE-DSP {kind!r} trains with loss {' or '.join(expected)}, not "
      f"{loss!r}: set --config.loss.name accordingly."
    )
  if config.parallel.num_devices > 1:
    raise ValueError(
      "DE-DSP runs on one device (its step is not data-parallel yet): set "
      "--config.parallel.num_devices=1 or 0."
    )


def setup(
  config: ml_collections.ConfigDict,
  model,
  tx: optax.GradientTransformation,
  state: dict[str, Any],
  image_shape: tuple[int, ...],
):
  """(state with the sampler added, the Algorithm-1 step, its pre-training
  step), both jitted."""
  check_config(config)
  network = network_lib.DeepSamplerNetwork(
    features=config.dsp.features, downsample=config.dsp.downsample
  )
  dsn_tx = optax.adam(config.dsp.learning_rate)
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  state = algorithm.add_sampler_state(state, network, dsn_tx, key, image_shape)
  classes, per_class = pool_shape(config)
  options = dict(
    kind=config.dsp.kind,
    pool_classes=classes,
    pool_images_per_class=per_class,
    num_minibatches=config.dsp.num_minibatches,
    tuples_per_minibatch=config.dsp.tuples_per_minibatch,
    margin=config.loss.margin,
    squared=_SQUARED[config.loss.name],
    npair_scale=config.loss.npair_scale,
    baseline=config.dsp.baseline,
    entropy_weight=config.dsp.entropy_weight,
    reduction=config.loss.reduction,
    reward_mode=config.dsp.reward_mode,
  )
  step = algorithm.make_dsp_step(model, network, tx, dsn_tx, **options)
  pretrain_step = algorithm.make_dsp_step(
    model, network, tx, dsn_tx, update_embedding=False, **options
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
  classes, per_class = pool_shape(config)
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
