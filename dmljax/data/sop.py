"""Stanford Online Products (Song et al., CVPR 2016): the official lists.

Layout (the official `Stanford_Online_Products.zip`, unpacked; pass the
folder that holds the lists as `data_dir`):

  Stanford_Online_Products/
    Ebay_train.txt   "image_id class_id super_class_id path", one header line
    Ebay_test.txt    the same; class ids continue where train's stop
    bicycle_final/111085122871_0.JPG, ... (12 category folders)

The split is the lists' own (Song et al.: the first 11,318 products train,
the other 11,316 test), so no halving is needed; labels are the class ids
renumbered from 0 in order of first appearance. Official counts in
third_party/dataset_counts.md.
"""

import os

import numpy as np

from dmljax.data import files

HOW_TO_GET = (
  "Stanford Online Products comes from the project page "
  "https://cvgl.stanford.edu/projects/lifted_struct/ "
  "(Stanford_Online_Products.zip, 2.9 GB); unzip it and pass "
  "--data_dir=<...>/Stanford_Online_Products, the folder that holds "
  "Ebay_train.txt, Ebay_test.txt and the category folders."
)
LISTS = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}
OFFICIAL = {
  "train": {"images": 59_551, "classes": 11_318},
  "test": {"images": 60_502, "classes": 11_316},
}
SOURCE = "Song et al. 2016, Sec. 6; the dataset's README and Ebay_*.txt"


def parse_list(path: str) -> tuple[list[int], list[str]]:
  """(class ids, relative image paths) of an Ebay_*.txt file.

  Raises:
    ValueError: a line is not "image_id class_id super_class_id path",
      naming the file and line.
  """
  with open(path) as f:
    lines = f.read().splitlines()
  if not lines or lines[0].split() != [
    "image_id",
    "class_id",
    "super_class_id",
    "path",
  ]:
    raise ValueError(
      f"{path}: the first line must be the header 'image_id class_id "
      f"super_class_id path', got {lines[:1]}. Is this an official SOP list?"
    )
  classes, paths = [], []
  for number, line in enumerate(lines[1:], start=2):
    if not line.strip():
      continue
    fields = line.split()
    if len(fields) != 4 or not all(f.isdigit() for f in fields[:3]):
      raise ValueError(
        f"{path}, line {number}: expected 'image_id class_id super_class_id "
        f"path', got {line!r}."
      )
    classes.append(int(fields[1]))
    paths.append(fields[3])
  return classes, paths


def load(data_dir, split, *, preprocess, check_counts, cropped):
  """The train or test split of SOP as a `FileSplit`.

  Args:
    data_dir: the folder holding Ebay_train.txt and Ebay_test.txt.
    split: "train" or "test".
    preprocess: scaling and crop (`readers.READERS`' default: the
      paper's, 256 × 256, crop 224).
    check_counts: compare with the official image and class counts.
    cropped: SOP has no boxes; must be False.
  """
  if cropped:
    raise ValueError("SOP has no bounding boxes: set data.cropped=False.")
  if split not in LISTS:
    raise ValueError(f"Unknown split {split!r}; valid splits: {list(LISTS)}.")
  dataset = "Stanford Online Products"
  files.require_files(dataset, data_dir, [LISTS[split]], how_to_get=HOW_TO_GET)
  classes, relative = parse_list(os.path.join(data_dir, LISTS[split]))
  labels, names = files.dense_labels(classes)
  if check_counts:
    found = {"images": len(relative), "classes": len(names)}
    files.check_counts(dataset, found, OFFICIAL[split], source=SOURCE)
  paths = tuple(os.path.join(data_dir, p) for p in relative)
  files.check_images_exist(dataset, paths, how_to_get=HOW_TO_GET)
  return files.FileSplit(
    paths=paths,
    labels=np.asarray(labels, np.int32),
    class_names=names,
    name=f"sop/{split}",
    preprocess=preprocess,
  )
