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
  DE-DSP's loss is a triplet or N-pair loss, the batch splits over the
  devices;
- files: a pretrained backbone file and a data directory that exist;
- with `schema` (the config of `experiments/configs/common.py`), unknown
  keys, with the nearest known key ("did you mean").

A field the checks do not know is left alone (sections may grow), except
with a `schema`.
"""

import difflib
import os
import sys
from typing import Any

import ml_collections

from dmljax.runtime import config_fields


class ConfigError(ValueError):
  """A config value the run cannot start with (the message names them)."""


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
    how = sys.modules[readers.READERS[data.name].load.__module__].HOW_TO_GET
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
  from dmljax.runtime.recipes import dsp as dsp_recipe

  data, problems = config.data, []
  dsp = config.sampler.name == dsp_recipe.SAMPLER_NAME
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
      dsp_recipe.check_config(config)
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
  for name, check in config_fields.field_checks().items():
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
  >>> try:
  ...   check_config(config)
  ... except ConfigError as error:
  ...   print(error)
  Invalid config: train.num_steps must...
  """
  problems = problems_of(config, schema)
  if problems:
    listed = "; ".join(problem.rstrip(".") for problem in problems)
    raise ConfigError(f"Invalid config: {listed}.")
