"""data_source="tfds": prepared tfds datasets read like the official archives.

Tiny tfds datasets are prepared from the fabricated archives
(tests/tfds_fakes.py, no TensorFlow, no network); the tfds reader must give
the file reader's split (classes, labels, decoded and boxed images), feed
pk_batches, survive pickling (grain workers) and train through a driver.
"""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from subprocesses import ROOT

tfds = pytest.importorskip(
  "tensorflow_datasets",
  reason="tensorflow-datasets is not installed (the optional extra: "
  "pip install -e '.[tfds]')",
  exc_type=ImportError,  # Also a broken install (e.g. no array_record).
)

import tfds_fakes  # noqa: E402

from dmljax.data import Preprocess  # noqa: E402
from dmljax.data import eval_batches  # noqa: E402
from dmljax.data import images  # noqa: E402
from dmljax.data import load_file_split  # noqa: E402
from dmljax.data import pk_batches  # noqa: E402
from dmljax.data import tfds_source  # noqa: E402

SMALL = Preprocess(resize=36, crop=32)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """{dataset: (archive dir, tfds data dir)}, made once for the module."""
  root = tmp_path_factory.mktemp("tfds")
  return {
    name: tfds_fakes.make(name, str(root / name))
    for name in ("sop", "cars196", "cub200")
  }


def _decoded(split) -> tuple[np.ndarray, np.ndarray]:
  """(labels, centre-cropped images) of every row, in content order."""
  batch = next(iter(eval_batches(split, batch_size=len(split))))
  labels, pixels = batch["label"], batch["image"]
  keys = np.concatenate(
    [labels[:, None].astype(np.float32), pixels.reshape(len(labels), -1)], 1
  )
  order = tfds_fakes.content_order(keys)
  return labels[order], pixels[order]


@pytest.mark.parametrize(
  "name, cropped",
  [("sop", False), ("cars196", True), ("cub200", True), ("cub200", False)],
)
@pytest.mark.parametrize("split", ["train", "test"])
def test_same_split_as_the_file_reader(prepared, name, cropped, split):
  archive, data_dir = prepared[name]
  kwargs = dict(preprocess=SMALL, check_counts=False, cropped=cropped)
  files = load_file_split(name, split, data_dir=archive, **kwargs)
  records = tfds_source.load(name, split, data_dir=data_dir, **kwargs)
  assert records.name == files.name == f"{name}/{split}"
  assert len(records) == len(files)
  assert records.num_classes == files.num_classes
  assert (records.boxes is None) == (not cropped)
  file_labels, file_images = _decoded(files)
  record_labels, record_images = _decoded(records)
  np.testing.assert_array_equal(record_labels, file_labels)
  np.testing.assert_allclose(record_images, file_images, atol=1e-5)


def test_pk_batches_pickling_and_first_classes(prepared):
  split = tfds_source.load(
    "cars196",
    "train",
    data_dir=prepared["cars196"][1],
    preprocess=SMALL,
    check_counts=False,
    cropped=True,
  )
  batches = pk_batches(split, batch_size=6, images_per_class=3, num_steps=2)
  batch = next(iter(batches))
  assert batch["image"].shape == (6, 32, 32, 3)
  assert np.unique(batch["label"], return_counts=True)[1].tolist() == [3, 3]
  again = pickle.loads(pickle.dumps(split))  # What a grain worker gets.
  np.testing.assert_array_equal(
    next(iter(pk_batches(again, batch_size=6, images_per_class=3)))["image"],
    batch["image"],
  )
  first = split.first_classes(2)
  assert len(first) == 6 and first.records.index.shape == (6,)
  assert next(iter(eval_batches(first, batch_size=4)))["mask"].all()


def test_refusals_say_what_to_do(prepared, tmp_path):
  data_dir = prepared["sop"][1]
  with pytest.raises(ValueError, match="pairs.txt.*data_source='files'"):
    tfds_source.load("lfw", "test", data_dir=data_dir)
  with pytest.raises(ValueError, match="no In-Shop"):
    tfds_source.load("inshop", "train", data_dir=data_dir)
  with pytest.raises(ValueError, match="not prepared.*tfds build cars196"):
    tfds_source.load("cars196", "train", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="found 18, official 59,551"):
    tfds_source.load("sop", "train", data_dir=data_dir)
  with pytest.raises(ValueError, match="no bounding boxes"):
    tfds_source.load("sop", "train", data_dir=data_dir, cropped=True)
  with pytest.raises(ValueError, match=r"tfds:x\[3\].*record is corrupt"):
    images.decode("tfds:x[3]", data=b"not an image")


def test_tfrecord_copies_are_refused(prepared, tmp_path):
  copy = tmp_path / "tfds"
  subprocess.run(["cp", "-r", prepared["sop"][1], str(copy)], check=True)
  (info,) = copy.glob("stanford_online_products/*/dataset_info.json")
  text = info.read_text().replace('"array_record"', '"tfrecord"')
  info.write_text(text)
  with pytest.raises(ValueError, match="--file_format=array_record"):
    tfds_source.load("sop", "train", data_dir=str(copy), check_counts=False)


@pytest.mark.slow
def test_driver_trains_from_tfds(prepared, tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.cars196",
      "--config=margin_dw:smoke",
      "--data_source=tfds",
      f"--data_dir={prepared['cars196'][1]}",
      f"--workdir={tmp_path / 'run'}",
      "--config.data.cropped=True",
      "--config.train.num_steps=2",
      "--config.train.eval_every=1",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["config"]["data"]["data_source"] == "tfds"
  assert {"recall@1", "nmi"} <= set(summary["final"])
