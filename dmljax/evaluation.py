"""Evaluation of an embedding network on a held-out split.

Shape letters: N images, H × W × C pixels, D embedding dimensions, Q
queries, G gallery images, P pairs.

The network embeds the split in fixed-size batches on this process's
default device (from a host copy of the possibly replicated state); the
metrics (`dmljax.metrics`) are computed on the [N, D] embeddings in blocks.
The protocol follows the split (`dmljax.data.FileSplit`):

- leave-one-out retrieval (SOP, CARS196, CUB, the embedded sets): Recall@k,
  MAP@R, NMI and F1 of k-means;
- query → gallery retrieval (In-Shop, `split.query`): Recall@k of each
  query among the gallery images;
- pair verification (LFW, `split.pairs`): 10-fold accuracy, each fold's
  threshold chosen on the other nine (`verification_accuracy`).
"""

import jax
import numpy as np

from dmljax import data as data_lib
from dmljax import metrics as metrics_lib
from dmljax import parallel


def make_embed_fn(model):
  """embed(variables, images [B, H, W, 1]) -> [B, D], jitted, eval mode."""

  @jax.jit
  def embed(variables, images):
    return model.apply(variables, images, train=False)

  return embed


def embed_split(
  embed_fn, state, split, *, batch_size: int, num_workers: int = 0
) -> np.ndarray:
  """Embeddings [N, D] of every image of `split`, in order.

  Runs on this process's default device, from a host copy of the network
  (the state may be replicated over a mesh).
  """
  variables = parallel.to_host(
    {"params": state["params"]["embed"], "batch_stats": state["batch_stats"]}
  )
  chunks = []
  batches = data_lib.eval_batches(
    split, batch_size=batch_size, num_workers=num_workers
  )
  for batch in batches:
    embeddings = np.asarray(embed_fn(variables, batch["image"]))
    chunks.append(embeddings[np.asarray(batch["mask"])])
  return np.concatenate(chunks)


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


def evaluate(embed_fn, state, split, config) -> dict[str, float]:
  """The split's protocol (module docstring) on its embeddings."""
  embeddings = embed_split(
    embed_fn,
    state,
    split,
    batch_size=config.eval.batch_size,
    num_workers=config.data.num_workers,
  )
  if not np.all(np.isfinite(embeddings)):
    raise FloatingPointError("The test embeddings contain NaN or inf.")
  labels = np.asarray(split.labels)
  if getattr(split, "pairs", None) is not None:  # LFW verification.
    first, second = embeddings[split.pairs[:, 0]], embeddings[split.pairs[:, 1]]
    distances = np.linalg.norm(first - second, axis=1)
    result = metrics_lib.verification_accuracy(
      distances, split.is_same, num_folds=config.eval.num_folds
    )
    return {"accuracy": float(result["accuracy"]), "std": float(result["std"])}
  if getattr(split, "query", None) is not None:  # In-Shop query → gallery.
    recalls = query_gallery_recall(
      embeddings[split.query],
      labels[split.query],
      embeddings[~split.query],
      labels[~split.query],
      tuple(config.eval.ks),
      block_size=config.eval.block_size,
    )
    return {f"recall@{k}": v for k, v in recalls.items()}
  recalls = metrics_lib.recall_at_k(
    embeddings, labels, tuple(config.eval.ks), block_size=config.eval.block_size
  )
  result = {f"recall@{k}": float(v) for k, v in recalls.items()}
  result["map@r"] = float(
    metrics_lib.map_at_r(embeddings, labels, block_size=config.eval.block_size)
  )
  clusters = metrics_lib.clustering_metrics(
    jax.random.key(config.seed),
    embeddings,
    labels,
    num_iters=config.eval.kmeans_iters,
    block_size=config.eval.block_size,
  )
  result.update({name: float(v) for name, v in clusters.items()})
  return result
