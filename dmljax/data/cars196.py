"""CARS196 (Krause et al., 3dRR 2013): images + `cars_annos.mat`.

Layout (pass the folder as `data_dir`):

  car_ims/000001.jpg ... 016185.jpg     (car_ims.tgz)
  cars_annos.mat                        annotations: relative_im_path,
                                        bbox_x1, bbox_y1, bbox_x2, bbox_y2,
                                        class (1..196), test; class_names

Song et al.'s split, used by Wu et al.: classes 1–98 train (8,054 images),
99–196 test (8,131); the file's own `test` flag (its classification split)
is ignored. `cropped=True` cuts each car out along its box (1-based,
inclusive pixel coordinates in the file) before the 256 × 256 scaling.
"""

import os

import numpy as np
import scipy.io

from dmljax.data import files

HOW_TO_GET = (
  "CARS196 comes from the Stanford Cars page "
  "(https://ai.stanford.edu/~jkrause/cars/car_dataset.html: car_ims.tgz "
  "and cars_annos.mat; mirrors exist if it is down, e.g. the tfds "
  "`cars196` sources). Unpack both into one folder so that it holds "
  "car_ims/000001.jpg and cars_annos.mat, and pass it as --data_dir."
)
ANNOTATIONS = "cars_annos.mat"
FIELDS = (
  "relative_im_path",
  "bbox_x1",
  "bbox_y1",
  "bbox_x2",
  "bbox_y2",
  "class",
)
NUM_CLASSES = 196
OFFICIAL = {
  "train": {"images": 8_054, "classes": 98},
  "test": {"images": 8_131, "classes": 98},
}
SOURCE = "Song et al. 2016, Sec. 6; cars_annos.mat (16,185 images)"


def parse_annotations(path: str):
  """(relative paths [N], classes int [N] 1-based, boxes [N, 4], names).

  Raises:
    ValueError: the file is not a MATLAB file with the official fields.
  """
  try:
    mat = scipy.io.loadmat(path, squeeze_me=True)
  except (ValueError, OSError, TypeError) as error:
    raise ValueError(
      f"{path} is not a readable MATLAB file ({error}). {HOW_TO_GET}"
    ) from error
  annotations = mat.get("annotations")
  names = getattr(annotations, "dtype", None)
  names = () if names is None or names.names is None else names.names
  missing = [f for f in FIELDS if f not in names]
  if missing:
    raise ValueError(
      f"{path}: 'annotations' lacks the fields {missing} (expected "
      f"{list(FIELDS)} as in the official cars_annos.mat)."
    )
  annotations = np.atleast_1d(annotations)
  relative = [str(a) for a in annotations["relative_im_path"]]
  classes = np.asarray(annotations["class"], np.int64)
  boxes = np.stack(
    [np.asarray(annotations[f], np.float32) for f in FIELDS[1:5]], axis=1
  )
  boxes[:, :2] -= 1  # 1-based inclusive → 0-based [x1, x2) for Pillow.
  class_names = [str(n) for n in np.atleast_1d(mat.get("class_names", []))]
  if len(class_names) != NUM_CLASSES:
    class_names = [str(c) for c in range(1, NUM_CLASSES + 1)]
  if classes.min() < 1 or classes.max() > NUM_CLASSES:
    raise ValueError(
      f"{path}: class ids must be 1..{NUM_CLASSES}, got "
      f"{classes.min()}..{classes.max()}."
    )
  return relative, classes, boxes, tuple(class_names)


def load(data_dir, split, *, preprocess, check_counts, cropped):
  """The train (classes 1–98) or test (99–196) split of CARS196.

  Args:
    data_dir: the folder holding car_ims/ and cars_annos.mat.
    split: "train" or "test".
    preprocess: scaling and crop (`readers.READERS`' default: the
      paper's, 256 × 256, crop 224).
    check_counts: compare with the official image and class counts.
    cropped: cut each image to its bounding box first.
  """
  dataset = "CARS196"
  files.require_files(dataset, data_dir, [ANNOTATIONS], how_to_get=HOW_TO_GET)
  relative, classes, boxes, class_names = parse_annotations(
    os.path.join(data_dir, ANNOTATIONS)
  )
  keep, present, labels = files.class_half(classes, NUM_CLASSES, split)
  if check_counts:
    found = {"images": int(keep.sum()), "classes": len(np.unique(labels))}
    files.check_counts(dataset, found, OFFICIAL[split], source=SOURCE)
  paths = tuple(
    os.path.join(data_dir, p) for p, k in zip(relative, keep, strict=True) if k
  )
  files.check_images_exist(dataset, paths, how_to_get=HOW_TO_GET)
  return files.FileSplit(
    paths=paths,
    labels=labels,
    class_names=tuple(class_names[c - 1] for c in present),
    name=f"cars196/{split}",
    preprocess=preprocess,
    boxes=boxes[keep] if cropped else None,
  )
