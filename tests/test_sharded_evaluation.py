"""Evaluation spread over devices and processes equals one device.

conftest.py gives this process 8 CPU devices. Processes are simulated by
calling `embed_share` with each process index in turn (the real two-process
run is tests/test_parallel.py::test_two_processes_agree_with_one).
"""

import os

import jax
import numpy as np
import pytest
from PIL import Image

from dmljax import data
from dmljax import metrics
from dmljax import models
from dmljax.runtime import evaluation

NUM_IMAGES, NUM_CLASSES = 53, 11  # Not a multiple of any batch below.


@pytest.fixture(scope="module")
def network():
  model = models.make_embedder("small", embedding_dim=8)
  variables = models.init_embedder(model, jax.random.key(0), (2, 8, 8, 1))
  state = {
    "params": {"embed": variables["params"]},
    "batch_stats": variables.get("batch_stats", {}),
  }
  return evaluation.make_embed_fn(model), state, model, variables


@pytest.fixture(scope="module")
def split():
  rng = np.random.default_rng(0)
  labels = np.arange(NUM_IMAGES, dtype=np.int32) % NUM_CLASSES
  images = rng.integers(0, 256, (NUM_IMAGES, 8, 8, 1), dtype=np.uint8)
  names = tuple(str(c) for c in range(NUM_CLASSES))
  return data.Split(images, labels, names, "toy/test")


def _direct(model, variables, split):
  """The reference: the whole split through the network in one call."""
  images = split.images.astype(np.float32) / np.float32(255)
  return np.asarray(model.apply(variables, images, train=False))


@pytest.mark.parametrize("num_devices", [1, 2, 8])
def test_embed_split_over_devices_equals_one_call(network, split, num_devices):
  embed_fn, state, model, variables = network
  devices = jax.local_devices()[:num_devices]
  got = evaluation.embed_split(
    embed_fn, state, split, batch_size=12, devices=devices
  )
  np.testing.assert_allclose(
    got, _direct(model, variables, split), rtol=1e-6, atol=1e-6
  )


@pytest.mark.parametrize("process_count", [2, 3, 7])
def test_process_shares_cover_every_row_once(network, split, process_count):
  """Each simulated process: same share shape, disjoint rows, union = all."""
  embed_fn, state, model, variables = network
  devices = jax.local_devices()[:2]
  shares = [
    evaluation.embed_share(
      embed_fn,
      state,
      split,
      batch_size=10,
      devices=devices,
      process_index=p,
      process_count=process_count,
    )
    for p in range(process_count)
  ]
  assert len({indices.shape for indices, _ in shares}) == 1
  indices = np.concatenate([i for i, _ in shares])
  rows = np.concatenate([e for _, e in shares])
  valid = indices >= 0
  np.testing.assert_array_equal(np.sort(indices[valid]), np.arange(NUM_IMAGES))
  np.testing.assert_array_equal(rows[~valid], 0.0)
  got = np.zeros((NUM_IMAGES, rows.shape[1]), np.float32)
  got[indices[valid]] = rows[valid]
  np.testing.assert_allclose(
    got, _direct(model, variables, split), rtol=1e-6, atol=1e-6
  )


def test_a_process_without_batches_pads_its_share(network, split):
  embed_fn, state, _, _ = network
  indices, rows = evaluation.embed_share(
    embed_fn,
    state,
    split,
    batch_size=64,  # One batch in all: process 1 of 2 has none.
    devices=jax.local_devices()[:1],
    process_index=1,
    process_count=2,
  )
  assert indices.shape == (64,) and rows.shape == (64, 8)
  assert np.all(indices == -1) and np.all(rows == 0.0)


def _options():
  return evaluation.EvalOptions(
    batch_size=12, ks=(1, 2, 4), block_size=16, kmeans_iters=10
  )


def test_evaluate_on_eight_devices_equals_one(network, split):
  embed_fn, state, _, _ = network
  one = evaluation.evaluate(
    embed_fn, state, split, _options(), devices=jax.local_devices()[:1]
  )
  eight = evaluation.evaluate(embed_fn, state, split, _options())
  assert jax.local_device_count() == 8
  assert one == eight
  assert set(one) >= {"recall@1", "recall@4", "map@r", "nmi"}


@pytest.mark.parametrize("num_devices", [2, 3, 8])
def test_recall_tiles_over_devices_equal_one(split, num_devices, monkeypatch):
  """Recall@k's tiles spread over the devices given: the same metrics."""
  rng = np.random.default_rng(3)
  # Small integer coordinates: many exactly tied distances.
  embeddings = rng.integers(-1, 2, (NUM_IMAGES, 4)).astype(np.float32)
  one = evaluation.protocol_metrics(
    embeddings,
    split,
    _options(),
    clustering=False,
    devices=jax.local_devices()[:1],
  )
  meshes = []
  recall_at_k = metrics.recall_at_k

  def spy(*args, mesh=None, **kwargs):
    meshes.append(mesh)
    return recall_at_k(*args, mesh=mesh, **kwargs)

  monkeypatch.setattr(metrics, "recall_at_k", spy)
  monkeypatch.setattr(evaluation, "SPREAD_RECALL_ON_CPU", True)
  got = evaluation.protocol_metrics(
    embeddings,
    split,
    _options(),
    clustering=False,
    devices=jax.local_devices()[:num_devices],
  )
  assert got == one
  assert [mesh.devices.size for mesh in meshes] == [num_devices]


def test_file_split_over_devices_and_processes(tmp_path, network):
  """Decoded JPEGs: 2 simulated processes × 4 devices = one device."""
  rng = np.random.default_rng(1)
  paths, labels = [], []
  for i in range(14):
    path = os.path.join(tmp_path, f"{i:02d}.jpg")
    pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).resize((40, 30)).save(path, quality=90)
    paths.append(path)
    labels.append(i // 2)
  split = data.FileSplit(
    paths=tuple(paths),
    labels=np.asarray(labels, np.int32),
    class_names=tuple(str(c) for c in range(7)),
    name="toy/files",
    preprocess=data.Preprocess(resize=10, crop=8, standardize=False),
  )
  model = models.make_embedder("small", embedding_dim=8)
  variables = models.init_embedder(model, jax.random.key(2), (2, 8, 8, 3))
  state = {
    "params": {"embed": variables["params"]},
    "batch_stats": variables.get("batch_stats", {}),
  }
  embed_fn = evaluation.make_embed_fn(model)
  want = evaluation.embed_split(
    embed_fn, state, split, batch_size=5, devices=jax.local_devices()[:1]
  )
  got = np.zeros_like(want)
  for p in range(2):
    indices, rows = evaluation.embed_share(
      embed_fn,
      state,
      split,
      batch_size=5,
      devices=jax.local_devices()[:4],
      process_index=p,
      process_count=2,
    )
    got[indices[indices >= 0]] = rows[indices >= 0]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert np.all(np.abs(np.linalg.norm(want, axis=1) - 1.0) < 1e-5)
