"""Embed a folder or CSV of images with a trained run's network.

  python -m experiments.embed --workdir=runs/mine --data_dir=DIR \\
    --out=embeddings.npz [--split=all|train|test] [--step=N]

Writes embeddings.npz ("embeddings" float32 [N, D], "paths", "labels") or
a .npy, plus embeddings.npz.json: the model, the checkpoint step, the
workdir and the preprocessing, and embeddings.npz.weights.msgpack: the
network itself, so the export outlives the run's later checkpoints
(dmljax/export.py). --split=train/test embeds the part the run trained /
was tested on (the run's data.split settings); "all" (default) every image,
single-image classes included. --out is checked before any work.
"""

import os
import time

from absl import app
from absl import flags
from absl import logging

from experiments import _errors

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir.")
_DATA_DIR = flags.DEFINE_string(
  "data_dir", None, "A folder DIR/<class>/<image>, or a .csv/.tsv file."
)
_OUT = flags.DEFINE_string("out", None, "The .npz (or .npy) file to write.")
_SPLIT = flags.DEFINE_enum(
  "split", "all", ["all", "train", "test"], "Which images to embed."
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default latest).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images per batch.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)  # Orbax logs every file it reads.
  from dmljax import export  # pylint: disable=import-outside-toplevel
  from dmljax.data import folder  # pylint: disable=import-outside-toplevel

  start = time.time()
  export.check_output_path(_OUT.value)
  if _BATCH_SIZE.value < 1:
    raise ValueError(f"--batch_size must be ≥ 1, got {_BATCH_SIZE.value}.")
  recorded = export.read_run_config(_WORKDIR.value)
  if not recorded.data.resize_size:  # Glyphs, digits: arrays, not files.
    raise ValueError(
      f"{_WORKDIR.value} trained on the embedded {recorded.data.name!r} "
      "arrays, not on image files: experiments.embed exports runs of "
      "experiments.folder or a benchmark driver."
    )
  model, variables, step, config = export.load_model(
    _WORKDIR.value, _STEP.value
  )
  listing = folder.read_listing(_DATA_DIR.value)
  keep = list(range(len(listing)))
  if _SPLIT.value != "all":
    mask = folder.split_mask(
      listing,
      _SPLIT.value,
      how=config.data.split,
      test_fraction=config.data.test_fraction,
      seed=config.data.split_seed,
      test_classes=tuple(filter(None, config.data.test_classes.split(","))),
    )
    keep = [i for i in keep if mask[i]]
  preprocess = export.preprocess_of(config.data)
  paths = [listing.paths[i] for i in keep]
  embeddings = export.embed_images(
    model, variables, paths, preprocess, batch_size=_BATCH_SIZE.value
  )
  json_path = export.write_embeddings(
    _OUT.value,
    embeddings,
    paths,
    [listing.classes[i] for i in keep],
    {
      "workdir": os.path.abspath(_WORKDIR.value),
      "step": step,
      "model": config.model.to_dict(),
      "preprocess": export.preprocess_record(preprocess),
      "data": {"source": listing.source, "split": _SPLIT.value},
      "config": config.to_dict(),
    },
    variables=variables,
  )
  print(
    f"Embedded {len(paths)} images ({embeddings.shape[1]}-d, step {step}) "
    f"in {time.time() - start:.1f} s: {_OUT.value}, {json_path}"
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "data_dir", "out"])
  _errors.run_main(main)
