"""ResNet-50 and the slimmed face ResNet-50 of Wu et al. (Sec. 5).

Shape letters: B batch, H × W image size, C input channels, F features.

Both networks are bottleneck ResNets with [3, 4, 6, 3] blocks, described by
five widths as in the Gluon model zoo (`resnet_spec` in
gluon/model_zoo/vision/resnet.py, the library the authors used): the stem
convolution's width, then the output width of each of the four stages. A
bottleneck block's inner (1 × 1 and 3 × 3) width is its output width / 4.

- `resnet50`: widths 64, 256, 512, 1024, 2048 (He et al., 2016); about
  23.5M parameters without a classifier, F = 2048.
- `face_resnet50`: widths 64, 96, 192, 384, 768 ("64, 96, 192, 384, 768
  filters in the 5 stages", Sec. 5), i.e. bottleneck inner widths 24, 48,
  96, 192; about 3.3M parameters, F = 768.

Details follow the common "v1.5" recipe (torchvision's, so that its
ImageNet weights load: `pretrained.py`): the stride of a downsampling block
sits on its 3 × 3 convolution (padding 1 on every side), the shortcut is
a strided 1 × 1 conv + BN when the shape changes, convolutions have no
bias, BatchNorm uses momentum 0.9 and epsilon 1e-5 (the Gluon / PyTorch
defaults), conv kernels are He-normal (fan out), and the last BN scale of
each residual branch starts at zero so that every block is the identity at
initialisation (Goyal et al., 2017). `dtype` sets the computation dtype
(bfloat16 on accelerators) while parameters stay `param_dtype` (float32).
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

RESNET50_STAGE_SIZES = (3, 4, 6, 3)
RESNET50_WIDTHS = (64, 256, 512, 1024, 2048)
FACE_RESNET50_WIDTHS = (64, 96, 192, 384, 768)

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Bottleneck(nn.Module):
  """1 × 1 → 3 × 3 (strided) → 1 × 1 residual block with BN and ReLU.

  Attributes:
    width: output channels; the inner width is width // expansion.
    strides: spatial stride of the 3 × 3 convolution and the shortcut.
    expansion: ratio of output to inner width.
    dtype: computation dtype.
    param_dtype: parameter dtype.
    axis_name: mesh axis of synchronised BatchNorm (see `ResNet`).
  """

  width: int
  strides: int = 1
  expansion: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, C] → [B, H / strides, W / strides, width]."""
    conv = functools.partial(
      nn.Conv,
      use_bias=False,
      kernel_init=_conv_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )
    norm = functools.partial(
      nn.BatchNorm,
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      axis_name=self.axis_name if train else None,
    )
    inner = self.width // self.expansion
    strides = (self.strides, self.strides)
    y = nn.relu(norm(name="bn1")(conv(inner, (1, 1), name="conv1")(x)))
    # Symmetric padding, as torchvision's: "SAME" would pad a strided conv
    # on an even input by (0, 1) and shift every pretrained feature map.
    y = conv(inner, (3, 3), strides, padding=((1, 1), (1, 1)), name="conv2")(y)
    y = nn.relu(norm(name="bn2")(y))
    y = conv(self.width, (1, 1), name="conv3")(y)
    y = norm(scale_init=nn.initializers.zeros, name="bn3")(y)
    if x.shape[-1] != self.width or self.strides != 1:
      x = conv(self.width, (1, 1), strides, name="proj_conv")(x)
      x = norm(name="proj_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Bottleneck ResNet backbone: stem, four stages, global average pool.

  Attributes:
    stage_sizes: number of bottleneck blocks per stage.
    widths: the stem width followed by each stage's output width
      (len(stage_sizes) + 1 entries).
    expansion: ratio of a block's output width to its inner width.
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32.
    param_dtype: parameter dtype.
    axis_name: the mesh axis over which BatchNorm averages its batch
      statistics in training (synchronised BN under `shard_map`); None for
      the local batch's statistics.
  """

  stage_sizes: Sequence[int] = RESNET50_STAGE_SIZES
  widths: Sequence[int] = RESNET50_WIDTHS
  expansion: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Features of a batch of images.

    Args:
      x: [B, H, W, C] images (224 × 224 in the paper; any size ≥ 32 works).
      train: use batch statistics and update `batch_stats` (True), or use
        the running averages (False).

    Returns:
      [B, F] globally average-pooled features, F = widths[-1], in `dtype`.
    """
    if x.ndim != 4:
      raise ValueError(f"x must be [B, H, W, C] images, got shape {x.shape}.")
    if len(self.widths) != len(self.stage_sizes) + 1:
      raise ValueError(
        f"widths {tuple(self.widths)} must hold the stem width and one width "
        f"per stage ({len(self.stage_sizes)} stages)."
      )
    x = x.astype(self.dtype)
    x = nn.Conv(
      self.widths[0],
      (7, 7),
      (2, 2),
      padding=[(3, 3), (3, 3)],
      use_bias=False,
      kernel_init=_conv_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="stem_conv",
    )(x)
    x = nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      axis_name=self.axis_name if train else None,
      name="stem_bn",
    )(x)
    x = nn.relu(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, (size, width) in enumerate(
      zip(self.stage_sizes, self.widths[1:], strict=True)
    ):
      for block in range(size):
        x = Bottleneck(
          width,
          strides=2 if stage > 0 and block == 0 else 1,
          expansion=self.expansion,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          axis_name=self.axis_name,
          name=f"stage{stage + 1}_block{block + 1}",
        )(x, train=train)
    return jnp.mean(x, axis=(1, 2))


def resnet50(**kwargs: Any) -> ResNet:
  """ResNet-50 backbone (F = 2048); kwargs go to `ResNet` (e.g. dtype)."""
  return ResNet(
    stage_sizes=RESNET50_STAGE_SIZES, widths=RESNET50_WIDTHS, **kwargs
  )


def face_resnet50(**kwargs: Any) -> ResNet:
  """Slimmed face ResNet-50 of Wu et al. Sec. 5 (F = 768); kwargs as above."""
  return ResNet(
    stage_sizes=RESNET50_STAGE_SIZES, widths=FACE_RESNET50_WIDTHS, **kwargs
  )
