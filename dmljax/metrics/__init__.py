"""Evaluation metrics: retrieval (Recall@k, MAP@R) and clustering (NMI, F1).

Shape letters: N test points, D embedding dimensions, K clusters.

The protocols of Wu et al. 2017 (Sec. 5: Recall@k following Song et al. 2016,
NMI of k-means clusters) and Duan et al. 2019 (Sec. 4: NMI and F1), plus
MAP@R (Musgrave et al. 2020):

  * `neighbors`: exact k nearest neighbours in query blocks (memory b × N).
  * `ranks`: `first_hit_ranks`, the rank of each point's first same-label
    neighbour, counted in symmetric b × b distance tiles (Recall@k for any k),
    shared by the devices of a `mesh` with the same numbers.
  * `retrieval`: `recall_at_k`, `map_at_r` (leave-one-out over the test set).
  * `lloyd`: `kmeans` (greedy k-means++ seeding, Lloyd iterations in JAX).
  * `clustering`: `nmi`, `f1_score`, `clustering_metrics` (k-means, then
    both), `group_sizes` (contingency counts per point).
  * `verification`: `verification_accuracy` (LFW: 10 folds, each scored
    with the threshold that is best on the other nine).

Every function is pure and jit-able with static shapes; values that depend
on the labels (the number of classes, the largest R) are computed on the host
by default and must be passed as static arguments under `jit`. Results are
jax scalars: `float()` them on the host.
"""

from dmljax.metrics.clustering import clustering_metrics
from dmljax.metrics.clustering import f1_score
from dmljax.metrics.clustering import group_sizes
from dmljax.metrics.clustering import nmi
from dmljax.metrics.lloyd import KMeansResult
from dmljax.metrics.lloyd import kmeans
from dmljax.metrics.neighbors import nearest_neighbors
from dmljax.metrics.ranks import first_hit_ranks
from dmljax.metrics.retrieval import map_at_r
from dmljax.metrics.retrieval import recall_at_k
from dmljax.metrics.verification import verification_accuracy
