"""Parity with pytorch-metric-learning (PML): same tuples, same numbers.

A user switching from PML must reproduce its losses with documented settings
(README.md, `dmljax.losses`, `dmljax.reductions`). Each test feeds the tuples
that a dmljax sampler chose to PML's loss as an indices tuple and compares
the value and the gradients. Skipped when torch or PML is not installed
(neither is a dependency).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dmljax

torch = pytest.importorskip("torch")
pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

NUM_CLASSES, K, DIM = 8, 5, 32


def _batch(seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(NUM_CLASSES * K, DIM)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  labels = rng.permutation(np.repeat(np.arange(NUM_CLASSES), K))
  return x, labels.astype(np.int32)


def _unit(embeddings):
  # PML's default LpDistance normalises embeddings; normalise ours too so the
  # gradients see the same projection.
  return embeddings / jnp.linalg.norm(embeddings, axis=1, keepdims=True)


def _valid_tuples(triplets):
  mask = np.asarray(triplets.mask)
  return [np.asarray(v)[mask] for v in triplets[:3]]


def _torch_inputs(x, labels):
  embeddings = torch.tensor(x, requires_grad=True)
  return embeddings, torch.tensor(labels, dtype=torch.long)


@pytest.mark.parametrize("nu", [0.0, 0.1], ids=["nu0", "nu0.1"])
def test_margin_loss_with_class_beta_matches_pml(nu):
  x, labels = _batch(0)
  beta0 = 1.2
  class_offsets = np.linspace(-0.1, 0.1, NUM_CLASSES).astype(np.float32)
  distances = dmljax.pairwise_distances(jnp.asarray(x))
  triplets = dmljax.distance_weighted_sampling(
    jax.random.key(0), distances, jnp.asarray(labels), dim=DIM
  )

  def ours(embeddings, beta):
    d = dmljax.pairwise_distances(_unit(embeddings))
    b = dmljax.gather_beta(beta, jnp.asarray(labels)[triplets.anchors])
    pos, neg = dmljax.margin_loss(d, triplets, b, margin=0.2)
    penalty = dmljax.beta_penalty(b, triplets.mask, nu=nu)
    return dmljax.nonzero_mean(pos, neg, mask=triplets.mask, extra=penalty)

  beta = {"beta0": jnp.float32(beta0), "class": jnp.asarray(class_offsets)}
  value, (grad_x, grad_beta) = jax.jit(
    jax.value_and_grad(ours, argnums=(0, 1))
  )(jnp.asarray(x), beta)

  loss_fn = pml_losses.MarginLoss(
    margin=0.2, nu=nu, beta=beta0, learn_beta=True, num_classes=NUM_CLASSES
  )
  with torch.no_grad():
    loss_fn.beta.copy_(torch.tensor(beta0 + class_offsets))
  embeddings, torch_labels = _torch_inputs(x, labels)
  indices = tuple(torch.tensor(v) for v in _valid_tuples(triplets))
  theirs = loss_fn(embeddings, torch_labels, indices)
  theirs.backward()

  np.testing.assert_allclose(value, theirs.item(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    grad_x, embeddings.grad.numpy(), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
    grad_beta["class"], loss_fn.beta.grad.numpy(), rtol=1e-4, atol=1e-6
  )


@pytest.mark.parametrize("nu", [0.0, 0.1], ids=["nu0", "nu0.1"])
def test_margin_loss_with_scalar_learned_beta_matches_pml(nu):
  """PML's learned scalar β (`num_classes=None`) adds ν·β once, undivided
  ("already_reduced"); its per-class β divides ν·Σβ by the non-zero count
  as `nonzero_mean(extra=beta_penalty)` does (the test above)."""
  x, labels = _batch(2)
  distances = dmljax.pairwise_distances(jnp.asarray(x))
  triplets = dmljax.distance_weighted_sampling(
    jax.random.key(1), distances, jnp.asarray(labels), dim=DIM
  )

  def ours(embeddings, beta):
    d = dmljax.pairwise_distances(_unit(embeddings))
    b = jnp.broadcast_to(beta, triplets.mask.shape)
    pos, neg = dmljax.margin_loss(d, triplets, b, margin=0.2)
    return dmljax.nonzero_mean(pos, neg, mask=triplets.mask) + nu * beta

  value, (grad_x, grad_beta) = jax.jit(
    jax.value_and_grad(ours, argnums=(0, 1))
  )(jnp.asarray(x), jnp.float32(1.1))

  loss_fn = pml_losses.MarginLoss(margin=0.2, nu=nu, beta=1.1, learn_beta=True)
  embeddings, torch_labels = _torch_inputs(x, labels)
  indices = tuple(torch.tensor(v) for v in _valid_tuples(triplets))
  theirs = loss_fn(embeddings, torch_labels, indices)
  theirs.backward()

  np.testing.assert_allclose(value, theirs.item(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    grad_x, embeddings.grad.numpy(), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
    grad_beta, loss_fn.beta.grad.numpy()[0], rtol=1e-4, atol=1e-6
  )


def test_triplet_l2_matches_pml_triplet_margin_loss():
  x, labels = _batch(1)
  distances = dmljax.pairwise_distances(jnp.asarray(x))
  triplets = dmljax.semihard_sampling(
    jax.random.key(0), distances, jnp.asarray(labels)
  )

  def ours(embeddings):
    d = dmljax.pairwise_distances(_unit(embeddings))
    terms = dmljax.triplet_loss(d, triplets, margin=0.05, squared=False)
    return dmljax.nonzero_mean(terms, mask=triplets.mask)

  value, grad_x = jax.value_and_grad(ours)(jnp.asarray(x))
  embeddings, torch_labels = _torch_inputs(x, labels)
  indices = tuple(torch.tensor(v) for v in _valid_tuples(triplets))
  theirs = pml_losses.TripletMarginLoss(margin=0.05)(
    embeddings, torch_labels, indices
  )
  theirs.backward()
  np.testing.assert_allclose(value, theirs.item(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    grad_x, embeddings.grad.numpy(), rtol=1e-4, atol=1e-6
  )


def test_contrastive_matches_pml_with_documented_settings():
  """PML: unsquared hinges, neg_margin 1, pos and neg averaged separately."""
  x, labels = _batch(2)
  distances = dmljax.pairwise_distances(jnp.asarray(x))
  triplets = dmljax.random_sampling(
    jax.random.key(3), distances, jnp.asarray(labels)
  )

  def ours(embeddings):
    d = dmljax.pairwise_distances(_unit(embeddings))
    pos, neg = dmljax.contrastive_loss(d, triplets, margin=1.0)
    # PML's terms are the square roots of the paper's squared terms.
    pos, neg = (
      jnp.sqrt(jnp.where(t > 0, t, 1.0)) * (t > 0) for t in (pos, neg)
    )
    return dmljax.nonzero_mean(pos, mask=triplets.mask) + dmljax.nonzero_mean(
      neg, mask=triplets.mask
    )

  value, grad_x = jax.value_and_grad(ours)(jnp.asarray(x))
  a, p, n = (torch.tensor(v) for v in _valid_tuples(triplets))
  embeddings, torch_labels = _torch_inputs(x, labels)
  theirs = pml_losses.ContrastiveLoss(pos_margin=0, neg_margin=1)(
    embeddings, torch_labels, (a, p, a, n)
  )
  theirs.backward()
  np.testing.assert_allclose(value, theirs.item(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    grad_x, embeddings.grad.numpy(), rtol=1e-4, atol=1e-6
  )


def _batch_with_a_far_pair(dim, seed=0):
  """Unit embeddings clustered by class; classes 0 and 1 are antipodal.

  Every anchor has usable negatives (closer than 1.4), but the pairs between
  classes 0 and 1 sit near distance 2, where −log q(d) is huge. PML takes one
  maximum of the log-weights over the whole matrix before masking far pairs,
  so in float32 every other weight underflows to 0.
  """
  rng = np.random.default_rng(seed)
  num_classes, k = 16, 5
  centres = rng.normal(size=(num_classes, dim))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  centres[1] = -centres[0]
  noise = 0.3 / np.sqrt(dim) * rng.normal(size=(num_classes * k, dim))
  x = np.repeat(centres, k, axis=0) + noise
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  labels = np.repeat(np.arange(num_classes), k)
  return x.astype(np.float32), labels.astype(np.int32)


@pytest.mark.parametrize("dim", [128, 512], ids=["d128", "d512"])
def test_distance_weighted_keeps_anchors_that_pml_drops(dim):
  x, labels = _batch_with_a_far_pair(dim)
  distances = dmljax.pairwise_distances(jnp.asarray(x))
  usable = (labels[:, None] != labels[None, :]) & (np.asarray(distances) < 1.4)
  anchors_with_usable = set(np.flatnonzero(usable.any(axis=1)).tolist())

  triplets = dmljax.distance_weighted_sampling(
    jax.random.key(0), distances, jnp.asarray(labels), dim=dim
  )
  ours = set(np.asarray(triplets.anchors)[np.asarray(triplets.mask)].tolist())
  assert ours == anchors_with_usable

  torch.manual_seed(0)
  miner = pml_miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
  a, _, _ = miner(torch.tensor(x), torch.tensor(labels, dtype=torch.long))
  theirs = set(a.numpy().tolist())
  assert len(anchors_with_usable) == 80
  # PML's global maximum loses every anchor of this batch.
  assert not theirs
