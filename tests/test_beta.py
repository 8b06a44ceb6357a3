"""dmljax.beta: beta(i) = beta0 + beta_class[c(i)] + beta_img[i] (Wu 4)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dmljax import beta as beta_lib
from dmljax import optim


def test_init_beta_default_is_paper_value():
  beta = beta_lib.init_beta()
  assert set(beta) == {"beta0"}
  assert beta["beta0"].shape == () and beta["beta0"].dtype == jnp.float32
  np.testing.assert_allclose(beta["beta0"], 1.2, rtol=1e-7)  # Sec. 5


@pytest.mark.parametrize(
  "num_classes,num_images",
  [(7, None), (None, 11), (3, 20)],
  ids=["class", "image", "class_and_image"],
)
def test_init_beta_parts(num_classes, num_images):
  beta = beta_lib.init_beta(
    beta0=0.9, num_classes=num_classes, num_images=num_images
  )
  want = {"beta0"}
  np.testing.assert_allclose(beta["beta0"], 0.9, rtol=1e-7)
  if num_classes:
    want.add("class")
    assert beta["class"].shape == (num_classes,)
    assert beta["class"].dtype == jnp.float32
    assert np.all(np.asarray(beta["class"]) == 0.0)
  if num_images:
    want.add("image")
    assert beta["image"].shape == (num_images,)
    assert beta["image"].dtype == jnp.float32
    assert np.all(np.asarray(beta["image"]) == 0.0)
  assert set(beta) == want


def _beta(parts=("class", "image"), seed=0):
  rng = np.random.default_rng(seed)
  beta = {"beta0": np.float32(1.2)}
  if "class" in parts:
    beta["class"] = rng.normal(size=5).astype(np.float32)
  if "image" in parts:
    beta["image"] = rng.normal(size=9).astype(np.float32)
  return beta


LABELS = np.array([4, 0, 0, 2, 4, 1, 3, 3], np.int32)
IMAGE_IDS = np.array([8, 0, 1, 7, 2, 2, 5, 6], np.int32)


@pytest.mark.parametrize(
  "parts", [(), ("class",), ("image",), ("class", "image")], ids=str
)
def test_gather_beta_matches_reference(kernel, jit, parts):
  beta = _beta(parts)
  ids = IMAGE_IDS if "image" in parts else None
  got = kernel(beta_lib.gather_beta, jit=jit)(beta, LABELS, ids)
  want = []
  for t in range(len(LABELS)):
    v = float(beta["beta0"])
    if "class" in parts:
      v += float(beta["class"][LABELS[t]])
    if "image" in parts:
      v += float(beta["image"][IMAGE_IDS[t]])
    want.append(v)
  assert got.shape == LABELS.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_gather_beta_gradient_scatters_to_parts(kernel):
  beta = _beta()
  w = np.arange(1.0, 9.0, dtype=np.float32)
  grads = jax.grad(
    lambda b: jnp.sum(w * kernel(beta_lib.gather_beta)(b, LABELS, IMAGE_IDS))
  )(beta)
  want_class = np.zeros(5)
  want_image = np.zeros(9)
  for t in range(len(LABELS)):
    want_class[LABELS[t]] += w[t]
    want_image[IMAGE_IDS[t]] += w[t]
  np.testing.assert_allclose(grads["beta0"], w.sum(), rtol=1e-6)
  np.testing.assert_allclose(grads["class"], want_class, rtol=1e-6)
  np.testing.assert_allclose(grads["image"], want_image, rtol=1e-6)


def test_gather_beta_requires_image_ids():
  with pytest.raises(ValueError):
    beta_lib.gather_beta(_beta(), LABELS)


@pytest.mark.parametrize("nu", [0.0, 0.1, 1.5])
def test_beta_penalty_matches_reference(kernel, jit, nu):
  rng = np.random.default_rng(3)
  values = rng.uniform(0.5, 2.0, 10).astype(np.float32)
  mask = rng.uniform(size=10) < 0.6
  got = kernel(beta_lib.beta_penalty, jit=jit, nu=nu)(values, mask)
  want = nu * sum(float(v) for v, m in zip(values, mask, strict=True) if m)
  assert np.shape(got) == ()
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_beta_penalty_defaults_to_zero(kernel):
  got = kernel(beta_lib.beta_penalty)(np.ones(4, np.float32), np.ones(4, bool))
  assert float(got) == 0.0


def _grads(seed):
  rng = np.random.default_rng(seed)
  return {
    "beta0": np.float32(rng.normal()),
    "class": rng.normal(size=5).astype(np.float32),
    "image": rng.normal(size=9).astype(np.float32),
  }


@pytest.mark.parametrize(
  "trainable",
  [("beta0", "class", "image"), ("class",), ("beta0",), ()],
  ids=["all", "class_only", "beta0_only", "none"],
)
def test_beta_optimizer_sgd_momentum_two_steps(trainable):
  lr, momentum = 0.1, 0.9
  opt = beta_lib.beta_optimizer(
    learning_rate=lr, momentum=momentum, trainable=trainable
  )
  params = _beta()
  g1, g2 = _grads(1), _grads(2)
  state = opt.init(params)
  update = jax.jit(opt.update)
  u1, state = update(g1, state, params)
  params1 = optax.apply_updates(params, u1)
  u2, state = update(g2, state, params1)
  for part in ("beta0", "class", "image"):
    if part in trainable:  # heavy-ball SGD: v = g + m v; update = -lr v
      want1 = -lr * g1[part]
      want2 = -lr * (g2[part] + momentum * g1[part])
    else:
      want1 = want2 = np.zeros_like(g1[part])
    np.testing.assert_allclose(u1[part], want1, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(u2[part], want2, rtol=1e-6, atol=1e-7)
    changed = np.any(np.asarray(params1[part]) != np.asarray(params[part]))
    assert changed == (part in trainable), part


def test_beta_optimizer_defaults():
  opt = beta_lib.beta_optimizer()
  params = _beta()
  g = _grads(4)
  u, _ = opt.update(g, opt.init(params), params)
  for part in params:  # lr 0.1; the first momentum step is plain SGD
    np.testing.assert_allclose(u[part], -0.1 * g[part], rtol=1e-6)


def test_embedding_optimizer_updates_beta_beside_the_network():
  """β learns when its transform is nested in the combined optimiser."""
  params = {
    "embed": {"w": jnp.ones(2)},
    "beta": beta_lib.init_beta(num_classes=3),
  }
  grads = jax.tree.map(jnp.ones_like, params)
  tx = optim.embedding_optimizer(beta_trainable=("class",))
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["beta"]["class"], -0.1 * np.ones(3))
  assert float(updates["beta"]["beta0"]) == 0.0  # Frozen part.
  assert np.all(np.asarray(updates["embed"]["w"]) < 0)
