"""Tiny fabricated copies of the benchmarks' official archive layouts.

Each `make_<dataset>(root)` writes a handful of small JPEGs under the real
file names and list formats (see dmljax/data/<dataset>.py) and returns the
directory to pass as `data_dir`. Images of one class share a colour, so a
network can tell classes apart.
"""

import os

import numpy as np
import scipy.io
from PIL import Image


def write_jpeg(path, seed: int, size=(40, 30)):
  """A small noisy JPEG whose mean colour depends on `seed // 100`."""
  rng = np.random.default_rng(seed)
  colour = np.random.default_rng(seed // 100).integers(0, 256, 3)
  pixels = np.clip(
    colour + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255
  ).astype(np.uint8)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(pixels).save(path, quality=85)


def make_sop(root, *, classes_per_split=6, images_per_class=3):
  """Stanford_Online_Products/ with Ebay_train.txt and Ebay_test.txt."""
  base = os.path.join(root, "Stanford_Online_Products")
  image_id, class_id = 1, 1
  for split in ("train", "test"):
    lines = ["image_id class_id super_class_id path"]
    for _ in range(classes_per_split):
      for j in range(images_per_class):
        relative = f"bicycle_final/{111085122870 + class_id}_{j}.JPG"
        write_jpeg(os.path.join(base, relative), class_id * 100 + j)
        lines.append(f"{image_id} {class_id} 1 {relative}")
        image_id += 1
      class_id += 1
    with open(os.path.join(base, f"Ebay_{split}.txt"), "w") as f:
      f.write("\n".join(lines) + "\n")
  return base


def make_cars196(root, *, classes=(1, 2, 3, 4, 5, 99, 100, 101, 102, 103)):
  """car_ims/*.jpg and cars_annos.mat in the official struct layout."""
  base = os.path.join(root, "cars196")
  records = []
  number = 1
  for c in classes:
    for j in range(3):
      relative = f"car_ims/{number:06d}.jpg"
      write_jpeg(os.path.join(base, relative), c * 100 + j, size=(48, 32))
      records.append((relative, 5, 4, 40, 28, c, j % 2))
      number += 1
  dtype = [
    ("relative_im_path", object),
    ("bbox_x1", object),
    ("bbox_y1", object),
    ("bbox_x2", object),
    ("bbox_y2", object),
    ("class", object),
    ("test", object),
  ]
  annotations = np.array(
    [
      tuple(np.array([[v]]) if k else v for k, v in enumerate(r))
      for r in records
    ],
    dtype=dtype,
  ).reshape(1, -1)
  names = np.empty((1, 196), object)
  for c in range(196):
    names[0, c] = f"Car Model {c + 1} 2012"
  scipy.io.savemat(
    os.path.join(base, "cars_annos.mat"),
    {"annotations": annotations, "class_names": names},
  )
  return base


def make_cub200(root, *, classes=(1, 2, 3, 4, 5, 101, 102, 103, 104, 105)):
  """CUB_200_2011/ with images.txt, image_class_labels.txt, boxes, images/."""
  base = os.path.join(root, "CUB_200_2011")
  images, labels, boxes = [], [], []
  number = 1
  for c in classes:
    folder = f"{c:03d}.Bird_{c}"
    for j in range(3):
      relative = f"{folder}/Bird_{c}_{j:04d}_{number}.jpg"
      write_jpeg(os.path.join(base, "images", relative), c * 100 + j)
      images.append(f"{number} {relative}")
      labels.append(f"{number} {c}")
      boxes.append(f"{number} 4.0 3.0 30.0 20.0")
      number += 1
  for name, lines in (
    ("images.txt", images),
    ("image_class_labels.txt", labels),
    ("bounding_boxes.txt", boxes),
  ):
    with open(os.path.join(base, name), "w") as f:
      f.write("\n".join(lines) + "\n")
  return base


def make_inshop(root, *, train_items=5, test_items=5):
  """img/... and list_eval_partition.txt (3 train, 2 query + 2 gallery)."""
  base = os.path.join(root, "inshop")
  entries = []
  for item in range(1, train_items + test_items + 1):
    item_id = f"id_{item:08d}"
    statuses = (
      ["train"] * 3 if item <= train_items else ["query", "gallery"] * 2
    )
    for j, status in enumerate(statuses):
      relative = f"img/WOMEN/Dresses/{item_id}/{j + 1:02d}_1_front.jpg"
      write_jpeg(os.path.join(base, relative), item * 100 + j)
      entries.append(f"{relative} {item_id} {status}")
  with open(os.path.join(base, "list_eval_partition.txt"), "w") as f:
    f.write(f"{len(entries)}\nimage_name item_id evaluation_status\n")
    f.write("\n".join(entries) + "\n")
  return base


def make_faces(root, *, identities=5, people=6):
  """CASIA-WebFace/<id>/*.jpg, lfw/<name>/<name>_NNNN.jpg and pairs.txt.

  pairs.txt has LFW's 10 folds with 1 matched and 1 mismatched pair each.
  """
  base = os.path.join(root, "faces")
  for i in range(identities):
    for j in range(3):
      path = os.path.join(base, "CASIA-WebFace", f"{i:07d}", f"{j + 1:03d}.jpg")
      write_jpeg(path, (i + 1) * 100 + j)
  names = [f"Person_{chr(65 + p)}" for p in range(people)]
  for p, name in enumerate(names):
    for n in (1, 2):
      path = os.path.join(base, "lfw", name, f"{name}_{n:04d}.jpg")
      write_jpeg(path, (p + 50) * 100 + n)
  lines = ["10\t1"]
  for fold in range(10):
    a, b = names[fold % people], names[(fold + 1) % people]
    lines.append(f"{a}\t1\t2")
    lines.append(f"{a}\t1\t{b}\t2")
  with open(os.path.join(base, "pairs.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return base


MAKERS = {
  "sop": make_sop,
  "cars196": make_cars196,
  "cub200": make_cub200,
  "inshop": make_inshop,
  "lfw": make_faces,
}
