"""Tuples chosen by the deep sampler network from a candidate pool.

Shape letters: P classes × M images in the pool (class-major, as a P×K batch
with K = M lays them out), F trunk features, m tuples.

Triplets (DE-DSP Sec. 3.2, L = 2). The anchors are fixed by hand: m
distinct classes drawn uniformly, one image of each (so no anchor repeats
within a mini-batch). The first network picks the positive among the
anchor's class-mates (never the anchor itself, nor a copy of it: the pool
may repeat an image when a class has fewer than M) and the negative class
among the other classes; the second picks the negative image within that
class given anchor and positive. p(x) = p(positive) · p(class) · p(negative).

N-pair (Sec. 3.2). One gallery image per class is fixed by hand; the
network picks each class's probe among its other images, independently.

Both are written once as a sequence of named choices made by `pick`
(`sampling_pick`: one draw per row, with its log-probability).
"""

from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dmljax.dsp import network as network_lib
from dmljax.dsp import policy

Pick = Callable[
  [str, jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]
]


class PoolTriplets(NamedTuple):
  """m triplets as flat pool indices (class · M + slot).

  Attributes:
    anchors, positives, negatives: [m] int32.
    log_prob: [m] log p(positive) + log p(class) + log p(negative).
    entropy: [m] the sum of the three choices' entropies.
    mask: [m] bool, every choice had a valid candidate.
  """

  anchors: jax.Array
  positives: jax.Array
  negatives: jax.Array
  log_prob: jax.Array
  entropy: jax.Array
  mask: jax.Array


class PoolPairs(NamedTuple):
  """P (probe, gallery) pairs, one per class, as flat pool indices.

  Attributes:
    probes, gallery: [P] int32.
    log_prob: [P] log p(probe).
    entropy: [P] entropy of each probe choice.
    mask: [P] bool.
  """

  probes: jax.Array
  gallery: jax.Array
  log_prob: jax.Array
  entropy: jax.Array
  mask: jax.Array


def _pool_shape(features: jax.Array, ids: jax.Array) -> tuple[int, int]:
  if features.ndim != 3 or ids.shape != features.shape[:2]:
    raise ValueError(
      f"features must be [P, M, F] and ids [P, M], got {features.shape} "
      f"and {ids.shape}."
    )
  return features.shape[0], features.shape[1]


def hand_picked_anchors(
  key: jax.Array, num_classes: int, images_per_class: int, num_tuples: int
) -> tuple[jax.Array, jax.Array]:
  """m distinct anchor classes, uniformly, and one image slot in each."""
  if not 1 <= num_tuples <= num_classes:
    raise ValueError(
      f"{num_tuples} triplets need as many distinct anchor classes, but the "
      f"pool has {num_classes}: raise dsp.pool_classes or lower "
      "dsp.tuples_per_minibatch."
    )
  class_key, slot_key = jax.random.split(key)
  classes = jax.random.permutation(class_key, num_classes)[:num_tuples]
  slots = jax.random.randint(slot_key, (num_tuples,), 0, images_per_class)
  return classes.astype(jnp.int32), slots.astype(jnp.int32)


def triplet_choices(
  network: network_lib.DeepSamplerNetwork,
  params: Any,
  features: jax.Array,
  ids: jax.Array,
  anchor_classes: jax.Array,
  anchor_slots: jax.Array,
  pick: Pick,
) -> PoolTriplets:
  """The L = 2 policy's choices for the given anchors (see module doc).

  Args:
    network: the DSN module.
    params: its parameters.
    features: [P, M, F] trunk features of the pool.
    ids: [P, M] dataset image ids of the pool.
    anchor_classes, anchor_slots: [m] int32.
    pick: e.g. `sampling_pick(key)`.
  """
  num_classes, _ = _pool_shape(features, ids)
  apply = lambda method, *args: network.apply(  # noqa: E731
    {"params": params}, *args, method=method
  )
  net = network_lib.DeepSamplerNetwork
  anchors = features[anchor_classes, anchor_slots]
  anchor_ids = ids[anchor_classes, anchor_slots]
  mates = features[anchor_classes]
  mates_mask = ids[anchor_classes] != anchor_ids[:, None]
  logits = apply(net.positive_logits, anchors, mates)
  positive_slots, positive_lp, positive_ok = pick(
    "positive", logits, mates_mask
  )
  entropy = policy.entropy(logits, mates_mask)
  positives = mates[jnp.arange(anchors.shape[0]), positive_slots]

  summaries = jnp.mean(features, axis=1)
  summaries = jnp.broadcast_to(summaries, (anchors.shape[0], *summaries.shape))
  class_mask = jnp.arange(num_classes)[None] != anchor_classes[:, None]
  logits = apply(net.class_logits, anchors, summaries)
  classes, class_lp, class_ok = pick("class", logits, class_mask)
  entropy += policy.entropy(logits, class_mask)

  candidates = features[classes]
  negative_mask = ids[classes] != anchor_ids[:, None]
  logits = apply(net.negative_logits, anchors, positives, candidates)
  negative_slots, negative_lp, negative_ok = pick(
    "negative", logits, negative_mask
  )
  entropy += policy.entropy(logits, negative_mask)
  per_class = features.shape[1]
  return PoolTriplets(
    anchors=anchor_classes * per_class + anchor_slots,
    positives=anchor_classes * per_class + positive_slots,
    negatives=classes * per_class + negative_slots,
    log_prob=positive_lp + class_lp + negative_lp,
    entropy=entropy,
    mask=positive_ok & class_ok & negative_ok,
  )


def pair_choices(
  network: network_lib.DeepSamplerNetwork,
  params: Any,
  features: jax.Array,
  ids: jax.Array,
  gallery_slots: jax.Array,
  pick: Pick,
) -> PoolPairs:
  """The N-pair policy's probe of every class, given the gallery slots [P]."""
  num_classes, per_class = _pool_shape(features, ids)
  rows = jnp.arange(num_classes)
  gallery = features[rows, gallery_slots]
  gallery_ids = ids[rows, gallery_slots]
  mask = ids != gallery_ids[:, None]
  logits = network.apply(
    {"params": params},
    gallery,
    features,
    method=network_lib.DeepSamplerNetwork.probe_logits,
  )
  slots, log_prob, ok = pick("probe", logits, mask)
  return PoolPairs(
    probes=rows * per_class + slots,
    gallery=rows * per_class + gallery_slots,
    log_prob=log_prob,
    entropy=policy.entropy(logits, mask),
    mask=ok,
  )


def sampling_pick(key: jax.Array) -> Pick:
  """A `pick` that samples each named choice with its own key.

  Returns (index, log_prob, valid) per row (see `policy.sample`); log_prob
  is differentiable in the logits, so REINFORCE differentiates the same
  pass that sampled.
  """

  def pick(name, logits, mask):
    name_key = jax.random.fold_in(key, _NAMES.index(name))
    return policy.sample(name_key, logits, mask)

  return pick


_NAMES = ("positive", "class", "negative", "probe")
