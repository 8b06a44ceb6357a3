"""experiments.query: a gallery kept on disk, queries leave themselves out.

No training: the export is written by `export.write_embeddings` from a
freshly initialised network's embeddings of tiny PNGs (test_folder's), so
the query's embedding is exactly its gallery row. Neighbours are checked
against a float64 NumPy brute force.
"""

import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image
from subprocesses import run_module
from test_folder import _make_folder

from dmljax import models
from dmljax.data import folder
from dmljax.data import from_config
from dmljax.runtime import export
from dmljax.runtime import recipes
from experiments.configs import methods


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """(export path, embeddings [N, D], paths [N], labels [N])."""
  root = tmp_path_factory.mktemp("query")
  listing = folder.read_folder(_make_folder(root / "d", classes=4))
  config = methods.get_config("method=margin_dw,dataset=folder,smoke")
  model = recipes.make_model(config)
  variables = models.init_embedder(model, jax.random.key(0), (1, 32, 32, 3))
  embeddings = export.embed_images(
    model,
    variables,
    listing.paths,
    from_config.preprocess_of(config.data, training=False),
  )
  out = str(root / "emb.npz")
  export.write_embeddings(
    out,
    embeddings,
    listing.paths,
    listing.classes,
    {"workdir": "/nowhere", "step": 1, "config": config.to_dict()},
    variables=variables,
  )
  return out, embeddings, listing.paths, list(listing.classes)


def _query(*args):
  return run_module("experiments.query", *args, timeout=300)


def _results(stdout):
  """[(distance, label, path, mark)] of the first query's neighbours."""
  rows = []
  for line in stdout.splitlines()[1:]:
    if not line.startswith("  "):
      break
    rank, distance, label, path, *mark = line.split()
    rows.append((float(distance), label, path, mark[0] if mark else None))
  return rows


def _brute_force(embeddings, query, k, exclude_self):
  x = embeddings.astype(np.float64)
  distances = np.sqrt(((x - x[query]) ** 2).sum(1))
  if exclude_self:
    distances[query] = np.inf
  order = np.argsort(distances, kind="stable")[:k]
  return order, distances[order]


def test_a_kept_gallery_answers_without_the_embeddings(exported, tmp_path):
  shared, embeddings, paths, labels = exported
  out = str(tmp_path / "emb.npz")  # A copy: this test deletes it.
  for name in (export.description_path, export.weights_path, str):
    shutil.copy(name(shared), tmp_path)
  gallery, sheet = str(tmp_path / "g.npz"), str(tmp_path / "grid.png")
  query = 5
  first = _query(
    f"--embeddings={out}",
    f"--image={paths[query]}",
    "--k=3",
    f"--gallery={gallery}",
    f"--sheet={sheet}",
  )
  assert first.returncode == 0, first.stderr[-3000:]
  assert f"Gallery of {len(paths)} images kept in {gallery}" in first.stdout
  got = _results(first.stdout.split("\n", 1)[1])
  order, distances = _brute_force(embeddings, query, 3, exclude_self=True)
  assert [g[2] for g in got] == [paths[i] for i in order]
  np.testing.assert_allclose([g[0] for g in got], distances, atol=1e-4)
  marks = ["✓" if labels[i] == labels[query] else "✗" for i in order]
  assert [g[3] for g in got] == marks
  width, height = Image.open(sheet).size
  assert width > 3 * height  # One row: the query and 3 neighbours.
  os.remove(out)  # The gallery alone (+ the description and weights).
  second = _query(f"--image={paths[query]}", "--k=3", f"--gallery={gallery}")
  assert second.returncode == 0, second.stderr[-3000:]
  assert "kept in" not in second.stdout
  assert _results(second.stdout) == got


def test_include_self_finds_the_query_first(exported, tmp_path):
  out, embeddings, paths, _ = exported
  result = _query(
    f"--embeddings={out}", f"--image={paths[2]}", "--k=2", "--include_self"
  )
  assert result.returncode == 0, result.stderr[-3000:]
  got = _results(result.stdout)
  order, _ = _brute_force(embeddings, 2, 2, exclude_self=False)
  assert got[0][2] == paths[2] and got[0][0] < 1e-3
  assert [g[2] for g in got] == [paths[i] for i in order]


def test_a_gallery_of_another_export_is_refused(exported, tmp_path):
  out, embeddings, paths, labels = exported
  gallery = str(tmp_path / "g.npz")
  other = str(tmp_path / "other.npz")
  export.write_embeddings(other, embeddings, paths, labels, {"step": 1})
  built = _query(
    f"--embeddings={out}", f"--image={paths[0]}", f"--gallery={gallery}"
  )
  assert built.returncode == 0, built.stderr[-3000:]
  refused = _query(
    f"--embeddings={other}", f"--image={paths[0]}", f"--gallery={gallery}"
  )
  assert refused.returncode == 2 and "Traceback" not in refused.stderr
  assert f"was built from {os.path.abspath(out)}" in refused.stderr


def test_a_sheet_matplotlib_cannot_write_is_refused_first(exported, tmp_path):
  out, _, paths, _ = exported
  result = _query(
    f"--embeddings={out}", f"--image={paths[0]}", f"--sheet={tmp_path}/a.bmp"
  )
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "name an image file matplotlib writes" in result.stderr
