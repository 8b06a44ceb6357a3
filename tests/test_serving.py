"""The served network: embedder.jax + preprocess.json, used with JAX alone.

No training: a run directory is fabricated the way tests/test_exports.py
does (config.json + an Orbax checkpoint of a freshly initialised network),
with BatchNorm statistics set far from their initial values so that
inference mode matters. The reference is dmljax's own path:
`export.load_model` + `export.embed_images` on the image files.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from PIL import Image
from subprocesses import run_module

from dmljax import models
from dmljax.data import augment
from dmljax.data import embedded
from dmljax.data import from_config
from dmljax.runtime import checkpoint as checkpoint_lib
from dmljax.runtime import export
from dmljax.runtime import recipes
from dmljax.runtime import serving
from experiments.configs import methods

# Run in a fresh interpreter: only jax, numpy and json; the images arrive
# decoded (uint8 RGB at the resized side R, so scaling is the identity) and
# are cropped, scaled and standardised as preprocess.json says.
_CLIENT = textwrap.dedent(
  """
  import json
  import sys

  import jax
  import numpy as np

  out_dir, pixels_path, result_path = sys.argv[1:]
  with open(out_dir + "/preprocess.json") as f:
    recipe = json.load(f)["preprocess"]
  raw = np.load(pixels_path)
  assert raw.shape[1:] == (recipe["resize"], recipe["resize"], 3)
  top, left = recipe["crop_offset"]
  side = recipe["crop"]
  x = raw[:, top : top + side, left : left + side].astype(np.float32) / 255
  if recipe["standardize"]:
    x = (x - np.float32(recipe["mean"])) / np.float32(recipe["std"])
  with open(out_dir + "/embedder.jax", "rb") as f:
    embedder = jax.export.deserialize(bytearray(f.read()))
  small = np.asarray(embedder.call(x[:2]))
  rest = np.asarray(embedder.call(x[2:]))
  assert "dmljax" not in sys.modules, "the client imported dmljax"
  np.save(result_path, np.concatenate([small, rest]))
  """
)


def _make_run(workdir, dataset="folder", step=3):
  """A run directory: config.json + checkpoint `step`; (config, variables)."""
  config = methods.get_config(f"method=margin_dw,dataset={dataset},smoke")
  model = recipes.make_model(config)
  channels = 3 if config.data.resize_size else 1
  size = config.data.image_size
  variables = models.init_embedder(
    model, jax.random.key(0), (1, size, size, channels)
  )
  rng = np.random.default_rng(1)
  variables["batch_stats"] = jax.tree.map(  # Means and variances ≠ 0, 1.
    lambda a: rng.uniform(0.2, 2.0, a.shape).astype(np.float32),
    variables["batch_stats"],
  )
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config.to_dict(), f)
  state = {
    "params": {"embed": variables["params"]},
    "batch_stats": variables["batch_stats"],
    "step": np.int32(step),
  }
  saver = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  saver.save(step, jax.tree.map(np.asarray, state), {})
  saver.close()
  return config, variables


def _images(root, count, side, seed=0):
  """`count` RGB PNGs of side × side; (paths, uint8 pixels [N, s, s, 3])."""
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8)
  os.makedirs(root, exist_ok=True)
  paths = []
  for i, image in enumerate(pixels):
    paths.append(os.path.join(root, f"{i}.png"))
    Image.fromarray(image, "RGB").save(paths[-1])
  return paths, pixels


def test_a_jax_only_client_embeds_as_dmljax_does(tmp_path):
  workdir, out_dir = str(tmp_path / "run"), str(tmp_path / "served")
  config, _ = _make_run(workdir)
  written = serving.export_run_embedder(workdir, out_dir)
  assert sorted(os.listdir(out_dir)) == ["embedder.jax", "preprocess.json"]
  assert written == (
    os.path.join(out_dir, serving.EMBEDDER_FILE),
    os.path.join(out_dir, serving.PREPROCESS_FILE),
  )
  paths, pixels = _images(tmp_path / "img", 5, config.data.resize_size)
  np.save(tmp_path / "pixels.npy", pixels)
  client = tmp_path / "client.py"
  client.write_text(_CLIENT)
  result = subprocess.run(
    [sys.executable, str(client), out_dir, str(tmp_path / "pixels.npy")]
    + [str(tmp_path / "served.npy")],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  served = np.load(tmp_path / "served.npy")
  model, variables, step, config = export.load_model(workdir)
  want = export.embed_images(
    model,
    variables,
    paths,
    from_config.preprocess_of(config.data, training=False),
    batch_size=4,
  )
  np.testing.assert_allclose(served, want, atol=1e-5)
  assert step == 3 and served.shape == (5, config.model.embedding_dim)
  # Inference-mode BatchNorm: the batch statistics would give other values.
  x = np.random.default_rng(2).normal(size=(4, 32, 32, 3)).astype(np.float32)
  batch_mode, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert not np.allclose(batch_mode, serving.load_embedder(written[0])(x))


def test_preprocess_json_describes_the_input_and_output(tmp_path):
  workdir, out_dir = str(tmp_path / "run"), str(tmp_path / "served")
  config, _ = _make_run(workdir, step=7)
  serving.export_run_embedder(workdir, out_dir)
  with open(os.path.join(out_dir, serving.PREPROCESS_FILE)) as f:
    description = json.load(f)
  recipe = export.preprocess_record(
    from_config.preprocess_of(config.data, training=False)
  )
  assert {k: description["preprocess"][k] for k in recipe} == recipe
  assert description["step"] == 7
  assert description["input"]["shape"] == ["B", 32, 32, 3]
  assert description["output"]["shape"] == ["B", 16]
  assert description["platforms"] == list(serving.PLATFORMS)


def test_a_run_on_embedded_arrays_is_served_in_grayscale(tmp_path):
  workdir, out_dir = str(tmp_path / "run"), str(tmp_path / "served")
  _, variables = _make_run(workdir, dataset="digits")
  embedder_path, _ = serving.export_run_embedder(workdir, out_dir)
  with open(os.path.join(out_dir, serving.PREPROCESS_FILE)) as f:
    recipe = json.load(f)["preprocess"]
  split = embedded.load_split("digits", "test")
  images = augment.to_float(split.images[:3])
  assert recipe["input_shape"] == list(images.shape[1:])
  model, _, _, _ = export.load_model(workdir)
  np.testing.assert_allclose(
    serving.load_embedder(embedder_path)(images),
    model.apply(variables, images, train=False),
    atol=1e-5,
  )


def test_a_folder_that_is_not_empty_is_refused_before_loading(tmp_path):
  out_dir = tmp_path / "served"
  out_dir.mkdir()
  (out_dir / "keep.txt").write_text("mine")
  with pytest.raises(ValueError, match="exists and is not empty"):
    serving.export_run_embedder(str(tmp_path / "no_run"), str(out_dir))
  assert os.listdir(out_dir) == ["keep.txt"]


def test_a_workdir_without_a_checkpoint_is_named(tmp_path):
  workdir, out_dir = tmp_path / "run", tmp_path / "served"
  workdir.mkdir()
  config = methods.get_config("method=margin_dw,dataset=folder,smoke")
  (workdir / "config.json").write_text(json.dumps(config.to_dict()))
  with pytest.raises(ValueError, match="No checkpoint in .*Train first"):
    serving.export_run_embedder(str(workdir), str(out_dir))
  assert not out_dir.exists()


def test_a_folder_that_is_no_run_is_named(tmp_path):
  with pytest.raises(ValueError, match="not the --workdir of a training run"):
    serving.export_run_embedder(str(tmp_path), str(tmp_path / "served"))


def _embed_driver(*args):
  return run_module("experiments.embed", *args, timeout=300)


def test_the_embed_driver_serves_a_run(tmp_path):
  workdir, out_dir = str(tmp_path / "run"), str(tmp_path / "served")
  _make_run(workdir)
  result = _embed_driver(f"--workdir={workdir}", f"--export_model={out_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Served network (step 3)" in result.stdout
  model, variables, _, _ = export.load_model(workdir)
  x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(
    serving.load_embedder(os.path.join(out_dir, serving.EMBEDDER_FILE))(x),
    model.apply(variables, x, train=False),
    atol=1e-5,
  )
  again = _embed_driver(f"--workdir={workdir}", f"--export_model={out_dir}")
  assert again.returncode == 2 and "Traceback" not in again.stderr
  assert "error: --export_model=" in again.stderr
  assert "is not empty" in again.stderr
