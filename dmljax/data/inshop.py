"""In-Shop Clothes Retrieval (DeepFashion, Liu et al., CVPR 2016).

Layout (pass the benchmark's folder as `data_dir`):

  list_eval_partition.txt   (or Eval/list_eval_partition.txt)
                            line 1: the number of images; line 2: the
                            header "image_name item_id evaluation_status";
                            then "img/WOMEN/Dresses/id_00000002/02_1_front.jpg
                            id_00000002 train|query|gallery"
  img/WOMEN/..., img/MEN/... (Img/img.zip unpacked here, or in Img/)

Train on the "train" items (3,997); test by retrieving each "query" image
among the "gallery" images (Recall@k, k = 1, 10, 20, 30, 40). The test
split holds query and gallery images together with `query` marking which.
"""

import os

import numpy as np

from dmljax.data import files

HOW_TO_GET = (
  "In-Shop Clothes Retrieval is part of DeepFashion "
  "(https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html;"
  " fill in its agreement to get the Google Drive link). Unzip Img/img.zip "
  "so that <data_dir>/img/WOMEN/... exists and put Eval/"
  "list_eval_partition.txt in <data_dir> (or keep its Eval/ folder)."
)
LIST = "list_eval_partition.txt"
STATUSES = ("train", "query", "gallery")
OFFICIAL = {
  "train": {"images": 25_882, "classes": 3_997},
  "test": {"images": 26_830, "classes": 3_985, "query": 14_218},
}
SOURCE = "Liu et al. 2016, Sec. 5; DeepFashion In-shop README"


def parse_list(path: str) -> list[tuple[str, str, str]]:
  """(image_name, item_id, evaluation_status) of every listed image.

  Raises:
    ValueError: a malformed header, line or count, naming the file and line.
  """
  with open(path) as f:
    lines = f.read().splitlines()
  if len(lines) < 2 or not lines[0].strip().isdigit():
    raise ValueError(
      f"{path}: line 1 must be the number of images and line 2 the header "
      "'image_name item_id evaluation_status'."
    )
  entries = []
  for number, line in enumerate(lines[2:], start=3):
    fields = line.split()
    if not fields:
      continue
    if len(fields) != 3 or fields[2] not in STATUSES:
      raise ValueError(
        f"{path}, line {number}: expected 'image_name item_id "
        f"train|query|gallery', got {line!r}."
      )
    entries.append((fields[0], fields[1], fields[2]))
  if len(entries) != int(lines[0]):
    raise ValueError(
      f"{path}: line 1 announces {int(lines[0])} images but {len(entries)} "
      "are listed; the file is truncated."
    )
  return entries


def _locate(data_dir: str) -> tuple[str, str]:
  """(list file, image root) under `data_dir`, official layouts tried."""
  for candidate in (LIST, os.path.join("Eval", LIST)):
    if os.path.exists(os.path.join(data_dir or "", candidate)):
      list_path = candidate
      break
  else:
    files.require_files("In-Shop", data_dir, [LIST], how_to_get=HOW_TO_GET)
  root = data_dir
  if os.path.isdir(os.path.join(data_dir, "Img", "img")):
    root = os.path.join(data_dir, "Img")
  return os.path.join(data_dir, list_path), root


def load(data_dir, split, *, preprocess, check_counts, cropped):
  """The train split, or the test split (query + gallery), of In-Shop.

  Args:
    data_dir: the benchmark folder (see the module docstring).
    split: "train" or "test".
    preprocess: scaling and crop (`readers.READERS`' default: the
      paper's, 256 × 256, crop 224).
    check_counts: compare with the official image and item counts.
    cropped: In-Shop's boxes are not used; must be False.
  """
  if cropped:
    raise ValueError("In-Shop boxes are not supported: data.cropped=False.")
  if split not in ("train", "test"):
    raise ValueError(f"Unknown split {split!r}; valid splits: train, test.")
  list_path, root = _locate(data_dir)
  wanted = ("train",) if split == "train" else ("query", "gallery")
  entries = [e for e in parse_list(list_path) if e[2] in wanted]
  labels, names = files.dense_labels(item for _, item, _ in entries)
  query = np.array([status == "query" for *_, status in entries])
  if check_counts:
    found = {"images": len(entries), "classes": len(names)}
    found["query"] = int(query.sum())
    files.check_counts("In-Shop", found, OFFICIAL[split], source=SOURCE)
  paths = tuple(os.path.join(root, name) for name, _, _ in entries)
  files.check_images_exist("In-Shop", paths, how_to_get=HOW_TO_GET)
  if split == "test":
    gallery_items = set(labels[~query].tolist())
    orphans = sorted(set(labels[query].tolist()) - gallery_items)
    if orphans:
      raise ValueError(
        f"{list_path}: {len(orphans)} query items have no gallery image "
        f"(e.g. {[names[i] for i in orphans[:5]]}); the list is incomplete."
      )
  return files.FileSplit(
    paths=paths,
    labels=labels,
    class_names=names,
    name=f"inshop/{split}",
    preprocess=preprocess,
    query=query if split == "test" else None,
  )
