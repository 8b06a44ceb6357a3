"""Tiny prepared tfds datasets, built from the fabricated official archives.

`make(dataset, root)` writes a tiny official archive (tests/archives.py)
and prepares the tfds version of the same images with tfds's own builder
class (its real features, its file names, version and metadata) in the
ArrayRecord format, the way tfds's generator would have stored them: JPEG
bytes as they are, boxes normalised (ymin, xmin, ymax, xmax), CARS196 and
CUB split by image. Needs tensorflow-datasets, not TensorFlow, no network.
Returns (the archive directory, the tfds data directory).
"""

import io
import os

import archives
import numpy as np
from PIL import Image

from dmljax.data import cars196
from dmljax.data import cub200
from dmljax.data import sop


def _png(size) -> bytes:
  buffer = io.BytesIO()
  Image.new("L", size).save(buffer, format="PNG")
  return buffer.getvalue()


def _read(path) -> tuple[bytes, tuple[int, int]]:
  with open(path, "rb") as f:
    data = f.read()
  with Image.open(io.BytesIO(data)) as image:
    return data, image.size


def _bbox(tfds, box, size):
  """tfds's BBox of pixel corners (x1, y1, x2, y2) in an image of `size`."""
  (x1, y1, x2, y2), (w, h) = box, size
  return tfds.features.BBox(
    ymin=min(y1 / h, 1.0),
    xmin=min(x1 / w, 1.0),
    ymax=min(y2 / h, 1.0),
    xmax=min(x2 / w, 1.0),
  )


def _cars196(tfds, base):
  relative, classes, boxes, _ = cars196.parse_annotations(
    os.path.join(base, cars196.ANNOTATIONS)
  )
  boxes[:, :2] += 1  # The .mat file's 1-based corners, as tfds keeps them.
  splits = {"train": [], "test": []}
  for i, (path, c, box) in enumerate(
    zip(relative, classes, boxes, strict=True)
  ):
    data, size = _read(os.path.join(base, path))
    splits["test" if i % 2 else "train"].append(
      {
        "image": data,
        "label": int(c) - 1,
        "id": os.path.basename(path),
        "bbox": _bbox(tfds, box, size),
      }
    )
  return splits


def _cub200(tfds, base):
  relative, classes, boxes = cub200.parse_lists(base)
  splits = {"train": [], "test": []}
  for i, (path, c, box) in enumerate(
    zip(relative, classes, boxes, strict=True)
  ):
    data, size = _read(os.path.join(base, "images", path))
    splits["test" if i % 2 else "train"].append(
      {
        "image": data,
        "label": int(c) - 1,
        "label_name": path.split("/")[0].split(".")[1].lower(),
        "image/filename": os.path.basename(path),
        "bbox": _bbox(tfds, box, size),
        "segmentation_mask": _png(size),
      }
    )
  return splits


def _sop(tfds, base):
  splits = {}
  for split, name in sop.LISTS.items():
    classes, relative = sop.parse_list(os.path.join(base, name))
    splits[split] = [
      {
        "image": _read(os.path.join(base, path))[0],
        "class_id": c - 1,
        "super_class_id/num": 0,
        "super_class_id": "bicycle",
      }
      for c, path in zip(classes, relative, strict=True)
    ]
  return splits


_MAKERS = {
  "sop": ("stanford_online_products", archives.make_sop, _sop),
  "cars196": ("cars196", archives.make_cars196, _cars196),
  "cub200": ("caltech_birds2011", archives.make_cub200, _cub200),
}


def prepare(tfds_name: str, data_dir: str, splits: dict) -> None:
  """Writes `splits` {name: [example]} as prepared tfds `tfds_name`."""
  import tensorflow_datasets as tfds

  class Fake(tfds.builder_cls(tfds_name), skip_registration=True):
    name = tfds_name

    def _split_generators(self, dl_manager):
      del dl_manager
      return {
        split: ((f"{split}_{i}", example) for i, example in enumerate(examples))
        for split, examples in splits.items()
      }

  builder = Fake(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(try_download_gcs=False)
  )


def make(dataset: str, root: str) -> tuple[str, str]:
  """(archive dir, tfds data dir) of a tiny `dataset` (sop/cars196/cub200)."""
  import tensorflow_datasets as tfds

  tfds_name, make_archive, examples = _MAKERS[dataset]
  base = make_archive(os.path.join(root, "archive"))
  data_dir = os.path.join(root, "tfds")
  prepare(tfds_name, data_dir, examples(tfds, base))
  return base, data_dir


def content_order(a: np.ndarray) -> np.ndarray:
  """The row order that sorts `a` by content (tfds shuffles records)."""
  flat = a.reshape(len(a), -1)
  return np.lexsort(flat.T[::-1])
