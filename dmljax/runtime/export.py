"""A trained run's embeddings of image files, saved with how to remake them.

Shape letters: N images, D embedding dimensions, Q queries, k neighbours,
S crop side.

`experiments.embed` restores a run's network (`load_model`: the run's
`<workdir>/config.json`, see `dmljax.runtime.rundir`, and the latest
checkpoint read as NumPy), embeds every image of a folder or CSV
(`embed_images`: decode as RGB, the run's test-time preprocessing, i.e. scale
to R × R, centre S × S crop, standardise as trained) and writes them
(`write_embeddings`):

  FILE.npz   "embeddings" float32 [N, D], "paths" str [N], "labels" str [N]
  FILE.npy   the embeddings alone (paths and labels then go in the JSON)
  FILE.npz.json / FILE.npy.json (the file's name + ".json": an .npz and an
             .npy export never share one)  {"format", "workdir", "step",
             "model", "preprocess", "data", "config", "weights"[, "paths",
             "labels"]}: enough for another program to preprocess a new
             image the same way and to rebuild the network.
  FILE.npz.weights.msgpack  the network's {"params", "batch_stats"} of that
             step (flax msgpack): the export carries its own weights, so
             training on, `max_to_keep` deleting the step, or a new run in
             the workdir cannot break it (`load_export_model`).

Exports of format "dmljax.embeddings/1" (FILE.json, no weights) are still
read; their network is the workdir's checkpoint of the recorded step.
"""

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import serialization

from dmljax.data import images as images_lib
from dmljax.runtime import checkpoint as checkpoint_lib
from dmljax.runtime import recipes
from dmljax.runtime import rundir

FORMAT = "dmljax.embeddings/2"
LEGACY_FORMAT = "dmljax.embeddings/1"  # FILE.json, weights in the workdir.
SUFFIXES = (".npz", ".npy")


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config of the run in `workdir` (config.json, else summary.json)."""
  recorded = rundir.recorded_config(workdir)
  if recorded is not None:
    return ml_collections.ConfigDict(recorded)
  raise ValueError(
    f"{workdir} holds no {rundir.IDENTITY_FILE} or {rundir.SUMMARY_FILE}: "
    "it is not the "
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


def _model(config: ml_collections.ConfigDict):
  """The embedder of a config read back from JSON."""
  config.model.backbone_kwargs = _tuples(config.model.backbone_kwargs.to_dict())
  return recipes.make_model(config)


def load_model(workdir: str, step: int | None = None):
  """(model, variables, step, config) of the run in `workdir`.

  Args:
    workdir: the run's --workdir.
    step: which checkpoint; None for the latest.

  Returns:
    The linen embedder, its {"params", "batch_stats"} as NumPy, the
    checkpoint's step and the run's config.
  """
  config = read_run_config(workdir)
  directory = rundir.checkpoints_folder(workdir)
  try:
    state = checkpoint_lib.read_state(directory, step)
  except FileNotFoundError as error:
    hint = " Pass an existing --step, or none for the latest."
    if not checkpoint_lib.saved_steps(directory):
      hint = (
        " Train first (the run saves a checkpoint every config.ckpt.every "
        "steps and at the end), or pass the right --workdir."
      )
    raise ValueError(f"{error}{hint}") from error
  variables = {
    "params": state["params"]["embed"],
    "batch_stats": state["batch_stats"],
  }
  return _model(config), variables, int(state["step"]), config


def preprocess_record(preprocess: images_lib.Preprocess) -> dict[str, Any]:
  """The JSON description of `preprocess` another program can follow."""
  return {
    "decode": (
      "RGB (Pillow convert('RGB'); grayscale becomes 3 channels; 16-bit "
      "scaled by 255/65535; EXIF orientation applied)"
    ),
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


def description_path(path: str) -> str:
  """FILE.npz → FILE.npz.json (an .npz and an .npy never share one)."""
  return path + ".json"


def weights_path(path: str) -> str:
  """FILE.npz → FILE.npz.weights.msgpack."""
  return path + ".weights.msgpack"


def _legacy_description_path(path: str) -> str:
  return os.path.splitext(path)[0] + ".json"


def check_output_path(path: str) -> None:
  """ValueError unless `path` can take an export (before any work).

  >>> check_output_path("emb.txt")
  Traceback (most recent call last):
  ...
  ValueError: --out must end in .npz or .npy, got 'emb.txt'.
  """
  if not path or not path.endswith(SUFFIXES):
    raise ValueError(f"--out must end in .npz or .npy, got {path!r}.")
  folder = os.path.dirname(os.path.abspath(path))
  existing = folder
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
    raise ValueError(
      f"--out={path}: cannot write in {existing}. Choose a writable folder."
    )
  if os.path.isdir(path):
    raise ValueError(f"--out={path} is a folder; name a .npz or .npy file.")


def _replace(path: str, write) -> None:
  """Writes `path` through a temporary file (never half-written)."""
  temporary = path + ".tmp"
  with open(temporary, "wb") as f:
    write(f)
  os.replace(temporary, path)


def write_embeddings(
  path: str,
  embeddings: np.ndarray,
  paths,
  labels,
  metadata: dict[str, Any],
  *,
  variables: Any = None,
) -> str:
  """Writes FILE.npz|npy, its weights and FILE.npz|npy.json.

  Args:
    path: FILE.npz or FILE.npy.
    embeddings: float32 [N, D].
    paths, labels: N strings each.
    metadata: what the description records (module docstring).
    variables: the network's {"params", "batch_stats"}, saved beside the
      embeddings (None: none; `experiments.query` then cannot embed).

  Returns:
    The description's path.
  """
  embeddings = np.asarray(embeddings, np.float32)
  paths, labels = list(map(str, paths)), list(map(str, labels))
  if embeddings.ndim != 2 or not embeddings.shape[0] == len(paths) == len(
    labels
  ):
    raise ValueError("embeddings [N, D] need N paths and N labels.")
  check_output_path(path)
  metadata = {"format": FORMAT, **metadata}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if variables is not None:
    host = jax.tree.map(np.asarray, variables)
    packed = serialization.msgpack_serialize(host)
    _replace(weights_path(path), lambda f: f.write(packed))
    metadata["weights"] = os.path.basename(weights_path(path))
  if path.endswith(".npz"):
    _replace(
      path,
      lambda f: np.savez(
        f,
        embeddings=embeddings,
        paths=np.array(paths, str),
        labels=np.array(labels, str),
      ),
    )
  else:
    _replace(path, lambda f: np.save(f, embeddings))
    metadata.update(paths=paths, labels=labels)
  json_path = description_path(path)
  text = json.dumps(metadata, indent=2, default=str).encode()
  _replace(json_path, lambda f: f.write(text))
  return json_path


def _description(path: str) -> tuple[str, dict[str, Any]]:
  """(description path, its content) of the export at `path`."""
  for json_path, formats in (
    (description_path(path), (FORMAT,)),
    (_legacy_description_path(path), (LEGACY_FORMAT,)),
  ):
    if os.path.isfile(json_path):
      with open(json_path) as f:
        metadata = json.load(f)
      if metadata.get("format") not in formats:
        raise ValueError(
          f"{json_path} is not a {' or '.join(formats)} description."
        )
      return json_path, metadata
  raise ValueError(
    f"The description {description_path(path)} of {path} is missing: pass "
    "the --out file written by python -m experiments.embed."
  )


def read_description(path: str) -> dict[str, Any]:
  """The description (FILE.npz|npy.json) of the export at `path`."""
  json_path, metadata = _description(path)
  return {**metadata, "description": json_path}


def read_embeddings(path: str):
  """(embeddings [N, D], paths [N], labels [N], metadata) of an export."""
  if not os.path.isfile(path):
    raise ValueError(
      f"{path} is missing: pass the --out file written by python -m "
      "experiments.embed."
    )
  json_path, metadata = _description(path)
  metadata["description"] = json_path
  if path.endswith(".npz"):
    with np.load(path) as data:
      embeddings = data["embeddings"]
      paths, labels = data["paths"].tolist(), data["labels"].tolist()
  else:
    embeddings = np.load(path)
    paths, labels = metadata["paths"], metadata["labels"]
  return embeddings, paths, labels, metadata


def load_export_model(path: str, metadata: dict[str, Any]):
  """(model, variables, config) that made the export at `path`.

  From the weights saved beside it; an export of the older format has none
  and uses its workdir's checkpoint of the recorded step, if still there.
  """
  config = ml_collections.ConfigDict(metadata["config"])
  if "weights" in metadata:
    weights = os.path.join(os.path.dirname(path), metadata["weights"])
    if not os.path.isfile(weights):
      raise ValueError(
        f"{weights}, the network of the export {path}, is missing: keep it "
        "beside the embeddings, or export again with python -m "
        "experiments.embed."
      )
    with open(weights, "rb") as f:
      variables = serialization.msgpack_restore(f.read())
    return _model(config), variables, config
  try:
    model, variables, _, config = load_model(
      metadata["workdir"], metadata["step"]
    )
  except ValueError as error:
    raise ValueError(
      f"{path} is an export of format {LEGACY_FORMAT}, which uses the "
      f"checkpoint of step {metadata['step']} in {metadata['workdir']}, and "
      f"that cannot be read ({error}). Export again with python -m "
      "experiments.embed: exports now carry their own weights."
    ) from error
  return model, variables, config
