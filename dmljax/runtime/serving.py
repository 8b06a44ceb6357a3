"""A trained network as one file that needs only JAX to run.

Shape letters: B images (any number: the batch dimension is symbolic), S
the crop side, C channels, D embedding dimensions.

`export_run_embedder(workdir, out_dir)` writes

  out_dir/embedder.jax       the inference function images [B, S, S, C]
                             float32 → L2-normalised embeddings [B, D]
                             float32 (BatchNorm in inference mode), with the
                             weights baked in as constants, serialised with
                             `jax.export` for the CPU, CUDA and TPU backends;
  out_dir/preprocess.json    what a raw image must go through first (the
                             run's test-time preprocessing,
                             `dmljax.runtime.export.preprocess_record`, plus the
                             input shape and the crop's offset) and what
                             comes out.

Another program loads it with JAX alone (`load_embedder` is the whole
recipe): `jax.export.deserialize(bytes).call(images)`. Serialisation needs
the `flatbuffers` package (jax imports it lazily).
"""

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dmljax.data import from_config
from dmljax.runtime import export as export_lib

EMBEDDER_FILE = "embedder.jax"
PREPROCESS_FILE = "preprocess.json"
FORMAT = "dmljax.served_embedder/1"
PLATFORMS = ("cpu", "cuda", "tpu")


def check_output_dir(out_dir: str) -> None:
  """ValueError unless `out_dir` is missing or an empty folder."""
  if not out_dir:
    raise ValueError("--export_model needs a folder name.")
  if os.path.isfile(out_dir):
    raise ValueError(f"--export_model={out_dir} is a file; name a folder.")
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise ValueError(
      f"--export_model={out_dir} exists and is not empty: name a new or "
      "empty folder (an export never overwrites another)."
    )


def embedding_function(model, variables) -> Callable[[jax.Array], jax.Array]:
  """images [B, S, S, C] → float32 [B, D], `variables` closed over.

  BatchNorm runs in inference mode (the running statistics); the weights
  are constants of the function, so `jax.export` bakes them in.
  """
  variables = jax.tree.map(jnp.asarray, variables)

  def embed(images: jax.Array) -> jax.Array:
    return model.apply(variables, images, train=False).astype(jnp.float32)

  return embed


def export_embedder(
  model,
  variables,
  input_shape: tuple[int, int, int],
  *,
  platforms: tuple[str, ...] = PLATFORMS,
) -> jax.export.Exported:
  """The `jax.export` of the network, its batch dimension symbolic.

  Args:
    model: the linen embedder.
    variables: its {"params", "batch_stats"}.
    input_shape: (S, S, C) of one preprocessed image.
    platforms: the backends the file runs on.

  Returns:
    The exported function (`.serialize()` gives the bytes to store).
  """
  (batch,) = jax.export.symbolic_shape("b")
  spec = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
  return jax.export.export(
    jax.jit(embedding_function(model, variables)), platforms=platforms
  )(spec)


def served_preprocess(data) -> dict[str, Any]:
  """What a raw image must go through, from a run's `config.data`.

  A run on image files (resize_size > 0) follows `export.preprocess_record`
  (RGB, scale to R × R, centre S × S crop at `crop_offset`, x / 255,
  optionally ImageNet-standardised); a run on the embedded arrays (digits,
  glyphs) takes grayscale S × S images as x / 255.
  """
  if data.resize_size:
    preprocess = from_config.preprocess_of(data, training=False)
    record = export_lib.preprocess_record(preprocess)
    offset = (preprocess.resize - preprocess.crop) // 2
    record.update(
      input_shape=[preprocess.crop, preprocess.crop, 3],
      crop_offset=[offset, offset],
      crop_box="image[top : top + crop, left : left + crop], "
      "(top, left) = crop_offset",
    )
    return record
  size = data.image_size
  return {
    "decode": f"grayscale uint8 as dmljax.data.embedded renders {data.name}",
    "resize": size,
    "crop": size,
    "scale": "x / 255",
    "standardize": False,
    "input_shape": [size, size, 1],
    "layout": "NHWC float32",
  }


def _write_atomic(path: str, payload: bytes) -> None:
  temporary = path + ".tmp"
  with open(temporary, "wb") as f:
    f.write(payload)
  os.replace(temporary, path)


def write_embedder(
  out_dir: str,
  model,
  variables,
  config,
  *,
  workdir: str,
  step: int,
  platforms: tuple[str, ...] = PLATFORMS,
) -> tuple[str, str]:
  """Writes out_dir/embedder.jax and out_dir/preprocess.json.

  Args:
    out_dir: a new or empty folder.
    model, variables: the linen embedder and its {"params", "batch_stats"}.
    config: the run's config (its `data` says the preprocessing).
    workdir, step: the run and checkpoint they came from (recorded).
    platforms: the backends the exported function runs on.

  Returns:
    (embedder path, preprocess path).
  """
  check_output_dir(out_dir)
  record = served_preprocess(config.data)
  exported = export_embedder(
    model, variables, tuple(record["input_shape"]), platforms=platforms
  )
  dim = exported.out_avals[0].shape[-1]
  description = {
    "format": FORMAT,
    "workdir": os.path.abspath(workdir),
    "step": step,
    "model": config.model.name,
    "platforms": list(platforms),
    "input": {"shape": ["B", *record["input_shape"]], "dtype": "float32"},
    "output": {
      "shape": ["B", dim],
      "dtype": "float32",
      "meaning": "L2-normalised embeddings: compare by Euclidean distance",
    },
    "preprocess": record,
    "load": "jax.export.deserialize(open(embedder.jax, 'rb').read())"
    ".call(images)",
  }
  os.makedirs(out_dir, exist_ok=True)
  embedder_path = os.path.join(out_dir, EMBEDDER_FILE)
  preprocess_path = os.path.join(out_dir, PREPROCESS_FILE)
  _write_atomic(embedder_path, bytes(exported.serialize()))
  text = json.dumps(description, indent=2, default=str).encode()
  _write_atomic(preprocess_path, text)
  return embedder_path, preprocess_path


def export_run_embedder(
  workdir: str,
  out_dir: str,
  *,
  step: int | None = None,
  platforms: tuple[str, ...] = PLATFORMS,
) -> tuple[str, str]:
  """`write_embedder` of the network a run's checkpoint holds.

  Args:
    workdir: the training run's --workdir (config.json + checkpoints/).
    out_dir: a new or empty folder.
    step: the checkpoint; None for the latest.
    platforms: the backends the exported function runs on.

  Returns:
    (embedder path, preprocess path).

  Raises:
    ValueError: `out_dir` is not empty, or `workdir` holds no run or no
      checkpoint (the message says which), before anything is written.
  """
  check_output_dir(out_dir)
  model, variables, step, config = export_lib.load_model(workdir, step)
  return write_embedder(
    out_dir,
    model,
    variables,
    config,
    workdir=workdir,
    step=step,
    platforms=platforms,
  )


def load_embedder(path: str) -> Callable[[Any], jax.Array]:
  """The function saved in `path` (embedder.jax): images → embeddings.

  Uses JAX only; any batch size works (the batch dimension is symbolic).

  Args:
    path: an embedder.jax written by `export_run_embedder`.

  Returns:
    f(images float32 [B, S, S, C]) -> float32 [B, D].
  """
  with open(path, "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  return lambda images: exported.call(np.asarray(images, np.float32))
