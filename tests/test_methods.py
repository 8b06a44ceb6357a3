"""dmljax.methods.make_method: sampler x loss, composed end to end."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

from dmljax import beta as beta_lib
from dmljax import methods

SAMPLERS = ["random", "hard", "semihard", "distance_weighted"]
LOSSES = ["margin", "contrastive", "triplet_l2", "triplet_l2sq"]
AUX_KEYS = {
  "num_tuples",
  "num_active_terms",
  "fraction_nonzero",
  "mean_positive_distance",
  "mean_negative_distance",
}
NUM_CLASSES, K = 4, 3


def _batch(seed, dim=12, num_classes=NUM_CLASSES, images_per_class=K):
  """Shuffled, loosely clustered P x K batch; labels in [0, P) (they index
  beta['class'])."""
  x, labels = reference.pk_batch(
    seed, num_classes, images_per_class, dim, spread=0.8
  )
  classes = sorted(set(labels.tolist()))
  rank = dict(
    zip(
      classes,
      np.random.default_rng(seed).permutation(len(classes)),
      strict=True,
    )
  )
  return x, np.array([rank[v] for v in labels], np.int32)


def _orthogonal_batch(seed, radius=0.9, block=3):
  """Class c lives in its own coordinate block, all points of norm radius.

  Every negative distance is radius * sqrt(2) (1.27 < 1.4), positives vary:
  the loss value does not depend on which negatives a stochastic sampler
  draws, so it can be checked against the reference composition. 4 classes
  x 3 coordinates: the same [12, 12] shape as _batch.
  """
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.repeat(np.arange(NUM_CLASSES), K))
  x = np.zeros((len(labels), NUM_CLASSES * block))
  for i, c in enumerate(labels):
    v = reference.unit_rows(rng.normal(size=(1, block)))[0]
    x[i, c * block : (c + 1) * block] = radius * v
  return x.astype(np.float32), labels.astype(np.int32)


def _beta(seed):
  rng = np.random.default_rng(seed)
  beta = beta_lib.init_beta(num_classes=NUM_CLASSES, num_images=NUM_CLASSES * K)
  beta = dict(beta)
  beta["class"] = jnp.asarray(rng.uniform(-0.2, 0.2, NUM_CLASSES), jnp.float32)
  beta["image"] = jnp.asarray(
    rng.uniform(-0.1, 0.1, NUM_CLASSES * K), jnp.float32
  )
  return beta


def _reference_method(
  x, labels, triplets, *, loss, margin, nu=0.0, beta=None, image_ids=None
):
  """The pieces by hand: distances, terms, nu-penalty, nonzero_mean."""
  d = reference.pairwise_distances(x)
  a, p, n, m = triplets
  extra = 0.0
  if loss == "margin":
    b = np.full(len(a), float(beta["beta0"]))
    b = b + np.asarray(beta["class"], np.float64)[labels[a]]
    b = b + np.asarray(beta["image"], np.float64)[image_ids[a]]
    terms = reference.margin_terms(d, triplets, b, margin=margin)
    extra = nu * float(np.sum(b * m))
  elif loss == "contrastive":
    terms = reference.contrastive_terms(d, triplets, margin=margin)
  else:
    terms = (
      reference.triplet_terms(
        d, triplets, margin=margin, squared=loss == "triplet_l2sq"
      ),
    )
  value = reference.nonzero_mean(*terms, mask=m, extra=extra)
  aux = {
    "num_tuples": int(np.sum(m)),
    "num_active_terms": reference.active_term_count(*terms, mask=m),
    "mean_positive_distance": reference.masked_mean(d[a, p], m),
    "mean_negative_distance": reference.masked_mean(d[a, n], m),
    "num_term_kinds": len(terms),
  }
  return value, aux


def _check_against_reference(loss_value, aux, want, want_aux):
  np.testing.assert_allclose(loss_value, want, rtol=1e-5, atol=1e-6)
  assert int(aux["num_tuples"]) == want_aux["num_tuples"]
  assert int(aux["num_active_terms"]) == want_aux["num_active_terms"]
  for key in ("mean_positive_distance", "mean_negative_distance"):
    np.testing.assert_allclose(aux[key], want_aux[key], rtol=1e-5, atol=1e-6)
  frac = want_aux["num_active_terms"] / (
    want_aux["num_term_kinds"] * want_aux["num_tuples"]
  )
  np.testing.assert_allclose(aux["fraction_nonzero"], frac, rtol=1e-5)


MARGIN, NU, NN = 0.2, 0.02, 2


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_with_every_loss(sampler, loss):
  """Builds, jits, differentiates; equals the reference composition.

  One compiled step serves three batches: a spread batch (composition
  checked for the deterministic samplers), a collapsed batch (every distance
  0: finite loss and gradients) and the orthogonal batch (composition
  checked for every sampler).
  """
  fn = methods.make_method(
    sampler=sampler,
    loss=loss,
    images_per_class=K,
    num_negatives=NN,
    margin=MARGIN,
    nu=NU,
  )
  ids = np.random.default_rng(0).permutation(NUM_CLASSES * K).astype(np.int32)
  beta = _beta(1) if loss == "margin" else None

  def objective(e, labels, b, image_ids):
    return fn(jax.random.key(0), e, labels, b, image_ids)

  grad_fn = jax.value_and_grad(objective, argnums=(0, 2), has_aux=True)
  compiled = jax.jit(grad_fn)

  def step(e, lab, b):
    return compiled(e, lab, b, ids if b is not None else None)

  x, labels = _batch(0)
  ortho, ortho_labels = _orthogonal_batch(5)
  collapsed = np.repeat(x[:1], len(x), axis=0)
  for e, lab in ((x, labels), (collapsed, labels), (ortho, ortho_labels)):
    (value, aux), (grad_e, grad_b) = step(e, lab, beta)
    assert value.shape == () and np.isfinite(value)
    assert AUX_KEYS <= set(aux)
    for key in AUX_KEYS:
      assert np.all(np.isfinite(np.asarray(aux[key]))), key
    assert 0.0 <= float(aux["fraction_nonzero"]) <= 1.0
    assert np.all(np.isfinite(np.asarray(grad_e)))
    for part in jax.tree_util.tree_leaves(grad_b):
      assert np.all(np.isfinite(np.asarray(part)))

  # Not a constant: the loss of the spread batch responds to the embeddings.
  (value, aux), (grad_e, _) = step(x, labels, beta)
  assert float(value) > 0.0 and np.abs(np.asarray(grad_e)).max() > 0.0
  if sampler in ("hard", "semihard"):
    ref_sampler = {
      "hard": reference.hard_triplets,
      "semihard": reference.semihard_triplets,
    }[sampler]
    trip = ref_sampler(
      reference.pairwise_distances(x), labels, num_negatives=NN
    )
    want, want_aux = _reference_method(
      x, labels, trip, loss=loss, margin=MARGIN, nu=NU, beta=beta, image_ids=ids
    )
    assert want_aux["num_active_terms"] > 0
    _check_against_reference(value, aux, want, want_aux)

  # Orthogonal batch: any negative gives the same value; the reference takes
  # the hard one.
  trip = reference.hard_triplets(
    reference.pairwise_distances(ortho), ortho_labels, num_negatives=NN
  )
  want, want_aux = _reference_method(
    ortho,
    ortho_labels,
    trip,
    loss=loss,
    margin=MARGIN,
    nu=NU,
    beta=beta,
    image_ids=ids,
  )
  np.testing.assert_allclose(
    want_aux["mean_negative_distance"], 0.9 * np.sqrt(2), rtol=1e-6
  )
  (value, aux), _ = step(ortho, ortho_labels, beta)
  _check_against_reference(value, aux, want, want_aux)


def test_numpy_inputs_closed_over_inside_jit():
  """Array-likes (NumPy labels, ids) work as trace-time constants too."""
  fn = methods.make_method(sampler="hard", images_per_class=K)
  x, labels = _batch(12)
  ids = np.arange(len(labels), dtype=np.int32)
  beta = _beta(13)
  value, _ = jax.jit(lambda e: fn(jax.random.key(0), e, labels, beta, ids))(x)
  want, _ = jax.jit(fn)(jax.random.key(0), x, labels, beta, ids)
  np.testing.assert_allclose(value, want, rtol=1e-6)


def test_method_beta_none_and_eager():
  # Distance weighted + margin (the defaults), eagerly and jitted.
  fn = methods.make_method(images_per_class=K, num_negatives=2)
  x, labels = _batch(2, dim=5)
  value, aux = fn(jax.random.key(1), x, labels)  # no jit, beta=None
  assert np.isfinite(value) and AUX_KEYS <= set(aux)
  jvalue, _ = jax.jit(fn)(jax.random.key(1), x, labels)
  np.testing.assert_allclose(value, jvalue, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", LOSSES)
def test_semihard_with_sampler_kwargs_equals_reference_composition(loss):
  kw = {"lower_bound": 1.5, "fallback": "drop"}  # high: some slots drop
  fn = methods.make_method(
    sampler="semihard",
    loss=loss,
    images_per_class=K,
    num_negatives=NN,
    margin=MARGIN,
    nu=NU,
    sampler_kwargs=kw,
  )
  x, labels = _batch(3, dim=3)  # 3-D: some negatives closer than 0.5
  ids = np.random.default_rng(0).permutation(len(labels)).astype(np.int32)
  beta = _beta(4) if loss == "margin" else None
  value, aux = jax.jit(fn)(
    jax.random.key(0), x, labels, beta, ids if beta is not None else None
  )
  trip = reference.semihard_triplets(
    reference.pairwise_distances(x), labels, num_negatives=NN, **kw
  )
  assert not np.all(trip.mask)  # "drop" is exercised
  want, want_aux = _reference_method(
    x, labels, trip, loss=loss, margin=MARGIN, nu=NU, beta=beta, image_ids=ids
  )
  _check_against_reference(value, aux, want, want_aux)


# ----------------------------------------------------------------------------
# N-pair.
# ----------------------------------------------------------------------------


def _npair_choices(x, labels, scale=1.0):
  """eq. 9 mean over classes, for every (probe, gallery) choice per class."""
  classes = sorted(set(labels.tolist()))
  per_class = [
    [
      (i, j)
      for i in np.flatnonzero(labels == c)
      for j in np.flatnonzero(labels == c)
      if i != j
    ]
    for c in classes
  ]
  x = np.asarray(x, np.float64)
  values = []
  for combo in itertools.product(*per_class):
    probes = x[[i for i, _ in combo]]
    gallery = x[[j for _, j in combo]]
    values.append(reference.npair_terms(scale * probes @ gallery.T).mean())
  return np.array(values)


_NPAIR = methods.make_method(loss="npair", images_per_class=K)
_NPAIR_STEP = jax.jit(
  jax.value_and_grad(
    lambda k, e, lab: _NPAIR(k, e, lab), argnums=1, has_aux=True
  )
)


def test_npair_method_value_is_eq9_for_some_probe_gallery_choice():
  x, labels = _batch(7, dim=4, num_classes=3)
  choices = _npair_choices(x, labels)
  seen = set()
  for seed in range(4):
    (value, aux), grad = _NPAIR_STEP(jax.random.key(seed), x, labels)
    assert value.shape == () and isinstance(aux, dict)
    assert np.all(np.isfinite(np.asarray(grad)))
    gap = np.abs(choices - float(value))
    assert gap.min() < 1e-5, (float(value), choices.min(), choices.max())
    seen.add(int(np.argmin(gap)))
  assert len(seen) > 1  # the choice is random, not fixed


def test_npair_scale_multiplies_the_similarities():
  x, labels = _batch(7, dim=4, num_classes=3)
  choices = _npair_choices(x, labels, scale=16.0)
  method = methods.make_method(loss="npair", images_per_class=K, npair_scale=16)
  value, _ = method(jax.random.key(0), x, labels)
  assert np.abs(choices - float(value)).min() < 1e-4 * max(1.0, float(value))


def test_npair_method_deterministic_when_classes_collapse():
  rng = np.random.default_rng(8)
  centres = rng.normal(size=(3, 4)).astype(np.float32)
  labels = rng.permutation(np.repeat(np.arange(3), K)).astype(np.int32)
  x = centres[labels]
  (value, _), grad = _NPAIR_STEP(jax.random.key(0), x, labels)
  s = centres.astype(np.float64) @ centres.T.astype(np.float64)
  np.testing.assert_allclose(
    value, reference.npair_terms(s).mean(), rtol=1e-5, atol=1e-6
  )
  assert np.all(np.isfinite(np.asarray(grad)))


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
  "kwargs,valid",
  [
    ({"sampler": "hardest"}, "distance_weighted"),
    ({"loss": "arcface"}, "contrastive"),
    ({"reduction": "median"}, "nonzero"),
  ],
  ids=["sampler", "loss", "reduction"],
)
def test_unknown_names_raise_value_error_listing_valid_names(kwargs, valid):
  with pytest.raises(ValueError, match=valid):
    fn = methods.make_method(images_per_class=K, **kwargs)
    x, labels = _batch(9)
    fn(jax.random.key(0), x, labels)


def test_npair_batch_not_multiple_of_images_per_class_raises():
  fn = methods.make_method(loss="npair", images_per_class=5)
  x, labels = _batch(10)  # 12 images
  with pytest.raises(ValueError):
    fn(jax.random.key(0), x, labels)


@pytest.mark.parametrize("sampler", ["hard", "distance_weighted"])
def test_ragged_batch_with_at_most_k_per_class(sampler):
  """B need not be a multiple of K: classes of 3 images with K = 5."""
  fn = methods.make_method(sampler=sampler, images_per_class=5)
  x, labels = _batch(10)  # 4 classes x 3 images
  value, aux = jax.jit(fn)(jax.random.key(0), x, labels)
  assert np.isfinite(value) and float(value) > 0.0
  # Slots: 12 anchors x 4; only 2 of each anchor's 4 have a positive.
  assert int(aux["num_tuples"]) <= 12 * 2


def test_labels_length_mismatch_raises():
  fn = methods.make_method(images_per_class=K)
  x, labels = _batch(11)
  with pytest.raises(ValueError):
    fn(jax.random.key(0), x, labels[:-K])


def test_npair_refuses_a_sampler_it_would_ignore():
  with pytest.raises(ValueError, match="cannot use the sampler 'semihard'"):
    methods.make_method(loss="npair", sampler="semihard")
