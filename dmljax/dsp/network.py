"""The deep sampler network (DSN) of DE-DSP (Duan et al., Sec. 3.1, Fig. 2).

Shape letters: N pool images, H × W × C pixels, F trunk features, m tuples,
M candidates per row, P classes in the pool.

What the DSN sees. The point of the method is to choose tuples without a
forward pass of the embedding network over every candidate, so the DSN has
its own cheap input path, as in the paper (images into a shallow CNN): each
pool image is average-pooled by `downsample` and goes through two strided
3 × 3 convolutions and a Dense layer, giving F features. For 32 × 32 glyphs
that is ~1/50 of the embedding network's cost per image. (A memory bank of
stale embeddings would be cheaper still, but it needs the embedding network
to have seen every candidate recently and it lags behind the network the
scores come from; WORKSPACE.md records this choice.)

Heads. A candidate is scored by a small MLP on a pair (or triple) of trunk
features [u, v, u ⊙ v, |u − v|] (permutation-equivariant: a candidate's
logit does not depend on its slot), so one set of weights serves every pool
size:

* triplet, first network (L = 1): positive logits from (anchor, candidate
  positive); negative-class logits from (anchor, class summary), the
  summary being the mean trunk feature of the class's pool images.
* triplet, second network: negative logits from (anchor, chosen positive,
  candidate negative of the chosen class).
* N-pair: probe logits from (gallery image of the class, candidate probe),
  with the mean gallery feature as context.

The two triplet networks share the trunk, as in the paper. The last Dense
layer of every head starts at zero, so the initial policy is exactly
uniform over the valid candidates.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def pair_features(u: jax.Array, v: jax.Array) -> jax.Array:
  """[..., 4F] features of a pair of [..., F] vectors (order matters)."""
  return jnp.concatenate([u, v, u * v, jnp.abs(u - v)], axis=-1)


class ScoreHead(nn.Module):
  """MLP [..., I] → [...] logits; the output layer is zero-initialised."""

  hidden: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
    out = nn.Dense(
      1,
      kernel_init=nn.initializers.zeros,
      bias_init=nn.initializers.zeros,
      name="out",
    )(x)
    return out[..., 0]


class SamplerTrunk(nn.Module):
  """Cheap image features: avg-pool ↓ → 2 strided convs → Dense → [N, F]."""

  features: int = 64
  widths: tuple[int, ...] = (16, 32)
  downsample: int = 2

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    if images.ndim != 4:
      raise ValueError(
        f"images must be [N, H, W, C], got shape {images.shape}."
      )
    x = images.astype(jnp.float32)
    if self.downsample > 1:
      window = (self.downsample, self.downsample)
      x = nn.avg_pool(x, window, strides=window)
    for i, width in enumerate(self.widths):
      x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2), name=f"conv{i}")(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.relu(nn.Dense(self.features, name="dense")(x))


class DeepSamplerNetwork(nn.Module):
  """Shared trunk + the triplet (L = 2) and N-pair heads.

  Call `apply(variables, images, method=DeepSamplerNetwork.features)` once
  per pool, then the head methods on the [N, F] features (all pure).

  Attributes:
    features: F.
    widths: the trunk's conv widths.
    downsample: the trunk's input average-pool factor.
    hidden: hidden width of the heads.
  """

  features: int = 64
  widths: tuple[int, ...] = (16, 32)
  downsample: int = 2
  hidden: int = 64

  def setup(self):
    self.trunk = SamplerTrunk(
      self.features, tuple(self.widths), self.downsample
    )
    self.positive_head = ScoreHead(self.hidden)
    self.class_head = ScoreHead(self.hidden)
    self.negative_head = ScoreHead(self.hidden)
    self.probe_head = ScoreHead(self.hidden)

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """Runs every head once on a toy layout (used by `init`)."""
    h = self.features_of(images)
    anchor, candidates = h[:1], h[None]
    return {
      "positive": self.positive_logits(anchor, candidates),
      "class": self.class_logits(anchor, candidates),
      "negative": self.negative_logits(anchor, anchor, candidates),
      "probe": self.probe_logits(anchor, candidates),
    }

  def features_of(self, images: jax.Array) -> jax.Array:
    """[N, H, W, C] pool images → [N, F] trunk features."""
    return self.trunk(images)

  def positive_logits(self, anchors: jax.Array, candidates: jax.Array):
    """anchors [m, F], candidates [m, M, F] → [m, M] positive logits."""
    anchors = jnp.broadcast_to(anchors[:, None], candidates.shape)
    return self.positive_head(pair_features(anchors, candidates))

  def class_logits(self, anchors: jax.Array, summaries: jax.Array):
    """anchors [m, F], class summaries [m, P, F] → [m, P] logits."""
    anchors = jnp.broadcast_to(anchors[:, None], summaries.shape)
    return self.class_head(pair_features(anchors, summaries))

  def negative_logits(
    self, anchors: jax.Array, positives: jax.Array, candidates: jax.Array
  ):
    """anchors, positives [m, F], candidates [m, M, F] → [m, M] logits."""
    anchors = jnp.broadcast_to(anchors[:, None], candidates.shape)
    positives = jnp.broadcast_to(positives[:, None], candidates.shape)
    x = jnp.concatenate(
      [pair_features(anchors, candidates), positives * candidates], axis=-1
    )
    return self.negative_head(x)

  def probe_logits(self, gallery: jax.Array, candidates: jax.Array):
    """gallery [P, F], candidate probes [P, M, F] → [P, M] logits."""
    context = jnp.mean(gallery, axis=0, keepdims=True)
    gallery = jnp.broadcast_to(gallery[:, None], candidates.shape)
    context = jnp.broadcast_to(context[:, None], candidates.shape)
    x = jnp.concatenate(
      [pair_features(gallery, candidates), context * candidates], axis=-1
    )
    return self.probe_head(x)


def init_sampler(
  network: DeepSamplerNetwork, key: jax.Array, image_shape: tuple[int, ...]
) -> dict[str, Any]:
  """Parameters of the DSN for pool images of shape (H, W, C)."""
  images = jnp.zeros((2, *image_shape), jnp.float32)
  return network.init(key, images)["params"]
