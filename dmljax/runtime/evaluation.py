"""Evaluation of an embedding network on a held-out split.

Shape letters: N images, H × W × C pixels, D embedding dimensions, Q
queries, G gallery images, P pairs.

The split is embedded by the whole run: process p of P reads and embeds the
evaluation batches p, p + P, p + 2P, ... (`embed_share`), each batch split
over the process's local devices (the network replicated on them), and the
processes then all-gather the rows (`embed_split`), so each image is decoded
and embedded once. The metrics (`dmljax.metrics`) are computed on the
[N, D] embeddings in blocks (on each process, the same numbers). The
protocol follows the split (`dmljax.data.FileSplit`):

- leave-one-out retrieval (SOP, CARS196, CUB, the embedded sets): Recall@k,
  MAP@R, NMI and F1 of k-means;
- query → gallery retrieval (In-Shop, `split.query`): Recall@k of each
  query among the gallery images;
- pair verification (LFW, `split.pairs`): 10-fold accuracy, each fold's
  threshold chosen on the other nine (`verification_accuracy`).
"""

import dataclasses

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from dmljax import data as data_lib
from dmljax import metrics as metrics_lib
from dmljax import parallel


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """How a split is evaluated (a run's eval section, translated by train.py).

  Attributes:
    ks: the k of Recall@k.
    batch_size: images embedded per batch.
    block_size: the edge of a distance tile (Recall@k, MAP@R, k-means).
    kmeans_iters: Lloyd iterations of the NMI / F1 clustering.
    num_folds: LFW verification folds.
    num_workers: grain processes decoding the test images.
    seed: k-means seeding.
  """

  ks: tuple[int, ...] = (1, 2, 4, 8)
  batch_size: int = 500
  block_size: int = 1024
  kmeans_iters: int = 50
  num_folds: int = 10
  num_workers: int = 0
  seed: int = 0


# Recall@k's tiles spread over a run's accelerators. Host CPU devices share
# the same cores, where splitting only adds collectives (60k × 128: 8.1 s on
# one device, 10.2 s on two), so there they stay on one. The ranks are the
# same either way (tests/test_ranks.py).
SPREAD_RECALL_ON_CPU = False


def make_embed_fn(model):
  """embed(variables, images [B, H, W, C]) -> [B, D], jitted, eval mode."""

  @jax.jit
  def embed(variables, images):
    return model.apply(variables, images, train=False)

  return embed


def embed_share(
  embed_fn,
  state,
  split,
  *,
  batch_size: int,
  num_workers: int = 0,
  devices=None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """This process's share of the split's embeddings.

  The split is cut into G = ⌈N / b⌉ batches of b = n·⌈B / n⌉ images (B =
  `batch_size`, n devices); process p of P takes batches p, p + P, ... and
  splits each over its n devices.

  Args:
    embed_fn: `make_embed_fn(model)`.
    state: the train state (possibly replicated over a mesh).
    split: the images (`data.Split` or `data.FileSplit`).
    batch_size: B, images per call, over all of this process's devices.
    num_workers: grain worker processes that decode the batches.
    devices: this process's devices to use (default `jax.local_devices()`).
    process_index: p (default `jax.process_index()`).
    process_count: P (default `jax.process_count()`).

  Returns:
    (indices int32 [M], embeddings float32 [M, D]), M = ⌈G / P⌉·b the same on
    every process: the rows of split images `indices`, and index −1 with
    zero rows where this process had no image (padding).
  """
  process_index = (
    jax.process_index() if process_index is None else process_index
  )
  process_count = (
    jax.process_count() if process_count is None else process_count
  )
  mesh = parallel.local_mesh(devices)
  num_devices = mesh.devices.size
  batch = num_devices * -(-batch_size // num_devices)
  num_batches = -(-len(split) // batch)
  numbers = range(process_index, num_batches, process_count)
  variables = jax.device_put(
    parallel.to_host(
      {"params": state["params"]["embed"], "batch_stats": state["batch_stats"]}
    ),
    NamedSharding(mesh, PartitionSpec()),
  )
  rows = NamedSharding(mesh, PartitionSpec(parallel.DATA_AXIS))
  indices, chunks, pending = [], [], None
  batches = data_lib.eval_batches(
    split,
    batch_size=batch,
    num_workers=num_workers,
    shard_index=process_index,
    shard_count=process_count,
  )
  for host in batches:
    out = embed_fn(variables, jax.device_put(host["image"], rows))
    if pending is not None:  # Fetch the previous batch while this one runs.
      chunks.append(np.asarray(pending, np.float32))
    pending = out
    indices.append(np.asarray(host["index"], np.int32))
  if pending is not None:
    chunks.append(np.asarray(pending, np.float32))
  missing = -(-num_batches // process_count) - len(numbers)
  if not chunks:  # No batch here: learn D without embedding anything.
    dim = jax.eval_shape(
      embed_fn,
      variables,
      jax.ShapeDtypeStruct((batch, *split.image_shape), np.float32),
    ).shape[1]
    chunks.append(np.zeros((0, dim), np.float32))
    indices.append(np.zeros(0, np.int32))
  dim = chunks[0].shape[1]
  chunks.append(np.zeros((missing * batch, dim), np.float32))
  indices.append(np.full(missing * batch, -1, np.int32))
  return np.concatenate(indices), np.concatenate(chunks)


def embed_split(
  embed_fn,
  state,
  split,
  *,
  batch_size: int,
  num_workers: int = 0,
  devices=None,
) -> np.ndarray:
  """Embeddings [N, D] of every image of `split`, in order, on every process.

  Each process embeds its share (`embed_share`: batches of `batch_size`
  images split over its local devices, or `devices`), then the shares are
  all-gathered. Each device runs the network on its slice of a batch in
  eval mode (no statistic crosses rows), so the embeddings do not depend on
  the device or process count beyond float round-off.
  """
  indices, embeddings = embed_share(
    embed_fn,
    state,
    split,
    batch_size=batch_size,
    num_workers=num_workers,
    devices=devices,
  )
  if jax.process_count() > 1:
    indices, embeddings = multihost_utils.process_allgather(
      (indices, embeddings), tiled=True
    )
  valid = indices >= 0
  out = np.zeros((len(split), embeddings.shape[1]), np.float32)
  out[indices[valid]] = embeddings[valid]
  return out


def query_gallery_recall(
  queries: np.ndarray,
  query_labels: np.ndarray,
  gallery: np.ndarray,
  gallery_labels: np.ndarray,
  ks,
  *,
  block_size: int = 1024,
) -> dict[int, float]:
  """Recall@k of each query [Q, D] among the gallery [G, D] (In-Shop).

  Recall@k = (1/Q) Σ_q [one of the k gallery images nearest to q has q's
  label] (Liu et al. 2016). Needs k ≤ G.

  >>> q = np.array([[0.0], [5.0]]); g = np.array([[1.0], [4.0], [9.0]])
  >>> query_gallery_recall(q, np.array([1, 1]), g, np.array([1, 0, 1]), (1,))
  {1: 0.5}
  """
  _, indices = metrics_lib.nearest_neighbors(
    queries, gallery, max(ks), block_size=block_size
  )
  hits = (
    np.asarray(gallery_labels)[np.asarray(indices)]
    == np.asarray(query_labels)[:, None]
  )
  first = np.where(hits.any(axis=1), hits.argmax(axis=1), max(ks))
  return {k: float(np.mean(first < k)) for k in ks}


def evaluate(
  embed_fn,
  state,
  split,
  options: EvalOptions,
  *,
  devices=None,
  clustering: bool = True,
) -> dict[str, float]:
  """The split's protocol (module docstring) on its embeddings.

  `devices`: this process's devices that embed (default all local ones).
  `clustering`: also the k-means NMI and F1 of the retrieval protocol
  (False: Recall@k and MAP@R only, the cheap evaluation during training).
  """
  metrics, _ = evaluate_embeddings(
    embed_fn, state, split, options, devices=devices, clustering=clustering
  )
  return metrics


def evaluate_embeddings(
  embed_fn,
  state,
  split,
  options: EvalOptions,
  *,
  devices=None,
  clustering: bool = True,
) -> tuple[dict[str, float], np.ndarray]:
  """`evaluate`'s metrics and the float32 [N, D] embeddings they came from."""
  embeddings = embed_split(
    embed_fn,
    state,
    split,
    batch_size=options.batch_size,
    num_workers=options.num_workers,
    devices=devices,
  )
  metrics = protocol_metrics(
    embeddings, split, options, clustering=clustering, devices=devices
  )
  return metrics, embeddings


def protocol_metrics(
  embeddings: np.ndarray,
  split,
  options: EvalOptions,
  *,
  clustering: bool = True,
  devices=None,
) -> dict[str, float]:
  """The split's protocol on float32 [N, D] embeddings of its images.

  `devices`: this process's devices that share Recall@k's distance tiles
  (default all local ones; the same numbers on any count).
  """
  if not np.all(np.isfinite(embeddings)):
    raise FloatingPointError("The test embeddings contain NaN or inf.")
  labels = np.asarray(split.labels)
  if split.protocol == data_lib.VERIFICATION:  # LFW.
    first, second = embeddings[split.pairs[:, 0]], embeddings[split.pairs[:, 1]]
    distances = np.linalg.norm(first - second, axis=1)
    result = metrics_lib.verification_accuracy(
      distances, split.is_same, num_folds=options.num_folds
    )
    return {"accuracy": float(result["accuracy"]), "std": float(result["std"])}
  if split.protocol == data_lib.QUERY_GALLERY:  # In-Shop.
    recalls = query_gallery_recall(
      embeddings[split.query],
      labels[split.query],
      embeddings[~split.query],
      labels[~split.query],
      tuple(options.ks),
      block_size=options.block_size,
    )
    return {f"recall@{k}": v for k, v in recalls.items()}
  mesh = parallel.local_mesh(devices)
  on_cpu = mesh.devices.flat[0].platform == "cpu"
  spread = mesh.devices.size > 1 and (SPREAD_RECALL_ON_CPU or not on_cpu)
  recalls = metrics_lib.recall_at_k(
    embeddings,
    labels,
    tuple(options.ks),
    block_size=options.block_size,
    mesh=mesh if spread else None,
  )
  result = {f"recall@{k}": float(v) for k, v in recalls.items()}
  result["map@r"] = float(
    metrics_lib.map_at_r(embeddings, labels, block_size=options.block_size)
  )
  if not clustering:
    return result
  clusters = metrics_lib.clustering_metrics(
    jax.random.key(options.seed),
    embeddings,
    labels,
    num_iters=options.kmeans_iters,
    block_size=options.block_size,
  )
  result.update({name: float(v) for name, v in clusters.items()})
  return result
