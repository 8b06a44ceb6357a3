"""Exports outlive training (finding 5): weights beside the embeddings.

An export carries the network it was made with, so later training,
`max_to_keep` deleting its step, or another run in the workdir cannot break
it; an .npy and an .npz export never share a description.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from subprocesses import run_module
from test_folder import _make_folder

from dmljax import models
from dmljax.runtime import checkpoint as checkpoint_lib
from dmljax.runtime import export
from dmljax.runtime import recipes
from experiments.configs import methods


def _network():
  config = methods.get_config("method=margin_dw,dataset=folder,smoke")
  model = recipes.make_model(config)
  variables = models.init_embedder(model, jax.random.key(0), (1, 32, 32, 3))
  return config, model, variables


def _write(out, config, variables, step=4, workdir="/nowhere"):
  return export.write_embeddings(
    out,
    np.eye(3, 16, dtype=np.float32),
    ["a.png", "b.png", "c.png"],
    ["x", "y", "x"],
    {"workdir": workdir, "step": step, "config": config.to_dict()},
    variables=variables,
  )


def test_the_export_carries_its_network(tmp_path):
  config, model, variables = _network()
  out = str(tmp_path / "e.npz")
  _write(out, config, variables)
  assert os.path.isfile(export.weights_path(out))
  _, _, _, meta = export.read_embeddings(out)
  loaded_model, loaded, _ = export.load_export_model(out, meta)
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  images = np.ones((2, 32, 32, 3), np.float32)
  np.testing.assert_array_equal(
    loaded_model.apply(loaded, images, train=False),
    model.apply(variables, images, train=False),
  )


def test_an_export_moved_with_its_weights_still_loads(tmp_path):
  config, _, variables = _network()
  out = str(tmp_path / "e.npz")
  _write(out, config, variables)
  moved = tmp_path / "moved"
  moved.mkdir()
  for name in (out, export.description_path(out), export.weights_path(out)):
    shutil.move(name, moved)
  target = str(moved / "e.npz")
  export.load_export_model(target, export.read_embeddings(target)[3])


def test_missing_weights_are_named(tmp_path):
  config, _, variables = _network()
  out = str(tmp_path / "e.npz")
  _write(out, config, variables)
  os.remove(export.weights_path(out))
  with pytest.raises(ValueError, match="e.npz.weights.msgpack.*is missing"):
    export.load_export_model(out, export.read_embeddings(out)[3])


def test_npy_and_npz_exports_never_share_a_description(tmp_path):
  config, _, variables = _network()
  npz, npy = str(tmp_path / "X.npz"), str(tmp_path / "X.npy")
  _write(npz, config, variables, step=2)
  _write(npy, config, variables, step=7)
  assert export.read_embeddings(npz)[3]["step"] == 2
  assert export.read_embeddings(npy)[3]["step"] == 7
  assert len({export.description_path(p) for p in (npz, npy)}) == 2


def test_an_old_export_whose_step_is_gone_says_to_export_again(tmp_path):
  workdir = tmp_path / "run"
  saver = checkpoint_lib.Checkpointer(str(workdir / "checkpoints"))
  saver.save(8, {"x": np.zeros(2, np.float32)}, {})
  saver.close()
  (workdir / "config.json").write_text(json.dumps({"model": {}}))
  out = tmp_path / "old.npz"
  np.savez(
    out,
    embeddings=np.eye(2, dtype=np.float32),
    paths=np.array(["a", "b"]),
    labels=np.array(["x", "y"]),
  )
  meta = {"format": export.LEGACY_FORMAT, "workdir": str(workdir), "step": 4}
  (tmp_path / "old.json").write_text(json.dumps({**meta, "config": {}}))
  read = export.read_embeddings(str(out))[3]
  assert read["description"] == str(tmp_path / "old.json")
  with pytest.raises(ValueError, match="No checkpoint of step 4.*Export again"):
    export.load_export_model(str(out), read)


def test_reading_a_deleted_step_names_the_steps_there_are(tmp_path):
  saver = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=1)
  for step in (2, 4):
    saver.save(step, {"x": np.zeros(2, np.float32)}, {})
  saver.close()
  with pytest.raises(FileNotFoundError, match="step 2 .*holds steps 4"):
    checkpoint_lib.read_state(str(tmp_path), 2)


def test_max_to_keep_below_one_is_refused(tmp_path):
  with pytest.raises(ValueError, match="max_to_keep must be an integer ≥ 1"):
    checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=0)


def _run(*args):
  result = run_module(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.mark.slow
def test_an_export_survives_training_past_its_step(tmp_path):
  data = _make_folder(tmp_path / "d", classes=6)
  workdir = tmp_path / "run"
  train_args = [
    "experiments.folder",
    "--config=margin_dw:smoke",
    f"--data_dir={data}",
    f"--workdir={workdir}",
    "--config.data.batch_size=10",
    "--config.ckpt.max_to_keep=1",
  ]
  _run(*train_args, "--config.train.num_steps=2")
  out = str(tmp_path / "emb.npz")
  _run(
    "experiments.embed",
    f"--workdir={workdir}",
    f"--data_dir={data}",
    f"--out={out}",
  )
  _run(*train_args, "--config.train.num_steps=4")  # Deletes step 2.
  assert checkpoint_lib.saved_steps(str(workdir / "checkpoints")) == [4]
  query = export.read_embeddings(out)[1][0]
  result = _run(
    "experiments.query",
    f"--embeddings={out}",
    f"--image={query}",
    "--k=2",
    "--include_self",
  )
  first = result.stdout.splitlines()[1].split()
  assert first[0] == "1" and float(first[1]) < 1e-3 and first[3] == query
