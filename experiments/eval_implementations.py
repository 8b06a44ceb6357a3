"""The implementations experiments.bench_eval times: dmljax and its peers.

Each takes (x [N, D] float32 unit rows, labels [N] int32, **kwargs) and
returns (values, extra): the metric values it computed and facts about the
run (e.g. Lloyd iterations). Peers import inside the function, so a missing
peer is an ImportError in its own child process, reported and skipped.
"""

import numpy as np


def recall_dmljax(x, labels, ks, block_size):
  import jax

  from dmljax import metrics

  recalls = metrics.recall_at_k(x, labels, ks, block_size=block_size)
  return {f"recall@{k}": float(v) for k, v in recalls.items()}, {
    "jax": jax.__version__
  }


def recall_dmljax_memory(x, labels, ks, block_size):
  """XLA's temporary buffers for recall_at_k (not timed)."""
  from dmljax.metrics import retrieval

  compiled = retrieval._recalls.lower(
    x, labels, ks=tuple(ks), block_size=block_size, mesh=None
  ).compile()
  return dict(
    xla_temp_bytes=compiled.memory_analysis().temp_size_in_bytes,
    tile_bytes=min(block_size, len(x)) ** 2 * 4,
    all_distances_bytes=len(x) ** 2 * 4,
  )


def map_at_r_dmljax(x, labels, ks, block_size):
  del ks
  from dmljax import metrics

  return {"map@r": float(metrics.map_at_r(x, labels, block_size=block_size))}, {
    "memory_bound_bytes": block_size * len(x) * 4
  }


def _recalls_from_neighbors(indices, labels, ks):
  hits = labels[indices] == labels[:, None]
  first = np.where(hits.any(1), hits.argmax(1), indices.shape[1])
  return {f"recall@{k}": float(np.mean(first < k)) for k in ks}


def recall_faiss(x, labels, ks):
  import faiss

  index = faiss.IndexFlatL2(x.shape[1])
  index.add(x)
  _, found = index.search(x, max(ks) + 1)
  # Drop each query's own row (not always first when there are duplicates),
  # or the last neighbour when the query is not among its own max_k + 1.
  own = found == np.arange(len(x))[:, None]
  own[~own.any(1), -1] = True
  found = found[~own].reshape(len(x), max(ks))
  extra = dict(faiss=faiss.__version__, threads=faiss.omp_get_max_threads())
  return _recalls_from_neighbors(found, labels, ks), extra


def recall_sklearn(x, labels, ks):
  import sklearn
  from sklearn.neighbors import NearestNeighbors

  search = NearestNeighbors(n_neighbors=max(ks), algorithm="brute", n_jobs=-1)
  found = search.fit(x).kneighbors(return_distance=False)  # excludes self
  return _recalls_from_neighbors(found, labels, ks), {
    "sklearn": sklearn.__version__
  }


def recall_pml(x, labels, ks):
  import pytorch_metric_learning
  import torch
  from pytorch_metric_learning.utils import accuracy_calculator

  calculator = accuracy_calculator.AccuracyCalculator(
    include=("precision_at_1",), k=max(ks), device=torch.device("cpu")
  )
  result = calculator.get_accuracy(
    torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))
  )
  extra = dict(pml=pytorch_metric_learning.__version__, torch=torch.__version__)
  return {"recall@1": float(result["precision_at_1"])}, extra


def kmeans_dmljax(x, labels, num_clusters, num_iters, init, block_size=1024):
  import jax

  from dmljax import metrics

  result = metrics.kmeans(
    jax.random.key(0),
    x,
    num_clusters,
    num_iters=num_iters,
    init=init,
    block_size=block_size,
  )
  values = {"nmi": float(metrics.nmi(result.cluster_ids, labels))}
  values["iterations"] = int(result.num_iters)
  values["inertia"] = float(result.inertia)
  return values, {"assignment_block_bytes": block_size * num_clusters * 4}


def kmeans_faiss(x, labels, num_clusters, num_iters):
  import faiss

  from dmljax import metrics

  kmeans = faiss.Kmeans(
    x.shape[1],
    num_clusters,
    niter=num_iters,
    seed=1,
    max_points_per_centroid=len(x),  # no subsampling
    min_points_per_centroid=1,
  )
  kmeans.train(x)
  squared, ids = kmeans.index.search(x, 1)
  values = {"nmi": float(metrics.nmi(ids[:, 0].astype(np.int32), labels))}
  values.update(iterations=num_iters, inertia=float(squared.sum()))
  return values, {"faiss": faiss.__version__}


def kmeans_sklearn(x, labels, num_clusters, num_iters):
  import sklearn.cluster

  from dmljax import metrics

  kmeans = sklearn.cluster.KMeans(
    num_clusters, n_init=1, max_iter=num_iters, tol=0.0, random_state=0
  ).fit(x)
  ids = kmeans.labels_.astype(np.int32)
  values = {"nmi": float(metrics.nmi(ids, labels))}
  values.update(iterations=int(kmeans.n_iter_), inertia=float(kmeans.inertia_))
  return values, {}


# Extra facts about an implementation, computed after its timed calls.
DESCRIBE = {"recall_dmljax": recall_dmljax_memory}
# Modules each implementation imports before its memory baseline is taken.
PRELOAD = {
  "faiss": ("faiss",),
  "sklearn": ("sklearn.neighbors", "sklearn.cluster"),
  "pml": ("torch", "pytorch_metric_learning.utils.accuracy_calculator"),
}
IMPLS = {
  "recall_dmljax": recall_dmljax,
  "map_at_r_dmljax": map_at_r_dmljax,
  "recall_faiss": recall_faiss,
  "recall_sklearn": recall_sklearn,
  "recall_pml": recall_pml,
  "kmeans_dmljax": kmeans_dmljax,
  "kmeans_faiss": kmeans_faiss,
  "kmeans_sklearn": kmeans_sklearn,
}
