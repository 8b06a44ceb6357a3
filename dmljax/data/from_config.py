"""The train and test splits a training config asks for.

`load_splits(config)` reads `config.data` (name, data_dir, data_source,
preprocessing, split settings) and returns in-memory `Split`s (embedded
data) or `FileSplit`s (benchmarks on disk or in tfds, the user's folder).
`check_grain_workers` refuses grain worker processes before absl flags are
parsed (the workers read them).
"""

from typing import Any

from absl import flags

from dmljax.data import embedded
from dmljax.data import folder
from dmljax.data import images
from dmljax.data import readers


def preprocess_of(data, *, training: bool = True) -> images.Preprocess:
  """The image preprocessing of a config's data section (file-backed data).

  `training`: the run's augmentation (`data.flip`); False gives the
  test-time preprocessing a run's exports and served model apply (never
  mirrored).
  """
  return images.Preprocess(
    mode=data.resize_mode,
    resize=data.resize_size,
    crop=data.image_size,
    flip=data.flip and training,
    standardize=data.standardize,
  )


def _load_file_split(config, split):
  """A benchmark split from `config.data.data_dir`.

  data_source "files": the official archive (dmljax.data.readers); "tfds":
  a prepared tfds dataset (dmljax.data.tfds_source, the optional extra).
  """
  source = config.data.data_source
  if source not in ("files", "tfds"):
    raise ValueError(
      f"Unknown data_source {source!r}: 'files' (the official archive "
      "under --data_dir) or 'tfds' (a prepared tfds dataset)."
    )
  load = readers.load_file_split
  if source == "tfds":
    from dmljax.data import tfds_source  # pylint: disable=import-outside-toplevel

    load = tfds_source.load
  return load(
    config.data.name,
    split,
    data_dir=config.data.data_dir,
    preprocess=preprocess_of(config.data),
    check_counts=config.data.check_counts,
    cropped=config.data.cropped,
  )


def _load_folder_split(config, split):
  """A split of the user's folder or CSV (dmljax.data.folder)."""
  return folder.load_split(
    config.data.data_dir,
    split,
    preprocess=preprocess_of(config.data),
    how=config.data.split,
    test_fraction=config.data.test_fraction,
    seed=config.data.split_seed,
    test_classes=tuple(filter(None, config.data.test_classes.split(","))),
  )


def check_grain_workers(num_workers: int) -> None:
  """RuntimeError when `num_workers` grain worker processes cannot start.

  grain's worker processes read absl flags, so with num_workers > 0 the
  flags must be parsed first (the data pipeline itself, `pk.py`, does not
  depend on absl).
  """
  if num_workers > 0 and not flags.FLAGS.is_parsed():
    raise RuntimeError(
      "grain's worker processes read absl flags, which are not parsed yet: "
      "run under absl.app.run, call absl.flags.FLAGS.mark_as_parsed(), or "
      "use num_workers=0."
    )


def load_splits(config) -> tuple[Any, Any]:
  """(train, test) splits of `config.data.name`, as the config says.

  The user's folder or CSV ("folder"), a benchmark on disk or in tfds
  (`readers.READERS`), or an embedded dataset ("glyphs", "digits"). With
  `config.eval.max_classes`, the test split keeps its first classes only.
  First, `check_grain_workers(config.data.num_workers)`: the batches of
  these splits are made by that many grain workers.
  """
  check_grain_workers(config.data.get("num_workers", 0))
  name = config.data.name
  if name == "folder":  # The user's own images.
    train, test = (_load_folder_split(config, s) for s in ("train", "test"))
  elif name in readers.READERS:  # A benchmark's image files.
    train, test = (_load_file_split(config, s) for s in ("train", "test"))
  else:
    kwargs = dict(image_size=config.data.image_size)
    if config.data.cache_dir:
      kwargs["cache_dir"] = config.data.cache_dir
    train, test = (
      embedded.load_split(name, s, **kwargs) for s in ("train", "test")
    )
  if config.eval.max_classes:  # A quick evaluation on the first classes.
    test = test.first_classes(config.eval.max_classes)
  return train, test
