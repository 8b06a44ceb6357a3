"""dmljax.models: embedding networks (small conv net, ResNet-50, face ResNet).

Fast tests use the small net and a two-stage ResNet on 8 × 8 / 32 × 32
inputs; the full ResNet-50 and its face variant are checked through
`jax.eval_shape` (no compute), and run for real only in `slow` tests.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmljax import models

# torchvision's resnet50 has 25,557,032 parameters, 2,049,000 of them in the
# 1000-way classifier: 23,508,032 in the backbone.
RESNET50_BACKBONE_PARAMS = 23_508_032
EMBEDDING_DIM = 128


def _tiny_resnet(**kwargs):
  return models.ResNet(stage_sizes=(1, 1), widths=(8, 16, 32), **kwargs)


# Model id -> (factory, init shape). The small net's variables do not depend
# on the image size, so its 8 x 8 and 32 x 32 cases share one init.
FACTORIES = {
  "small": (
    lambda dtype=jnp.float32: models.make_embedder("small", dtype=dtype),
    (1, 8, 8, 1),
  ),
  "tiny_resnet": (
    lambda dtype=jnp.float32: models.Embedder(_tiny_resnet(dtype=dtype)),
    (1, 32, 32, 3),
  ),
}
# Test case -> (model id, input shape).
MODELS = {
  "small_8x8": ("small", (2, 8, 8, 1)),
  "small_32x32_gray": ("small", (2, 32, 32)),
  "tiny_resnet": ("tiny_resnet", (2, 32, 32, 3)),
}


@functools.cache
def _model_and_variables(model_id, dtype=jnp.float32):
  make, shape = FACTORIES[model_id]
  model = make(dtype=dtype)
  return model, models.init_embedder(model, jax.random.key(0), shape)


@functools.cache
def _apply(model_id, train, dtype=jnp.float32):
  """One jitted apply per (model, mode): tests share its compilations."""
  model, _ = _model_and_variables(model_id, dtype)
  return jax.jit(
    functools.partial(model.apply, train=train, mutable=["batch_stats"])
  )


def _case(name):
  model_id, shape = MODELS[name]
  model, variables = _model_and_variables(model_id)
  return model_id, model, variables, _images(shape)


def _images(shape, seed=1):
  return jax.random.normal(jax.random.key(seed), shape)


def _abstract_variables(name, shape=(1, 64, 64, 3)):
  model = models.make_embedder(name)
  return jax.eval_shape(
    lambda k: models.init_embedder(model, k, shape), jax.random.key(0)
  )


@pytest.mark.parametrize("name", list(MODELS))
def test_embeddings_shape_and_unit_norm(name):
  model_id, _, variables, x = _case(name)
  for train in (False, True):
    embeddings, _ = _apply(model_id, train)(variables, x)
    chex.assert_shape(embeddings, (x.shape[0], EMBEDDING_DIM))
    assert embeddings.dtype == jnp.float32
    np.testing.assert_allclose(
      jnp.linalg.norm(embeddings, axis=-1), 1.0, rtol=1e-5
    )


@pytest.mark.parametrize("name", ["small_8x8", "tiny_resnet"])
def test_gradients_are_finite_and_nonzero(name):
  _, model, variables, x = _case(name)

  def loss(params):
    embeddings, _ = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    return jnp.sum(embeddings[0] * embeddings[1])

  grads = jax.jit(jax.grad(loss))(variables["params"])
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert any(bool(jnp.any(g != 0)) for g in leaves)


@pytest.mark.parametrize("name", list(MODELS))
def test_train_mode_updates_batch_stats(name):
  model_id, _, variables, x = _case(name)
  _, updates = _apply(model_id, True)(variables, x)
  before = jax.tree_util.tree_leaves(variables["batch_stats"])
  after = jax.tree_util.tree_leaves(updates["batch_stats"])
  assert len(before) == len(after) > 0
  assert all(bool(jnp.any(a != b)) for a, b in zip(after, before, strict=True))


@pytest.mark.parametrize("name", list(MODELS))
def test_eval_mode_is_deterministic_and_per_example(name):
  model_id, _, variables, x = _case(name)
  full, updates = _apply(model_id, False)(variables, x)
  chex.assert_trees_all_equal(updates["batch_stats"], variables["batch_stats"])
  np.testing.assert_array_equal(full, _apply(model_id, False)(variables, x)[0])
  # Running averages: an example's embedding does not depend on its batch.
  alone, _ = _apply(model_id, False)(variables, x[:1])
  np.testing.assert_allclose(alone, full[:1], atol=1e-5)
  # Batch statistics: it does.
  train_out, _ = _apply(model_id, True)(variables, x)
  assert not np.allclose(train_out, full, atol=1e-3)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", list(MODELS))
def test_jit_matches_eager(name, train):
  model_id, model, variables, x = _case(name)
  eager = model.apply(variables, x, train=train, mutable=["batch_stats"])
  chex.assert_trees_all_close(
    _apply(model_id, train)(variables, x), eager, atol=1e-5, rtol=1e-5
  )


def test_init_embedder_matches_model_init():
  model = models.make_embedder("small", widths=(4,), embedding_dim=4)
  variables = models.init_embedder(model, jax.random.key(3), (2, 8, 8, 1))
  eager = model.init(jax.random.key(3), jnp.zeros((2, 8, 8, 1)), train=False)
  chex.assert_trees_all_close(variables, eager, atol=1e-6)
  assert set(variables) == {"params", "batch_stats"}
  assert set(variables["params"]) == {"backbone", "head"}


def test_init_embedder_under_eval_shape():
  model = models.make_embedder("small")
  shapes = jax.eval_shape(
    lambda k: models.init_embedder(model, k, (2, 8, 8, 1)), jax.random.key(0)
  )
  _, variables = _model_and_variables("small")
  chex.assert_trees_all_equal_shapes_and_dtypes(shapes, variables)


def test_resnet50_backbone_param_count():
  params = _abstract_variables("resnet50")["params"]
  count = models.param_count(params["backbone"])
  assert abs(count - 23.5e6) / 23.5e6 < 0.01
  assert count == RESNET50_BACKBONE_PARAMS
  chex.assert_shape(params["head"]["kernel"], (2048, EMBEDDING_DIM))


@pytest.mark.parametrize(
  "name,widths",
  [
    ("resnet50", (64, 256, 512, 1024, 2048)),
    ("face_resnet50", (64, 96, 192, 384, 768)),
  ],
)
def test_resnet_stage_widths(name, widths):
  backbone = _abstract_variables(name)["params"]["backbone"]
  chex.assert_shape(backbone["stem_conv"]["kernel"], (7, 7, 3, widths[0]))
  for stage, num_blocks in enumerate((3, 4, 6, 3), start=1):
    blocks = [k for k in backbone if k.startswith(f"stage{stage}_")]
    assert len(blocks) == num_blocks
    width = widths[stage]
    for block in blocks:
      params = backbone[block]
      assert params["conv1"]["kernel"].shape[-1] == width // 4
      chex.assert_shape(
        params["conv2"]["kernel"], (3, 3, width // 4, width // 4)
      )
      assert params["conv3"]["kernel"].shape[-1] == width
    assert "proj_conv" in backbone[f"stage{stage}_block1"]
    assert "proj_conv" not in backbone[f"stage{stage}_block2"]


def test_last_bn_scale_of_each_block_starts_at_zero():
  _, variables = _model_and_variables("tiny_resnet")
  backbone = variables["params"]["backbone"]
  blocks = [k for k in backbone if k.startswith("stage")]
  assert len(blocks) == 2
  for block in blocks:
    np.testing.assert_array_equal(backbone[block]["bn3"]["scale"], 0.0)
    np.testing.assert_array_equal(backbone[block]["bn2"]["scale"], 1.0)


@pytest.mark.parametrize("name", ["small_8x8", "tiny_resnet"])
def test_bfloat16_compute_keeps_float32_params(name):
  model_id, shape = MODELS[name]
  model, variables = _model_and_variables(model_id, jnp.bfloat16)
  for leaf in jax.tree_util.tree_leaves(variables):
    assert leaf.dtype == jnp.float32
  x = _images(shape)
  features = model.backbone.apply(
    {k: v["backbone"] for k, v in variables.items()}, x, train=False
  )
  assert features.dtype == jnp.bfloat16
  embeddings, updates = _apply(model_id, True, jnp.bfloat16)(variables, x)
  assert embeddings.dtype == jnp.float32
  for leaf in jax.tree_util.tree_leaves(updates):
    assert leaf.dtype == jnp.float32
  np.testing.assert_allclose(
    jnp.linalg.norm(embeddings, axis=-1), 1.0, rtol=1e-5
  )
  float32_out, _ = _apply(model_id, True)(_model_and_variables(model_id)[1], x)
  np.testing.assert_allclose(embeddings, float32_out, atol=0.1)


def test_unknown_backbone_lists_valid_names():
  with pytest.raises(ValueError, match="face_resnet50.*resnet50.*small"):
    models.make_embedder("resnet18")


def test_registry_and_options():
  assert set(models.BACKBONES) == {"small", "resnet50", "face_resnet50"}
  model = models.make_embedder(
    "small", embedding_dim=16, normalize=False, widths=(8,), features=None
  )
  variables = models.init_embedder(model, jax.random.key(0), (3, 8, 8))
  out = model.apply(variables, _images((3, 8, 8)), train=False)
  chex.assert_shape(out, (3, 16))
  assert not np.allclose(jnp.linalg.norm(out, axis=-1), 1.0)


@pytest.mark.parametrize("shape", [(2, 8), (2, 1, 8, 8, 1)])
def test_bad_input_rank_raises(shape):
  model, variables = _model_and_variables("small")
  with pytest.raises(ValueError, match="images"):
    model.apply(variables, jnp.zeros(shape), train=False)


def test_l2_normalize_is_safe_at_zero():
  x = jnp.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
  out = jax.jit(models.l2_normalize)(x)
  np.testing.assert_allclose(out, [[0, 0, 0], [1 / 3, 2 / 3, 2 / 3]])
  grads = jax.jit(jax.grad(lambda v: jnp.sum(models.l2_normalize(v))))(x)
  assert bool(jnp.all(jnp.isfinite(grads)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "face_resnet50"])
def test_full_resnet_forward_and_backward(name):
  model = models.make_embedder(name)
  shape = (2, 32, 32, 3)
  variables = models.init_embedder(model, jax.random.key(0), shape)
  x = _images(shape)

  def loss(params):
    embeddings, updates = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    return jnp.sum(embeddings[0] * embeddings[1]), embeddings

  grads, embeddings = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
  chex.assert_shape(embeddings, (2, EMBEDDING_DIM))
  np.testing.assert_allclose(
    jnp.linalg.norm(embeddings, axis=-1), 1.0, rtol=1e-5
  )
  assert all(
    bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads)
  )
