"""Hypothesis properties of samplers: validity, equivariance, relabelling."""

import jax
import numpy as np
import pytest
import reference
import sampler_cases as cases
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from dmljax import samplers

# ----------------------------------------------------------------------------
# Properties (hypothesis): fixed shapes, 4 classes x 3 images in 5-D.
# ----------------------------------------------------------------------------

PROP_K, PROP_CLASSES, PROP_DIM = 3, 4, 5

PROP_CONFIGS = {
  "random": ("random", {}),
  "hard": ("hard", {}),
  "hard_more_slots_than_negatives": ("hard", {"num_negatives": 10}),
  "semihard_farthest": ("semihard", {}),
  "semihard_nearest_lb": (
    "semihard",
    {"fallback": "nearest", "lower_bound": 0.5},
  ),
  "semihard_drop": ("semihard", {"fallback": "drop"}),
  "dw_categorical": ("distance_weighted", {"method": "categorical"}),
  "dw_inverse_cdf": ("distance_weighted", {"method": "inverse_cdf"}),
  "dw_cutoff_1": ("distance_weighted", {"nonzero_loss_cutoff": 1.0}),
}


def _prop_batch(seed, quantise=False):
  x, labels = reference.pk_batch(seed, PROP_CLASSES, PROP_K, PROP_DIM)
  if quantise:  # coarse coordinates: ties and duplicate embeddings
    x = np.round(x, 1)
  return x, cases.distances_of(x), labels


def _prop_sample(kernel, config, seed, d, labels):
  name, kw = PROP_CONFIGS[config]
  kw = {"num_negatives": 2, **kw}
  return cases.sample(
    kernel,
    name,
    jax.random.key(seed),
    d,
    labels,
    dim=PROP_DIM,
    images_per_class=PROP_K,
    **kw,
  ), kw


@pytest.mark.parametrize("config", PROP_CONFIGS)
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), quantise=st.booleans())
def test_property_valid_triplets_are_valid(kernel, config, seed, quantise):
  _, d, labels = _prop_batch(seed, quantise)
  trip, kw = _prop_sample(kernel, config, seed, d, labels)
  a, p, n, m = cases.as_numpy(trip)
  name = PROP_CONFIGS[config][0]
  usable = None
  if name == "distance_weighted":
    usable = reference.distance_weighted_usable(
      d, labels, nonzero_loss_cutoff=kw.get("nonzero_loss_cutoff", 1.4)
    )
  cases.assert_triplets_valid(
    trip,
    labels,
    images_per_class=PROP_K,
    num_negatives=kw["num_negatives"],
    usable=usable,
  )
  if config == "semihard_drop":  # only genuine semi-hard negatives are valid
    assert np.all(d[a[m], n[m]] > d[a[m], p[m]])


def _as_dict(triplets, nn, index=None):
  a, p, n, m = cases.as_numpy(triplets)
  index = np.arange(len(a)) if index is None else index
  r = np.arange(len(a)) % nn
  return {
    (int(index[a[t]]), int(index[p[t]]), int(r[t])): (
      int(index[n[t]]) if m[t] else None
    )
    for t in range(len(a))
  }


DETERMINISTIC = [
  "hard",
  "semihard_farthest",
  "semihard_nearest_lb",
  "semihard_drop",
]


@pytest.mark.parametrize("config", DETERMINISTIC)
@settings(max_examples=25, deadline=None)
@given(
  seed=st.integers(0, 2**31 - 1),
  perm=st.permutations(range(PROP_CLASSES * PROP_K)),
)
def test_property_permutation_equivariance(kernel, config, seed, perm):
  _, d, labels = _prop_batch(seed)
  perm = np.asarray(perm)
  trip, kw = _prop_sample(kernel, config, seed, d, labels)
  ptrip, _ = _prop_sample(kernel, config, seed, d[perm][:, perm], labels[perm])
  nn = kw["num_negatives"]
  assert _as_dict(ptrip, nn, index=perm) == _as_dict(trip, nn)


@settings(max_examples=25, deadline=None)
@given(
  seed=st.integers(0, 2**31 - 1),
  perm=st.permutations(range(PROP_CLASSES * PROP_K)),
)
def test_property_dw_log_probabilities_permute(kernel, seed, perm):
  _, d, labels = _prop_batch(seed)
  perm = np.asarray(perm)
  f = kernel(samplers.distance_weighted_log_probabilities, dim=PROP_DIM)
  logp = np.asarray(f(d, labels))
  plogp = np.asarray(f(d[perm][:, perm], labels[perm]))
  np.testing.assert_allclose(plogp, logp[perm][:, perm], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", DETERMINISTIC)
@settings(max_examples=25, deadline=None)
@given(
  seed=st.integers(0, 2**31 - 1),
  ids=st.lists(
    st.integers(0, 10**6),
    min_size=PROP_CLASSES,
    max_size=PROP_CLASSES,
    unique=True,
  ),
)
def test_property_relabelling_invariance(kernel, config, seed, ids):
  _, d, labels = _prop_batch(seed)
  classes = sorted(set(labels.tolist()))
  new = np.array([ids[classes.index(v)] for v in labels], np.int32)
  trip, _ = _prop_sample(kernel, config, seed, d, labels)
  rtrip, _ = _prop_sample(kernel, config, seed, d, new)
  for u, v in zip(cases.as_numpy(trip), cases.as_numpy(rtrip), strict=True):
    np.testing.assert_array_equal(u, v)
  f = kernel(samplers.distance_weighted_log_probabilities, dim=PROP_DIM)
  np.testing.assert_array_equal(f(d, labels), f(d, new))
