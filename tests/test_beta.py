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


def test_beta_optimizer_defaults_are_the_authors():
  """lr 0.1, only the per-class part learns (the authors' code has no
  separate β⁽⁰⁾); the first momentum step is plain SGD."""
  opt = beta_lib.beta_optimizer()
  params = _beta()
  g = _grads(4)
  u, _ = opt.update(g, opt.init(params), params)
  for part in params:
    want = -0.1 * g[part] if part == "class" else np.zeros_like(g[part])
    np.testing.assert_allclose(u[part], want, rtol=1e-6)


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


def _first_beta_update(config, x, labels):
  """The β update of one optimiser step on the margin loss of a known batch
  (hard negatives: the tuples are deterministic)."""
  from dmljax import methods  # pylint: disable=import-outside-toplevel
  from dmljax.runtime import train  # pylint: disable=import-outside-toplevel

  method = methods.make_method(
    sampler="hard", loss="margin", images_per_class=4
  )
  params = {
    "embed": {"x": jnp.asarray(x)},
    "beta": beta_lib.init_beta(num_classes=1000),
  }

  def loss_fn(params):
    return method(
      jax.random.key(0), params["embed"]["x"], labels, params["beta"]
    )[0]

  tx = train.make_optimizer(config)
  grads = jax.grad(loss_fn)(params)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates["beta"]


def _reference_class_gradient(x, labels):
  """dL/dβ_c of the non-zero-averaged margin loss, float64 (Wu et al. 4)."""
  import reference  # pylint: disable=import-outside-toplevel

  d = reference.pairwise_distances(x.astype(np.float64))
  triplets = reference.hard_triplets(
    d, labels, num_negatives=1, images_per_class=4
  )
  pos, neg = reference.margin_terms(d, triplets, 1.2, margin=0.2)
  gpos, gneg = reference.margin_beta_gradients(d, triplets, 1.2, margin=0.2)
  count = reference.active_term_count(pos, neg, mask=triplets.mask)
  want = np.zeros(1000)
  np.add.at(want, labels[triplets.anchors], (gpos + gneg) / count)
  return want


@pytest.mark.parametrize("rule", ["authors", "fast"])
def test_one_beta_step_is_lr_times_gradient_over_batch_size(rule):
  """The authors' `trainer_beta.step(batch_size)`: Δβ_c = −lr · ∂L/∂β_c / B
  for the per-class β, β⁽⁰⁾ fixed; the fast rule: −lr · ∂L/∂β_c, and β⁽⁰⁾
  moves by −lr · Σ_c ∂L/∂β_c."""
  from experiments.configs import methods as configs  # noqa: PLC0415

  config = configs.get_config("method=margin_dw,dataset=glyphs")
  if rule == "fast":
    config = configs.get_config("method=margin_dw_fast_beta,dataset=glyphs")
  import reference  # pylint: disable=import-outside-toplevel

  x, labels = reference.pk_batch(5, 6, 4, 16, spread=0.6)
  config.unlock()
  config.data.batch_size = len(labels)
  config.data.images_per_class = 4
  update = _first_beta_update(config, x, labels)
  gradient = _reference_class_gradient(x, labels)
  assert np.count_nonzero(gradient) >= 3  # The batch exercises β.
  divisor = len(labels) if rule == "authors" else 1.0
  np.testing.assert_allclose(
    update["class"], -0.1 * gradient / divisor, rtol=1e-4, atol=1e-8
  )
  want_beta0 = 0.0 if rule == "authors" else -0.1 * gradient.sum()
  np.testing.assert_allclose(update["beta0"], want_beta0, rtol=1e-4, atol=1e-8)
