"""Shared pytest setup: 8 host devices, parsed absl flags, batch fixtures."""

import os

# Before jax is imported anywhere: 8 CPU devices for the sharding tests.
_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " " + _FLAG
  ).strip()

import functools  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402
import reference  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()


@functools.cache
def _jitted(fn, frozen_static):
  return jax.jit(functools.partial(fn, **dict(frozen_static)))


def _kernel(fn, *, jit=True, **static):
  """fn with its keyword-only hyperparameters bound, through jax.jit.

  Cached per (fn, hyperparameters) so that repeated calls (hypothesis) reuse
  one compiled function. jit=False returns the plain partial (eager mode).
  """
  if not jit:
    return functools.partial(fn, **static)
  return _jitted(fn, tuple(sorted(static.items())))


@pytest.fixture(scope="session")
def kernel():
  """The kernel-binding helper: kernel(fn, jit=True, **hyperparameters)."""
  return _kernel


@pytest.fixture(params=[True, False], ids=["jit", "nojit"])
def jit(request):
  """Runs a test with kernels through jax.jit and eagerly."""
  return request.param


@pytest.fixture
def pk_batch():
  """A shuffled 4 classes x 3 images batch in 5-D (non-contiguous labels)."""
  return reference.pk_batch(0, 4, 3, 5)


@pytest.fixture
def pk_batch_large():
  """A shuffled 8 classes x 5 images batch of unit vectors in 16-D."""
  return reference.pk_batch(1, 8, 5, 16)


@pytest.fixture
def key():
  return jax.random.key(0)
