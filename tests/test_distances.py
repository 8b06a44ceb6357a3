"""dmljax.distances against float64 loops (Wu et al. Sec. 3: D_ij)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from jax.test_util import check_grads

from dmljax import distances


def _points(seed, n, dim, scale=1.0):
  rng = np.random.default_rng(seed)
  return (scale * reference.unit_rows(rng.normal(size=(n, dim)))).astype(
    np.float32
  )


SHAPES = {
  "one_point": (1, 3),
  "small": (7, 4),
  "wide": (33, 128),
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_pairwise_distances_match_reference(kernel, jit, shape):
  x = _points(0, *shape)
  got = kernel(distances.pairwise_distances, jit=jit)(x)
  want = reference.pairwise_distances(x)
  assert got.shape == want.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("squared", [False, True], ids=["l2", "squared"])
def test_cross_distances_match_reference(kernel, jit, squared):
  x, y = _points(1, 6, 8), _points(2, 9, 8, scale=2.0)
  got = kernel(distances.pairwise_distances, jit=jit, squared=squared)(x, y)
  want = reference.pairwise_distances(x, y, squared=squared)
  assert got.shape == (6, 9)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_pairwise_squared_distances_match_reference(kernel, jit):
  x = _points(3, 10, 6, scale=3.0)
  got = kernel(distances.pairwise_squared_distances, jit=jit)(x)
  want = reference.pairwise_distances(x, squared=True)
  # Norms ~3: the float32 expansion errs by a few ulp of ||x||^2 = 9.
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_squared_flag_equals_squared_kernel(kernel):
  x = _points(4, 12, 5)
  sq = kernel(distances.pairwise_distances, squared=True)(x)
  np.testing.assert_allclose(
    sq, kernel(distances.pairwise_squared_distances)(x), rtol=1e-6, atol=1e-7
  )
  d = kernel(distances.pairwise_distances)(x)
  np.testing.assert_allclose(d**2, sq, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 100.0], ids=["unit", "norm100"])
def test_diagonal_is_exactly_zero(kernel, scale):
  x = _points(5, 16, 32, scale=scale)
  for fn in (
    distances.pairwise_distances,
    distances.pairwise_squared_distances,
  ):
    got = np.asarray(kernel(fn)(x))
    assert np.all(np.diag(got) == 0.0), fn.__name__
    assert np.all(got >= 0.0), fn.__name__


def test_squared_distances_clamped_for_duplicates_with_large_norms(kernel):
  # ||x||^2 + ||y||^2 - 2 x.y cancels catastrophically for x == y with big
  # norms; the clamp must keep the result >= 0 (and sqrt of it finite).
  x = _points(6, 8, 64, scale=300.0)
  y = x.copy()
  sq = np.asarray(kernel(distances.pairwise_squared_distances)(x, y))
  assert np.all(sq >= 0.0)
  d = np.asarray(kernel(distances.pairwise_distances)(x, y))
  assert np.all(np.isfinite(d)) and np.all(d >= 0.0)


def test_duplicate_embeddings_give_zero_distance(kernel):
  x = _points(7, 6, 16)
  x[3] = x[1]
  d = np.asarray(kernel(distances.pairwise_distances)(x))
  # Near 0 the float32 expansion ||x||^2 + ||y||^2 - 2xy leaves ~1e-7 in the
  # squared distance, i.e. up to ~3e-4 in the distance.
  assert abs(d[1, 3]) <= 1e-3 and abs(d[3, 1]) <= 1e-3


def test_gradients_match_finite_differences_away_from_coincidence(kernel):
  x, y = _points(8, 5, 4), _points(9, 3, 4)
  f = kernel(distances.pairwise_distances)
  # float32 central differences: eps 1e-3 and a 1e-2 tolerance.
  check_grads(f, (x,), order=1, modes=["rev"], eps=1e-3, atol=1e-2, rtol=1e-2)
  check_grads(f, (x, y), order=1, modes=["rev"], eps=1e-3, atol=1e-2, rtol=1e-2)
  g = kernel(distances.pairwise_squared_distances)
  check_grads(g, (x, y), order=1, modes=["rev"], eps=1e-3, atol=1e-2, rtol=1e-2)


def test_gradient_matches_reference(kernel, jit):
  x = _points(10, 9, 6)
  w = np.random.default_rng(0).normal(size=(9, 9))
  f = kernel(distances.pairwise_distances, jit=jit)
  got = jax.grad(lambda e: jnp.sum(w * f(e)))(x)
  want = reference.weighted_distance_gradient(x, w)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
  "case", ["diagonal", "duplicate_rows", "all_identical", "cross_identical"]
)
def test_gradient_finite_and_zero_at_coincidence(kernel, case):
  f = kernel(distances.pairwise_distances)
  x = _points(11, 6, 8)
  if case == "diagonal":
    grad = jax.grad(lambda e: jnp.trace(f(e)))(x)
  elif case == "duplicate_rows":
    x[4] = x[2]
    grad = jax.grad(lambda e: f(e)[2, 4] + f(e)[4, 2])(x)
  elif case == "all_identical":
    x = np.repeat(x[:1], 6, axis=0)
    grad = jax.grad(lambda e: jnp.sum(f(e)))(x)
  else:
    grad = jax.grad(lambda e: jnp.sum(jnp.diag(f(e, e + 0.0))))(x)
  grad = np.asarray(grad)
  assert np.all(np.isfinite(grad)), grad
  np.testing.assert_allclose(grad, 0.0, atol=1e-6)


def test_gradient_finite_with_one_duplicate_pair(kernel):
  x = _points(12, 6, 8)
  x[5] = x[0]
  f = kernel(distances.pairwise_distances)
  grad = np.asarray(jax.grad(lambda e: jnp.sum(f(e)))(x))
  assert np.all(np.isfinite(grad))
  # The other pairs still pull: compare with the reference, where the
  # coincident pair contributes nothing.
  want = reference.weighted_distance_gradient(x, np.ones((6, 6)))
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-4)


def test_cosine_similarities_match_reference(kernel, jit):
  x, y = _points(13, 7, 5, scale=2.0), _points(14, 4, 5, scale=0.5)
  f = kernel(distances.cosine_similarities, jit=jit)
  np.testing.assert_allclose(
    f(x, y), reference.cosine_similarities(x, y), rtol=1e-5, atol=1e-6
  )
  self_sim = np.asarray(f(x))
  np.testing.assert_allclose(
    self_sim, reference.cosine_similarities(x), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(np.diag(self_sim), 1.0, atol=1e-6)


BAD_SHAPES = {
  "x_1d": (np.zeros(4, np.float32), None),
  "dim_mismatch": (np.zeros((3, 4), np.float32), np.zeros((2, 5), np.float32)),
}


@pytest.mark.parametrize("args", BAD_SHAPES.values(), ids=BAD_SHAPES.keys())
@pytest.mark.parametrize(
  "fn",
  [
    distances.pairwise_distances,
    distances.pairwise_squared_distances,
    distances.cosine_similarities,
  ],
  ids=["distances", "squared", "cosine"],
)
def test_bad_shapes_raise_value_error(fn, args):
  with pytest.raises(ValueError):
    fn(*args)
