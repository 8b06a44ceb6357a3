"""One split of an image retrieval dataset, and the split by classes.

Shape letters: N images, H × W pixels, C classes.

Deep metric learning evaluates on classes never seen in training (Wu et al.,
Sec. 5; Oh Song et al. 2016): the classes of a dataset, in their canonical
order, are cut in two, the first part to train on and the rest to test on.
A `Split` holds one part, with its labels renumbered 0..C-1 in that order.
"""

import dataclasses

import numpy as np

from dmljax.data import augment

SPLITS = ("train", "test")
RETRIEVAL = "retrieval"  # Leave-one-out Recall@k, MAP@R, NMI (Wu et al.).


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """The images of one split, labelled 0..C-1 in the original class order.

  Attributes:
    images: uint8 [N, H, W, 1], read-only.
    labels: int32 [N] in 0..C-1; every class has at least 2 images.
    class_names: the C class names; `class_names[labels[i]]` names image i.
    name: "<dataset>/<split>", e.g. "digits/train".
  """

  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]
  name: str

  def __post_init__(self):
    images, labels = self.images, self.labels
    if images.ndim != 4 or images.shape[-1] != 1 or images.dtype != np.uint8:
      raise ValueError(
        f"{self.name}: images must be uint8 [N, H, W, 1], got "
        f"{images.dtype} {images.shape}."
      )
    if labels.shape != images.shape[:1] or labels.dtype != np.int32:
      raise ValueError(
        f"{self.name}: labels must be int32 [N] with N = {images.shape[0]}, "
        f"got {labels.dtype} {labels.shape}."
      )
    num_classes = len(self.class_names)
    counts = np.bincount(labels, minlength=num_classes)
    if labels.size and (labels.min() < 0 or counts.size > num_classes):
      raise ValueError(
        f"{self.name}: labels must lie in 0..{num_classes - 1} (one per "
        f"class name), got {labels.min()}..{labels.max()}."
      )
    if num_classes < 2 or (counts < 2).any():
      small = [self.class_names[c] for c in np.flatnonzero(counts < 2)]
      raise ValueError(
        f"{self.name}: every class needs at least 2 images to form a "
        f"positive pair and there must be at least 2 classes; got "
        f"{num_classes} classes, these with fewer than 2 images: "
        f"{small[:10]}{' ...' if len(small) > 10 else ''}."
      )
    images.setflags(write=False)
    labels.setflags(write=False)

  @property
  def num_classes(self) -> int:
    """C, the number of classes."""
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, ...]:
    """(H, W, 1), the shape of one network input."""
    return tuple(self.images.shape[1:])

  def __len__(self) -> int:
    return self.images.shape[0]

  @property
  def protocol(self) -> str:
    """The evaluation protocol: leave-one-out retrieval."""
    return RETRIEVAL

  def _max_shift(self, max_shift: int | None) -> int:
    if max_shift is None:  # The default: 1/16 of the side, at least 1.
      return max(1, self.images.shape[1] // 16)
    return max_shift

  def draw_augmentation(
    self, rng: np.random.Generator, count: int, *, max_shift, flip: bool
  ) -> augment.Draws:
    """The training augmentation of `count` images: shifts, mirrors.

    `max_shift` in pixels, None for max(1, H // 16). Drawn for the global
    batch; `Draws[rows]` gives a shard's.
    """
    max_shift = self._max_shift(max_shift)
    return augment.draw(rng, count, max_shift=max_shift, flip=flip)

  def train_images(self, rows, draws: augment.Draws, *, max_shift):
    """float32 [n, H, W, 1] in [0, 1]: `rows` augmented by their `draws`."""
    images = self.images[np.asarray(rows)]
    shifted = augment.apply(images, draws, max_shift=self._max_shift(max_shift))
    return augment.to_float(shifted)

  def test_images(self, rows) -> np.ndarray:
    """float32 [n, H, W, 1] in [0, 1]: `rows` as the network sees them."""
    return augment.to_float(self.images[np.asarray(rows)])

  def display_images(self, rows) -> np.ndarray:
    """uint8 [n, H, W, 1]: the images of `rows`, as a person sees them."""
    return self.images[np.asarray(rows, np.int64)]

  def first_classes(self, num_classes: int) -> "Split":
    """The images of the first `num_classes` classes (a quick evaluation)."""
    keep = self.labels < num_classes
    return Split(
      images=self.images[keep],
      labels=self.labels[keep],
      class_names=self.class_names[:num_classes],
      name=self.name,
    )


def split_by_class(
  images: np.ndarray,
  classes: np.ndarray,
  class_names: tuple[str, ...],
  split: str,
  *,
  name: str,
) -> Split:
  """The train (first ⌈C/2⌉ classes) or test (the rest) part of a dataset.

  Args:
    images: uint8 [N, H, W, 1].
    classes: int [N], each image's class in 0..C-1, in the canonical order.
    class_names: the C class names, in the same order.
    split: "train" or "test".
    name: the dataset's name, for the split's name and error messages.

  Returns:
    The split, images in their original order, labels renumbered from 0.

  >>> images = np.zeros((8, 2, 2, 1), np.uint8)
  >>> classes = np.array([0, 0, 1, 1, 2, 2, 3, 3])
  >>> test = split_by_class(images, classes, tuple("abcd"), "test", name="toy")
  >>> test.labels.tolist(), test.class_names, test.name
  ([0, 0, 1, 1], ('c', 'd'), 'toy/test')
  """
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; valid splits: {SPLITS}.")
  first_test = len(class_names) - len(class_names) // 2
  if split == "train":
    keep = classes < first_test
    offset, names = 0, class_names[:first_test]
  else:
    keep = classes >= first_test
    offset, names = first_test, class_names[first_test:]
  return Split(
    images=np.ascontiguousarray(images[keep]),
    labels=(classes[keep] - offset).astype(np.int32),
    class_names=tuple(names),
    name=f"{name}/{split}",
  )
