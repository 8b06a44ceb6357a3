"""Your own images: a folder of class sub-folders, or a CSV/TSV listing.

Shape letters: N images, C classes.

Two layouts are read into a `Listing` (paths + class names per image):

- an image folder, one sub-folder per class: `DIR/<class>/<image>` (files
  with an image extension, case-insensitive; other files are ignored);
- a CSV (`.csv`, commas) or TSV (`.tsv`, tabs) file with a header row and
  the columns `path,label[,split]`; relative paths are relative to the
  file's directory; `split` is "train" or "test". UTF-8, with or without
  the byte-order mark that Excel's "CSV UTF-8" writes.

Images are decoded as RGB (a grayscale PNG becomes three equal channels), so
ImageNet-pretrained networks take them unchanged.

The listing is cut into train and test (`split_mask`):

- "classes" (the metric-learning protocol: test classes are never seen in
  training): a seeded permutation of the sorted class names puts
  round(C · test_fraction) classes in test, or `test_classes` names them;
- "instances": each class's images are shuffled (seeded) and
  round(n · test_fraction) of them go to test (same classes in both);
- a CSV with a `split` column: that column decides, `how` is ignored.

Small classes (the rule): a class needs 2 images in a split to give a
positive pair; a class with 1 image there is left out of that split and the
number left out is logged (a warning, `logging`). A class with 2..K−1 images
is kept and sampled with replacement in its P×K batches (`pk.pk_batches`).
Export (`dmljax.runtime.export`) embeds every image, singletons included.
"""

import csv
import dataclasses
import logging
import os

import numpy as np
from PIL import Image

from dmljax.data import images
from dmljax.data.files import FileSplit
from dmljax.data.images import Preprocess

_logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (
  ".jpg",
  ".jpeg",
  ".png",
  ".bmp",
  ".gif",
  ".webp",
  ".tif",
  ".tiff",
)
SPLIT_BY = ("classes", "instances")
LAYOUT = (
  "Give --data_dir=DIR with one sub-folder of images per class "
  "(DIR/<class>/<image>), or a .csv/.tsv file with the header "
  "path,label[,split]."
)


@dataclasses.dataclass(frozen=True, eq=False)
class Listing:
  """The images of a folder or CSV, before any split.

  Attributes:
    paths: N absolute file paths.
    classes: N class names (str), one per image.
    splits: N strings "train"/"test" from a CSV's split column, or None.
    source: the folder or file it was read from.
  """

  paths: tuple[str, ...]
  classes: tuple[str, ...]
  splits: tuple[str, ...] | None
  source: str

  def __len__(self) -> int:
    return len(self.paths)


def check_image(path: str) -> None:
  """ValueError unless Pillow recognises `path` as an image (header only)."""
  try:
    with Image.open(path):
      pass
  except Image.DecompressionBombError as error:
    raise images.too_large(path, error) from error
  except (OSError, SyntaxError, ValueError) as error:
    raise ValueError(
      f"Cannot read image {path} ({error}). Remove the file or replace it "
      "with a readable image (JPEG, PNG, ...)."
    ) from error


def read_folder(data_dir: str) -> Listing:
  """The images of `DIR/<class>/<image>`, classes in sorted name order.

  Raises:
    ValueError: the folder is missing, has no class sub-folders, a class
      folder holds no image, or an image cannot be read.
  """
  if not os.path.isdir(data_dir):
    raise ValueError(f"{data_dir} is not a folder. {LAYOUT}")
  data_dir = os.path.abspath(data_dir)
  names = sorted(
    n
    for n in os.listdir(data_dir)
    if os.path.isdir(os.path.join(data_dir, n)) and not n.startswith(".")
  )
  if not names:
    raise ValueError(f"{data_dir} has no class sub-folders. {LAYOUT}")
  paths, classes, empty = [], [], []
  for name in names:
    folder = os.path.join(data_dir, name)
    files = sorted(
      f
      for f in os.listdir(folder)
      if f.lower().endswith(IMAGE_EXTENSIONS)
      and os.path.isfile(os.path.join(folder, f))
    )
    if not files:
      empty.append(folder)
    paths += [os.path.join(folder, f) for f in files]
    classes += [name] * len(files)
  if empty:
    raise ValueError(
      f"{len(empty)} class folder(s) hold no image ({', '.join(empty[:5])}): "
      f"add images ({', '.join(IMAGE_EXTENSIONS)}) or remove the folder."
    )
  for path in paths:
    check_image(path)
  return Listing(tuple(paths), tuple(classes), None, data_dir)


def _label(value: str, where: str) -> str:
  """The class name in a CSV cell; ValueError for empty or float labels."""
  value = value.strip()
  if not value:
    raise ValueError(f"{where}: empty label. Every row needs a class label.")
  try:
    number = float(value)
  except ValueError:
    return value  # A class name.
  if not number.is_integer() or "." in value or "e" in value.lower():
    raise ValueError(
      f"{where}: label {value!r} is not a class name or an integer id. "
      "Labels must be strings or integers (a float label such as '3.0' "
      "usually means the column was written as floats: write integers)."
    )
  return value  # An integer id, kept as written ("07" and "7" differ).


def read_csv(path: str) -> Listing:
  """The images listed in a CSV/TSV file with columns path,label[,split].

  Raises:
    ValueError: the file is missing, a column is missing, a label is empty
      or a float, a split value is not train/test, or an image is missing
      or unreadable.
  """
  if not os.path.isfile(path):
    raise ValueError(f"{path} does not exist. {LAYOUT}")
  delimiter = "\t" if path.lower().endswith(".tsv") else ","
  base = os.path.dirname(os.path.abspath(path))
  # utf-8-sig: Excel's "CSV UTF-8" starts the file with a byte-order mark.
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f, delimiter=delimiter)
      columns = [c.strip() for c in reader.fieldnames or ()]
      missing = [c for c in ("path", "label") if c not in columns]
      if missing:
        other = ";" if delimiter == "," else ","
        hint = ""
        if len(columns) == 1 and other in columns[0]:
          hint = (
            f" The header is separated by {other!r}: save the file with "
            f"{delimiter!r} as the separator."
          )
        raise ValueError(
          f"{path}: missing column(s) {missing}; the header has {columns}. "
          "The first row must name the columns path,label[,split] "
          f"(tab-separated in a .tsv file).{hint}"
        )
      rows = [{k.strip(): v for k, v in row.items() if k} for row in reader]
  except UnicodeDecodeError as error:
    raise ValueError(
      f"{path} is not UTF-8 text ({error}): save it as UTF-8 (Excel: "
      "'CSV UTF-8 (Comma delimited)')."
    ) from error
  if not rows:
    raise ValueError(f"{path} lists no images.")
  has_split = "split" in columns
  paths, classes, splits = [], [], []
  for number, row in enumerate(rows, start=2):
    where = f"{path}, line {number}"
    relative = (row["path"] or "").strip()
    if not relative:
      raise ValueError(f"{where}: empty path.")
    paths.append(os.path.normpath(os.path.join(base, relative)))
    classes.append(_label(row["label"] or "", where))
    if has_split:
      value = (row["split"] or "").strip().lower()
      if value not in ("train", "test"):
        raise ValueError(
          f"{where}: split {row['split']!r} must be 'train' or 'test'."
        )
      splits.append(value)
  missing_files = [p for p in paths if not os.path.isfile(p)]
  if missing_files:
    raise ValueError(
      f"{path}: {len(missing_files)} of the {len(paths)} listed images are "
      f"missing, e.g. {missing_files[:5]}. Paths are relative to the "
      "CSV's folder (or absolute)."
    )
  for image in paths:
    check_image(image)
  return Listing(
    tuple(paths), tuple(classes), tuple(splits) if has_split else None, path
  )


def read_listing(data_dir: str) -> Listing:
  """A folder (`read_folder`) or a .csv/.tsv file (`read_csv`)."""
  if not data_dir:
    raise ValueError(f"No data given. {LAYOUT}")
  if data_dir.lower().endswith((".csv", ".tsv")):
    return read_csv(data_dir)
  return read_folder(data_dir)


def split_mask(
  listing: Listing,
  split: str,
  *,
  how: str = "classes",
  test_fraction: float = 0.5,
  seed: int = 0,
  test_classes: tuple[str, ...] = (),
) -> np.ndarray:
  """bool [N]: the images of `listing` in `split` ("train" or "test").

  See the module docstring for `how`; `test_classes` (with how="classes")
  names the test classes instead of drawing them.

  >>> listing = Listing(tuple("abcd"), ("x", "x", "y", "y"), None, "toy")
  >>> split_mask(listing, "test", test_classes=("y",)).tolist()
  [False, False, True, True]
  """
  if split not in ("train", "test"):
    raise ValueError(f"Unknown split {split!r}; valid splits: train, test.")
  if listing.splits is not None:  # The CSV's own column decides.
    return np.array([s == split for s in listing.splits])
  if how not in SPLIT_BY:
    raise ValueError(
      f"Unknown data.split {how!r}; choose one of {SPLIT_BY} (or give the "
      "CSV a split column)."
    )
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(
      f"data.test_fraction must be between 0 and 1, got {test_fraction}."
    )
  classes = np.asarray(listing.classes)
  names = sorted(set(listing.classes))
  rng = np.random.default_rng(seed)
  if how == "classes":
    if test_classes:
      unknown = sorted(set(test_classes) - set(names))
      if unknown:
        raise ValueError(
          f"data.test_classes names classes not in {listing.source}: "
          f"{unknown[:10]}; its classes are e.g. {names[:10]}."
        )
      test = set(test_classes)
    else:
      num_test = min(max(1, round(len(names) * test_fraction)), len(names) - 1)
      test = {names[i] for i in rng.permutation(len(names))[:num_test]}
    in_test = np.array([c in test for c in classes], bool)
  else:
    in_test = np.zeros(len(classes), bool)
    for name in names:
      members = np.flatnonzero(classes == name)
      num_test = round(members.size * test_fraction)
      in_test[rng.permutation(members)[:num_test]] = True
  return in_test if split == "test" else ~in_test


def file_split(
  listing: Listing,
  mask: np.ndarray,
  *,
  name: str,
  preprocess: Preprocess,
) -> FileSplit:
  """The FileSplit of the masked images, without single-image classes.

  Classes keep their sorted-name order, labelled 0..C-1. The number of
  classes left out for having one image is logged as a warning (module
  docstring).
  """
  classes = np.asarray(listing.classes)
  names, counts = np.unique(classes[mask], return_counts=True)
  singles = set(names[counts < 2].tolist())
  if singles:
    _logger.warning(
      "%s: left out %d class(es) with a single image (no positive pair), "
      "e.g. %s.",
      name,
      len(singles),
      sorted(singles)[:5],
    )
  kept = names[counts >= 2]
  index = {c: i for i, c in enumerate(kept.tolist())}
  rows = [i for i in np.flatnonzero(mask) if classes[i] in index]
  return FileSplit(
    paths=tuple(listing.paths[i] for i in rows),
    labels=np.array([index[classes[i]] for i in rows], np.int32),
    class_names=tuple(kept.tolist()),
    name=name,
    preprocess=preprocess,
  )


def load_split(
  data_dir: str,
  split: str,
  *,
  preprocess: Preprocess,
  how: str = "classes",
  test_fraction: float = 0.5,
  seed: int = 0,
  test_classes: tuple[str, ...] = (),
) -> FileSplit:
  """The train or test `FileSplit` of a folder or CSV (module docstring)."""
  listing = read_listing(data_dir)
  mask = split_mask(
    listing,
    split,
    how=how,
    test_fraction=test_fraction,
    seed=seed,
    test_classes=test_classes,
  )
  return file_split(
    listing, mask, name=f"folder/{split}", preprocess=preprocess
  )
