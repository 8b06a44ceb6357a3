"""CUB-200-2011 (Wah et al., 2011): images + the official list files.

Layout (the official `CUB_200_2011.tgz`, unpacked; pass the folder that
holds the lists as `data_dir`):

  CUB_200_2011/
    images.txt              "image_id relative_path"
    image_class_labels.txt  "image_id class_id" (1..200)
    bounding_boxes.txt      "image_id x y width height" (pixels)
    images/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg ...

Song et al.'s split, used by Wu et al.: species 1–100 train (5,864 images),
101–200 test (5,924). Images are scaled and padded so that the longer side
is 256, aspect ratio kept (Wu et al. Sec. 5: mode "pad"); `cropped=True`
first cuts the bird out along its box.
"""

import os

import numpy as np

from dmljax.data import files

HOW_TO_GET = (
  "CUB-200-2011 comes from https://www.vision.caltech.edu/datasets/cub_200_2011/"
  " (CUB_200_2011.tgz, 1.1 GB); untar it and pass --data_dir=<...>/"
  "CUB_200_2011, the folder that holds images.txt, image_class_labels.txt, "
  "bounding_boxes.txt and images/."
)
LISTS = ("images.txt", "image_class_labels.txt", "bounding_boxes.txt")
NUM_CLASSES = 200
OFFICIAL = {
  "train": {"images": 5_864, "classes": 100},
  "test": {"images": 5_924, "classes": 100},
}
SOURCE = "Song et al. 2016, Sec. 6; CUB_200_2011 README (11,788 images)"


def _read_table(path: str, num_fields: int, *, numeric_from: int):
  """{image_id: fields[1:]} of a whitespace-separated list file."""
  table = {}
  with open(path) as f:
    for number, line in enumerate(f, start=1):
      fields = line.split()
      if not fields:
        continue
      ok = len(fields) == num_fields and fields[0].isdigit()
      try:
        values = fields[1:numeric_from] + [
          float(v) for v in fields[numeric_from:]
        ]
      except ValueError:
        ok = False
      if not ok:
        raise ValueError(
          f"{path}, line {number}: expected {num_fields} fields starting "
          f"with an image id, got {line.rstrip()!r}."
        )
      table[int(fields[0])] = values
  return table


def parse_lists(data_dir: str):
  """(relative paths [N], classes int [N] 1-based, boxes [N, 4] x1y1x2y2).

  Raises:
    ValueError: a malformed line, or an image id missing from one list.
  """
  images = _read_table(os.path.join(data_dir, LISTS[0]), 2, numeric_from=2)
  labels = _read_table(os.path.join(data_dir, LISTS[1]), 2, numeric_from=1)
  boxes = _read_table(os.path.join(data_dir, LISTS[2]), 5, numeric_from=1)
  ids = sorted(images)
  for name, table in zip(LISTS[1:], (labels, boxes), strict=True):
    if set(table) != set(ids):
      odd = sorted(set(table) ^ set(ids))[:5]
      raise ValueError(
        f"{os.path.join(data_dir, name)} and images.txt list different "
        f"image ids (e.g. {odd}); the lists must come from one archive."
      )
  relative = [images[i][0] for i in ids]
  classes = np.array([int(labels[i][0]) for i in ids], np.int64)
  xywh = np.array([boxes[i] for i in ids], np.float32).reshape(-1, 4)
  corners = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
  return relative, classes, corners


def load(data_dir, split, *, preprocess, check_counts, cropped):
  """The train (species 1–100) or test (101–200) split of CUB-200-2011.

  Args:
    data_dir: the folder holding images.txt and images/.
    split: "train" or "test".
    preprocess: scaling and crop (`readers.READERS`' default: the
      paper's, mode "pad", 256, crop 224).
    check_counts: compare with the official image and class counts.
    cropped: cut each image to its bounding box first.
  """
  dataset = "CUB-200-2011"
  files.require_files(dataset, data_dir, LISTS, how_to_get=HOW_TO_GET)
  relative, classes, boxes = parse_lists(data_dir)
  if classes.min() < 1 or classes.max() > NUM_CLASSES:
    raise ValueError(
      f"{data_dir}/image_class_labels.txt: class ids must be "
      f"1..{NUM_CLASSES}, got {classes.min()}..{classes.max()}."
    )
  keep, present, labels = files.class_half(classes, NUM_CLASSES, split)
  if check_counts:
    found = {"images": int(keep.sum()), "classes": len(np.unique(labels))}
    files.check_counts(dataset, found, OFFICIAL[split], source=SOURCE)
  kept = [p for p, k in zip(relative, keep, strict=True) if k]
  paths = tuple(os.path.join(data_dir, "images", p) for p in kept)
  files.check_images_exist(dataset, paths, how_to_get=HOW_TO_GET)
  names = {}
  for path, label in zip(kept, labels, strict=True):
    names.setdefault(int(label), path.split("/")[0])
  class_names = tuple(names[c] for c in range(len(present)))
  return files.FileSplit(
    paths=paths,
    labels=labels,
    class_names=class_names,
    name=f"cub200/{split}",
    preprocess=preprocess,
    boxes=boxes[keep] if cropped else None,
  )
