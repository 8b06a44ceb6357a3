"""A small convolutional backbone for the embedded CPU datasets.

Shape letters: B batch, H × W image size, C input channels, F features.

`SmallConvNet` is sized for `digits` (8 × 8) and `glyphs` (32 × 32) grayscale
images and trains in minutes on two CPU cores. Each stage is two
(3 × 3 conv → BatchNorm → ReLU) blocks followed by a 2 × 2 max pool; the pool
is skipped once the feature map is smaller than 4 × 4, so an 8 × 8 input keeps
a 2 × 2 map for its last stage instead of collapsing to a single pixel. Global
average pooling and a Dense + ReLU layer give [B, F] features, which
`dmljax.models.Embedder` projects to the embedding.

The default widths (16, 32, 64, 128) put most channels where the map is
small. The pool and the 3 × 3 convolutions use `cpu_ops`' formulations,
whose gradients XLA:CPU computes faster (the same functions; on 2 cores the
glyphs step went from 167 to 125 ms with them and two CPU devices, see
`experiments.bench_train`); on GPU/TPU the convolutions are XLA's own.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmljax.models import cpu_ops

_MIN_POOL_SIZE = 4  # Pool only while the map is at least this big.


class SmallConvNet(nn.Module):
  """Conv stages → global average pool → Dense → ReLU.

  Attributes:
    widths: output channels of each stage (two 3 × 3 convs per stage).
    convs_per_stage: conv → BN → ReLU blocks per stage.
    features: width of the final Dense layer, or None to return the pooled
      features of the last stage (F = widths[-1]).
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32.
    param_dtype: parameter dtype.
    axis_name: the mesh axis over which BatchNorm averages its batch
      statistics in training (synchronised BN under `shard_map`, so that the
      statistics are those of the global batch); None for local statistics.

  >>> net = SmallConvNet(widths=(8, 16), features=32)
  >>> x = jnp.zeros((2, 8, 8, 1))
  >>> init = lambda key: net.init_with_output(key, x, train=False)
  >>> features, variables = jax.eval_shape(init, jax.random.key(0))
  >>> features.shape
  (2, 32)
  """

  widths: Sequence[int] = (16, 32, 64, 128)
  convs_per_stage: int = 2
  features: int | None = 256
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Features of a batch of images.

    Args:
      x: [B, H, W, C] images.
      train: use batch statistics and update `batch_stats` (True), or use
        the running averages (False).

    Returns:
      [B, F] features in `dtype`.
    """
    if x.ndim != 4:
      raise ValueError(f"x must be [B, H, W, C] images, got shape {x.shape}.")
    x = x.astype(self.dtype)
    for stage, width in enumerate(self.widths):
      for block in range(self.convs_per_stage):
        x = nn.Conv(
          width,
          (3, 3),
          use_bias=False,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          conv_general_dilated=cpu_ops.conv_general_dilated,
          name=f"conv{stage}_{block}",
        )(x)
        x = nn.BatchNorm(
          use_running_average=not train,
          momentum=0.9,
          epsilon=1e-5,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          axis_name=self.axis_name if train else None,
          name=f"bn{stage}_{block}",
        )(x)
        x = nn.relu(x)
      is_last = stage == len(self.widths) - 1
      if not is_last and min(x.shape[1:3]) >= _MIN_POOL_SIZE:
        x = cpu_ops.max_pool_2x2(x)
    x = jnp.mean(x, axis=(1, 2))
    if self.features is not None:
      x = nn.Dense(
        self.features,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="dense",
      )(x)
      x = nn.relu(x)
    return x
