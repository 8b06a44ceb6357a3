"""dmljax.losses against float64 loops (Wu et al. Sec. 3-4; DE-DSP eq. 9)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

from dmljax import distances
from dmljax import losses
from dmljax.samplers import Triplets


def _setup(seed=0, num_classes=4, images_per_class=3, dim=3, num_negatives=2):
  """Embeddings in 3-D (distances spread over (0, 2)) and hand-made triplets.

  Negatives are drawn at random from other classes; about a quarter of the
  slots are masked, with negative = anchor (the samplers' placeholder).
  """
  rng = np.random.default_rng(seed)
  x, labels = reference.pk_batch(seed, num_classes, images_per_class, dim)
  rows = []
  for a, p in reference.positive_pairs(labels):
    for _ in range(num_negatives):
      if rng.uniform() < 0.25:
        rows.append((a, p, a, False))
      else:
        rows.append((a, p, rng.choice(reference.negatives_of(labels, a)), True))
  ref = reference._triplets(rows)
  trip = Triplets(
    jnp.asarray(ref.anchors, jnp.int32),
    jnp.asarray(ref.positives, jnp.int32),
    jnp.asarray(ref.negatives, jnp.int32),
    jnp.asarray(ref.mask),
  )
  return x, labels, trip, ref


def _d32(x):
  return np.asarray(distances.pairwise_distances(x))


def _assert_nontrivial(*terms, mask):
  """The case has both active and inactive valid terms (no trivial pass)."""
  values = np.concatenate([np.asarray(t)[mask] for t in terms])
  assert np.any(values > 0) and np.any(values == 0)


# ----------------------------------------------------------------------------
# Values.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("margin", [0.2, 0.6, 1.0])
def test_contrastive_loss_matches_reference(kernel, jit, margin):
  x, _, trip, ref = _setup()
  d = _d32(x)
  pos, neg = kernel(losses.contrastive_loss, jit=jit, margin=margin)(d, trip)
  want_pos, want_neg = reference.contrastive_terms(d, ref, margin=margin)
  assert pos.shape == neg.shape == ref.mask.shape
  np.testing.assert_allclose(pos, want_pos, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(neg, want_neg, rtol=1e-5, atol=1e-6)
  if margin > 0.5:  # at 0.2 no negative of this batch is that close
    _assert_nontrivial(neg, mask=ref.mask)


@pytest.mark.parametrize("squared", [True, False], ids=["l2sq", "l2"])
@pytest.mark.parametrize("margin", [0.2, 0.5])
def test_triplet_loss_matches_reference(kernel, jit, squared, margin):
  x, _, trip, ref = _setup(1)
  d = _d32(x)
  got = kernel(losses.triplet_loss, jit=jit, margin=margin, squared=squared)(
    d, trip
  )
  want = reference.triplet_terms(d, ref, margin=margin, squared=squared)
  assert got.shape == ref.mask.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  _assert_nontrivial(got, mask=ref.mask)


def test_triplet_loss_defaults_to_squared(kernel):
  x, _, trip, ref = _setup(2)
  d = _d32(x)
  got = kernel(losses.triplet_loss)(d, trip)
  want = reference.triplet_terms(d, ref, margin=0.2, squared=True)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta_kind", ["scalar", "per_triplet"])
@pytest.mark.parametrize("margin", [0.2, 0.4])
def test_margin_loss_matches_reference(kernel, jit, beta_kind, margin):
  x, _, trip, ref = _setup(3)
  d = _d32(x)
  t = len(ref.mask)
  if beta_kind == "scalar":
    beta = np.float32(1.2)
  else:
    beta = np.random.default_rng(0).uniform(0.6, 1.6, t).astype(np.float32)
  pos, neg = kernel(losses.margin_loss, jit=jit, margin=margin)(d, trip, beta)
  want_pos, want_neg = reference.margin_terms(d, ref, beta, margin=margin)
  assert pos.shape == neg.shape == (t,)
  np.testing.assert_allclose(pos, want_pos, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(neg, want_neg, rtol=1e-5, atol=1e-6)
  _assert_nontrivial(pos, neg, mask=ref.mask)


@pytest.mark.parametrize("loss", ["contrastive", "triplet", "margin"])
def test_terms_exactly_zero_where_masked(kernel, loss):
  x, _, trip, ref = _setup(4)
  d = _d32(x)
  if loss == "contrastive":
    # margin 3 > every distance: every unmasked term would be > 0.
    terms = kernel(losses.contrastive_loss, margin=3.0)(d, trip)
  elif loss == "triplet":
    terms = (kernel(losses.triplet_loss, margin=5.0)(d, trip),)
  else:
    terms = kernel(losses.margin_loss, margin=3.0)(d, trip, np.float32(1.0))
  for term in terms:
    term = np.asarray(term)
    assert np.all(term[~ref.mask] == 0.0)
    assert np.all(term[ref.mask] > 0.0)


def _reference_terms(name, d, ref, beta, margin):
  if name == "contrastive":
    return reference.contrastive_terms(d, ref, margin=margin)
  if name == "margin":
    return reference.margin_terms(d, ref, beta, margin=margin)
  squared = {"triplet_l2": False, "triplet_l2sq": True}[name]
  return (reference.triplet_terms(d, ref, margin=margin, squared=squared),)


@pytest.mark.parametrize(
  "name", ["margin", "contrastive", "triplet_l2", "triplet_l2sq"]
)
def test_registry_terms_are_a_tuple_of_the_papers_terms(name):
  # One return convention: every tuple loss gives a tuple of [T] arrays,
  # two for the pairwise losses, one for the triplet losses.
  spec = losses.LOSSES[name]
  x, _, trip, ref = _setup(5)
  d = _d32(x)
  beta = np.float32(1.1)
  extra = (beta,) if spec.takes_beta else ()
  got = spec.terms(d, trip, *extra, margin=0.3)
  want = _reference_terms(name, d, ref, beta, 0.3)
  assert isinstance(got, tuple)
  assert len(got) == {"pairwise": 2, "triplet": 1}[spec.structure]
  for term, expected in zip(got, want, strict=True):
    assert term.shape == ref.mask.shape
    np.testing.assert_allclose(term, expected, rtol=1e-5, atol=1e-6)


def test_registry_specs_agree_with_the_losses():
  assert [n for n, s in losses.LOSSES.items() if s.takes_beta] == ["margin"]
  assert [n for n, s in losses.LOSSES.items() if s.squared] == ["triplet_l2sq"]
  assert losses.LOSSES["npair"].structure == "npair"
  assert set(s.structure for s in losses.LOSSES.values()) == set(
    losses.STRUCTURES
  )
  with pytest.raises(ValueError, match="Unknown loss 'triplet'.*npair"):
    losses.loss_spec("triplet")


# ----------------------------------------------------------------------------
# Gradients w.r.t. embeddings, through pairwise_distances.
# ----------------------------------------------------------------------------

W_POS, W_NEG = 1.0, 0.7  # distinct weights: a pos/neg mix-up shows


def _grad_case(loss, trip, ref, x, beta, margin, jit, kernel):
  d64 = reference.pairwise_distances(x)
  dist = kernel(distances.pairwise_distances, jit=jit)
  if loss == "contrastive":
    fn = kernel(losses.contrastive_loss, jit=jit, margin=margin)

    def objective(e):
      pos, neg = fn(dist(e), trip)
      return W_POS * jnp.sum(pos) + W_NEG * jnp.sum(neg)

    derivs = reference.contrastive_distance_derivatives(
      d64, ref, margin=margin, wpos=W_POS, wneg=W_NEG
    )
  elif loss in ("triplet_l2", "triplet_l2sq"):
    squared = loss == "triplet_l2sq"
    fn = kernel(losses.triplet_loss, jit=jit, margin=margin, squared=squared)

    def objective(e):
      return jnp.sum(fn(dist(e), trip))

    derivs = reference.triplet_distance_derivatives(
      d64, ref, margin=margin, squared=squared
    )
  else:
    fn = kernel(losses.margin_loss, jit=jit, margin=margin)

    def objective(e):
      pos, neg = fn(dist(e), trip, beta)
      return W_POS * jnp.sum(pos) + W_NEG * jnp.sum(neg)

    derivs = reference.margin_distance_derivatives(
      d64, ref, beta, margin=margin, wpos=W_POS, wneg=W_NEG
    )
  weights = reference.term_distance_weights(ref, derivs, len(x))
  return objective, reference.weighted_distance_gradient(x, weights)


LOSS_NAMES = ["contrastive", "triplet_l2", "triplet_l2sq", "margin"]


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_embedding_gradients_match_reference(kernel, jit, loss):
  x, _, trip, ref = _setup(5, dim=4)
  beta = np.random.default_rng(1).uniform(0.8, 1.6, len(ref.mask))
  beta = beta.astype(np.float32)
  objective, want = _grad_case(loss, trip, ref, x, beta, 0.5, jit, kernel)
  got = jax.grad(objective)(x)
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_reference_gradient_matches_finite_differences():
  """The oracle's chain rule, checked once by float64 central differences."""
  x, _, _, ref = _setup(6, dim=4)
  x = x.astype(np.float64)
  beta = 1.1

  def loss(e):
    d = reference.pairwise_distances(e)
    pos, neg = reference.margin_terms(d, ref, beta, margin=0.5)
    return W_POS * pos.sum() + W_NEG * neg.sum()

  derivs = reference.margin_distance_derivatives(
    reference.pairwise_distances(x),
    ref,
    beta,
    margin=0.5,
    wpos=W_POS,
    wneg=W_NEG,
  )
  want = reference.weighted_distance_gradient(
    x, reference.term_distance_weights(ref, derivs, len(x))
  )
  fd = np.zeros_like(x)
  h = 1e-6
  for idx in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[idx] += h
    down[idx] -= h
    fd[idx] = (loss(up) - loss(down)) / (2 * h)
  np.testing.assert_allclose(fd, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["all_identical", "duplicates"])
@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_gradients_finite_for_coincident_embeddings(kernel, jit, loss, case):
  x, labels, trip, ref = _setup(7)
  if case == "all_identical":  # a collapsed model: every distance is 0
    x = np.repeat(x[:1], len(x), axis=0)
  else:  # each image duplicated onto its class's first image
    for c in set(labels.tolist()):
      idx = np.flatnonzero(labels == c)
      x[idx] = x[idx[0]]
  beta = np.float32(1.2)
  objective, _ = _grad_case(loss, trip, ref, x, beta, 0.2, jit, kernel)
  value, grad = jax.value_and_grad(objective)(x)
  assert np.isfinite(value)
  assert np.all(np.isfinite(np.asarray(grad)))


# ----------------------------------------------------------------------------
# The beta gradient (Wu et al. Sec. 4).
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("margin", [0.2, 0.4])
def test_margin_loss_beta_gradient_per_term(kernel, jit, margin):
  x, _, trip, ref = _setup(8)
  d = _d32(x)
  beta = np.random.default_rng(2).uniform(0.6, 1.6, len(ref.mask))
  beta = beta.astype(np.float32)
  fn = kernel(losses.margin_loss, jit=jit, margin=margin)
  gpos = jax.grad(lambda b: jnp.sum(fn(d, trip, b)[0]))(beta)
  gneg = jax.grad(lambda b: jnp.sum(fn(d, trip, b)[1]))(beta)
  want_pos, want_neg = reference.margin_beta_gradients(
    d, ref, beta, margin=margin
  )
  np.testing.assert_array_equal(gpos, want_pos)
  np.testing.assert_array_equal(gneg, want_neg)
  # Both signs of -y 1{...} occur, and some terms are inactive.
  assert np.any(want_pos == -1) and np.any(want_neg == 1)
  assert np.any((want_pos == 0) & ref.mask) or np.any(
    (want_neg == 0) & ref.mask
  )


def test_margin_loss_scalar_beta_gradient_sums_terms(kernel):
  x, _, trip, ref = _setup(9)
  d = _d32(x)
  fn = kernel(losses.margin_loss)
  got = jax.grad(lambda b: sum(jnp.sum(v) for v in fn(d, trip, b)))(
    jnp.float32(1.1)
  )
  want_pos, want_neg = reference.margin_beta_gradients(d, ref, 1.1, margin=0.2)
  np.testing.assert_allclose(got, want_pos.sum() + want_neg.sum(), atol=1e-6)


# ----------------------------------------------------------------------------
# N-pair loss (DE-DSP eq. 9).
# ----------------------------------------------------------------------------


def _similarities(seed, n=6, dim=5, scale=1.0):
  rng = np.random.default_rng(seed)
  probes = reference.unit_rows(rng.normal(size=(n, dim)))
  gallery = reference.unit_rows(rng.normal(size=(n, dim)))
  return (scale * probes @ gallery.T).astype(np.float32)


@pytest.mark.parametrize("n", [1, 2, 6, 17])
def test_npair_loss_matches_eq9(kernel, jit, n):
  s = _similarities(n, n=n)
  got = kernel(losses.npair_loss, jit=jit)(s)
  assert got.shape == (n,)
  np.testing.assert_allclose(
    got, reference.npair_terms(s), rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize("scale", [0.5, 16.0])
def test_npair_loss_scale_multiplies_the_similarities(kernel, jit, scale):
  s = _similarities(4)
  got = kernel(functools.partial(losses.npair_loss, scale=scale), jit=jit)(s)
  np.testing.assert_allclose(
    got, reference.npair_terms(scale * s.astype(np.float64)), rtol=1e-5
  )


def test_npair_loss_large_logits_stay_finite_and_exact(kernel):
  # s_ij - s_ii up to ~200: exp overflows float32, log(1 + sum exp) does not.
  s = _similarities(3, scale=100.0)
  got = np.asarray(kernel(losses.npair_loss)(s))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(
    got, reference.npair_terms(s), rtol=1e-5, atol=1e-5
  )


def test_npair_loss_gradient_matches_reference(kernel, jit):
  s = _similarities(4)
  got = jax.grad(lambda v: jnp.sum(kernel(losses.npair_loss, jit=jit)(v)))(s)
  np.testing.assert_allclose(
    got, reference.npair_similarity_gradient(s), rtol=1e-5, atol=1e-6
  )
