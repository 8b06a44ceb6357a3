"""Label masks and the P×K batch layout.

Shape letters: B batch, M other batch, P classes × K images per class
(B = P·K).

Every sampler assumes a P×K batch (Wu et al., Sec. 5: m = 5 images per class):
each class in the batch has exactly K images, in any order. The shapes (B, K)
are checked at trace time; the data-dependent layout is checked either on the
host with `check_pk_batch` (NumPy, before the step) or inside a jitted function
with `pk_batch_checks` under `jax.experimental.checkify`.

`sorted_classes` is the one place that finds each class's run in the
label-sorted batch (the samplers' negatives, the Recall@k tiles of
`dmljax.metrics.ranks`).
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


def check_labels(labels: jax.Array) -> None:
  """Raises ValueError unless `labels` is a [B] integer vector."""
  if labels.ndim != 1:
    raise ValueError(f"labels must be a [B] vector, got shape {labels.shape}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(
      f"labels must be integers (class ids), got dtype {labels.dtype}."
    )


def same_label_mask(
  labels: jax.Array, other_labels: jax.Array | None = None
) -> jax.Array:
  """Boolean [B, M] mask of pairs (i, j) with labels[i] == other_labels[j].

  >>> same_label_mask(jnp.array([0, 0, 1]))[0].tolist()
  [True, True, False]
  """
  check_labels(labels)
  other = labels if other_labels is None else other_labels
  check_labels(other)
  return labels[:, None] == other[None, :]


def positive_mask(labels: jax.Array) -> jax.Array:
  """Boolean [B, B] mask of positive pairs: same label, i ≠ j.

  >>> positive_mask(jnp.array([0, 0, 1]))[0].tolist()
  [False, True, False]
  """
  same = same_label_mask(labels)
  return same & ~jnp.eye(labels.shape[0], dtype=bool)


def negative_mask(labels: jax.Array) -> jax.Array:
  """Boolean [B, B] mask of negative pairs: different labels.

  >>> negative_mask(jnp.array([0, 0, 1]))[0].tolist()
  [False, False, True]
  """
  return ~same_label_mask(labels)


def check_images_per_class(images_per_class: int) -> None:
  """Raises ValueError unless K ≥ 2 (a positive pair needs two images)."""
  if images_per_class < 2:
    raise ValueError(
      f"images_per_class must be at least 2 to form positive pairs, got "
      f"{images_per_class}."
    )


def check_batch_shape(batch_size: int, images_per_class: int) -> int:
  """Returns P = B / K, or raises ValueError if B is not a multiple of K."""
  check_images_per_class(images_per_class)
  if batch_size % images_per_class:
    raise ValueError(
      f"The batch size {batch_size} is not a multiple of images_per_class="
      f"{images_per_class}: a P×K batch holds P classes × K images each. "
      f"Use a batch size of P·{images_per_class}."
    )
  return batch_size // images_per_class


def class_groups(labels: jax.Array, *, images_per_class: int) -> jax.Array:
  """Batch indices of each class's images, [P, K] int32.

  Rows are ordered by label value and each row keeps batch order. Assumes a
  valid P×K batch (exactly K images of each class; see `check_pk_batch`).

  >>> class_groups(jnp.array([7, 3, 7, 3]), images_per_class=2).tolist()
  [[1, 3], [0, 2]]
  """
  check_labels(labels)
  num_classes = check_batch_shape(labels.shape[0], images_per_class)
  order = jnp.argsort(labels, stable=True).astype(jnp.int32)
  return order.reshape(num_classes, images_per_class)


def sorted_classes(labels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The label-sorted batch: each class's run of sorted positions.

  `order` sorts the batch by label (stable), so each class occupies one
  contiguous run of sorted positions: image i's class fills positions
  [start[i], start[i] + count[i]) of `labels[order]`. The runs are found with
  cumulative max/min scans rather than binary searches, which lower to loops
  that cost more than the work at small B.

  Args:
    labels: [B] integer classes, in any order.

  Returns:
    (order, start, count), each [B] int32: `order` the stable label sort,
    `start` and `count` indexed by batch position (not sorted position).

  >>> order, start, count = sorted_classes(jnp.array([7, 3, 7, 7]))
  >>> order.tolist(), start.tolist(), count.tolist()
  ([1, 0, 2, 3], [1, 0, 1, 1], [3, 1, 3, 3])
  """
  labels = jnp.asarray(labels)
  check_labels(labels)
  batch = labels.shape[0]
  order = jnp.argsort(labels, stable=True).astype(jnp.int32)
  sorted_labels = labels[order]
  index = jnp.arange(batch, dtype=jnp.int32)
  first = jnp.concatenate(
    [jnp.ones(1, bool), sorted_labels[1:] != sorted_labels[:-1]]
  )
  last = jnp.concatenate(
    [sorted_labels[1:] != sorted_labels[:-1], jnp.ones(1, bool)]
  )
  begin = jax.lax.cummax(jnp.where(first, index, 0))
  end = jax.lax.cummin(jnp.where(last, index, batch), reverse=True)
  start = jnp.zeros(batch, jnp.int32).at[order].set(begin)
  count = jnp.zeros(batch, jnp.int32).at[order].set(end - begin + 1)
  return order, start, count


def check_pk_batch(labels, *, images_per_class: int) -> None:
  """Host-side check that `labels` form a P×K batch; raises ValueError.

  Runs in NumPy on concrete labels (not under `jit`): call it in the input
  pipeline or before a step. Inside a jitted function use `pk_batch_checks`.

  Args:
    labels: [B] integer class ids (array-like).
    images_per_class: K, the number of images each class must have.

  Raises:
    ValueError: labels are not a 1-D integer vector, B is not a multiple of K,
      or some class does not have exactly K images in the batch.
  """
  labels = np.asarray(labels)
  check_labels(labels)
  check_batch_shape(labels.shape[0], images_per_class)
  counts = collections.Counter(labels.tolist())
  wrong = {c: n for c, n in sorted(counts.items()) if n != images_per_class}
  if not wrong:
    return
  singles = [c for c, n in wrong.items() if n == 1]
  listed = ", ".join(f"class {c}: {n}" for c, n in list(wrong.items())[:8])
  detail = (
    f" Classes with a single image have no positive pair: {singles[:8]}."
    if singles
    else ""
  )
  raise ValueError(
    f"Not a P×K batch: every class needs exactly images_per_class="
    f"{images_per_class} images, but {len(wrong)} do not ({listed})."
    f"{detail} Build batches with a class-balanced sampler, or drop classes "
    f"with fewer than {images_per_class} images from the split."
  )


def pk_batch_checks(
  embeddings: jax.Array, labels: jax.Array, *, images_per_class: int
) -> None:
  """In-graph checks of a P×K batch, for use under `checkify.checkify`.

  Checks that every embedding is finite and that every image has exactly
  K − 1 positives in the batch. Outside `checkify.checkify` these checks
  cannot run under `jit`; wrap the function that calls them:

    err, out = checkify.checkify(jax.jit(step))(...); err.throw()

  Args:
    embeddings: [B, D] embeddings.
    labels: [B] integer class ids.
    images_per_class: K.
  """
  check_labels(labels)
  check_batch_shape(labels.shape[0], images_per_class)
  checkify.check(
    jnp.all(jnp.isfinite(embeddings)),
    "embeddings contain NaN or inf: check the inputs and the learning rate.",
  )
  positives = jnp.sum(positive_mask(labels), axis=1)
  checkify.check(
    jnp.all(positives == images_per_class - 1),
    "Not a P×K batch: some class does not have exactly images_per_class="
    f"{images_per_class} images (min positives per image {{}}, max {{}}).",
    jnp.min(positives),
    jnp.max(positives),
  )
