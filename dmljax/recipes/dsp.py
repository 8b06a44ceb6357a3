"""The DE-DSP recipe (Duan et al. 2019): a sampler network picks the tuples.

A step consumes a candidate pool of P classes × M images (the P × K
pipeline with K = M) and runs Algorithm 1 (`dmljax.dsp.algorithm`): the
sampler network's policy chooses K mini-batches of tuples, REINFORCE
updates it, the chosen tuples update the embedding. Its state adds the
sampler's parameters and optimiser state; `dsp.pretrain_steps` > 0
pre-trains the sampler before step 1. One device (not data parallel yet).
"""

import ml_collections

from dmljax.dsp import training as dsp_training
from dmljax.recipes import base


def uses_devices(config: ml_collections.ConfigDict, count: int) -> bool:
  """DE-DSP runs on one device."""
  del config
  return count == 1


def build(config: ml_collections.ConfigDict, image_shape) -> base.Recipe:
  """The DE-DSP recipe of `config` (checked first)."""
  dsp_training.check_config(config)
  classes, images_per_class = dsp_training.pool_shape(config)
  model = base.make_model(config)

  def prepare(state, tx) -> base.Prepared:
    state, step, pretrain_step = dsp_training.setup(
      config, model, tx, state, image_shape
    )

    def pretrain(state, split, log):
      state, pretrained = dsp_training.pretrain_sampler(
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
