"""dmljax.reductions: what is averaged over what."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

from dmljax import reductions


def _terms(seed, t=24, zero_fraction=0.4):
  rng = np.random.default_rng(seed)
  terms = rng.uniform(0.0, 2.0, t)
  terms[rng.uniform(size=t) < zero_fraction] = 0.0
  mask = rng.uniform(size=t) < 0.7
  return terms.astype(np.float32), mask


def test_masked_mean_matches_reference(kernel, jit):
  terms, mask = _terms(0)
  got = kernel(reductions.masked_mean, jit=jit)(terms, mask)
  assert np.shape(got) == ()
  np.testing.assert_allclose(
    got, reference.masked_mean(terms, mask), rtol=1e-6, atol=1e-7
  )


def test_masked_mean_all_masked_is_zero(kernel, jit):
  terms, _ = _terms(1)
  mask = np.zeros_like(terms, bool)
  f = kernel(reductions.masked_mean, jit=jit)
  assert float(f(terms, mask)) == 0.0
  grad = jax.grad(lambda v: f(v, mask))(terms)
  assert np.all(np.asarray(grad) == 0.0)


@pytest.mark.parametrize("num_terms", [1, 2, 3])
@pytest.mark.parametrize("extra", [0.0, 0.37])
def test_nonzero_mean_matches_reference(kernel, jit, num_terms, extra):
  terms = [_terms(10 + k)[0] for k in range(num_terms)]
  _, mask = _terms(20)
  got = kernel(reductions.nonzero_mean, jit=jit)(*terms, mask=mask, extra=extra)
  want = reference.nonzero_mean(*terms, mask=mask, extra=extra)
  assert np.shape(got) == ()
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  # Non-trivial: masked-out positive terms exist and must not be counted.
  assert any(np.any((t > 0) & ~mask) for t in terms)
  # ... and masked zero terms, so the divisor differs from the masked count.
  assert any(np.any((t == 0) & mask) for t in terms)


def test_nonzero_mean_extra_defaults_to_zero(kernel):
  terms, mask = _terms(5)
  got = kernel(reductions.nonzero_mean)(terms, mask=mask)
  np.testing.assert_allclose(
    got, reference.nonzero_mean(terms, mask=mask), rtol=1e-6
  )


@pytest.mark.parametrize("case", ["all_zero_terms", "all_masked"])
@pytest.mark.parametrize("extra", [0.0, 0.25])
def test_nonzero_mean_without_active_terms(kernel, jit, case, extra):
  terms, mask = _terms(6)
  if case == "all_zero_terms":
    terms = np.zeros_like(terms)
  else:
    mask = np.zeros_like(mask)
  f = kernel(reductions.nonzero_mean, jit=jit)
  got = f(terms, terms, mask=mask, extra=extra)
  assert np.isfinite(got)
  np.testing.assert_allclose(got, extra, atol=1e-7)  # divisor max(0, 1) = 1
  grad = jax.grad(lambda v: f(v, v, mask=mask, extra=extra))(terms)
  assert np.all(np.isfinite(np.asarray(grad)))


def test_nonzero_mean_gradient(kernel):
  terms, mask = _terms(7)
  count = int(np.sum((terms > 0) & mask))
  grad = jax.grad(lambda v: kernel(reductions.nonzero_mean)(v, mask=mask))(
    jnp.asarray(terms)
  )
  # The divisor is a count (no gradient): each masked term weighs 1 / count.
  np.testing.assert_allclose(grad, mask / count, rtol=1e-6)


@pytest.mark.parametrize("reduction", ["nonzero", "mean"])
@pytest.mark.parametrize("num_terms", [1, 2])
@pytest.mark.parametrize("extra", [None, 0.7])
def test_reduce_terms_matches_float64(kernel, jit, reduction, num_terms, extra):
  terms = [_terms(10 + i)[0] for i in range(num_terms)]
  mask = _terms(10)[1]
  masked = np.stack([np.where(mask, t, 0.0) for t in terms]).astype(np.float64)
  numerator = masked.sum() + (extra or 0.0)
  if reduction == "nonzero":
    divisor = max(int(np.sum(masked > 0)), 1)
  else:
    divisor = max(num_terms * int(mask.sum()), 1)
  fn = kernel(reductions.reduce_terms, jit=jit, reduction=reduction)
  got = fn(tuple(terms), mask, extra=extra)
  np.testing.assert_allclose(got, numerator / divisor, rtol=1e-6)


def test_reduce_terms_names_the_reductions():
  with pytest.raises(ValueError, match="Unknown reduction 'sum'.*nonzero"):
    reductions.reduce_terms((jnp.ones(2),), jnp.ones(2, bool), reduction="sum")
