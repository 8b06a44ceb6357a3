"""The benchmarks read from prepared TensorFlow Datasets (`data_source="tfds"`).

Shape letters: N images.

An alternative to the official archives (`readers.py`) for a user who has
already prepared the tfds version of a dataset in the ArrayRecord format:

  "sop"      stanford_online_products  its own train / test splits (Ebay_*)
  "cars196"  cars196                   train + test re-split by class
  "cub200"   caltech_birds2011         train + test re-split by class

The records are read through `tfds.data_source` (random access, grain
workers) without TensorFlow: `pip install -e .[tfds]`. The result is the
same `FileSplit` as the file readers', with the same split semantics,
labels, counts check, boxes and preprocessing, so `pk_batches` and
`eval_batches` work unchanged; only the image bytes come from the records
(`FileSplit.records`) instead of files. tfds's CARS196 and CUB splits are
by image (the classification splits); Wu et al. split by class (Song et
al.: the first half of the classes train), so both tfds splits are read
and re-split by label. "lfw" (and "inshop") cannot come from tfds: tfds's
`lfw` has the LFW images and names only, without pairs.txt (the 6,000
verification pairs in 10 folds) and without CASIA-WebFace (the training
set); use `data_source="files"` for them.

Preparing needs TensorFlow once (`pip install tensorflow`), e.g.
`tfds build cars196 --file_format=array_record`; a TFRecord-prepared copy
cannot be read at random and is refused with that advice. Reading the
labels scans every record of the split once, at start-up.
"""

import dataclasses
import io
import os

import numpy as np
from PIL import Image

from dmljax.data import cars196
from dmljax.data import cub200
from dmljax.data import files
from dmljax.data import readers
from dmljax.data import sop
from dmljax.data.images import Preprocess

# Our benchmark name → the tfds dataset name.
TFDS_NAMES = {
  "sop": "stanford_online_products",
  "cars196": "cars196",
  "cub200": "caltech_birds2011",
}
_OFFICIAL = {
  "sop": sop.OFFICIAL,
  "cars196": cars196.OFFICIAL,
  "cub200": cub200.OFFICIAL,
}
_NUM_CLASSES = {"cars196": cars196.NUM_CLASSES, "cub200": cub200.NUM_CLASSES}
_CHUNK = 512  # Records read per call while scanning the labels.
INSTALL = (
  "Reading prepared tfds datasets needs the optional extra: "
  "pip install -e '.[tfds]' (tensorflow-datasets and array_record; "
  "TensorFlow itself is not needed to read)."
)


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError(f"data_source='tfds': {INSTALL}") from error
  return tfds


_SOURCES: dict = {}  # (name, split, data_dir) → data source, per process.


def _source(name: str, split: str, data_dir: str | None):
  """tfds's random-access source over `split`, images left encoded."""
  key = (name, split, data_dir)
  if key not in _SOURCES:
    tfds = _tfds()
    _SOURCES[key] = tfds.data_source(
      name,
      split=split,
      data_dir=data_dir,
      download=False,
      decoders={"image": tfds.decode.SkipDecoding()},
    )
  return _SOURCES[key]


@dataclasses.dataclass(frozen=True, eq=False)
class Records:
  """The encoded images of a split's rows: record `index[i]` of a source.

  Picklable (grain workers): each process opens its own data source.

  Attributes:
    name: the tfds dataset name.
    split: the tfds split string, e.g. "train+test".
    data_dir: the tfds data directory (None: tfds's default).
    index: int64 [N] record number of each row.
  """

  name: str
  split: str
  data_dir: str | None
  index: np.ndarray

  def read(self, rows) -> list[bytes]:
    """The encoded image (JPEG/PNG bytes) of each of `rows`."""
    source = _source(self.name, self.split, self.data_dir)
    records = source.__getitems__([int(i) for i in self.index[rows]])
    return [record["image"] for record in records]

  def take(self, rows) -> "Records":
    """The records of `rows` only (e.g. a subset of the classes)."""
    return dataclasses.replace(self, index=self.index[rows])


def _builder(name: str, data_dir: str | None):
  """The prepared builder; ValueError saying how to prepare it if absent."""
  tfds = _tfds()
  where = f" --data_dir={data_dir}" if data_dir else ""
  how = (
    f"Prepare it once with TensorFlow installed: `tfds build {name} "
    f"--file_format=array_record{where}` (see tfds's catalog for the "
    "downloads it needs), or use data_source='files' with the official "
    "archive (--data_dir)."
  )
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as error:  # tfds raises many kinds (registry, files).
    raise ValueError(f"tfds {name!r} cannot be opened ({error}). {how}") from (
      error
    )
  if not builder.is_prepared():
    raise ValueError(
      f"tfds {name!r} is not prepared under {builder.data_dir} (the folder "
      f"{name}/{builder.version}/ with dataset_info.json and the records; "
      "--data_dir is the tfds data directory, default ~/tensorflow_datasets "
      f"or $TFDS_DATA_DIR). {how}"
    )
  file_format = str(getattr(builder.info.file_format, "value", ""))
  if file_format not in ("array_record", "parquet"):
    raise ValueError(
      f"tfds {name!r} under {builder.data_dir} is stored as "
      f"{file_format or 'tfrecord'}, which cannot be read at random (grain "
      f"needs ArrayRecord). Rebuild it: `tfds build {name} "
      "--file_format=array_record` (or convert it with `tfds convert_format "
      "--out_file_format=array_record`; both need TensorFlow), or use "
      "data_source='files'."
    )
  return builder


_SCANS: dict = {}  # The last scan: train and test read "train+test" alike.


def _scan(source, fields: tuple[str, ...], sizes: bool) -> dict:
  """Every record's `fields` (and image (width, height) if `sizes`)."""
  key = (id(source), fields, sizes)
  if key not in _SCANS:
    _SCANS.clear()
    _SCANS[key] = _read_fields(source, fields, sizes)
  return _SCANS[key]


def _read_fields(source, fields: tuple[str, ...], sizes: bool) -> dict:
  out = {f: [] for f in fields}
  out["size"] = []
  for start in range(0, len(source), _CHUNK):
    rows = range(start, min(start + _CHUNK, len(source)))
    for record in source.__getitems__(list(rows)):
      for f in fields:
        out[f].append(record[f])
      if sizes:  # The header only: no pixel decode.
        with Image.open(io.BytesIO(record["image"])) as image:
          out["size"].append(image.size)
  return out


def _check_request(name: str, split: str, cropped: bool) -> None:
  """ValueError for what tfds cannot give: the dataset, split or boxes."""
  if name not in TFDS_NAMES:
    why = {
      "lfw": (
        "tfds's lfw has no pairs.txt (the verification pairs and folds "
        "the protocol needs) and tfds has no CASIA-WebFace (the training set)"
      ),
      "inshop": "tfds has no In-Shop Clothes Retrieval",
    }.get(name, f"choose one of {sorted(TFDS_NAMES)}")
    raise ValueError(
      f"data_source='tfds' does not support {name!r}: {why}. Use "
      "data_source='files' with the official archive (--data_dir)."
    )
  if split not in ("train", "test"):
    raise ValueError(f"Unknown split {split!r}; valid splits: train, test.")
  if name == "sop" and cropped:
    raise ValueError("SOP has no bounding boxes: set data.cropped=False.")


def _pixel_boxes(name: str, scanned: dict, index: np.ndarray) -> np.ndarray:
  """float32 [N, 4] x1y1x2y2 pixel boxes of the records `index`.

  tfds stores (ymin, xmin, ymax, xmax) divided by the image size.
  """
  norm = np.asarray(scanned["bbox"], np.float32)[index]
  size = np.asarray(scanned["size"], np.float32)[index]
  boxes = norm[:, [1, 0, 3, 2]] * np.tile(size, 2)
  if name == "cars196":  # tfds kept the 1-based corners of the .mat file.
    boxes[:, :2] -= 1
  return boxes


def _class_names(
  name: str, builder, label_field: str, present: np.ndarray
) -> tuple[str, ...]:
  """The names of the `present` class ids, as the file readers name them."""
  if name == "cars196":  # The make and model names.
    feature = builder.info.features[label_field]
    return tuple(feature.int2str(int(c)) for c in present)
  # The official 1-based class ids.
  return tuple(str(int(c) + 1) for c in present)


def load(
  name: str,
  split: str,
  *,
  data_dir: str | None = None,
  preprocess: Preprocess | None = None,
  check_counts: bool = True,
  cropped: bool = False,
) -> files.FileSplit:
  """The `split` ("train" / "test") of benchmark `name` from prepared tfds.

  Args:
    name: "sop", "cars196" or "cub200" (see the module docstring).
    split: "train" or "test", with the file readers' class split.
    data_dir: the tfds data directory; "" or None for tfds's default.
    preprocess: scaling and crop; None for the paper's (the file reader's
      default, `readers.READERS`: CUB padded, the others square).
    check_counts: compare with the official image and class counts.
    cropped: CARS196 / CUB: cut each image to its bounding box first.

  Returns:
    A `FileSplit` whose `paths` name the records ("tfds:<name>/<split>[i]")
    and whose `records` hold the encoded images.
  """
  _check_request(name, split, cropped)
  if preprocess is None:
    preprocess = readers.READERS[name].preprocess
  tfds_name = TFDS_NAMES[name]
  data_dir = data_dir or None
  builder = _builder(tfds_name, data_dir)
  data_dir = os.fspath(builder.data_dir_root)
  if name == "sop":  # tfds's splits are Ebay_train / Ebay_test.
    tfds_split, label_field = split, "class_id"
  else:  # By image in tfds: read both, keep the classes of `split`.
    tfds_split, label_field = "train+test", "label"
  source = _source(tfds_name, tfds_split, data_dir)
  fields = (label_field, "bbox") if cropped else (label_field,)
  scanned = _scan(source, fields, sizes=cropped)
  classes = np.asarray(scanned[label_field], np.int64)
  if name == "sop":
    keep = np.ones(classes.size, bool)
  else:
    wanted = files.split_classes(_NUM_CLASSES[name], split)
    keep = (classes >= wanted.start) & (classes < wanted.stop)
  index = np.flatnonzero(keep)
  present, labels = np.unique(classes[index], return_inverse=True)
  labels = labels.astype(np.int32)
  dataset = f"{name} (tfds {tfds_name})"
  if check_counts:
    found = {"images": int(index.size), "classes": int(present.size)}
    files.check_counts(
      dataset,
      found,
      _OFFICIAL[name][split],
      source=f"tfds {tfds_name} {builder.version} under {data_dir}",
    )
  return files.FileSplit(
    paths=tuple(f"tfds:{tfds_name}/{tfds_split}[{i}]" for i in index),
    labels=labels,
    class_names=_class_names(name, builder, label_field, present),
    name=f"{name}/{split}",
    preprocess=preprocess,
    boxes=_pixel_boxes(name, scanned, index) if cropped else None,
    records=Records(tfds_name, tfds_split, data_dir, index.astype(np.int64)),
  )
