"""make_method(distance_gradient="gathered") vs the dense backward.

The gathered path reads the same [B, B] matrix (so the same loss) and sends
the gradient into the tuples' embedding rows (losses.tuple_distances). The
references: the dense path (same key, same batch) and a float64 NumPy
gradient of the same tuples (tests/reference.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

from dmljax import beta as beta_lib
from dmljax import distances as distances_lib
from dmljax import losses
from dmljax import methods
from dmljax import samplers

SAMPLERS = ["random", "hard", "semihard", "distance_weighted"]
LOSSES = ["margin", "contrastive", "triplet_l2", "triplet_l2sq"]
NUM_CLASSES, K, DIM, NN = 8, 5, 16, 2
MARGIN, NU = 0.2, 0.02


def _batch(seed):
  x, labels = reference.pk_batch(seed, NUM_CLASSES, K, DIM, spread=0.8)
  _, labels = np.unique(labels, return_inverse=True)  # 0..P-1: β["class"].
  return x, labels.astype(np.int32)


def _beta(seed):
  beta = dict(beta_lib.init_beta(num_classes=NUM_CLASSES))
  rng = np.random.default_rng(seed)
  beta["class"] = jnp.asarray(rng.uniform(-0.2, 0.2, NUM_CLASSES), jnp.float32)
  return beta


def _value_and_grads(sampler, loss, gradient, x, labels, beta):
  method = methods.make_method(
    sampler=sampler,
    loss=loss,
    images_per_class=K,
    num_negatives=NN,
    margin=MARGIN,
    nu=NU,
    distance_gradient=gradient,
  )

  def objective(e, b):
    return method(jax.random.key(3), e, labels, b)[0]

  fn = jax.jit(jax.value_and_grad(objective, argnums=(0, 1)))
  return jax.device_get(fn(jnp.asarray(x), beta))


def _assert_close_trees(got, want, *, rtol):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    scale = max(float(np.max(np.abs(w))), 1e-12)
    np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_gathered_equals_dense(sampler, loss):
  """Bit-identical loss; gradients (embeddings and β) to round-off."""
  x, labels = _batch(0)
  beta = _beta(1) if loss == "margin" else None
  dense = _value_and_grads(sampler, loss, "dense", x, labels, beta)
  gathered = _value_and_grads(sampler, loss, "gathered", x, labels, beta)
  assert float(dense[0]) > 0.0
  np.testing.assert_array_equal(gathered[0], dense[0])
  assert np.abs(dense[1][0]).max() > 0.0
  _assert_close_trees(gathered[1], dense[1], rtol=2e-6)


def _reference_gradient(x, labels, beta, loss):
  """float64 dL/dx of the tuples the method samples (distance weighted)."""
  distances = distances_lib.pairwise_distances(jnp.asarray(x))
  triplets = samplers.SAMPLERS["distance_weighted"](
    jax.random.key(3),
    distances,
    labels,
    images_per_class=K,
    num_negatives=NN,
    dim=DIM,
    method="inverse_cdf",
  )
  triplets = reference.RefTriplets(*(np.asarray(t) for t in triplets))
  d = reference.pairwise_distances(x)
  a = triplets.anchors
  if loss == "margin":
    b = float(beta["beta0"]) + np.asarray(beta["class"], np.float64)[labels[a]]
    terms = reference.margin_terms(d, triplets, b, margin=MARGIN)
  elif loss == "contrastive":
    terms = reference.contrastive_terms(d, triplets, margin=MARGIN)
  else:
    squared = loss == "triplet_l2sq"
    terms = (
      reference.triplet_terms(d, triplets, margin=MARGIN, squared=squared),
    )
  count = reference.active_term_count(*terms, mask=triplets.mask)
  w = 1.0 / max(count, 1)  # nonzero_mean: d(Σ terms / count)/d term.
  if loss == "margin":
    dterms = reference.margin_distance_derivatives(
      d, triplets, b, margin=MARGIN, wpos=w, wneg=w
    )
  elif loss == "contrastive":
    dterms = reference.contrastive_distance_derivatives(
      d, triplets, margin=MARGIN, wpos=w, wneg=w
    )
  else:
    dterms = [
      (w * gp, w * gn)
      for gp, gn in reference.triplet_distance_derivatives(
        d, triplets, margin=MARGIN, squared=loss == "triplet_l2sq"
      )
    ]
  weights = reference.term_distance_weights(triplets, dterms, len(x))
  return reference.weighted_distance_gradient(x, weights)


@pytest.mark.parametrize("loss", LOSSES)
def test_gathered_gradient_equals_float64_reference(loss):
  x, labels = _batch(2)
  beta = _beta(4) if loss == "margin" else None
  _, (grad, _) = _value_and_grads(
    "distance_weighted", loss, "gathered", x, labels, beta
  )
  want = _reference_gradient(x, labels, beta, loss)
  assert np.abs(want).max() > 0.0
  np.testing.assert_allclose(
    grad, want, rtol=1e-5, atol=1e-5 * np.abs(want).max()
  )


@pytest.mark.parametrize("gradient", ["dense", "gathered"])
def test_coincident_rows_get_the_zero_subgradient(gradient):
  """A collapsed batch and duplicate rows: finite, and dense = gathered."""
  x, labels = _batch(5)
  collapsed = np.repeat(x[:1], len(x), axis=0)
  duplicates = x.copy()
  duplicates[1::2] = duplicates[::2]
  for batch in (collapsed, duplicates):
    value, (grad, _) = _value_and_grads(
      "hard", "margin", gradient, batch, labels, _beta(0)
    )
    assert np.isfinite(value) and np.all(np.isfinite(grad))
  _, (grad, _) = _value_and_grads(
    "hard", "margin", gradient, collapsed, labels, _beta(0)
  )
  np.testing.assert_array_equal(grad, 0.0)


def test_bfloat16_embeddings_keep_their_dtype():
  x, labels = _batch(6)
  x16 = jnp.asarray(x, jnp.bfloat16)
  out = {}
  for gradient in ("dense", "gathered"):
    out[gradient] = _value_and_grads(
      "semihard", "margin", gradient, x16, labels, _beta(0)
    )
    assert out[gradient][1][0].dtype == jnp.bfloat16
  dense = np.asarray(out["dense"][1][0], np.float32)
  gathered = np.asarray(out["gathered"][1][0], np.float32)
  np.testing.assert_allclose(
    gathered, dense, atol=0.02 * np.abs(dense).max(), rtol=0.02
  )


def test_tuple_distances_values_and_checks():
  x, labels = _batch(7)
  d = distances_lib.pairwise_distances(jnp.asarray(x))
  triplets = samplers.SAMPLERS["hard"](
    jax.random.key(0), d, labels, images_per_class=K
  )
  pairs = losses.tuple_distances(d, triplets, jnp.asarray(x))
  np.testing.assert_array_equal(
    pairs.positive, d[triplets.anchors, triplets.positives]
  )
  np.testing.assert_array_equal(
    pairs.negative, d[triplets.anchors, triplets.negatives]
  )
  with pytest.raises(ValueError, match="embeddings must be"):
    losses.tuple_distances(d, triplets, jnp.asarray(x[:-1]))
  short = losses.PairDistances(pairs.positive[:-1], pairs.negative[:-1])
  with pytest.raises(ValueError, match="PairDistances must hold"):
    losses.margin_loss(short, triplets, 1.2)


def test_unknown_distance_gradient_lists_the_choices():
  with pytest.raises(ValueError, match="dense"):
    methods.make_method(distance_gradient="sparse")
