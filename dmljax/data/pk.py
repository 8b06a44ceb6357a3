"""Class-balanced P×K batches and padded evaluation batches, on grain.

Shape letters: B = P·K batch, P classes × K images per class (Wu et al.,
Sec. 5: K = 5), N images, H × W pixels.

A training batch is a pure function of (seed, step): a `grain.MapDataset`
over the steps 0..num_steps-1 maps each step to its batch. Batches are
therefore the same with any number of worker processes, and the iterator's
state is just where it is in that sequence: `iterator.get_state()` is a
JSON-serialisable dict, and a fresh iterator given it by `set_state` goes on
with exactly the batches the first would have produced (restore with the same
`num_workers`: grain's state layout depends on it).

Within a batch: P distinct classes, drawn uniformly; K images of each, drawn
without replacement, or with replacement from a class with fewer than K
images (it then repeats images). The batch lists the classes one after the
other, K images each. Images are shifted at random (padding and a random
crop), optionally mirrored, and returned as float32 in [0, 1]. A benchmark
split on disk (`FileSplit`) is sampled the same way, but its images are
decoded per batch, only this shard's rows, and augmented as the paper says
(`images.py`: random crop of the 256 × 256 image, mirror, standardised).
"""

import dataclasses

import grain
import numpy as np

from dmljax.data.files import FileSplit
from dmljax.data.split import Split
from dmljax.labels import check_batch_shape

_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
_ENDLESS = 2**62


def _num_classes(batch_size: int, images_per_class: int) -> int:
  """P = B / K; ValueError unless B is a positive multiple of K ≥ 2."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  return check_batch_shape(batch_size, images_per_class)


@dataclasses.dataclass(frozen=True, eq=False)
class _Members:
  """Class c's images: order[starts[c] : starts[c] + counts[c]].

  `classes` lists the labels that have images.
  """

  order: np.ndarray
  starts: np.ndarray
  counts: np.ndarray
  classes: np.ndarray

  @classmethod
  def of(cls, labels: np.ndarray) -> "_Members":
    if labels.ndim != 1 or labels.size == 0 or labels.min() < 0:
      raise ValueError(
        f"labels must be a non-empty [N] vector of class ids >= 0, got "
        f"shape {labels.shape}."
      )
    counts = np.bincount(labels)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    order = np.argsort(labels, kind="stable")
    return cls(order, starts, counts, np.flatnonzero(counts))


def _rngs(seed: int, step: int) -> list[np.random.Generator]:
  """Independent generators for sampling and augmenting batch `step`."""
  sequence = np.random.SeedSequence([seed, step])
  return [np.random.default_rng(child) for child in sequence.spawn(2)]


def _sampled(
  rng: np.random.Generator,
  members: _Members,
  num_classes: int,
  images_per_class: int,
) -> np.ndarray:
  classes = rng.choice(members.classes, num_classes, replace=False)
  picks = [
    members.starts[c]
    + rng.choice(
      members.counts[c],
      images_per_class,
      replace=members.counts[c] < images_per_class,
    )
    for c in classes
  ]
  return members.order[np.concatenate(picks)].astype(np.int32)


def pk_indices(
  labels: np.ndarray,
  step: int,
  *,
  batch_size: int,
  images_per_class: int = 5,
  seed: int = 0,
) -> np.ndarray:
  """The image ids of P×K batch `step`, a pure function of (seed, step).

  Args:
    labels: int [N] class of each image, in 0..C-1.
    step: the batch number, non-negative.
    batch_size: B, a multiple of `images_per_class`.
    images_per_class: K.
    seed: a non-negative integer.

  Returns:
    int32 [B]: P classes one after the other, K image ids each.

  >>> labels = np.repeat(np.arange(4), 3)
  >>> ids = pk_indices(labels, 0, batch_size=4, images_per_class=2)
  >>> np.unique(labels[ids], return_counts=True)[1].tolist()
  [2, 2]
  """
  num_classes = _num_classes(batch_size, images_per_class)
  members = _Members.of(np.asarray(labels))
  _check_classes(members, num_classes, batch_size)
  return _sampled(_rngs(seed, step)[0], members, num_classes, images_per_class)


def _check_classes(members: _Members, num_classes: int, batch_size: int):
  available = members.classes.size
  if available < num_classes:
    raise ValueError(
      f"A batch of {batch_size} needs P = {num_classes} classes, but the "
      f"data has only {available}: lower batch_size or raise images_per_class."
    )


def _shard_rows(size: int, shard_index: int, shard_count: int) -> np.ndarray:
  """The rows of a batch of `size` that shard `shard_index` holds."""
  return np.array_split(np.arange(size), shard_count)[shard_index]


@dataclasses.dataclass(frozen=True, eq=False)
class _PKBatch:
  """Maps a step to its P×K batch dict (picklable, for worker processes).

  The augmentation is drawn for the global batch (the split's
  `draw_augmentation`), then only this shard's rows are read and
  augmented: an image is augmented the same way whatever the number of
  shards, and only read by its own.
  """

  split: Split | FileSplit
  members: _Members
  num_classes: int
  images_per_class: int
  seed: int
  max_shift: int | None
  flip: bool
  shard_index: int = 0
  shard_count: int = 1

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    sampling, augmenting = _rngs(self.seed, int(step))
    ids = _sampled(
      sampling, self.members, self.num_classes, self.images_per_class
    )
    draws = self.split.draw_augmentation(
      augmenting, ids.size, max_shift=self.max_shift, flip=self.flip
    )
    rows = _shard_rows(ids.size, self.shard_index, self.shard_count)
    ids = ids[rows]
    images = self.split.train_images(ids, draws[rows], max_shift=self.max_shift)
    return {"image": images, "label": self.split.labels[ids], "index": ids}


def _iterable(dataset: grain.MapDataset, num_workers: int) -> grain.IterDataset:
  if num_workers < 0:
    raise ValueError(f"num_workers must be non-negative, got {num_workers}.")
  iterable = dataset.to_iter_dataset(_READ_OPTIONS)
  if num_workers == 0:
    return iterable
  options = grain.MultiprocessingOptions(num_workers=num_workers)
  return iterable.mp_prefetch(options)


def pk_batches(
  split: Split | FileSplit,
  *,
  batch_size: int,
  images_per_class: int = 5,
  seed: int = 0,
  num_steps: int | None = None,
  max_shift: int | None = None,
  flip: bool = False,
  num_workers: int = 0,
  shard_index: int = 0,
  shard_count: int = 1,
) -> grain.IterDataset:
  """Class-balanced training batches of a split, as a grain dataset.

  Args:
    split: the images and labels to draw from: in memory (`Split`, shifted
      by `max_shift`, mirrored if `flip`) or files (`FileSplit`, decoded
      and augmented as its `preprocess` says; `max_shift` and `flip` are
      then unused).
    batch_size: B = P·K.
    images_per_class: K, at least 2.
    seed: a non-negative integer; batch `step` depends on (seed, step) only.
    num_steps: the number of batches; None for endless.
    max_shift: shift augmentation in pixels (see `augment.random_shift`);
      None for max(1, H // 16), 0 for none.
    flip: mirror images at random (off for glyphs and digits: a mirrored
      glyph is another glyph).
    num_workers: grain worker processes; 0 makes batches in this process.
      The workers read absl flags: parse them first (a config's run checks
      with `from_config.check_grain_workers`).
    shard_index: which contiguous slice of each batch to return, in
      0..shard_count-1 (a process of a multi-host run reads its own slice:
      `jax.process_index()`).
    shard_count: the number of slices, dividing B (`jax.process_count()`).
      Every shard samples the same global batch, so together they return
      exactly the single-process batch, augmentation included.

  Returns:
    An iterable whose `iter()` is a checkpointable `grain.DatasetIterator`
    of dicts: "image" float32 [b, H, W, 1] in [0, 1] (files: [b, S, S, 3]
    as `split.preprocess` says), "label" int32 [b],
    "index" int32 [b] (ids of the images in `split`), b = B / shard_count.

  >>> from dmljax.data.embedded import load_split
  >>> batches = pk_batches(load_split("digits", "train"), batch_size=10)
  >>> batch = next(iter(batches))
  >>> batch["image"].shape, np.unique(batch["label"], return_counts=True)[1]
  ((10, 8, 8, 1), array([5, 5]))
  """
  num_classes = _num_classes(batch_size, images_per_class)
  members = _Members.of(split.labels)
  _check_classes(members, num_classes, batch_size)
  if seed < 0:
    raise ValueError(f"seed must be non-negative, got {seed}.")
  if shard_count < 1 or batch_size % shard_count:
    raise ValueError(
      f"batch_size {batch_size} must split evenly into shard_count = "
      f"{shard_count} slices (one per process)."
    )
  if not 0 <= shard_index < shard_count:
    raise ValueError(
      f"shard_index must be in 0..{shard_count - 1}, got {shard_index}."
    )
  steps = grain.MapDataset.range(_ENDLESS if num_steps is None else num_steps)
  make_batch = _PKBatch(
    split=split,
    members=members,
    num_classes=num_classes,
    images_per_class=images_per_class,
    seed=seed,
    max_shift=max_shift,
    flip=flip,
    shard_index=shard_index,
    shard_count=shard_count,
  )
  return _iterable(steps.map(make_batch), num_workers)


@dataclasses.dataclass(frozen=True, eq=False)
class _EvalBatch:
  """Maps a batch number to its padded evaluation batch dict."""

  split: Split | FileSplit
  batch_size: int

  def __call__(self, number: int) -> dict[str, np.ndarray]:
    start = int(number) * self.batch_size
    ids = np.arange(start, start + self.batch_size)
    mask = ids < len(self.split)
    valid = ids[mask]
    shape = (self.batch_size, *self.split.image_shape)
    images = np.zeros(shape, np.float32)
    images[mask] = self.split.test_images(valid)
    labels = np.full(self.batch_size, -1, np.int32)
    labels[mask] = self.split.labels[valid]
    return {
      "image": images,
      "label": labels,
      "index": np.where(mask, ids, -1).astype(np.int32),
      "mask": mask,
    }


def eval_batches(
  split: Split | FileSplit,
  *,
  batch_size: int,
  num_workers: int = 0,
  shard_index: int = 0,
  shard_count: int = 1,
) -> grain.IterDataset:
  """Every image of a split once, in order, in fixed-size batches.

  The last batch is padded to B; its padding has mask False, a zero image,
  label -1 and index -1. There are G = ⌈N / B⌉ batches; no augmentation.
  Shard s of S (a process of a multi-host run) gets batches s, s + S, ...

  Args:
    split: the images and labels.
    batch_size: B.
    num_workers: grain worker processes; 0 makes batches in this process.
    shard_index: s.
    shard_count: S.

  Returns:
    A grain dataset of dicts: "image" float32 [B, H, W, 1] in [0, 1] (a
    `FileSplit`: [B, S, S, 3], the centre crop, as its `preprocess` says),
    "label" int32 [B], "index" int32 [B], "mask" bool [B].
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  num_batches = -(-len(split) // batch_size)
  make_batch = _EvalBatch(split, batch_size)  # test_images: no augmentation.
  numbers = grain.MapDataset.range(shard_index, num_batches, shard_count)
  return _iterable(numbers.map(make_batch), num_workers)
