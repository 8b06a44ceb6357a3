"""The nearest neighbours of an image (or a folder of them) in an export.

  python -m experiments.query --embeddings=embeddings.npz --image=IMG \\
    [--k=10] [--sheet=neighbours.png]

Embeds the query with the network and preprocessing the export recorded
(embeddings.npz.json, and the weights saved beside it) and ranks the
exported images by Euclidean distance with the exact on-device top-k of the
evaluation code (dmljax.metrics.nearest_neighbors). --sheet writes a
contact sheet: each query, then its neighbours with their distances. The
query images and --sheet are checked before the model loads.
"""

import os

import numpy as np
from absl import app
from absl import flags
from absl import logging
from PIL import Image

from experiments import _errors

_EMBEDDINGS = flags.DEFINE_string(
  "embeddings", None, "The .npz/.npy written by experiments.embed."
)
_IMAGE = flags.DEFINE_string("image", None, "An image file, or a folder.")
_K = flags.DEFINE_integer("k", 10, "Neighbours per query.")
_SHEET = flags.DEFINE_string("sheet", None, "Optional contact-sheet PNG.")


def _queries(image: str) -> list[str]:
  """The query files, each fully decoded once (errors name the file)."""
  from dmljax.data import folder  # pylint: disable=import-outside-toplevel
  from dmljax.data import images  # pylint: disable=import-outside-toplevel

  if os.path.isfile(image):
    paths = [image]
  elif not os.path.isdir(image):
    raise ValueError(f"--image={image} is neither an image file nor a folder.")
  else:
    paths = sorted(
      os.path.join(image, f)
      for f in os.listdir(image)
      if f.lower().endswith(folder.IMAGE_EXTENSIONS)
    )
    if not paths:
      raise ValueError(
        f"{image} holds no image files ({', '.join(folder.IMAGE_EXTENSIONS)})."
      )
  for path in paths:
    images.decode(path)
  return paths


def _check_sheet(sheet: str) -> None:
  extension = os.path.splitext(sheet)[1].lower()
  if extension not in Image.registered_extensions():
    raise ValueError(
      f"--sheet={sheet}: name an image file Pillow can write (.png, .jpg)."
    )
  folder = os.path.dirname(os.path.abspath(sheet))
  if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
    raise ValueError(f"--sheet={sheet}: cannot write in {folder}.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)  # Orbax logs every file it reads.
  from dmljax import export  # pylint: disable=import-outside-toplevel
  from dmljax import metrics  # pylint: disable=import-outside-toplevel

  if _K.value < 1:
    raise ValueError(f"--k must be ≥ 1, got {_K.value}.")
  if _SHEET.value:
    _check_sheet(_SHEET.value)
  database, paths, labels, meta = export.read_embeddings(_EMBEDDINGS.value)
  queries = _queries(_IMAGE.value)
  model, variables, config = export.load_export_model(_EMBEDDINGS.value, meta)
  embeddings = export.embed_images(
    model, variables, queries, export.preprocess_of(config.data)
  )
  k = min(_K.value, len(paths))
  distances, indices = metrics.nearest_neighbors(embeddings, database, k)
  # + 0.0 turns sqrt(-0.0) (an image against itself) into 0.0.
  distances, indices = (np.asarray(distances) + 0.0).tolist(), indices.tolist()
  for query, row, ids in zip(queries, distances, indices, strict=True):
    print(f"{query}:")
    for rank, (d, i) in enumerate(zip(row, ids, strict=True), start=1):
      print(f"  {rank:3d}  {d:.4f}  {labels[i]}  {paths[i]}")
  if _SHEET.value:
    neighbours = [[paths[i] for i in ids] for ids in indices]
    export.contact_sheet(queries, neighbours, distances, _SHEET.value)
    print(f"Contact sheet: {_SHEET.value}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["embeddings", "image"])
  _errors.run_main(main)
