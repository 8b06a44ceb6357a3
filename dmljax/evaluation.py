"""Evaluation of an embedding network on a held-out split.

Shape letters: N images, H × W × 1 pixels, D embedding dimensions.

The network embeds the split in fixed-size batches on this process's
default device (from a host copy of the possibly replicated state); the
metrics (`dmljax.metrics`: Recall@k, MAP@R, NMI and F1 of k-means) are
computed on the [N, D] embeddings in blocks.
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


def embed_split(embed_fn, state, split, *, batch_size: int) -> np.ndarray:
  """Embeddings [N, D] of every image of `split`, in order.

  Runs on this process's default device, from a host copy of the network
  (the state may be replicated over a mesh).
  """
  variables = parallel.to_host(
    {"params": state["params"]["embed"], "batch_stats": state["batch_stats"]}
  )
  chunks = []
  for batch in data_lib.eval_batches(split, batch_size=batch_size):
    embeddings = np.asarray(embed_fn(variables, batch["image"]))
    chunks.append(embeddings[np.asarray(batch["mask"])])
  return np.concatenate(chunks)


def evaluate(embed_fn, state, split, config) -> dict[str, float]:
  """Recall@k, MAP@R, NMI and F1 on a held-out split."""
  embeddings = embed_split(
    embed_fn, state, split, batch_size=config.eval.batch_size
  )
  if not np.all(np.isfinite(embeddings)):
    raise FloatingPointError("The test embeddings contain NaN or inf.")
  labels = np.asarray(split.labels)
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
