"""The small net's CPU formulations against float64 references and XLA's ops.

`max_pool_2x2` must equal `nn.max_pool` in value and (where each window's
maximum is unique) in gradient; the chunked kernel gradient must equal the
formula ∂L/∂w[i, j, c, f] = Σ_{b,h,w} x_pad[b, h+i, w+j, c] ∂L/∂y[b, h, w, f]
in float64, and the custom convolution's gradients XLA's autodiff ones,
also under `shard_map` (where the per-device kernel gradients are summed).
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from jax import lax

from dmljax import parallel
from dmljax.models import cpu_ops

_NHWC = ("NHWC", "HWIO", "NHWC")


def kernel_gradient_reference(x, dy):
  """float64 ∂L/∂w of a 3 × 3 SAME stride-1 conv, from the formula."""
  x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
  _, height, width, _ = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((3, 3, x.shape[-1], dy.shape[-1]))
  for i in range(3):
    for j in range(3):
      window = padded[:, i : i + height, j : j + width, :]
      out[i, j] = np.einsum("bhwc,bhwf->cf", window, dy)
  return out


@settings(max_examples=8, deadline=None)
@given(
  batch=st.integers(1, 13),
  size=st.integers(2, 9),
  channels=st.integers(1, 4),
  features=st.integers(1, 5),
  seed=st.integers(0, 2**16),
)
def test_kernel_gradient_matches_the_formula(
  batch, size, channels, features, seed
):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, size, size + 1, channels), np.float32)
  dy = rng.standard_normal((batch, size, size + 1, features), np.float32)
  got = cpu_ops.kernel_gradient_chunked(jnp.asarray(x), jnp.asarray(dy))
  expected = kernel_gradient_reference(x, dy)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("jit", [True, False])
def test_custom_convolution_gradients_equal_xla_autodiff(jit):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((12, 16, 16, 3), np.float32))
  kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 4), np.float32))
  cotangent = jnp.asarray(rng.standard_normal((12, 16, 16, 4), np.float32))

  def xla(x, kernel):
    return lax.conv_general_dilated(
      x, kernel, (1, 1), "SAME", dimension_numbers=_NHWC
    )

  def loss(conv):
    return lambda x, kernel: jnp.vdot(conv(x, kernel), cotangent)

  custom = jax.value_and_grad(loss(cpu_ops.conv3x3_same), argnums=(0, 1))
  got = (jax.jit(custom) if jit else custom)(x, kernel)
  expected = jax.value_and_grad(loss(xla), argnums=(0, 1))(x, kernel)
  chex.assert_trees_all_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
  "size, kwargs, chunked",
  [
    (16, {}, True),
    (8, {}, False),  # Below MIN_CHUNKED_SIZE: XLA's gradient.
    (16, {"strides": (2, 2)}, False),
    (16, {"padding": "VALID"}, False),
    (16, {"kernel_size": (5, 5)}, False),
  ],
)
def test_flax_conv_takes_the_chunked_gradient_only_where_it_applies(
  size, kwargs, chunked, monkeypatch
):
  calls = []
  original = cpu_ops.kernel_gradient_chunked
  monkeypatch.setattr(
    cpu_ops,
    "kernel_gradient_chunked",
    lambda x, dy: calls.append(x.shape) or original(x, dy),
  )
  kwargs = {"kernel_size": (3, 3), **kwargs}
  conv = nn.Conv(4, conv_general_dilated=cpu_ops.conv_general_dilated, **kwargs)
  plain = nn.Conv(4, **kwargs)
  x = jnp.asarray(np.random.default_rng(1).random((2, size, size, 3)))
  variables = plain.init(jax.random.key(0), x)

  def loss(module):
    return lambda v: jnp.sum(module.apply(v, x) ** 2)

  got = jax.grad(loss(conv))(variables)
  expected = jax.grad(loss(plain))(variables)
  chex.assert_trees_all_close(got, expected, rtol=1e-4, atol=1e-4)
  assert bool(calls) == chunked


@settings(max_examples=8, deadline=None)
@given(
  height=st.integers(2, 9),
  width=st.integers(2, 9),
  seed=st.integers(0, 2**16),
)
def test_max_pool_equals_flax_in_value_and_gradient(height, width, seed):
  # Continuous random values: every window's maximum is unique.
  x = np.random.default_rng(seed).standard_normal((2, height, width, 3))
  x = jnp.asarray(x, jnp.float32)

  def flax_pool(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))

  np.testing.assert_array_equal(cpu_ops.max_pool_2x2(x), flax_pool(x))
  weights = jnp.arange(flax_pool(x).size, dtype=jnp.float32)

  def weighted(pool):
    return lambda x: jnp.vdot(pool(x).ravel(), weights)

  np.testing.assert_array_equal(
    jax.grad(weighted(cpu_ops.max_pool_2x2))(x),
    jax.grad(weighted(flax_pool))(x),
  )


def test_small_net_gradients_equal_the_xla_formulation():
  """SmallConvNet's layers (slice pool, chunked gradient) vs flax's own."""

  class XlaNet(nn.Module):  # The same layers with flax's own ops.
    @nn.compact
    def __call__(self, x):
      for stage, width in enumerate((4, 8)):
        for _ in range(2):
          x = nn.Conv(width, (3, 3), use_bias=False)(x)
          x = nn.relu(x)
        if stage == 0:
          x = nn.max_pool(x, (2, 2), strides=(2, 2))
      return jnp.mean(x, axis=(1, 2))

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      for stage, width in enumerate((4, 8)):
        for _ in range(2):
          x = nn.Conv(
            width,
            (3, 3),
            use_bias=False,
            conv_general_dilated=cpu_ops.conv_general_dilated,
          )(x)
          x = nn.relu(x)
        if stage == 0:
          x = cpu_ops.max_pool_2x2(x)
      return jnp.mean(x, axis=(1, 2))

  x = jnp.asarray(np.random.default_rng(2).random((6, 32, 32, 1)), jnp.float32)
  variables = XlaNet().init(jax.random.key(0), x)
  grads = [
    jax.grad(lambda v, net=net: jnp.sum(net.apply(v, x) ** 2))(variables)
    for net in (Net(), XlaNet())
  ]
  chex.assert_trees_all_close(*grads, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(
  jax.device_count() < 2,
  reason="needs XLA_FLAGS=--xla_force_host_platform_device_count>=2",
)
def test_chunked_gradient_under_shard_map_sums_the_devices():
  mesh = parallel.make_mesh(2)
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((4, 16, 16, 2)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 2, 3)), jnp.float32)

  def loss(kernel, x, conv):
    y = conv(x, kernel, (1, 1), "SAME", dimension_numbers=_NHWC)
    return jnp.sum(y**2)

  def per_device(kernel, x):
    return jax.grad(loss)(kernel, x, cpu_ops.conv_general_dilated)

  spec = jax.sharding.PartitionSpec
  sharded = jax.jit(
    jax.shard_map(
      per_device,
      mesh=mesh,
      in_specs=(spec(), spec(parallel.DATA_AXIS)),
      out_specs=spec(),
    )
  )
  got = sharded(
    jax.device_put(kernel, parallel.replicated(mesh)),
    jax.device_put(x, parallel.batch_sharding(mesh)),
  )
  expected = jax.grad(loss)(kernel, x, lax.conv_general_dilated)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
