"""Formulations of the small net's layers that XLA:CPU runs faster.

Shape letters: B batch, H × W feature map, C input and F output channels.

Same functions as `lax.conv_general_dilated` and `flax.linen.max_pool`, with
gradients XLA:CPU computes faster (layer by layer on 2 cores; the whole
step in `experiments.bench_train`, see WORKSPACE.md):

- `max_pool_2x2`: 2 × 2 / stride 2 max pooling as the maximum of four
  strided slices. Its gradient is elementwise selects; `nn.max_pool`'s is
  XLA's select-and-scatter, which runs 10-20× slower on CPU (24 ms vs 1 ms
  at 120 × 32 × 32 × 16). The gradient is the same wherever the window's
  maximum is unique; on ties (zeros after a ReLU) `jnp.maximum` splits it
  where select-and-scatter gives it to the first, and the ReLU before the
  pool sends either to zero.
- `conv_general_dilated`: a drop-in for `nn.Conv(conv_general_dilated=...)`
  that, for 3 × 3 / stride 1 / SAME convolutions over a map of at least
  16 × 16, computes the kernel gradient ∂L/∂w[i, j, c, f] =
  Σ_{b,h,w} x_pad[b, h+i, w+j, c] · ∂L/∂y[b, h, w, f] as a loop over chunks
  of the batch, each a [F, n] @ [n, 9C] matrix product of im2col patches
  small enough to stay in cache (at 60 × 32 × 32 × 16 → 16: 5.5 ms vs
  XLA's 12 ms). The forward and the input gradient stay XLA's
  convolutions. Values match XLA's up to float32 summation order.
"""

import jax
import jax.numpy as jnp
from jax import lax

MIN_CHUNKED_SIZE = 16  # Smaller maps: XLA's kernel gradient is as fast.
MAX_CHUNK = 10  # Images per chunk of the kernel gradient.


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """[B, H, W, C] → [B, H // 2, W // 2, C]: 2 × 2 max pool, stride 2, VALID."""
  height, width = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
  x = x[:, :height, :width]
  top = jnp.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2])
  bottom = jnp.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2])
  return jnp.maximum(top, bottom)


def _patches(x_padded: jax.Array, height: int, width: int) -> jax.Array:
  """[b, H+2, W+2, C] → [b·H·W, 9C] im2col rows, (i, j, c) order."""
  shifted = [
    x_padded[:, i : i + height, j : j + width, :]
    for i in range(3)
    for j in range(3)
  ]
  patches = jnp.concatenate(shifted, axis=-1)
  return patches.reshape(-1, patches.shape[-1])


def kernel_gradient_chunked(x: jax.Array, dy: jax.Array) -> jax.Array:
  """∂L/∂w of a 3 × 3 SAME stride-1 conv: [B,H,W,C], [B,H,W,F] → [3,3,C,F]."""
  batch, height, width, channels = x.shape
  features = dy.shape[-1]
  chunk = max(d for d in range(1, MAX_CHUNK + 1) if batch % d == 0)
  x_padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  x_chunks = x_padded.reshape(batch // chunk, chunk, *x_padded.shape[1:])
  dy_chunks = dy.reshape(batch // chunk, chunk * height * width, features)

  def product(x_chunk, dy_chunk):  # [F, 9C] for one chunk, in float32.
    patches = _patches(x_chunk.astype(jnp.float32), height, width)
    return dy_chunk.astype(jnp.float32).T @ patches

  def accumulate(total, chunk_pair):
    return total + product(*chunk_pair), None

  # The first chunk starts the sum (rather than zeros) so that the carry has
  # the inputs' varying-axes type under shard_map.
  first = product(x_chunks[0], dy_chunks[0])
  total, _ = lax.scan(accumulate, first, (x_chunks[1:], dy_chunks[1:]))
  return total.T.reshape(3, 3, channels, features).astype(x.dtype)


_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv3x3(x, kernel):
  return lax.conv_general_dilated(
    x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC
  )


@jax.custom_vjp
def conv3x3_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """[B, H, W, C] * [3, 3, C, F] → [B, H, W, F], stride 1, SAME padding."""
  return _conv3x3(x, kernel)


def _conv3x3_forward(x, kernel):
  return _conv3x3(x, kernel), (x, kernel)


def _conv3x3_backward(residuals, dy):
  x, kernel = residuals
  # The input gradient is the convolution with the flipped, transposed
  # kernel (exact for SAME padding of a 3 × 3 kernel).
  dx = _conv3x3(dy, jnp.flip(kernel, (0, 1)).swapaxes(2, 3))
  return dx, kernel_gradient_chunked(x, dy)


conv3x3_same.defvjp(_conv3x3_forward, _conv3x3_backward)


def _varying_axes(x: jax.Array) -> frozenset:
  """The shard_map axes over which x varies (empty outside shard_map)."""
  aval = jax.typeof(x)
  manual = getattr(aval, "manual_axis_type", None)  # jax ≥ 0.9
  if manual is not None:
    return frozenset(manual.varying)
  return frozenset(getattr(aval, "vma", ()))


def _varying_like(kernel: jax.Array, x: jax.Array) -> jax.Array:
  """`kernel` marked varying over x's shard_map axes.

  Inside `shard_map` the kernel is replicated and x varies per device; the
  custom gradient is per device, so the kernel must vary too: the
  transpose of this cast is the psum of the per-device gradients that
  automatic differentiation would have inserted.
  """
  axes = tuple(sorted(_varying_axes(x) - _varying_axes(kernel)))
  if not axes:
    return kernel
  return lax.pcast(kernel, axes, to="varying")


def _is_plain_3x3(lhs, rhs, strides, padding, dilations, dimension_numbers):
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  same = padding == "SAME" or tuple(map(tuple, padding)) == ((1, 1), (1, 1))
  return (
    rhs.shape[:2] == (3, 3)
    and tuple(strides) == (1, 1)
    and same
    and all(d is None or tuple(d) == (1, 1) for d in dilations)
    and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    == nhwc
    and min(lhs.shape[1:3]) >= MIN_CHUNKED_SIZE
  )


def conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  **kwargs,
):
  """`lax.conv_general_dilated`, with the chunked kernel gradient on CPU.

  Used for 3 × 3, stride 1, SAME, undilated, ungrouped NHWC convolutions
  over maps of at least 16 × 16 when JAX's default backend is the CPU;
  everything else goes to `lax.conv_general_dilated` unchanged.
  """
  plain = feature_group_count == 1 and _is_plain_3x3(
    lhs,
    rhs,
    window_strides,
    padding,
    (lhs_dilation, rhs_dilation),
    dimension_numbers,
  )
  if plain and jax.default_backend() == "cpu":
    return conv3x3_same(lhs, _varying_like(rhs, lhs))
  return lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    **kwargs,
  )
