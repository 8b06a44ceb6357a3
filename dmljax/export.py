"""A trained run's embeddings of image files, saved with how to remake them.

Shape letters: N images, D embedding dimensions, Q queries, k neighbours,
S crop side.

`experiments.embed` restores a run's network (`load_model`: the config the
driver wrote to `<workdir>/config.json`, the latest checkpoint read as
NumPy), embeds every image of a folder or CSV (`embed_images`: decode as
RGB, the run's test-time preprocessing, i.e. scale to R × R, centre S × S
crop, standardise as trained) and writes them (`write_embeddings`):

  FILE.npz   "embeddings" float32 [N, D], "paths" str [N], "labels" str [N]
  FILE.npy   the embeddings alone (paths and labels then go in the JSON)
  FILE.json  {"format", "workdir", "step", "model", "preprocess", "data",
              "config"[, "paths", "labels"]}: enough for another program to
              preprocess a new image the same way and for `experiments.query`
              to rebuild the network.

`contact_sheet` draws each query beside its nearest neighbours.
"""

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from PIL import Image
from PIL import ImageDraw

from dmljax import checkpoint as checkpoint_lib
from dmljax.data import images as images_lib

FORMAT = "dmljax.embeddings/1"
CONFIG_FILE = "config.json"


def write_run_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes `<workdir>/config.json` (process 0), so a run can be exported."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
    json.dump(config.to_dict(), f, indent=2, default=str)


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config of the run in `workdir` (config.json, else summary.json)."""
  for name, key in ((CONFIG_FILE, None), ("summary.json", "config")):
    path = os.path.join(workdir, name)
    if os.path.isfile(path):
      with open(path) as f:
        config = json.load(f)
      return ml_collections.ConfigDict(config if key is None else config[key])
  raise ValueError(
    f"{workdir} holds no {CONFIG_FILE} or summary.json: it is not the "
    "--workdir of a training run (python -m experiments.folder ... "
    "--workdir=RUN writes both)."
  )


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples a module attribute expects."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def load_model(workdir: str, step: int | None = None):
  """(model, variables, step, config) of the run in `workdir`.

  Args:
    workdir: the run's --workdir.
    step: which checkpoint; None for the latest.

  Returns:
    The linen embedder, its {"params", "batch_stats"} as NumPy, the
    checkpoint's step and the run's config.
  """
  from dmljax import train  # pylint: disable=import-outside-toplevel

  config = read_run_config(workdir)
  config.model.backbone_kwargs = _tuples(config.model.backbone_kwargs.to_dict())
  directory = os.path.join(workdir, "checkpoints")
  try:
    state = checkpoint_lib.read_state(directory, step)
  except FileNotFoundError as error:
    raise ValueError(
      f"{error} Train first (the run saves a checkpoint every "
      "config.ckpt.every steps and at the end), or pass the right --workdir."
    ) from error
  variables = {
    "params": state["params"]["embed"],
    "batch_stats": state["batch_stats"],
  }
  return train.make_model(config), variables, int(state["step"]), config


def preprocess_of(data: ml_collections.ConfigDict) -> images_lib.Preprocess:
  """The test-time preprocessing of a run's `config.data` (no flip)."""
  return images_lib.Preprocess(
    mode=data.resize_mode,
    resize=data.resize_size,
    crop=data.image_size,
    flip=False,
    standardize=data.standardize,
  )


def preprocess_record(preprocess: images_lib.Preprocess) -> dict[str, Any]:
  """The JSON description of `preprocess` another program can follow."""
  return {
    "decode": "RGB (Pillow convert('RGB'); grayscale becomes 3 channels)",
    "mode": preprocess.mode,
    "resize": preprocess.resize,
    "crop": preprocess.crop,
    "crop_at": "centre",
    "resample": "bilinear",
    "scale": "x / 255",
    "standardize": preprocess.standardize,
    "mean": images_lib.IMAGENET_MEAN.tolist(),
    "std": images_lib.IMAGENET_STD.tolist(),
    "layout": "NHWC float32",
  }


def embed_images(
  model, variables, paths, preprocess, *, batch_size: int = 64
) -> np.ndarray:
  """float32 [N, D] embeddings of the image files, in order.

  Every batch is padded to `batch_size` images (one compiled shape).
  """
  if not paths:
    raise ValueError("No images to embed.")
  embed = jax.jit(lambda v, x: model.apply(v, x, train=False))
  chunks = []
  for start in range(0, len(paths), batch_size):
    chunk = list(paths[start : start + batch_size])
    images = images_lib.load_batch(
      chunk, None, images_lib.center_crops(len(chunk), preprocess), preprocess
    )
    padded = np.zeros((batch_size, *images.shape[1:]), np.float32)
    padded[: len(chunk)] = images
    chunks.append(np.asarray(embed(variables, padded))[: len(chunk)])
  return np.concatenate(chunks).astype(np.float32)


def _json_path(path: str) -> str:
  return os.path.splitext(path)[0] + ".json"


def write_embeddings(
  path: str,
  embeddings: np.ndarray,
  paths,
  labels,
  metadata: dict[str, Any],
) -> str:
  """Writes FILE.npz or FILE.npy and FILE.json; returns the JSON's path."""
  embeddings = np.asarray(embeddings, np.float32)
  paths, labels = list(map(str, paths)), list(map(str, labels))
  if embeddings.ndim != 2 or not embeddings.shape[0] == len(paths) == len(
    labels
  ):
    raise ValueError("embeddings [N, D] need N paths and N labels.")
  metadata = {"format": FORMAT, **metadata}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if path.endswith(".npz"):
    np.savez(
      path,
      embeddings=embeddings,
      paths=np.array(paths, str),
      labels=np.array(labels, str),
    )
  elif path.endswith(".npy"):
    np.save(path, embeddings)
    metadata.update(paths=paths, labels=labels)
  else:
    raise ValueError(f"--out must end in .npz or .npy, got {path!r}.")
  json_path = _json_path(path)
  with open(json_path, "w") as f:
    json.dump(metadata, f, indent=2, default=str)
  return json_path


def read_embeddings(path: str):
  """(embeddings [N, D], paths [N], labels [N], metadata) of an export."""
  json_path = _json_path(path)
  if not os.path.isfile(path) or not os.path.isfile(json_path):
    raise ValueError(
      f"{path} or its description {json_path} is missing: pass the --out "
      "file written by python -m experiments.embed."
    )
  with open(json_path) as f:
    metadata = json.load(f)
  if metadata.get("format") != FORMAT:
    raise ValueError(f"{json_path} is not a {FORMAT} description.")
  if path.endswith(".npz"):
    with np.load(path) as data:
      embeddings = data["embeddings"]
      paths, labels = data["paths"].tolist(), data["labels"].tolist()
  else:
    embeddings = np.load(path)
    paths, labels = metadata["paths"], metadata["labels"]
  return embeddings, paths, labels, metadata


def contact_sheet(
  query_paths,
  neighbor_paths,
  distances: np.ndarray,
  out: str,
  *,
  size: int = 96,
) -> None:
  """A PNG: one row per query, the query then its k neighbours.

  Args:
    query_paths: Q image files.
    neighbor_paths: Q lists of k image files, nearest first.
    distances: [Q, k], printed under each neighbour.
    out: the PNG file to write.
    size: the side of each thumbnail in pixels.
  """
  k = len(neighbor_paths[0])
  caption = 14
  sheet = Image.new(
    "RGB", ((k + 1) * size, len(query_paths) * (size + caption)), "white"
  )
  draw = ImageDraw.Draw(sheet)
  for row, query in enumerate(query_paths):
    top = row * (size + caption)
    cells = [(query, "query")] + [
      (p, f"{d:.3f}")
      for p, d in zip(neighbor_paths[row], distances[row], strict=True)
    ]
    for column, (path, text) in enumerate(cells):
      thumb = images_lib.decode(path).resize((size, size))
      sheet.paste(thumb, (column * size, top))
      draw.text((column * size + 2, top + size), text, fill="black")
  sheet.save(out)
