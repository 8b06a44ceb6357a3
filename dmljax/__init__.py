"""dmljax: deep metric learning in JAX.

Pure, jit-able kernels for Wu et al., *Sampling Matters in Deep Embedding
Learning* (distance weighted sampling, margin loss with learned β, and the
contrastive / triplet baselines) and the N-pair loss of Duan et al. (DE-DSP).
"""

from dmljax.beta import beta_optimizer
from dmljax.beta import beta_penalty
from dmljax.beta import gather_beta
from dmljax.beta import init_beta
from dmljax.distances import cosine_similarities
from dmljax.distances import pairwise_distances
from dmljax.distances import pairwise_squared_distances
from dmljax.labels import check_pk_batch
from dmljax.labels import class_groups
from dmljax.labels import negative_mask
from dmljax.labels import pk_batch_checks
from dmljax.labels import positive_mask
from dmljax.labels import same_label_mask
from dmljax.losses import LOSSES
from dmljax.losses import contrastive_loss
from dmljax.losses import margin_loss
from dmljax.losses import npair_loss
from dmljax.losses import triplet_loss
from dmljax.methods import make_method
from dmljax.optim import embedding_optimizer
from dmljax.optim import partitioned_optimizer
from dmljax.reductions import masked_mean
from dmljax.reductions import nonzero_mean
from dmljax.samplers import SAMPLERS
from dmljax.samplers import Triplets
from dmljax.samplers import distance_weighted_log_probabilities
from dmljax.samplers import distance_weighted_sampling
from dmljax.samplers import hard_sampling
from dmljax.samplers import positive_pairs
from dmljax.samplers import random_sampling
from dmljax.samplers import semihard_sampling
from dmljax.samplers import sphere_distance_log_density

__version__ = "0.1.0"
