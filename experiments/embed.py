"""Embed a folder or CSV of images with a trained run's network; serve it.

  python -m experiments.embed --workdir=runs/mine --data_dir=DIR \\
    --out=embeddings.npz [--split=all|train|test] [--step=N]
  python -m experiments.embed --workdir=runs/mine --export_model=DIR

Writes embeddings.npz ("embeddings" float32 [N, D], "paths", "labels") or
a .npy, plus embeddings.npz.json: the model, the checkpoint step, the
workdir and the preprocessing, and embeddings.npz.weights.msgpack: the
network itself, so the export outlives the run's later checkpoints
(dmljax/runtime/export.py). --split=train/test embeds the part the run trained /
was tested on (the run's data.split settings); "all" (default) every image,
single-image classes included.

--export_model=DIR (a new or empty folder) writes DIR/embedder.jax, the
network as a `jax.export` function (images → L2-normalised embeddings,
weights baked in, any batch size) that runs with JAX alone, and
DIR/preprocess.json, what an image must go through first
(dmljax/runtime/serving.py). --out and --export_model are checked before
any work.
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
_EXPORT_MODEL = flags.DEFINE_string(
  "export_model",
  None,
  "A new or empty folder: write the served network there (embedder.jax, "
  "preprocess.json).",
)


def _check_flags(export) -> None:
  """Every flag checked before any work."""
  from dmljax.runtime import serving  # pylint: disable=import-outside-toplevel

  if not (_OUT.value or _EXPORT_MODEL.value):
    raise ValueError(
      "Nothing to write: pass --out=FILE.npz (with --data_dir) and/or "
      "--export_model=DIR."
    )
  if _EXPORT_MODEL.value:
    serving.check_output_dir(_EXPORT_MODEL.value)
  if not _OUT.value:
    return
  export.check_output_path(_OUT.value)
  if not _DATA_DIR.value:
    raise ValueError("--out needs --data_dir: the images to embed.")
  if _BATCH_SIZE.value < 1:
    raise ValueError(f"--batch_size must be ≥ 1, got {_BATCH_SIZE.value}.")
  recorded = export.read_run_config(_WORKDIR.value)
  if not recorded.data.resize_size:  # Glyphs, digits: arrays, not files.
    raise ValueError(
      f"{_WORKDIR.value} trained on the embedded {recorded.data.name!r} "
      "arrays, not on image files: --out exports runs of "
      "experiments.folder or a benchmark driver (--export_model serves "
      "any run)."
    )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)  # Orbax logs every file it reads.
  from dmljax.runtime import export  # pylint: disable=import-outside-toplevel
  from dmljax.runtime import serving  # pylint: disable=import-outside-toplevel

  start = time.time()
  _check_flags(export)
  model, variables, step, config = export.load_model(
    _WORKDIR.value, _STEP.value
  )
  if _EXPORT_MODEL.value:
    written = serving.write_embedder(
      _EXPORT_MODEL.value,
      model,
      variables,
      config,
      workdir=_WORKDIR.value,
      step=step,
    )
    print(f"Served network (step {step}): {', '.join(written)}")
  if _OUT.value:
    _embed_files(export, model, variables, step, config, start)


def _embed_files(export, model, variables, step, config, start) -> None:
  """Embeds --data_dir and writes --out."""
  from dmljax.data import folder  # pylint: disable=import-outside-toplevel
  from dmljax.data import from_config  # pylint: disable=import-outside-toplevel

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
  preprocess = from_config.preprocess_of(config.data, training=False)
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
  flags.mark_flags_as_required(["workdir"])
  _errors.run_main(main)
