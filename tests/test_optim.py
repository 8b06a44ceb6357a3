"""The network optimisers: ours and the authors' (MXNet Gluon train.py).

The authors' update, written from MXNet's Adam (`grad = rescale_grad·grad +
wd·weight`, rescale_grad = 1/B from `trainer.step(B)`), `lr_mult` 0.01 on
pretrained convolutions, and their step schedule (× 0.5 at epochs 12, 14,
16, 18 of 20). ε sits on the bias-corrected second moment (optax's place;
MXNet adds it before the correction, which only matters while |g| ≲ 30 ε).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dmljax import optim
from dmljax.runtime import train
from experiments.configs import methods


def _params(seed):
  rng = np.random.default_rng(seed)
  leaf = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return {
    "embed": {
      "backbone": {
        "stem_conv": {"kernel": leaf(3, 3, 2, 4)},
        "bn": {"scale": leaf(4)},
      },
      "head": {"kernel": leaf(4, 8)},
    },
    "beta": {"beta0": jnp.float32(1.2), "class": jnp.full(5, 0.0)},
  }


def _sop_config(pretrained: bool):
  config = methods.get_config("method=margin_dw,dataset=sop")
  config.unlock()
  config.model.pretrained = "weights.safetensors" if pretrained else ""
  return config


@pytest.mark.parametrize("pretrained", [False, True])
def test_first_step_of_the_authors_optimizer(pretrained):
  config = _sop_config(pretrained)
  batch, lr, wd, eps = config.data.batch_size, 1e-4, 1e-4, 1e-7
  params = _params(0)
  grads = jax.tree.map(
    lambda p: jnp.asarray(
      np.random.default_rng(1).normal(size=np.shape(p)), jnp.float32
    ),
    params,
  )
  tx = train.make_optimizer(config)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)

  def want(path, p, g):  # Adam's first step is −lr · g / (|g| + ε).
    names = [getattr(entry, "key", "") for entry in path]
    g = np.asarray(g, np.float64) / batch + wd * np.asarray(p, np.float64)
    step = -lr * g / (np.abs(g) + eps)
    conv = "stem_conv" in names and names[-1] == "kernel"
    return step * (0.01 if pretrained and conv else 1.0)

  embed = jax.tree_util.tree_map_with_path(
    want, params["embed"], grads["embed"]
  )
  for got, expected in zip(
    jax.tree.leaves(updates["embed"]), jax.tree.leaves(embed), strict=True
  ):
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-12)
  np.testing.assert_allclose(
    updates["beta"]["class"],
    -0.1 * np.asarray(grads["beta"]["class"]) / batch,
    rtol=1e-6,
  )


def test_the_authors_schedule_halves_both_learning_rates_at_their_epochs():
  config = _sop_config(pretrained=False)
  config.train.num_steps = 20
  schedule = train._learning_rate_schedule(config, 1.0)
  got = [float(schedule(step)) for step in range(20)]
  # Epochs of one step: × 0.5 from epoch 12, 14, 16 and 18 on (get_lr).
  want = [0.5 ** sum(step >= s for s in (12, 14, 16, 18)) for step in range(20)]
  np.testing.assert_allclose(got, want)


def test_backbone_conv_kernels_are_told_apart():
  params = _params(0)["embed"]
  labels = jax.tree_util.tree_map_with_path(
    lambda path, _: optim.is_backbone_conv_kernel(path), params
  )
  assert labels["backbone"]["stem_conv"]["kernel"]
  assert not labels["backbone"]["bn"]["scale"]
  assert not labels["head"]["kernel"]


@pytest.mark.parametrize(
  "name,value",
  [
    ("optim.schedule", "linear"),
    ("optim.gradient_divisor", "batch"),
    ("beta.gradient_divisor", "global"),
    ("optim.weight_decay_mode", "adamw"),
  ],
)
def test_unknown_optimizer_choices_are_refused_with_the_choices(name, value):
  config = _sop_config(pretrained=False)
  section, field = name.split(".")
  config[section][field] = value
  with pytest.raises(ValueError, match="choose one of"):
    train.make_optimizer(config)


def _sgd_state(params):
  tx = optax.sgd(0.5)
  state = {
    "params": params,
    "opt": tx.init(params),
    "step": jnp.asarray(3, jnp.int32),
    "nonfinite_step": jnp.asarray(-1, jnp.int32),
    "batch_stats": {"mean": jnp.zeros(2)},
  }
  return tx, state


def test_apply_gradients_is_one_update_and_reports_the_norm():
  params = {"w": jnp.asarray([1.0, -2.0]), "b": jnp.asarray(0.5)}
  grads = {"w": jnp.asarray([3.0, 4.0]), "b": jnp.asarray(0.0)}
  tx, state = _sgd_state(params)
  stats = {"mean": jnp.ones(2)}
  new, norm = optim.apply_gradients(
    tx, state, grads, jnp.asarray(1.0), batch_stats=stats
  )
  np.testing.assert_allclose(new["params"]["w"], [1.0 - 1.5, -2.0 - 2.0])
  np.testing.assert_allclose(new["params"]["b"], 0.5)
  np.testing.assert_allclose(norm, 5.0)
  np.testing.assert_array_equal(new["batch_stats"]["mean"], stats["mean"])
  assert int(new["step"]) == 4 and int(new["nonfinite_step"]) == -1


def test_apply_gradients_keeps_the_state_on_a_nonfinite_loss():
  params = {"w": jnp.asarray([1.0, -2.0])}
  tx, state = _sgd_state(params)
  grads = {"w": jnp.asarray([1.0, 1.0])}
  new, _ = optim.apply_gradients(
    tx, state, grads, jnp.asarray(jnp.nan), batch_stats={"mean": jnp.ones(2)}
  )
  np.testing.assert_array_equal(new["params"]["w"], params["w"])
  np.testing.assert_array_equal(new["batch_stats"]["mean"], jnp.zeros(2))
  assert int(new["step"]) == 3 and int(new["nonfinite_step"]) == 4
