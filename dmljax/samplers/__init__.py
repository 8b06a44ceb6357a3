"""Tuple samplers for a P×K batch: random, hard, semi-hard, distance weighted.

Every sampler has the signature

  sampler(key, distances [B, B], labels [B], *, images_per_class=5,
          num_negatives=1, ...) -> Triplets

and returns the fixed layout described in `dmljax.samplers.triplets`.
"""

from collections.abc import Callable

from dmljax.samplers.distance_weighted import DISTANCE_WEIGHTED_METHODS
from dmljax.samplers.distance_weighted import (
  distance_weighted_log_probabilities,
)
from dmljax.samplers.distance_weighted import distance_weighted_sampling
from dmljax.samplers.distance_weighted import sphere_distance_log_density
from dmljax.samplers.mining import SEMIHARD_FALLBACKS
from dmljax.samplers.mining import hard_sampling
from dmljax.samplers.mining import random_sampling
from dmljax.samplers.mining import semihard_sampling
from dmljax.samplers.triplets import Triplets
from dmljax.samplers.triplets import positive_pairs

Sampler = Callable[..., Triplets]

SAMPLERS: dict[str, Sampler] = {
  "random": random_sampling,
  "hard": hard_sampling,
  "semihard": semihard_sampling,
  "distance_weighted": distance_weighted_sampling,
}

# The keyword options of each sampler that a run's config carries (config
# field sampler.<option>, None there meaning the sampler's own default).
SAMPLER_OPTIONS: dict[str, tuple[str, ...]] = {
  "random": (),
  "hard": (),
  "semihard": ("lower_bound", "fallback"),
  "distance_weighted": (
    "cutoff",
    "nonzero_loss_cutoff",
    "method",
    "no_usable_negative",
  ),
}
