"""A split of a dataset kept on disk as image files, and the readers' checks.

Shape letters: N images, C classes, P verification pairs, S crop side.

The benchmarks (SOP, CARS196, CUB-200-2011, In-Shop, LFW, CASIA-WebFace)
are too large to hold decoded in memory, so a `FileSplit` holds the image
paths and labels, and the batch pipelines (`pk.pk_batches`,
`pk.eval_batches`) decode only the rows they need, in grain workers.

Three evaluation protocols are told apart by the fields that are set:

- leave-one-out retrieval over the split (SOP, CARS196, CUB): neither
  `query` nor `pairs`;
- query → gallery retrieval (In-Shop): `query` marks the query images, the
  rest are the gallery;
- pair verification (LFW): `pairs` [P, 2] indexes image pairs, `is_same`
  says which pairs show one person.
"""

import dataclasses
import os
from typing import Any

import numpy as np

from dmljax.data import images as images_lib
from dmljax.data.images import Preprocess
from dmljax.data.split import RETRIEVAL

VERIFICATION = "verification"  # LFW: pair accuracy over 10 folds.
QUERY_GALLERY = "query_gallery"  # In-Shop: Recall@k of queries in a gallery.


@dataclasses.dataclass(frozen=True, eq=False)
class FileSplit:
  """The image files of one split, labelled 0..C-1 in the official order.

  Attributes:
    paths: N absolute file paths.
    labels: int32 [N] in 0..C-1.
    class_names: the C class names.
    name: "<dataset>/<split>", e.g. "sop/train".
    preprocess: how an image becomes an [S, S, 3] network input.
    boxes: float32 [N, 4] bounding boxes (x1, y1, x2, y2) to cut out before
      scaling, or None.
    query: bool [N], True for the query images (In-Shop), or None.
    pairs: int32 [P, 2] image indices of verification pairs (LFW), or None.
    is_same: bool [P], a matched pair, or None.
    records: where the encoded images are when they are not files (a
      prepared tfds dataset: `tfds_source.Records`, with `read(rows)` → the
      rows' JPEG/PNG bytes and `take(rows)`; `paths` then only name the
      records), or None.
  """

  paths: tuple[str, ...]
  labels: np.ndarray
  class_names: tuple[str, ...]
  name: str
  preprocess: Preprocess = Preprocess()
  boxes: np.ndarray | None = None
  query: np.ndarray | None = None
  pairs: np.ndarray | None = None
  is_same: np.ndarray | None = None
  records: Any = None

  def __post_init__(self):
    n = len(self.paths)
    if self.labels.shape != (n,) or self.labels.dtype != np.int32:
      raise ValueError(
        f"{self.name}: labels must be int32 [N] with N = {n} paths, got "
        f"{self.labels.dtype} {self.labels.shape}."
      )
    if self.boxes is not None and self.boxes.shape != (n, 4):
      raise ValueError(f"{self.name}: boxes must be [N, 4], N = {n}.")
    if self.query is not None and self.query.shape != (n,):
      raise ValueError(f"{self.name}: query must be bool [N], N = {n}.")
    if (self.pairs is None) != (self.is_same is None):
      raise ValueError(f"{self.name}: pairs and is_same go together.")
    num_classes = len(self.class_names)
    if n and (self.labels.min() < 0 or self.labels.max() >= num_classes):
      raise ValueError(
        f"{self.name}: labels must lie in 0..{num_classes - 1}, got "
        f"{self.labels.min()}..{self.labels.max()}."
      )
    if self.pairs is None:  # Training and retrieval need positive pairs.
      counts = np.bincount(self.labels, minlength=num_classes)
      if num_classes < 2 or (counts < 2).any():
        small = [self.class_names[c] for c in np.flatnonzero(counts < 2)]
        raise ValueError(
          f"{self.name}: every class needs at least 2 images and there "
          f"must be at least 2 classes; got {num_classes} classes, these "
          f"with fewer than 2 images: {small[:10]}"
          f"{' ...' if len(small) > 10 else ''}. Is the list file complete?"
        )
    self.labels.setflags(write=False)

  @property
  def num_classes(self) -> int:
    """C, the number of classes."""
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(S, S, 3), the shape of one network input."""
    return (self.preprocess.crop, self.preprocess.crop, 3)

  def __len__(self) -> int:
    return len(self.paths)

  def first_classes(self, num_classes: int) -> "FileSplit":
    """The images of the first `num_classes` classes (a quick evaluation).

    A verification split (pairs) is returned whole.
    """
    if self.pairs is not None or num_classes >= self.num_classes:
      return self
    keep = self.labels < num_classes
    return dataclasses.replace(
      self,
      paths=tuple(p for p, k in zip(self.paths, keep, strict=True) if k),
      labels=self.labels[keep],
      class_names=self.class_names[:num_classes],
      boxes=None if self.boxes is None else self.boxes[keep],
      query=None if self.query is None else self.query[keep],
      records=None if self.records is None else self.records.take(keep),
    )

  @property
  def protocol(self) -> str:
    """ "verification" (LFW pairs), "query_gallery" (In-Shop) or "retrieval"."""
    if self.pairs is not None:
      return VERIFICATION
    if self.query is not None:
      return QUERY_GALLERY
    return RETRIEVAL

  def draw_augmentation(
    self, rng: np.random.Generator, count: int, *, max_shift=None, flip=True
  ) -> images_lib.Crops:
    """The paper's training augmentation of `count` images: random S × S
    crops of the R × R image and mirrors, as `preprocess` says (`max_shift`
    and `flip` are the in-memory splits' and unused here). Drawn for the
    global batch; `Crops[rows]` gives a shard's."""
    del max_shift, flip
    return images_lib.draw_crops(rng, count, self.preprocess)

  def train_images(self, rows, draws: images_lib.Crops, *, max_shift=None):
    """float32 [n, S, S, 3]: `rows` decoded, cropped and mirrored by
    `draws`, scaled as `preprocess` says."""
    del max_shift
    return self._load(np.asarray(rows), draws)

  def test_images(self, rows) -> np.ndarray:
    """float32 [n, S, S, 3]: `rows`' centre crops, as the network sees them."""
    rows = np.asarray(rows)
    return self._load(rows, images_lib.center_crops(rows.size, self.preprocess))

  def display_images(self, rows) -> np.ndarray:
    """uint8 [n, S, S, 3]: the test-time crops of `rows` (not standardised)."""
    rows = np.asarray(rows, np.int64)
    crops = images_lib.center_crops(rows.size, self.preprocess)
    return self._load(rows, crops, scaled=False)

  def _load(self, rows, crops: images_lib.Crops, *, scaled: bool = True):
    load = images_lib.load_batch if scaled else images_lib.load_crops
    return load(
      [self.paths[i] for i in rows],
      None if self.boxes is None else self.boxes[rows],
      crops,
      self.preprocess,
      self.encoded(rows),
    )

  def encoded(self, rows) -> list[bytes] | None:
    """The encoded images of `rows` if `records` hold them, else None."""
    return None if self.records is None else self.records.read(rows)


def dense_labels(keys) -> tuple[np.ndarray, tuple[str, ...]]:
  """int32 labels 0..C-1 of `keys` in order of first appearance, and names.

  >>> labels, names = dense_labels(["b", "a", "b"])
  >>> labels.tolist(), names
  ([0, 1, 0], ('b', 'a'))
  """
  index: dict[str, int] = {}
  labels = [index.setdefault(str(key), len(index)) for key in keys]
  return np.asarray(labels, np.int32), tuple(index)


def require_files(dataset: str, data_dir: str, needed, *, how_to_get: str):
  """ValueError naming what is missing under `data_dir` and how to get it.

  Args:
    dataset: the dataset's display name.
    data_dir: the directory the user gave.
    needed: relative paths that must exist under it.
    how_to_get: where to obtain the archive and the layout to unpack into.
  """
  if not data_dir:
    raise ValueError(
      f"{dataset}: no data directory given. Pass --data_dir=DIR (or "
      f"--config.data.data_dir=DIR). {how_to_get}"
    )
  missing = [p for p in needed if not os.path.exists(os.path.join(data_dir, p))]
  if missing:
    raise ValueError(
      f"{dataset}: {data_dir} is missing {', '.join(missing)}. {how_to_get}"
    )


def check_images_exist(dataset: str, paths, *, how_to_get: str):
  """ValueError listing (up to 5 of) the listed image files that are absent."""
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise ValueError(
      f"{dataset}: {len(missing)} of the {len(paths)} listed images are "
      f"missing, e.g. {missing[:5]}. The archive was not fully extracted, "
      f"or the list file belongs to another copy. {how_to_get}"
    )


def check_counts(
  dataset: str,
  found: dict[str, int],
  official: dict[str, int],
  *,
  source: str,
):
  """ValueError unless the parsed counts equal the official figures.

  Set --config.data.check_counts=False to train on a deliberate subset.
  """
  wrong = {k: (found[k], v) for k, v in official.items() if found[k] != v}
  if wrong:
    detail = "; ".join(
      f"{name}: found {got:,}, official {want:,}"
      for name, (got, want) in wrong.items()
    )
    raise ValueError(
      f"{dataset}: the lists do not match the official dataset ({detail}; "
      f"source: {source}). The download is incomplete or not the official "
      "one: extract the official archive again, or pass "
      "--config.data.check_counts=False to use a subset on purpose."
    )


def split_classes(num_classes: int, split: str) -> range:
  """Song et al.'s split: the first ⌈C/2⌉ classes train, the rest test."""
  first_test = num_classes - num_classes // 2
  if split == "train":
    return range(0, first_test)
  if split == "test":
    return range(first_test, num_classes)
  raise ValueError(f"Unknown split {split!r}; valid splits: train, test.")


def class_half(
  classes: np.ndarray, num_classes: int, split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The images of `split`'s half of the classes (`split_classes`).

  Args:
    classes: [N] 1-based official class ids of every image.
    num_classes: C of the dataset.
    split: "train" or "test".

  Returns:
    (keep [N] bool: the images of the half, present: the half's official
    class ids in order, labels: int32 0..C'-1 of the kept images).
  """
  wanted = split_classes(num_classes, split)
  keep = (classes - 1 >= wanted.start) & (classes - 1 < wanted.stop)
  present, labels = np.unique(classes[keep], return_inverse=True)
  return keep, present, labels.astype(np.int32)
