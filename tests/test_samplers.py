"""dmljax.samplers: layout, invariants, random, hard and semi-hard negatives.

Wu et al. 2017 Sec. 3 (semi-hard). Batches are shuffled P x K batches with
non-contiguous labels: no sampler may assume contiguous class blocks.
"""

import jax
import numpy as np
import pytest
import reference
import sampler_cases as cases

from dmljax import samplers

# ----------------------------------------------------------------------------
# Layout and invariants shared by all samplers.
# ----------------------------------------------------------------------------


def test_samplers_dict_names():
  assert set(samplers.SAMPLERS) == set(cases.SAMPLER_FNS)
  for name, fn in samplers.SAMPLERS.items():
    assert callable(fn), name


def test_positive_pairs_match_reference(kernel, jit, pk_batch_large):
  _, labels = pk_batch_large
  a, p, m = kernel(samplers.positive_pairs, jit=jit, images_per_class=5)(labels)
  pairs = reference.positive_pairs(labels)
  assert np.asarray(a).dtype == np.int32 and a.shape == (len(pairs),)
  np.testing.assert_array_equal(a, [i for i, _ in pairs])
  np.testing.assert_array_equal(p, [j for _, j in pairs])
  assert np.all(np.asarray(m))


def _ragged_labels(seed):
  """K = 3 with class sizes 3, 2, 4, 1 and 2, shuffled: B = 12."""
  rng = np.random.default_rng(seed)
  labels = np.repeat([40, 7, 23, 11, 5], [3, 2, 4, 1, 2])
  return rng.permutation(labels).astype(np.int32)


def test_positive_pairs_ragged_batch(kernel, jit):
  labels = _ragged_labels(0)
  a, p, m = kernel(samplers.positive_pairs, jit=jit, images_per_class=3)(labels)
  slots = reference.positive_slots(labels, 3)
  assert a.shape == (len(labels) * 2,)
  np.testing.assert_array_equal(a, [s[0] for s in slots])
  np.testing.assert_array_equal(p, [s[1] for s in slots])
  np.testing.assert_array_equal(m, [s[2] for s in slots])


@pytest.mark.parametrize("num_negatives", [3])
@pytest.mark.parametrize("name", cases.SAMPLER_FNS)
def test_layout_and_invariants(
  kernel, key, pk_batch_large, name, num_negatives
):
  x, labels = pk_batch_large
  d = cases.distances_of(x)
  trip = cases.sample(
    kernel,
    name,
    key,
    d,
    labels,
    dim=16,
    images_per_class=5,
    num_negatives=num_negatives,
  )
  assert isinstance(trip, samplers.Triplets)
  usable = None
  if name == "distance_weighted":
    usable = reference.distance_weighted_usable(d, labels)
  cases.assert_triplets_valid(
    trip,
    labels,
    images_per_class=5,
    num_negatives=num_negatives,
    usable=usable,
  )
  if name != "distance_weighted":  # the others find a negative for every slot
    assert np.all(np.asarray(trip.mask))


@pytest.mark.parametrize("name", ["semihard", "distance_weighted"])
def test_samplers_without_jit(kernel, key, pk_batch, name):
  x, labels = pk_batch
  d = cases.distances_of(x)
  kw = dict(dim=5, images_per_class=3, num_negatives=2)
  if name == "distance_weighted":
    kw["method"] = "inverse_cdf"  # make_method's choice
  eager = cases.sample(kernel, name, key, d, labels, jit=False, **kw)
  cases.assert_triplets_valid(
    eager, labels, images_per_class=3, num_negatives=2
  )
  jitted = cases.sample(kernel, name, key, d, labels, **kw)
  if name in ("hard", "semihard"):
    ref = {
      "hard": reference.hard_triplets,
      "semihard": reference.semihard_triplets,
    }
    want = ref[name](d, labels, num_negatives=2)
    for u, v, w in zip(
      cases.as_numpy(eager), cases.as_numpy(jitted), want, strict=True
    ):
      np.testing.assert_array_equal(u, w)
      np.testing.assert_array_equal(v, w)


@pytest.mark.parametrize("name", cases.SAMPLER_FNS)
def test_single_class_batch_has_no_valid_triplet(kernel, key, name):
  # One class of 12 images with K = 3 (the property tests' shapes, so the
  # compiled samplers are shared): no negatives exist, so nothing is valid.
  labels = np.full(12, 17, np.int32)
  x = reference.pk_batch(7, 12, 1, 5)[0]
  trip = cases.sample(
    kernel,
    name,
    key,
    cases.distances_of(x),
    labels,
    dim=5,
    images_per_class=3,
    num_negatives=2,
  )
  a, _, n, m = cases.as_numpy(trip)
  assert not np.any(m)
  np.testing.assert_array_equal(n, a)


@pytest.mark.parametrize("name", cases.SAMPLER_FNS)
def test_ragged_batch_layout_and_invariants(kernel, key, name):
  """At most K per class: missing positive slots and extra images masked."""
  labels = _ragged_labels(1)
  x = reference.pk_batch(6, 12, 1, 5)[0]  # 12 distinct unit vectors
  d = cases.distances_of(x)
  kw = dict(dim=5, images_per_class=3, num_negatives=2)
  trip = cases.sample(kernel, name, key, d, labels, **kw)
  usable = None
  if name == "distance_weighted":
    usable = reference.distance_weighted_usable(d, labels)
  cases.assert_triplets_valid(
    trip, labels, images_per_class=3, num_negatives=2, usable=usable
  )
  if name in ("hard", "semihard"):
    ref = {
      "hard": reference.hard_triplets,
      "semihard": reference.semihard_triplets,
    }
    want = ref[name](d, labels, num_negatives=2, images_per_class=3)
    for g, w in zip(cases.as_numpy(trip), want, strict=True):
      np.testing.assert_array_equal(g, w)


BAD_SHAPES = {
  "distances_not_square": lambda d, y: (d[:, :-1], y, 4, 1),
  "labels_wrong_length": lambda d, y: (d, y[:-1], 4, 1),
  "labels_2d": lambda d, y: (d, y[:, None], 4, 1),
  "images_per_class_1": lambda d, y: (d, y, 1, 1),
  "num_negatives_zero": lambda d, y: (d, y, 4, 0),
}


@pytest.mark.parametrize("case", BAD_SHAPES.values(), ids=BAD_SHAPES.keys())
@pytest.mark.parametrize("name", cases.SAMPLER_FNS)
def test_bad_shapes_raise_value_error(key, name, case):
  x, labels = reference.pk_batch(4, 3, 4, 5)
  d, y, k, nn = case(cases.distances_of(x), labels)
  kw = dict(images_per_class=k, num_negatives=nn)
  if name == "distance_weighted":
    kw["dim"] = 5
  with pytest.raises(ValueError):
    cases.SAMPLER_FNS[name](key, d, y, **kw)


# ----------------------------------------------------------------------------
# Random sampling.
# ----------------------------------------------------------------------------


def test_random_sampling_is_uniform_over_negatives(kernel, pk_batch):
  x, labels = pk_batch
  trip = cases.sample(
    kernel,
    "random",
    jax.random.key(1),
    cases.distances_of(x),
    labels,
    images_per_class=3,
    num_negatives=1000,
  )
  a, _, n, m = cases.as_numpy(trip)
  assert np.all(m)
  uniform = reference.negative_mask(labels).astype(float)
  pvalue = cases.chisquare_rows(
    cases.draw_counts(a, n, m, len(labels)), uniform
  )
  assert pvalue > 1e-3


# ----------------------------------------------------------------------------
# Hard and semi-hard sampling.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("num_negatives", [1, 2, 5])
def test_hard_sampling_matches_reference(kernel, key, num_negatives):
  x, labels = reference.pk_batch(5, 5, 3, 4)
  d = cases.distances_of(x)
  got = cases.sample(
    kernel,
    "hard",
    key,
    d,
    labels,
    images_per_class=3,
    num_negatives=num_negatives,
  )
  want = reference.hard_triplets(d, labels, num_negatives=num_negatives)
  for g, w in zip(cases.as_numpy(got), want, strict=True):
    np.testing.assert_array_equal(g, w)


def test_hard_sampling_breaks_ties_to_lower_index(kernel, key):
  labels = np.array([0, 0, 1, 1, 2, 2], np.int32)
  d = np.full((6, 6), 1.0, np.float32)
  np.fill_diagonal(d, 0.0)
  d[0, 2:] = d[2:, 0] = [0.7, 0.5, 0.5, 0.7]
  got = cases.sample(
    kernel, "hard", key, d, labels, images_per_class=2, num_negatives=4
  )
  np.testing.assert_array_equal(np.asarray(got.negatives)[:4], [3, 4, 2, 5])
  want = reference.hard_triplets(d, labels, num_negatives=4)
  np.testing.assert_array_equal(got.negatives, want.negatives)


def test_hard_sampling_masks_slots_beyond_the_negatives(kernel, key, pk_batch):
  x, labels = pk_batch  # 12 images, 9 negatives per anchor
  d = cases.distances_of(x)
  got = cases.sample(
    kernel, "hard", key, d, labels, images_per_class=3, num_negatives=10
  )
  want = reference.hard_triplets(d, labels, num_negatives=10)
  for g, w in zip(cases.as_numpy(got), want, strict=True):
    np.testing.assert_array_equal(g, w)
  assert not np.any(np.asarray(got.mask)[9::10])


SEMIHARD = {
  "farthest_nn1": dict(fallback="farthest", num_negatives=1),
  "farthest_nn3": dict(fallback="farthest", num_negatives=3),
  "nearest_nn3": dict(fallback="nearest", num_negatives=3),
  "drop_nn3": dict(fallback="drop", num_negatives=3),
  "lb05_farthest_nn9": dict(
    fallback="farthest", num_negatives=9, lower_bound=0.5
  ),
  "lb05_nearest_nn9": dict(
    fallback="nearest", num_negatives=9, lower_bound=0.5
  ),
  "lb05_drop_nn9": dict(fallback="drop", num_negatives=9, lower_bound=0.5),
  "lb05_drop_nn1": dict(fallback="drop", num_negatives=1, lower_bound=0.5),
}


@pytest.mark.parametrize("kw", SEMIHARD.values(), ids=SEMIHARD.keys())
def test_semihard_sampling_matches_reference(kernel, key, kw):
  x, labels = reference.pk_batch(2, 4, 3, 3)  # 3-D: distances spread widely
  d = cases.distances_of(x)
  if kw["num_negatives"] > 1:  # the case must exercise the fallback
    assert (
      reference.semihard_fallback_count(
        d,
        labels,
        num_negatives=kw["num_negatives"],
        lower_bound=kw.get("lower_bound"),
      )
      > 0
    )
  got = cases.sample(
    kernel, "semihard", key, d, labels, images_per_class=3, **kw
  )
  want = reference.semihard_triplets(d, labels, **kw)
  for g, w in zip(cases.as_numpy(got), want, strict=True):
    np.testing.assert_array_equal(g, w)
  cases.assert_triplets_valid(
    got, labels, images_per_class=3, num_negatives=kw["num_negatives"]
  )


def test_semihard_unknown_fallback_raises(key, pk_batch):
  x, labels = pk_batch
  with pytest.raises(ValueError, match="fallback|farthest"):
    samplers.semihard_sampling(
      key, cases.distances_of(x), labels, images_per_class=3, fallback="hardest"
    )
