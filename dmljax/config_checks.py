"""Every value of a training config, checked before any work starts.

`check_config(config)` runs one pass over the resolved config (the one
`train.train_and_evaluate` is about to use) and raises one `ConfigError`
that lists every problem it found, each naming the field, what it holds and
what it should hold. It runs before data loading, compiling and writing
anything, so a bad value costs a fraction of a second, not a training run.

What it checks:

- types: integers where counts are meant (a bool is not an integer),
  finite numbers, strings, booleans, tuples;
- ranges: positive sizes and intervals (a zero `log_every` would divide by
  zero at the first step), `ckpt.max_to_keep` ≥ 1, fractions in (0, 1),
  probabilities, non-negative rates;
- names: every name the code looks up in a registry (sampler, loss,
  backbone, schedule, dtype, ...) against that registry's keys;
- combinations: the batch is P × K, the crop fits in the resized image,
  DE-DSP's loss matches its kind, the batch splits over the devices;
- files: a pretrained backbone file and a data directory that exist;
- with `schema` (the config of `experiments/configs/common.py`), unknown
  keys, with the nearest known key ("did you mean").

A field the checks do not know is left alone (sections may grow), except
with a `schema`.
"""

import difflib
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import ml_collections

Check = Callable[[Any], str | None]  # A problem's description, or None.


class ConfigError(ValueError):
  """A config value the run cannot start with (the message names them)."""


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


def _field_checks() -> dict[str, Check]:
  """dotted field → check. Imports the registries lazily (no cycles)."""
  # pylint: disable=import-outside-toplevel
  from dmljax import beta
  from dmljax import losses
  from dmljax import methods
  from dmljax import optim
  from dmljax import parallel
  from dmljax import samplers
  from dmljax import train
  from dmljax.data import embedded
  from dmljax.data import folder
  from dmljax.data import images
  from dmljax.data import readers
  from dmljax.dsp import algorithm
  from dmljax.dsp import objective
  from dmljax.dsp import reinforce
  from dmljax.dsp import training as dsp_training
  from dmljax.models import embedder
  from dmljax.samplers import distance_weighted
  from dmljax.samplers import mining

  count, positive = _integer(0), _integer(1)
  non_negative = _number(0.0)
  return {
    "seed": _integer(0),
    "data.name": _one_of([*embedded.DATASETS, *readers.READERS, "folder"]),
    "data.image_size": positive,
    "data.batch_size": positive,
    "data.images_per_class": _integer(2),
    "data.num_workers": count,
    "data.max_shift": _optional(count),
    "data.flip": _boolean,
    "data.cache_dir": _string,
    "data.data_dir": _string,
    "data.data_source": _one_of(("files", "tfds")),
    "data.resize_size": count,
    "data.resize_mode": _one_of(images.MODES),
    "data.standardize": _boolean,
    "data.cropped": _boolean,
    "data.check_counts": _boolean,
    "data.split": _one_of(folder.SPLIT_BY),
    "data.test_fraction": _number(0.0, 1.0, open_low=True, open_high=True),
    "data.split_seed": count,
    "data.test_classes": _string,
    "model.name": _one_of(embedder.BACKBONES),
    "model.embedding_dim": positive,
    "model.dtype": _float_dtype,
    "model.pretrained": _existing_file,
    "sampler.name": _one_of([*samplers.SAMPLERS, dsp_training.DSP_SAMPLER]),
    "sampler.num_negatives": positive,
    "sampler.cutoff": non_negative,
    "sampler.nonzero_loss_cutoff": _number(0.0, open_low=True),
    "sampler.method": _one_of(distance_weighted.DISTANCE_WEIGHTED_METHODS),
    "sampler.no_usable_negative": _one_of(distance_weighted.NO_USABLE_NEGATIVE),
    "sampler.lower_bound": _optional(_number()),
    "sampler.fallback": _one_of(mining.SEMIHARD_FALLBACKS),
    "loss.name": _one_of([*losses.LOSSES, methods.NPAIR]),
    "loss.margin": non_negative,
    "loss.nu": non_negative,
    "loss.reduction": _one_of(methods.REDUCTIONS),
    "loss.npair_scale": _number(0.0, open_low=True),
    "beta.beta0": _number(),
    "beta.per_class": _boolean,
    "beta.per_image": _boolean,
    "beta.trainable": _subset_of(beta.BETA_PARTS),
    "beta.learning_rate": non_negative,
    "beta.momentum": _number(0.0, 1.0, open_high=True),
    "beta.gradient_divisor": _one_of(train.GRADIENT_DIVISORS),
    "optim.learning_rate": _number(0.0, open_low=True),
    "optim.schedule": _one_of(train.SCHEDULES),
    "optim.warmup_steps": count,
    "optim.final_lr_fraction": _number(0.0, 1.0),
    "optim.decay_at": _fractions,
    "optim.decay_factor": _number(0.0, open_low=True),
    "optim.epsilon": _number(0.0, open_low=True),
    "optim.weight_decay": non_negative,
    "optim.weight_decay_mode": _one_of(optim.WEIGHT_DECAY_MODES),
    "optim.gradient_divisor": _one_of(train.GRADIENT_DIVISORS),
    "optim.pretrained_conv_lr_multiplier": non_negative,
    "train.num_steps": positive,
    "train.log_every": positive,
    "train.eval_every": positive,
    "eval.batch_size": positive,
    "eval.ks": _positive_integers,
    "eval.block_size": positive,
    "eval.kmeans_iters": positive,
    "eval.clustering_during_training": _boolean,
    "eval.max_classes": count,
    "eval.num_folds": _integer(2),
    "ckpt.every": positive,
    "ckpt.max_to_keep": positive,
    "dsp.kind": _one_of(algorithm.KINDS),
    "dsp.pool_classes": _integer(2),
    "dsp.pool_images_per_class": _integer(2),
    "dsp.num_minibatches": positive,
    "dsp.tuples_per_minibatch": positive,
    "dsp.baseline": _one_of(reinforce.BASELINES),
    "dsp.entropy_weight": non_negative,
    "dsp.learning_rate": _number(0.0, open_low=True),
    "dsp.features": positive,
    "dsp.downsample": positive,
    "dsp.pretrain_steps": count,
    "dsp.reward_mode": _one_of(objective.REWARD_MODES),
    "parallel.num_devices": count,
    "parallel.mining": _one_of(parallel.MINING),
  }


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{"a.b": leaf} of a nested dict / ConfigDict (dicts are not leaves).

  >>> flatten({"train": {"num_steps": 3}, "seed": 0})
  {'train.num_steps': 3, 'seed': 0}
  """
  if isinstance(tree, ml_collections.ConfigDict):
    tree = tree.to_dict()
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict | ml_collections.ConfigDict) and value:
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _unknown_keys(fields: dict[str, Any], schema) -> list[str]:
  known = flatten(schema)
  # Sections that hold free-form dicts (backbone keyword arguments).
  free = ("model.backbone_kwargs.",)
  problems = []
  for name in fields:
    if name in known or name == "method" or name.startswith(free):
      continue
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    problems.append(
      f"{name} is not a config key{hint} (every key is in "
      "experiments/configs/common.py)"
    )
  return problems


def _data_dir_problems(data) -> list[str]:
  """A missing data directory, with the reader's own how-to-get text."""
  # pylint: disable=import-outside-toplevel
  from dmljax.data import folder
  from dmljax.data import readers

  if data.name == "folder":
    how = folder.LAYOUT
  else:
    how = sys.modules[readers.READERS[data.name].__module__].HOW_TO_GET
  if not data.data_dir:
    return [
      f"{data.name}: no data directory given. Pass --data_dir=DIR (or "
      f"--config.data.data_dir=DIR). {how}"
    ]
  if not os.path.exists(data.data_dir):
    return [f"{data.name}: data_dir {data.data_dir} does not exist. {how}"]
  return []


def _combination_problems(config) -> list[str]:
  """Problems between fields (run only once every field is valid)."""
  # pylint: disable=import-outside-toplevel
  from dmljax import labels
  from dmljax import parallel
  from dmljax.data import readers
  from dmljax.dsp import training as dsp_training

  data, problems = config.data, []
  dsp = dsp_training.is_dsp(config)
  try:
    labels.check_batch_shape(data.batch_size, data.images_per_class)
  except ValueError as error:
    if not dsp:
      problems.append(str(error))
  file_backed = data.name == "folder" or data.name in readers.READERS
  if file_backed and data.image_size > data.resize_size:
    problems.append(
      f"data.image_size {data.image_size} (the crop) must be at most "
      f"data.resize_size {data.resize_size} (the scaled image)"
    )
  if file_backed and data.data_source == "files":
    problems += _data_dir_problems(data)
  if dsp:
    try:
      dsp_training.check_config(config)
    except ValueError as error:
      problems.append(str(error))
  else:
    try:
      parallel.choose_num_devices(
        data.batch_size,
        data.images_per_class,
        mining=config.parallel.mining,
        requested=config.parallel.num_devices,
      )
    except ValueError as error:
      problems.append(str(error))
  return problems


def problems_of(
  config: ml_collections.ConfigDict, schema: Any = None
) -> list[str]:
  """Every problem of `config`, one line each (empty when it is valid).

  Args:
    config: a training config (see `experiments/configs/common.py`).
    schema: optionally, a config with every known key (the base config of
      the same dataset): keys of `config` outside it are problems.
  """
  fields = flatten(config)
  problems = [] if schema is None else _unknown_keys(fields, schema)
  for name, check in _field_checks().items():
    if name not in fields:
      continue
    problem = check(fields[name])
    if problem:
      problems.append(f"{name} {problem}")
  if not problems:
    problems = _combination_problems(config)
  return problems


def check_config(config: ml_collections.ConfigDict, schema: Any = None):
  """Raises `ConfigError` naming every bad value of `config` (see above).

  >>> config = ml_collections.ConfigDict({"train": {"num_steps": 0}})
  >>> check_config(config)
  Traceback (most recent call last):
  ...
  dmljax.config_checks.ConfigError: Invalid config: train.num_steps must...
  """
  problems = problems_of(config, schema)
  if problems:
    listed = "; ".join(problem.rstrip(".") for problem in problems)
    raise ConfigError(f"Invalid config: {listed}.")
