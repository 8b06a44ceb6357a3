"""What each config field may hold: one check per dotted field.

`field_checks()` maps every field a check knows ("data.batch_size",
"sampler.name", ...) to a function of its value that returns the problem in
words, or None. The checks read the registries they name (samplers, losses,
backbones, schedules, ...) lazily, so importing this module is cheap.
`dmljax.runtime.config_checks` runs them, with the unknown keys and the
combinations of fields.
"""

import difflib
import math
import os
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

Check = Callable[[Any], str | None]  # A problem's description, or None.


def _integer(low: int, high: int | None = None) -> Check:
  def check(value):
    if isinstance(value, bool) or not isinstance(value, int):
      return f"must be an integer, got {value!r}"
    if value < low or (high is not None and value > high):
      bound = f"between {low} and {high}" if high is not None else f"≥ {low}"
      return f"must be {bound}, got {value}"
    return None

  return check


def _number(
  low: float = -math.inf,
  high: float = math.inf,
  *,
  open_low: bool = False,
  open_high: bool = False,
) -> Check:
  def check(value):
    if isinstance(value, bool) or not isinstance(value, int | float):
      return f"must be a number, got {value!r}"
    if not math.isfinite(value):
      return f"must be finite, got {value}"
    below = value <= low if open_low else value < low
    above = value >= high if open_high else value > high
    if below or above:
      left, right = "(" if open_low else "[", ")" if open_high else "]"
      return f"must be in {left}{low:g}, {high:g}{right}, got {value:g}"
    return None

  return check


def _optional(check: Check) -> Check:
  return lambda value: None if value is None else check(value)


def _boolean(value) -> str | None:
  if not isinstance(value, bool):
    return f"must be True or False, got {value!r}"
  return None


def _string(value) -> str | None:
  if not isinstance(value, str):
    return f"must be a string, got {value!r}"
  return None


def _one_of(names) -> Check:
  names = tuple(sorted(names))

  def check(value):
    if value in names:
      return None
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"must be one of {', '.join(names)}, got {value!r}{hint}"

  return check


def _subset_of(names) -> Check:
  def check(value):
    if not isinstance(value, tuple | list):
      return f"must be a tuple of names, got {value!r}"
    unknown = sorted(set(value) - set(names))
    if unknown:
      return f"holds unknown names {unknown}; known: {', '.join(names)}"
    return None

  return check


def _positive_integers(value) -> str | None:
  if not isinstance(value, tuple | list) or not value:
    return f"must be a non-empty tuple of integers, got {value!r}"
  if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in value):
    return f"must hold integers ≥ 1, got {tuple(value)}"
  return None


def _fractions(value) -> str | None:
  if not isinstance(value, tuple | list):
    return f"must be a tuple of fractions, got {value!r}"
  check = _number(0.0, 1.0, open_low=True, open_high=True)
  problems = [p for p in map(check, value) if p]
  return problems[0] if problems else None


def _float_dtype(value) -> str | None:
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    return (
      f"must name a floating-point dtype (float32, bfloat16, float16), "
      f"got {value!r}"
    )
  return None


def _existing_file(value) -> str | None:
  if value and not os.path.isfile(value):
    return f"names no file: {value!r} (give the .safetensors file's path)"
  return None


_COUNT, _POSITIVE, _NON_NEGATIVE = _integer(0), _integer(1), _number(0.0)


def _data_checks() -> dict[str, Check]:
  """data.*: the dataset, its batches, preprocessing and split."""
  # pylint: disable=import-outside-toplevel
  from dmljax.data import embedded
  from dmljax.data import folder
  from dmljax.data import images
  from dmljax.data import readers

  return {
    "data.name": _one_of([*embedded.DATASETS, *readers.READERS, "folder"]),
    "data.image_size": _POSITIVE,
    "data.batch_size": _POSITIVE,
    "data.images_per_class": _integer(2),
    "data.num_workers": _COUNT,
    "data.max_shift": _optional(_COUNT),
    "data.flip": _boolean,
    "data.cache_dir": _string,
    "data.data_dir": _string,
    "data.data_source": _one_of(("files", "tfds")),
    "data.resize_size": _COUNT,
    "data.resize_mode": _one_of(images.MODES),
    "data.standardize": _boolean,
    "data.cropped": _boolean,
    "data.check_counts": _boolean,
    "data.split": _one_of(folder.SPLIT_BY),
    "data.test_fraction": _number(0.0, 1.0, open_low=True, open_high=True),
    "data.split_seed": _COUNT,
    "data.test_classes": _string,
  }


def _method_checks() -> dict[str, Check]:
  """model.*, sampler.* and loss.*: the network, tuple sampler and loss."""
  # pylint: disable=import-outside-toplevel
  from dmljax import losses
  from dmljax import reductions
  from dmljax import samplers
  from dmljax.models import embedder
  from dmljax.runtime.recipes import dsp as dsp_recipe
  from dmljax.samplers import distance_weighted
  from dmljax.samplers import mining

  return {
    "model.name": _one_of(embedder.BACKBONES),
    "model.embedding_dim": _POSITIVE,
    "model.dtype": _float_dtype,
    "model.pretrained": _existing_file,
    "sampler.name": _one_of([*samplers.SAMPLERS, dsp_recipe.SAMPLER_NAME]),
    "sampler.num_negatives": _POSITIVE,
    "sampler.cutoff": _NON_NEGATIVE,
    "sampler.nonzero_loss_cutoff": _number(0.0, open_low=True),
    "sampler.method": _one_of(distance_weighted.DISTANCE_WEIGHTED_METHODS),
    "sampler.no_usable_negative": _one_of(distance_weighted.NO_USABLE_NEGATIVE),
    "sampler.lower_bound": _optional(_number()),
    "sampler.fallback": _one_of(mining.SEMIHARD_FALLBACKS),
    "loss.name": _one_of(list(losses.LOSSES)),
    "loss.margin": _NON_NEGATIVE,
    "loss.nu": _NON_NEGATIVE,
    "loss.reduction": _one_of(reductions.REDUCTIONS),
    "loss.npair_scale": _number(0.0, open_low=True),
  }


def _optimizer_checks() -> dict[str, Check]:
  """beta.* and optim.*: the margin β and the network's optimiser."""
  # pylint: disable=import-outside-toplevel
  from dmljax import beta
  from dmljax import optim
  from dmljax.runtime import train

  return {
    "beta.beta0": _number(),
    "beta.per_class": _boolean,
    "beta.per_image": _boolean,
    "beta.trainable": _subset_of(beta.BETA_PARTS),
    "beta.learning_rate": _NON_NEGATIVE,
    "beta.momentum": _number(0.0, 1.0, open_high=True),
    "beta.gradient_divisor": _one_of(train.GRADIENT_DIVISORS),
    "optim.learning_rate": _number(0.0, open_low=True),
    "optim.schedule": _one_of(train.SCHEDULES),
    "optim.warmup_steps": _COUNT,
    "optim.final_lr_fraction": _number(0.0, 1.0),
    "optim.decay_at": _fractions,
    "optim.decay_factor": _number(0.0, open_low=True),
    "optim.epsilon": _number(0.0, open_low=True),
    "optim.weight_decay": _NON_NEGATIVE,
    "optim.weight_decay_mode": _one_of(optim.WEIGHT_DECAY_MODES),
    "optim.gradient_divisor": _one_of(train.GRADIENT_DIVISORS),
    "optim.pretrained_conv_lr_multiplier": _NON_NEGATIVE,
  }


def _schedule_checks() -> dict[str, Check]:
  """train.*, eval.* and ckpt.*: steps, evaluation and checkpoints."""
  return {
    "train.num_steps": _POSITIVE,
    "train.log_every": _POSITIVE,
    "train.eval_every": _POSITIVE,
    "eval.batch_size": _POSITIVE,
    "eval.ks": _positive_integers,
    "eval.block_size": _POSITIVE,
    "eval.kmeans_iters": _POSITIVE,
    "eval.clustering_during_training": _boolean,
    "eval.max_classes": _COUNT,
    "eval.num_folds": _integer(2),
    "ckpt.every": _POSITIVE,
    "ckpt.max_to_keep": _POSITIVE,
  }


def _dsp_checks() -> dict[str, Check]:
  """dsp.*: DE-DSP's sampler network, its pools and its training."""
  # pylint: disable=import-outside-toplevel
  from dmljax.dsp import objective
  from dmljax.dsp import reinforce

  return {
    "dsp.pool_classes": _integer(2),
    "dsp.pool_images_per_class": _integer(2),
    "dsp.num_minibatches": _POSITIVE,
    "dsp.tuples_per_minibatch": _POSITIVE,
    "dsp.baseline": _one_of(reinforce.BASELINES),
    "dsp.entropy_weight": _NON_NEGATIVE,
    "dsp.learning_rate": _number(0.0, open_low=True),
    "dsp.features": _POSITIVE,
    "dsp.downsample": _POSITIVE,
    "dsp.pretrain_steps": _COUNT,
    "dsp.reward_mode": _one_of(objective.REWARD_MODES),
  }


def field_checks() -> dict[str, Check]:
  """dotted field → check. Each part imports its registries lazily."""
  # pylint: disable=import-outside-toplevel
  from dmljax import parallel

  return {
    "seed": _COUNT,
    **_data_checks(),
    **_method_checks(),
    **_optimizer_checks(),
    **_schedule_checks(),
    **_dsp_checks(),
    "parallel.num_devices": _COUNT,
    "parallel.mining": _one_of(parallel.MINING),
  }
