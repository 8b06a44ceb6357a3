"""Faces: train on CASIA-WebFace, verify on LFW (Wu et al., Sec. 5).

Layout (pass the folder holding both as `data_dir`):

  CASIA-WebFace/0000045/001.jpg ...   one folder per identity (10,575)
  lfw/Aaron_Eckhart/Aaron_Eckhart_0001.jpg ...   one folder per person
  pairs.txt                           LFW's View 2 pairs: line 1 "10 300"
                                      (folds, pairs of each kind per fold),
                                      then per fold 300 matched lines
                                      "name i j" and 300 mismatched lines
                                      "name1 i name2 j"

Faces should be aligned beforehand (the paper aligns with MTCNN and falls
back to a centre crop); the pipeline scales them to 256 × 256 and crops 224.
The train split is every CASIA-WebFace identity (identities with a single
image are dropped: they cannot form a positive pair; a warning says how
many). The test split is the images that LFW's pairs name, with `pairs`
[6000, 2] and `is_same` [6000] in file order, so fold f is the f-th run of
600 pairs (`dmljax.metrics.verification_accuracy`).
"""

import logging
import os

import numpy as np

from dmljax.data import files
from dmljax.data.images import Preprocess

_logger = logging.getLogger(__name__)

HOW_TO_GET = (
  "CASIA-WebFace (Yi et al. 2014) is distributed by its authors on request "
  "(and as aligned copies by face-recognition projects); LFW and pairs.txt "
  "come from https://vis-www.cs.umass.edu/lfw/ (lfw.tgz, pairs.txt). Put "
  "them in one folder as CASIA-WebFace/<identity>/*.jpg, "
  "lfw/<name>/<name>_0001.jpg and pairs.txt, and pass it as --data_dir."
)
CASIA = "CASIA-WebFace"
LFW = "lfw"
PAIRS = "pairs.txt"
EXTENSIONS = (".jpg", ".jpeg", ".png")
OFFICIAL = {
  "train": {"images": 494_414, "classes": 10_575},
  "test": {"pairs": 6_000, "folds": 10},
}
SOURCE = "Wu et al. 2017, Sec. 5; Yi et al. 2014; LFW README (pairs.txt)"


def parse_pairs(path: str) -> tuple[int, list[tuple[str, int, str, int]]]:
  """(number of folds, [(name1, i, name2, j)]) of LFW's pairs.txt.

  Raises:
    ValueError: a bad header, line or count, naming the file and line.
  """
  with open(path) as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
  header = lines[0].split() if lines else []
  if len(header) != 2 or not all(h.isdigit() for h in header):
    raise ValueError(
      f"{path}: line 1 must be 'folds pairs_per_kind' (e.g. '10 300'), got "
      f"{lines[:1]}."
    )
  num_folds, per_kind = int(header[0]), int(header[1])
  pairs = []
  for number, line in enumerate(lines[1:], start=2):
    fields = line.split()
    if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
      pairs.append((fields[0], int(fields[1]), fields[0], int(fields[2])))
    elif len(fields) == 4 and fields[1].isdigit() and fields[3].isdigit():
      pairs.append((fields[0], int(fields[1]), fields[2], int(fields[3])))
    else:
      raise ValueError(
        f"{path}, line {number}: expected 'name i j' or 'name1 i name2 j', "
        f"got {line!r}."
      )
  if len(pairs) != 2 * num_folds * per_kind:
    raise ValueError(
      f"{path}: the header announces {num_folds} folds × 2 × {per_kind} = "
      f"{2 * num_folds * per_kind} pairs but {len(pairs)} are listed."
    )
  return num_folds, pairs


def lfw_path(data_dir: str, name: str, number: int) -> str:
  """lfw/<name>/<name>_<number:04d>.jpg under `data_dir`."""
  return os.path.join(data_dir, LFW, name, f"{name}_{number:04d}.jpg")


def _casia(data_dir: str, preprocess: Preprocess, check_counts: bool):
  root = os.path.join(data_dir, CASIA)
  identities = sorted(e.name for e in os.scandir(root) if e.is_dir())
  members = {
    identity: sorted(
      e.name
      for e in os.scandir(os.path.join(root, identity))
      if e.name.lower().endswith(EXTENSIONS)
    )
    for identity in identities
  }
  if check_counts:
    found = {
      "images": sum(len(m) for m in members.values()),
      "classes": len(identities),
    }
    files.check_counts("CASIA-WebFace", found, OFFICIAL["train"], source=SOURCE)
  single = [i for i in identities if len(members[i]) < 2]
  if single:
    _logger.warning(
      "CASIA-WebFace: dropped %d identities with fewer than 2 images "
      "(no positive pair), e.g. %s.",
      len(single),
      single[:5],
    )
  kept = [i for i in identities if len(members[i]) >= 2]
  paths = tuple(
    os.path.join(root, i, name) for i in kept for name in members[i]
  )
  labels = np.repeat(
    np.arange(len(kept), dtype=np.int32), [len(members[i]) for i in kept]
  )
  return files.FileSplit(
    paths=paths,
    labels=labels,
    class_names=tuple(kept),
    name="casia_webface/train",
    preprocess=preprocess,
  )


def _lfw(data_dir: str, preprocess: Preprocess, check_counts: bool):
  num_folds, pairs = parse_pairs(os.path.join(data_dir, PAIRS))
  if check_counts:
    found = {"pairs": len(pairs), "folds": num_folds}
    files.check_counts("LFW", found, OFFICIAL["test"], source=SOURCE)
  index: dict[tuple[str, int], int] = {}
  ids = [
    [index.setdefault(key, len(index)) for key in ((a, i), (b, j))]
    for a, i, b, j in pairs
  ]
  paths = tuple(lfw_path(data_dir, name, number) for name, number in index)
  files.check_images_exist("LFW", paths, how_to_get=HOW_TO_GET)
  labels, names = files.dense_labels(name for name, _ in index)
  return files.FileSplit(
    paths=paths,
    labels=labels,
    class_names=names,
    name="lfw/test",
    preprocess=preprocess,
    pairs=np.asarray(ids, np.int32).reshape(-1, 2),
    is_same=np.array([a == b for a, _, b, _ in pairs]),
  )


def load(data_dir, split, *, preprocess, check_counts, cropped):
  """CASIA-WebFace ("train") or LFW's verification pairs ("test").

  Args:
    data_dir: the folder holding CASIA-WebFace/, lfw/ and pairs.txt.
    split: "train" or "test".
    preprocess: scaling and crop (`readers.READERS`' default: 256 ×
      256, crop 224).
    check_counts: compare with the official counts (images and identities
      of CASIA-WebFace; 10 folds × 600 pairs of LFW).
    cropped: faces have no boxes; must be False.
  """
  if cropped:
    raise ValueError("Face datasets have no boxes: set data.cropped=False.")
  if split == "train":
    files.require_files(
      "CASIA-WebFace", data_dir, [CASIA], how_to_get=HOW_TO_GET
    )
    return _casia(data_dir, preprocess, check_counts)
  if split == "test":
    files.require_files("LFW", data_dir, [LFW, PAIRS], how_to_get=HOW_TO_GET)
    return _lfw(data_dir, preprocess, check_counts)
  raise ValueError(f"Unknown split {split!r}; valid splits: train, test.")
