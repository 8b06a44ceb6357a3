"""Ways of training (recipes), one file each; see `base` for the interface.

  pk_methods.py   a sampler + loss method on P × K batches (Wu et al.)
  dsp.py          DE-DSP: a sampler network trained by REINFORCE

`recipe_name(config)` is derived from the config (the sampler "dsp" is
DE-DSP's; every other sampler is a P × K method), never configured.
"""

import ml_collections

from dmljax.runtime.recipes import dsp
from dmljax.runtime.recipes import pk_methods
from dmljax.runtime.recipes.base import Prepared
from dmljax.runtime.recipes.base import Recipe
from dmljax.runtime.recipes.base import make_model

RECIPES = {"pk": pk_methods, "dsp": dsp}

__all__ = ["RECIPES", "Prepared", "Recipe", "build", "make_model"]


def recipe_name(config: ml_collections.ConfigDict) -> str:
  """The key of RECIPES that trains `config`."""
  return "dsp" if config.sampler.name == dsp.SAMPLER_NAME else "pk"


def build(config: ml_collections.ConfigDict, image_shape) -> Recipe:
  """The recipe of `config` for images of `image_shape` ([H, W, C])."""
  return RECIPES[recipe_name(config)].build(config, image_shape)


def uses_devices(config: ml_collections.ConfigDict, count: int) -> bool:
  """Whether a one-process run of `config` would use all `count` devices.

  Needs no JAX backend, so `dmljax.runtime.cpu_devices.configure` can ask it
  before JAX starts.
  """
  return RECIPES[recipe_name(config)].uses_devices(config, count)
