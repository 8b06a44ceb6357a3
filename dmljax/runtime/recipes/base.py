"""What `dmljax.runtime.train.train_and_evaluate` needs from a way of training.

A recipe is built from the config (`dmljax.runtime.recipes.build`) and says:

- its embedding network (`model`) and how many devices it runs on;
- what a step consumes: `batch_size` images, `images_per_class` of each
  class (a P × K batch, or DE-DSP's P × M candidate pool), drawn by
  `dmljax.data.pk_batches` and placed by `place_batch`;
- `prepare(state, tx)`: its extra state added to the common train state
  (and placed on its devices), its jitted `step(state, batch) → (state,
  metrics)`, and an optional hook run once before the first step
  (`before_training(state, split, log) → state`, e.g. DE-DSP's sampler
  pre-training, which logs what it did).

The loop, checkpoints, evaluation and reporting are the same for all.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import ml_collections

from dmljax import models as models_lib


def make_model(
  config: ml_collections.ConfigDict, *, axis_name: str | None = None
):
  """The embedding network of `config.model`.

  `axis_name` synchronises BatchNorm over that mesh axis in training
  (`parallel.DATA_AXIS` for the data-parallel step).
  """
  kwargs = dict(config.model.backbone_kwargs)
  if axis_name is not None:
    kwargs["axis_name"] = axis_name
  return models_lib.make_embedder(
    config.model.name,
    embedding_dim=config.model.embedding_dim,
    dtype=jnp.dtype(config.model.dtype),
    **kwargs,
  )


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A recipe's train state, step and optional pre-training hook."""

  state: dict[str, Any]
  step: Callable
  before_training: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A way of training (see the module docstring)."""

  model: Any
  batch_size: int
  images_per_class: int
  num_devices: int
  prepare: Callable[..., Prepared]
  place_batch: Callable[[dict], Any] = lambda batch: batch
