"""Benchmark readers on tiny fabricated archives: lists, errors, pipeline.

Each archive (tests/archives.py) has the official layout and list formats
with a handful of small JPEGs; `check_counts=False` because they are not
the full datasets (one test checks that the count check fires).
"""

import os

import archives
import numpy as np
import pytest
import scipy.io
from PIL import Image

from dmljax.data import cars196
from dmljax.data import images
from dmljax.data import pk
from dmljax.data import readers

_SMALL = images.Preprocess(resize=36, crop=32)
_CROPPED = ("cars196", "cub200")


def _load(name, root, split, **kwargs):
  kwargs.setdefault("check_counts", False)
  kwargs.setdefault("cropped", name in _CROPPED)
  preprocess = images.Preprocess(
    mode="pad" if name == "cub200" else "square", resize=36, crop=32
  )
  return readers.load_file_split(
    name, split, data_dir=root, preprocess=preprocess, **kwargs
  )


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
  base = tmp_path_factory.mktemp("archives")
  return {name: make(str(base)) for name, make in archives.MAKERS.items()}


# (dataset, split) -> (images, classes) of the fabricated archives.
_EXPECTED = {
  ("sop", "train"): (18, 6),
  ("sop", "test"): (18, 6),
  ("cars196", "train"): (15, 5),
  ("cars196", "test"): (15, 5),
  ("cub200", "train"): (15, 5),
  ("cub200", "test"): (15, 5),
  ("inshop", "train"): (15, 5),
  ("inshop", "test"): (20, 5),
  ("lfw", "train"): (15, 5),
  ("lfw", "test"): (12, 6),
}


@pytest.mark.parametrize(
  "name,split",
  sorted(_EXPECTED),
  ids=[f"{n}-{s}" for n, s in sorted(_EXPECTED)],
)
def test_reader_splits_by_class_and_points_at_the_files(roots, name, split):
  data = _load(name, roots[name], split)
  assert (len(data), data.num_classes) == _EXPECTED[name, split]
  assert all(os.path.isfile(p) for p in data.paths)
  np.testing.assert_array_equal(
    np.unique(data.labels), np.arange(len(data.class_names))
  )
  assert data.image_shape == (32, 32, 3)


def test_class_halves_follow_the_official_ids(roots):
  train = _load("cub200", roots["cub200"], "train")
  test = _load("cub200", roots["cub200"], "test")
  assert train.class_names[0].startswith("001.")
  assert all(
    n.startswith("1") and len(n.split(".")[0]) == 3 for n in test.class_names
  )
  assert not set(train.paths) & set(test.paths)
  cars_test = _load("cars196", roots["cars196"], "test")
  assert cars_test.class_names[0] == "Car Model 99 2012"
  # The box file's 1-based corners become 0-based (x1, y1) for Pillow.
  np.testing.assert_allclose(cars_test.boxes[0], [4, 3, 40, 28])


def test_inshop_query_gallery_and_lfw_pairs(roots):
  test = _load("inshop", roots["inshop"], "test")
  assert test.query.sum() == 10 and (~test.query).sum() == 10
  assert set(test.labels[test.query]) == set(test.labels[~test.query])
  lfw = _load("lfw", roots["lfw"], "test")
  assert (
    lfw.pairs.shape == (20, 2) and lfw.is_same.tolist() == [True, False] * 10
  )
  same = lfw.labels[lfw.pairs[:, 0]] == lfw.labels[lfw.pairs[:, 1]]
  np.testing.assert_array_equal(same, lfw.is_same)


@pytest.mark.parametrize("name", sorted(archives.MAKERS))
def test_pk_and_eval_batches_decode_files(roots, name):
  train = _load(name, roots[name], "train")
  batch = next(iter(pk.pk_batches(train, batch_size=10, seed=3)))
  assert batch["image"].shape == (10, 32, 32, 3)
  assert batch["image"].dtype == np.float32
  assert np.unique(batch["label"], return_counts=True)[1].tolist() == [5, 5]
  test = _load(name, roots[name], "test")
  batches = list(pk.eval_batches(test, batch_size=8))
  assert len(batches) == -(-len(test) // 8)
  last = batches[-1]
  assert last["image"].shape == (8, 32, 32, 3)
  assert not last["image"][~last["mask"]].any()
  labels = np.concatenate([b["label"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(labels, test.labels)


def test_file_batches_are_deterministic_and_shard_exactly(roots):
  train = _load("sop", roots["sop"], "train")
  whole = next(iter(pk.pk_batches(train, batch_size=10, seed=1)))
  again = next(iter(pk.pk_batches(train, batch_size=10, seed=1)))
  np.testing.assert_array_equal(whole["image"], again["image"])
  halves = [
    next(
      iter(
        pk.pk_batches(
          train, batch_size=10, seed=1, shard_index=i, shard_count=2
        )
      )
    )
    for i in range(2)
  ]
  for key in ("image", "label", "index"):
    np.testing.assert_array_equal(
      np.concatenate([h[key] for h in halves]), whole[key]
    )


def test_eval_is_the_center_crop_of_the_resized_image(roots):
  test = _load("sop", roots["sop"], "test")
  batch = next(iter(pk.eval_batches(test, batch_size=2)))
  resized = images.resized(images.decode(test.paths[0]), test.preprocess)
  expected = images.to_input(resized[None, 2:34, 2:34], test.preprocess)
  np.testing.assert_allclose(batch["image"][:1], expected)


def test_pad_mode_keeps_the_aspect_ratio():
  image = Image.new("RGB", (100, 50), (200, 10, 10))
  out = images.resized(image, images.Preprocess(mode="pad", resize=20, crop=16))
  rows = np.flatnonzero(out[:, :, 0].any(axis=1))
  assert out.shape == (20, 20, 3) and (rows.min(), rows.max()) == (5, 14)


def test_box_is_cut_before_scaling(tmp_path):
  pixels = np.zeros((20, 40, 3), np.uint8)
  pixels[5:15, 10:30] = 255
  path = str(tmp_path / "x.png")
  Image.fromarray(pixels).save(path)
  box = np.array([10, 5, 30, 15], np.float32)
  assert np.asarray(images.decode(path, box)).min() == 255
  assert images.decode(path, box).size == (20, 10)


# --- Bad input -------------------------------------------------------------


def test_missing_data_dir_says_where_to_get_the_data(tmp_path):
  with pytest.raises(ValueError, match="no data directory given.*--data_dir"):
    _load("sop", "", "train")
  with pytest.raises(
    ValueError, match="is missing Ebay_train.txt.*cvgl.stanford"
  ):
    _load("sop", str(tmp_path), "train")
  with pytest.raises(ValueError, match="is missing cars_annos.mat"):
    _load("cars196", str(tmp_path), "train")
  with pytest.raises(ValueError, match="images.txt.*CUB_200_2011.tgz"):
    _load("cub200", str(tmp_path), "train")
  with pytest.raises(ValueError, match="list_eval_partition.txt.*DeepFashion"):
    _load("inshop", str(tmp_path), "train")
  with pytest.raises(
    ValueError, match="missing CASIA-WebFace.*CASIA-WebFace/<identity>"
  ):
    _load("lfw", str(tmp_path), "train")
  with pytest.raises(ValueError, match="Unknown benchmark 'sop2'"):
    _load("sop2", str(tmp_path), "train")


def test_counts_are_checked_against_the_official_figures(roots):
  with pytest.raises(
    ValueError, match=r"images: found 18, official 59,551.*check_counts=False"
  ):
    _load("sop", roots["sop"], "train", check_counts=True)
  with pytest.raises(ValueError, match=r"pairs: found 20, official 6,000"):
    _load("lfw", roots["lfw"], "test", check_counts=True)


def _copy_with(root, tmp_path, name, edit):
  import shutil

  target = tmp_path / "copy"
  shutil.copytree(root, target)
  edit(target)
  return str(target)


def _rewrite(path, transform):
  text = path.read_text()
  path.write_text(transform(text))


@pytest.mark.parametrize(
  "name,edit,match",
  [
    (
      "sop",
      lambda d: _rewrite(d / "Ebay_train.txt", lambda t: t + "7 x 1\n"),
      r"Ebay_train.txt, line 20: expected",
    ),
    (
      "sop",
      lambda d: _rewrite(d / "Ebay_train.txt", lambda t: t.split("\n", 1)[1]),
      "header",
    ),
    (
      "cub200",
      lambda d: _rewrite(
        d / "bounding_boxes.txt", lambda t: t.replace(" 4.0", " four", 1)
      ),
      r"bounding_boxes.txt, line 1: expected 5 fields",
    ),
    (
      "cub200",
      lambda d: _rewrite(
        d / "image_class_labels.txt", lambda t: t.rsplit("\n", 2)[0] + "\n"
      ),
      "list different image ids",
    ),
    (
      "inshop",
      lambda d: _rewrite(
        d / "list_eval_partition.txt",
        lambda t: t.replace(" train", " validate", 1),
      ),
      "line 3: expected 'image_name item_id",
    ),
    (
      "inshop",
      lambda d: _rewrite(
        d / "list_eval_partition.txt", lambda t: t.rsplit("\n", 2)[0] + "\n"
      ),
      "announces 35 images but 34",
    ),
    (
      "lfw",
      lambda d: _rewrite(
        d / "pairs.txt", lambda t: "ten 1\n" + t.split("\n", 1)[1]
      ),
      "line 1 must be 'folds pairs_per_kind'",
    ),
    (
      "lfw",
      lambda d: _rewrite(d / "pairs.txt", lambda t: t + "A 1\n"),
      r"pairs.txt, line 22: expected 'name i j'",
    ),
    (
      "cars196",
      lambda d: scipy.io.savemat(
        d / "cars_annos.mat", {"annotations": np.zeros((1, 2))}
      ),
      "lacks the fields",
    ),
  ],
  ids=[
    "sop-line",
    "sop-header",
    "cub-box",
    "cub-ids",
    "inshop-status",
    "inshop-count",
    "lfw-header",
    "lfw-line",
    "cars-fields",
  ],
)
def test_malformed_lists_name_the_file_and_line(
  roots, tmp_path, name, edit, match
):
  root = _copy_with(roots[name], tmp_path, name, edit)
  split = "test" if name == "lfw" else "train"
  with pytest.raises(ValueError, match=match):
    _load(name, root, split)


def test_missing_images_are_listed(roots, tmp_path):
  def remove(d):
    os.remove(d / "car_ims" / "000001.jpg")

  root = _copy_with(roots["cars196"], tmp_path, "cars196", remove)
  with pytest.raises(
    ValueError, match=r"1 of the 15 listed images are missing.*000001.jpg"
  ):
    _load("cars196", root, "train")


def test_corrupt_jpeg_is_an_error_naming_the_file(roots, tmp_path):
  def truncate(d):
    path = d / "images" / sorted(os.listdir(d / "images"))[0]
    first = path / sorted(os.listdir(path))[0]
    first.write_bytes(first.read_bytes()[:100])

  root = _copy_with(roots["cub200"], tmp_path, "cub200", truncate)
  train = _load("cub200", root, "train")
  with pytest.raises(
    ValueError,
    match="Cannot decode image .*Bird_1_0000_1.jpg.*corrupt or truncated",
  ):
    list(pk.eval_batches(train, batch_size=8))


def test_cars_annotations_read_like_the_official_file(roots):
  relative, classes, boxes, names = cars196.parse_annotations(
    os.path.join(roots["cars196"], "cars_annos.mat")
  )
  assert relative[0] == "car_ims/000001.jpg" and classes[0] == 1
  assert len(names) == 196 and boxes.shape == (30, 4)
