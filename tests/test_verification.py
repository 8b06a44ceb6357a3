"""LFW-style k-fold verification accuracy against a float64 loop.

The oracle follows the protocol's words: for each held-out fold, try every
threshold between two distinct training distances (and below / above them
all), keep the first with the best training accuracy, score the fold.
"""

import jax
import numpy as np
import pytest

from dmljax import metrics
from dmljax.metrics import verification


def ref_verification(distances, is_same, num_folds):
  distances = np.asarray(distances, np.float64)
  is_same = np.asarray(is_same, bool)
  n = len(distances)
  folds = np.array([p * num_folds // n for p in range(n)])
  accuracies, thresholds = [], []
  for f in range(num_folds):
    train, test = folds != f, folds == f
    values = np.unique(distances[train])
    candidates = [-np.inf, *((values[1:] + values[:-1]) / 2), np.inf]
    scores = [
      np.mean((distances[train] < t) == is_same[train]) for t in candidates
    ]
    t = candidates[int(np.argmax(scores))]  # first best: smallest t
    thresholds.append(t)
    accuracies.append(np.mean((distances[test] < t) == is_same[test]))
  return np.array(accuracies), np.array(thresholds)


def lfw_like(seed, num_pairs=600, decimals=None):
  """Matched pairs closer on average; `decimals` rounds to force ties."""
  rng = np.random.default_rng(seed)
  is_same = rng.permutation(np.arange(num_pairs) % 2 == 0)
  distances = np.where(is_same, 0.9, 1.3) + 0.25 * rng.normal(size=num_pairs)
  distances = np.abs(distances)
  if decimals is not None:
    distances = np.round(distances, decimals)
  return distances.astype(np.float32), is_same


CASES = {
  "continuous": lambda: lfw_like(0),
  "ties": lambda: lfw_like(1, decimals=1),
  "heavy_ties": lambda: lfw_like(2, num_pairs=97, decimals=0),
  "separable": lambda: (
    np.array([0.1, 0.9, 0.2, 0.8, 0.3, 1.1, 0.15, 1.0] * 5, np.float32),
    np.array([True, False] * 20),
  ),
  "all_same": lambda: (
    np.linspace(0, 1, 40, dtype=np.float32),
    np.ones(40, bool),
  ),
}


@pytest.mark.parametrize("num_folds", [2, 10])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_verification_matches_reference(kernel, case, num_folds):
  distances, is_same = case()
  fn = kernel(metrics.verification_accuracy, num_folds=num_folds)
  got = fn(distances, is_same)
  want_acc, want_t = ref_verification(distances, is_same, num_folds)
  np.testing.assert_allclose(got["fold_accuracies"], want_acc, atol=1e-6)
  np.testing.assert_allclose(got["thresholds"], want_t, rtol=1e-6)
  np.testing.assert_allclose(got["accuracy"], want_acc.mean(), atol=1e-6)
  np.testing.assert_allclose(got["std"], want_acc.std(), atol=1e-6)


def test_lfw_protocol_shape_on_embeddings(kernel):
  """6,000 pairs of 128-D unit embeddings, ten folds of 600."""
  rng = np.random.default_rng(3)
  a = rng.normal(size=(6000, 128))
  is_same = np.arange(6000) % 600 < 300  # 300 matched per fold, as in LFW
  b = np.where(is_same[:, None], a + 4.0 * rng.normal(size=a.shape), 0)
  b = np.where(is_same[:, None], b, rng.normal(size=a.shape))
  a /= np.linalg.norm(a, axis=1, keepdims=True)
  b /= np.linalg.norm(b, axis=1, keepdims=True)
  distances = np.linalg.norm(a - b, axis=1).astype(np.float32)
  got = kernel(metrics.verification_accuracy, num_folds=10)(distances, is_same)
  want_acc, _ = ref_verification(distances, is_same, 10)
  assert got["fold_accuracies"].shape == (10,)
  np.testing.assert_allclose(got["fold_accuracies"], want_acc, atol=1e-6)
  assert 0.5 < float(got["accuracy"]) < 1.0


def test_eager_matches_jit(kernel):
  distances, is_same = lfw_like(4, num_pairs=120, decimals=1)
  jitted = kernel(metrics.verification_accuracy, num_folds=10)
  eager = kernel(metrics.verification_accuracy, jit=False, num_folds=10)
  jax.tree.map(
    np.testing.assert_array_equal,
    jitted(distances, is_same),
    eager(distances, is_same),
  )


def test_fold_ids_are_contiguous_and_balanced():
  ids = np.asarray(verification.fold_ids(6000, 10))
  np.testing.assert_array_equal(ids, np.repeat(np.arange(10), 600))
  counts = np.bincount(np.asarray(verification.fold_ids(97, 10)))
  assert counts.max() - counts.min() <= 1 and counts.sum() == 97


D4 = np.array([0.1, 0.5, 0.2, 0.9], np.float32)
S4 = np.array([True, False, True, False])
BAD = {
  "distances_rank": (
    lambda: metrics.verification_accuracy(D4[None], S4),
    "floating vector",
  ),
  "int_distances": (
    lambda: metrics.verification_accuracy(np.arange(4), S4),
    "floating",
  ),
  "same_not_bool": (
    lambda: metrics.verification_accuracy(D4, S4.astype(int)),
    "bool",
  ),
  "same_length": (lambda: metrics.verification_accuracy(D4, S4[:3]), "bool"),
  "one_fold": (
    lambda: metrics.verification_accuracy(D4, S4, num_folds=1),
    "between 2 and",
  ),
  "more_folds_than_pairs": (
    lambda: metrics.verification_accuracy(D4, S4, num_folds=5),
    "between 2 and the number of pairs 4",
  ),
  "nan": (
    lambda: metrics.verification_accuracy(D4 * np.nan, S4, num_folds=2),
    "NaN",
  ),
}


@pytest.mark.parametrize("call,message", BAD.values(), ids=BAD.keys())
def test_bad_input_raises_value_error(call, message):
  with pytest.raises(ValueError, match=message):
    call()
