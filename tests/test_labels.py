"""dmljax.labels: masks, class groups and the P x K batch checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from jax.experimental import checkify

from dmljax import labels as labels_lib


def _labels(seed, num_classes, images_per_class):
  return reference.pk_batch(seed, num_classes, images_per_class, 2)[1]


def test_same_label_mask_matches_reference(kernel, jit):
  labels = _labels(0, 4, 3)
  other = np.array([labels[0], 999_999, labels[5], labels[5]], np.int32)
  f = kernel(labels_lib.same_label_mask, jit=jit)
  got = f(labels)
  assert got.dtype == jnp.bool_ and got.shape == (12, 12)
  np.testing.assert_array_equal(got, reference.same_label_mask(labels))
  got = f(labels, other)
  assert got.shape == (12, 4)
  np.testing.assert_array_equal(got, reference.same_label_mask(labels, other))


def test_positive_and_negative_masks_match_reference(kernel, jit):
  labels = _labels(1, 5, 4)
  pos = kernel(labels_lib.positive_mask, jit=jit)(labels)
  neg = kernel(labels_lib.negative_mask, jit=jit)(labels)
  assert pos.dtype == jnp.bool_ and neg.dtype == jnp.bool_
  np.testing.assert_array_equal(pos, reference.positive_mask(labels))
  np.testing.assert_array_equal(neg, reference.negative_mask(labels))
  assert not np.any(np.diag(np.asarray(pos)))


@pytest.mark.parametrize(
  "num_classes,images_per_class", [(4, 3), (1, 2), (6, 5)], ids=str
)
def test_class_groups_match_reference(
  kernel, jit, num_classes, images_per_class
):
  labels = _labels(2, num_classes, images_per_class)
  got = kernel(
    labels_lib.class_groups, jit=jit, images_per_class=images_per_class
  )(labels)
  assert got.dtype == jnp.int32 and got.shape == (num_classes, images_per_class)
  np.testing.assert_array_equal(got, reference.class_groups(labels))


def ref_sorted_classes(labels):
  """(order, start, count) by loops: each class's run in the stable sort."""
  labels = np.asarray(labels)
  order = sorted(range(len(labels)), key=lambda i: labels[i])  # stable
  sorted_labels = [labels[i] for i in order]
  start = [sorted_labels.index(label) for label in labels]
  count = [sorted_labels.count(label) for label in labels]
  return order, start, count


SORTED_CLASSES = {
  "pk_shuffled": _labels(5, 4, 3),
  "uneven_runs": np.array([9, -2, 9, 4, 4, 9, -2, 7], np.int32),
  "one_class": np.full(5, 3, np.int32),
  "all_singletons": np.array([4, 1, 3, 0], np.int32),
  "one_point": np.array([6], np.int32),
}


@pytest.mark.parametrize(
  "labels", SORTED_CLASSES.values(), ids=SORTED_CLASSES.keys()
)
def test_sorted_classes_match_reference(kernel, jit, labels):
  got = kernel(labels_lib.sorted_classes, jit=jit)(labels)
  for array in got:
    assert array.dtype == jnp.int32 and array.shape == labels.shape
  for got_array, want in zip(got, ref_sorted_classes(labels), strict=True):
    np.testing.assert_array_equal(got_array, want)


def test_check_pk_batch_accepts_valid_batch():
  labels = _labels(3, 4, 3)
  assert labels_lib.check_pk_batch(labels, images_per_class=3) is None


BAD_BATCHES = {
  "not_multiple_of_k": (
    np.array([0, 0, 0, 1, 1, 1, 2], np.int32),
    3,
    r"(?i)multiple|divisible",
  ),
  "class_with_one_image": (
    np.array([0, 0, 1, 2, 2, 2], np.int32),
    2,
    r"(?i)(one|single|1) image",
  ),
  "wrong_counts": (
    np.array([5, 5, 5, 7], np.int32),
    2,
    r"(?i)exactly|images_per_class",
  ),
  "float_labels": (np.array([0.0, 0.0, 1.0, 1.0]), 2, r"(?i)integer"),
  "2d_labels": (
    np.zeros((2, 2), np.int32),
    2,
    r"(?i)1-d|1d|one-dim|ndim|shape",
  ),
}


@pytest.mark.parametrize(
  "labels,k,match", BAD_BATCHES.values(), ids=BAD_BATCHES.keys()
)
def test_check_pk_batch_errors(labels, k, match):
  with pytest.raises(ValueError, match=match):
    labels_lib.check_pk_batch(labels, images_per_class=k)


def _checked(images_per_class):
  def fn(embeddings, labels):
    labels_lib.pk_batch_checks(
      embeddings, labels, images_per_class=images_per_class
    )
    return jnp.sum(embeddings)

  return jax.jit(checkify.checkify(fn))


def test_pk_batch_checks_pass_on_valid_batch():
  embeddings, labels = reference.pk_batch(4, 4, 3, 5)
  err, out = _checked(3)(embeddings, labels)
  err.throw()
  np.testing.assert_allclose(out, embeddings.sum(), rtol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=str)
def test_pk_batch_checks_catch_non_finite_embeddings(bad):
  embeddings, labels = reference.pk_batch(5, 4, 3, 5)
  embeddings[7, 2] = bad
  err, _ = _checked(3)(embeddings, labels)
  with pytest.raises(checkify.JaxRuntimeError, match="NaN or inf"):
    err.throw()


def test_pk_batch_checks_catch_bad_layout():
  embeddings = np.zeros((6, 3), np.float32)
  labels = np.array([0, 0, 1, 2, 2, 2], np.int32)  # counts 2, 1, 3 for K=2
  err, _ = _checked(2)(embeddings, labels)
  with pytest.raises(checkify.JaxRuntimeError, match="images_per_class"):
    err.throw()
