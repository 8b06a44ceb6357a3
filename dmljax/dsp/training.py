"""DE-DSP inside `dmljax.train.train_and_evaluate` (config.sampler = "dsp").

The loop, checkpoints, evaluation and logging are the ordinary ones; what
changes is the batch (a candidate pool of P classes × M images, from the same
P×K pipeline with K = M), the state (plus the sampler network's parameters
and optimiser state) and the step (Algorithm 1, `algorithm.make_dsp_step`).
DE-DSP runs on one device: its step is not data-parallel yet.
"""

from typing import Any

import jax
import ml_collections
import optax

from dmljax.dsp import algorithm
from dmljax.dsp import network as network_lib

DSP_SAMPLER = "dsp"
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
  """(state with the sampler added, the jitted Algorithm-1 step)."""
  check_config(config)
  network = network_lib.DeepSamplerNetwork(
    features=config.dsp.features, downsample=config.dsp.downsample
  )
  dsn_tx = optax.adam(config.dsp.learning_rate)
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  state = algorithm.add_sampler_state(state, network, dsn_tx, key, image_shape)
  classes, per_class = pool_shape(config)
  step = algorithm.make_dsp_step(
    model,
    network,
    tx,
    dsn_tx,
    kind=config.dsp.kind,
    pool_classes=classes,
    pool_images_per_class=per_class,
    num_minibatches=config.dsp.num_minibatches,
    tuples_per_minibatch=config.dsp.tuples_per_minibatch,
    margin=config.loss.margin,
    squared=_SQUARED[config.loss.name],
    baseline=config.dsp.baseline,
    entropy_weight=config.dsp.entropy_weight,
    reduction=config.loss.reduction,
  )
  return state, step
