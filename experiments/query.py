"""The nearest neighbours of an image (or a folder of them) in an export.

  python -m experiments.query --embeddings=embeddings.npz --image=IMG \\
    [--k=10] [--sheet=neighbours.png] [--gallery=gallery.npz] \\
    [--include_self]

Embeds the query with the network and preprocessing the export recorded
(embeddings.npz.json, and the weights saved beside it) and ranks the
exported images by Euclidean distance with an exact top-k
(dmljax.runtime.index.Gallery). --gallery keeps the gallery on disk: built from
--embeddings on first use, loaded afterwards (--embeddings may then be left
out: the gallery names its export). A query that is itself one of the
gallery's images is left out of its own results unless --include_self; its
label is then known, and each neighbour is marked right (✓) or wrong (✗).
--sheet draws each query then its neighbours, framed green (right) or red
(wrong) when labels are known (dmljax.runtime.plots.retrieval). The query
images, --sheet and the gallery are checked before the model loads.
"""

import os

from absl import app
from absl import flags
from absl import logging

from experiments import _errors

_EMBEDDINGS = flags.DEFINE_string(
  "embeddings", None, "The .npz/.npy written by experiments.embed."
)
_IMAGE = flags.DEFINE_string("image", None, "An image file, or a folder.")
_K = flags.DEFINE_integer("k", 10, "Neighbours per query.")
_SHEET = flags.DEFINE_string("sheet", None, "Optional retrieval-grid PNG.")
_GALLERY = flags.DEFINE_string(
  "gallery", None, "A gallery .npz kept on disk (built on first use)."
)
_INCLUDE_SELF = flags.DEFINE_bool(
  "include_self", False, "Let a query that is in the gallery find itself."
)
_THUMBNAIL = 128  # Pixels: the longer side of an image in --sheet.


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
  from matplotlib import backend_bases  # pylint: disable=import-outside-toplevel

  extension = os.path.splitext(sheet)[1].lower().lstrip(".")
  if extension not in backend_bases.FigureCanvasBase.get_supported_filetypes():
    raise ValueError(
      f"--sheet={sheet}: name an image file matplotlib writes (.png, .jpg, "
      ".pdf, .svg)."
    )
  folder = os.path.dirname(os.path.abspath(sheet))
  if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
    raise ValueError(f"--sheet={sheet}: cannot write in {folder}.")


def _gallery(export, index):
  """The Gallery (labels, paths; metadata["export"]: its export's path)."""
  kept = _GALLERY.value
  if kept and not kept.endswith(".npz"):
    raise ValueError(f"--gallery={kept}: a gallery file ends in .npz.")
  if kept and os.path.isfile(kept):
    gallery = index.Gallery.load(kept)
    source = gallery.metadata.get("export")
    if source is None or gallery.paths is None or gallery.labels is None:
      raise ValueError(
        f"--gallery={kept} was not written by experiments.query (it names "
        "no export, or its images have no paths or labels)."
      )
    if _EMBEDDINGS.value and os.path.abspath(_EMBEDDINGS.value) != source:
      raise ValueError(
        f"--gallery={kept} was built from {source}, not from --embeddings="
        f"{_EMBEDDINGS.value}: name another --gallery, or delete it."
      )
    return gallery
  if not _EMBEDDINGS.value:
    raise ValueError(
      "Pass --embeddings (the export to search), or an existing --gallery."
    )
  embeddings, paths, labels, _ = export.read_embeddings(_EMBEDDINGS.value)
  gallery = index.Gallery(
    embeddings,
    labels=labels,
    paths=paths,
    metadata={"export": os.path.abspath(_EMBEDDINGS.value)},
  )
  if kept:
    gallery.save(kept)
    print(f"Gallery of {len(gallery)} images kept in {kept}")
  return gallery


def _own_rows(gallery_paths, queries: list[str]) -> list[list[int]]:
  """For each query, the gallery rows of the same file (often none)."""
  rows = {}
  for i, path in enumerate(gallery_paths):
    rows.setdefault(os.path.realpath(path), []).append(i)
  return [rows.get(os.path.realpath(q), []) for q in queries]


def _thumbnail(path: str):
  from dmljax.data import images  # pylint: disable=import-outside-toplevel

  image = images.decode(path)
  image.thumbnail((_THUMBNAIL, _THUMBNAIL))
  return image


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)  # Orbax logs every file it reads.
  import numpy as np  # pylint: disable=import-outside-toplevel

  from dmljax.data import from_config  # pylint: disable=import-outside-toplevel
  from dmljax.runtime import export  # pylint: disable=import-outside-toplevel
  from dmljax.runtime import index  # pylint: disable=import-outside-toplevel
  from dmljax.runtime.plots import retrieval  # pylint: disable=import-outside-toplevel

  if _K.value < 1:
    raise ValueError(f"--k must be ≥ 1, got {_K.value}.")
  if _SHEET.value:
    _check_sheet(_SHEET.value)
  gallery = _gallery(export, index)
  queries = _queries(_IMAGE.value)
  export_path = gallery.metadata["export"]
  meta = export.read_description(export_path)
  model, variables, config = export.load_export_model(export_path, meta)
  embeddings = export.embed_images(
    model,
    variables,
    queries,
    from_config.preprocess_of(config.data, training=False),
  )
  found = _own_rows(gallery.paths, queries)
  exclude = np.full((len(queries), max(map(len, found)) or 1), -1)
  if not _INCLUDE_SELF.value:
    for q, own in enumerate(found):
      exclude[q, : len(own)] = own
  k = min(_K.value, len(gallery) - int((exclude >= 0).sum(1).max()))
  if k < 1:
    raise ValueError("The gallery holds no image but the query itself.")
  distances, indices = gallery.search(embeddings, k, exclude=exclude)
  labels = gallery.labels.tolist()
  query_labels = [labels[own[0]] if own else None for own in found]
  marks = {True: "✓", False: "✗"}
  for query, label, row, ids in zip(
    queries, query_labels, distances, indices, strict=True
  ):
    print(f"{query}:" + (f"  (label {label})" if label is not None else ""))
    for rank, (d, i) in enumerate(zip(row, ids, strict=True), start=1):
      mark = "" if label is None else f"  {marks[labels[i] == label]}"
      print(f"  {rank:3d}  {d:.4f}  {labels[i]}  {gallery.paths[i]}{mark}")
  if _SHEET.value:
    retrieval.retrieval_figure(
      [_thumbnail(q) for q in queries],
      [[_thumbnail(gallery.paths[i]) for i in ids] for ids in indices],
      distances,
      _SHEET.value,
      query_labels=query_labels,
      neighbor_labels=[[labels[i] for i in ids] for ids in indices],
    )
    print(f"Retrieval grid: {_SHEET.value}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["image"])
  _errors.run_main(main)
