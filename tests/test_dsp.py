"""DE-DSP: policies, the REINFORCE estimator, tuple validity, Algorithm 1."""

import itertools

import chex
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
from hypothesis import strategies as st

from dmljax import data as data_lib
from dmljax import models
from dmljax.dsp import algorithm
from dmljax.dsp import network as network_lib
from dmljax.dsp import objective
from dmljax.dsp import policy
from dmljax.dsp import reinforce
from dmljax.dsp import selection
from dmljax.runtime.recipes import dsp as dsp_recipe
from experiments.configs import methods

# A toy policy: softmax over 3 arms with logits θ, fixed reward per arm.
THETA = np.array([0.3, -0.5, 0.1])
REWARD = np.array([1.0, 3.0, -2.0])


def _exact_gradient(theta, reward):
  """∇θ E_{a~softmax(θ)}[r_a] = p ⊙ (r − pᵀr), in float64."""
  p = np.exp(theta - theta.max())
  p /= p.sum()
  return p * (reward - p @ reward)


def _estimator(theta, arms, baseline):
  """Our gradient of the expected reward on one mini-batch of arms."""
  arms = jnp.asarray(arms)
  mask = jnp.ones(arms.shape, bool)
  scores = jnp.asarray(REWARD)[arms]
  centred = reinforce.advantages(scores, mask, baseline)

  def surrogate(theta):
    log_p = jax.nn.log_softmax(theta)[arms]
    return reinforce.reinforce_loss(log_p, centred, mask)

  return -np.asarray(jax.grad(surrogate)(jnp.asarray(theta, jnp.float32)))


@pytest.mark.parametrize(
  ("baseline", "factor"), [("mean", None), ("leave_one_out", 1.0), ("none", 1)]
)
@pytest.mark.parametrize("batch", [2, 3])
def test_estimator_expectation_is_exact(baseline, factor, batch):
  """E over all m-tuples of arms (enumerated), weighted by their p."""
  p = np.exp(THETA - THETA.max())
  p /= p.sum()
  expected = np.zeros(3)
  for arms in itertools.product(range(3), repeat=batch):
    weight = np.prod(p[list(arms)])
    expected += weight * _estimator(THETA, arms, baseline)
  factor = (1 - 1 / batch) if factor is None else factor
  np.testing.assert_allclose(
    expected, factor * _exact_gradient(THETA, REWARD), atol=2e-6
  )


def test_monte_carlo_average_matches_within_its_standard_error():
  draws, batch = 4000, 8
  keys = jax.random.split(jax.random.key(0), draws)
  logits = jnp.broadcast_to(jnp.asarray(THETA, jnp.float32), (batch, 3))
  mask = jnp.ones((batch, 3), bool)
  samples = [
    np.asarray(policy.sample(key, logits, mask)[0]) for key in keys[:400]
  ]
  grads = np.array([_estimator(THETA, a, "leave_one_out") for a in samples])
  mean = grads.mean(0)
  error = grads.std(0, ddof=1) / np.sqrt(len(grads))
  exact = _exact_gradient(THETA, REWARD)
  assert np.all(np.abs(mean - exact) < 5 * error + 1e-6)


@hypothesis.given(
  seed=st.integers(0, 2**16),
  rows=st.integers(1, 5),
  width=st.integers(1, 6),
)
@hypothesis.settings(deadline=None, max_examples=30)
def test_sampling_never_picks_a_masked_candidate(seed, rows, width):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(size=(rows, width)) * 5, jnp.float32)
  mask = rng.random((rows, width)) < 0.5
  index, log_prob, valid = policy.sample(jax.random.key(seed), logits, mask)
  index, valid = np.asarray(index), np.asarray(valid)
  np.testing.assert_array_equal(valid, mask.any(1))
  assert np.all(mask[np.arange(rows), index][valid])
  assert np.all(np.isfinite(np.asarray(log_prob)))
  entropy = np.asarray(policy.entropy(logits, jnp.asarray(mask)))
  assert np.all(np.isfinite(entropy)) and np.all(entropy >= -1e-6)
  # A reference in float64 over the valid entries.
  for row in np.flatnonzero(mask.any(1)):
    z = np.asarray(logits[row], np.float64)[mask[row]]
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert entropy[row] == pytest.approx(-(p * np.log(p)).sum(), abs=1e-5)


def test_fully_masked_rows_are_flagged_and_checked():
  logits = jnp.zeros((2, 3))
  mask = jnp.array([[True, False, True], [False, False, False]])
  _, log_prob, valid = policy.sample(jax.random.key(0), logits, mask)
  assert np.asarray(valid).tolist() == [True, False]
  assert float(log_prob[1]) == 0.0
  grad = jax.grad(lambda x: policy.entropy(x, mask).sum())(logits)
  assert np.all(np.isfinite(np.asarray(grad)))
  with pytest.raises(ValueError, match="no valid candidates"):
    policy.check_choices(mask)


def _pool(num_classes=6, per_class=4, size=8, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.random((num_classes * per_class, size, size, 1), np.float32)
  ids = rng.permutation(1000)[: num_classes * per_class].astype(np.int32)
  ids = ids.reshape(num_classes, per_class)
  ids[0, 1] = ids[0, 0]  # A class shorter than M repeats an image.
  return images, ids


def test_zero_initialised_heads_give_a_uniform_policy():
  images, ids = _pool()
  network = network_lib.DeepSamplerNetwork(features=8, hidden=8)
  params = network_lib.init_sampler(network, jax.random.key(1), (8, 8, 1))
  features = network.apply(
    {"params": params}, images, method=network.features_of
  ).reshape(6, 4, -1)
  logits = network.apply(
    {"params": params},
    features[:, 0],
    features,
    method=network.probe_logits,
  )
  np.testing.assert_array_equal(np.asarray(logits), 0.0)


@hypothesis.given(seed=st.integers(0, 2**16), scale=st.floats(0.0, 50.0))
@hypothesis.settings(deadline=None, max_examples=15)
def test_triplets_are_always_valid(seed, scale):
  """Whatever the parameters: positive ≠ anchor (also as a repeated image),
  same class; negative of another class."""
  images, ids = _pool(seed=seed)
  network = network_lib.DeepSamplerNetwork(features=8, hidden=8)
  params = network_lib.init_sampler(network, jax.random.key(seed), (8, 8, 1))
  # Random non-zero heads: scale the (zero) output layers up from noise.
  noise = jax.random.split(jax.random.key(seed + 1), 64)
  params = jax.tree.map(
    lambda x, k: x + scale * jax.random.normal(k, x.shape),
    params,
    jax.tree.unflatten(
      jax.tree.structure(params), noise[: len(jax.tree.leaves(params))]
    ),
  )
  features = network.apply(
    {"params": params}, images, method=network.features_of
  ).reshape(6, 4, -1)
  key = jax.random.key(seed + 2)
  classes, slots = selection.hand_picked_anchors(key, 6, 4, 5)
  tuples = selection.triplet_choices(
    network,
    params,
    features,
    jnp.asarray(ids),
    classes,
    slots,
    selection.sampling_pick(key),
  )
  flat_ids = ids.reshape(-1)
  anchors, positives, negatives = (
    np.asarray(x) for x in (tuples.anchors, tuples.positives, tuples.negatives)
  )
  assert np.asarray(tuples.mask).all()
  assert len(set(anchors // 4)) == 5  # Distinct anchor classes.
  np.testing.assert_array_equal(anchors // 4, positives // 4)
  assert np.all(flat_ids[anchors] != flat_ids[positives])
  assert np.all(anchors // 4 != negatives // 4)
  assert np.all(np.isfinite(np.asarray(tuples.log_prob)))


def test_policy_learns_to_pick_the_high_loss_candidates():
  """Probe selection where odd slots score 1 and even ones 0.

  Without an entropy bonus the policy collapses completely (the easy
  candidates' probabilities underflow to 0 in float32); with λ = 0.1 they
  keep a small non-zero share, exp(−10) each at the optimum.
  """
  images, ids = _pool(num_classes=4, per_class=6, seed=3)
  ids = np.arange(24, dtype=np.int32).reshape(4, 6)
  network = network_lib.DeepSamplerNetwork(features=16, hidden=16)
  params = network_lib.init_sampler(network, jax.random.key(0), (8, 8, 1))
  # The candidates' features must tell hard from easy: brighten odd slots.
  images = images.reshape(4, 6, 8, 8, 1)
  images[:, 1::2] += 1.0
  images = jnp.asarray(images.reshape(24, 8, 8, 1))
  # 3e-2 kills the trunk's ReLUs within ~150 steps (uniform policy again).
  tx = optax.adam(1e-2)
  opt = tx.init(params)
  gallery = jnp.zeros(4, jnp.int32)

  def probabilities(params):
    features = network.apply(
      {"params": params}, images, method=network.features_of
    ).reshape(4, 6, -1)
    logits = network.apply(
      {"params": params}, features[:, 0], features, method=network.probe_logits
    )
    mask = jnp.arange(6)[None] != 0
    return jnp.exp(
      policy.masked_log_softmax(logits, jnp.broadcast_to(mask, logits.shape))
    )

  @jax.jit
  def update(params, opt, key):
    def surrogate(params):
      features = network.apply(
        {"params": params}, images, method=network.features_of
      ).reshape(4, 6, -1)
      pairs = selection.pair_choices(
        network,
        params,
        features,
        jnp.asarray(ids),
        gallery,
        selection.sampling_pick(key),
      )
      scores = (pairs.probes % 6 % 2 == 1).astype(jnp.float32)
      centred = reinforce.advantages(scores, pairs.mask, "leave_one_out")
      loss = reinforce.reinforce_loss(pairs.log_prob, centred, pairs.mask)
      # An entropy bonus λ: the optimum puts exp(−1/λ) on each easy one.
      return loss - 0.1 * jnp.mean(pairs.entropy)

    grads = jax.grad(surrogate)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  start = np.asarray(probabilities(params))
  np.testing.assert_allclose(start[:, 1:], 1 / 5, atol=1e-6)  # Uniform.
  for key in jax.random.split(jax.random.key(1), 300):
    params, opt = update(params, opt, key)
  p = np.asarray(probabilities(params))
  hard_mass = p[:, 1::2].sum(1)
  assert np.all(hard_mass > 0.9), hard_mass
  assert np.all(p[:, 2::2] > 0)  # Easy candidates keep some probability.


_POOL = (5, 8)  # P classes × M images per digits pool.


def _digits_dsp(kind):
  """(digits train split, initial state, Algorithm-1 step, pre-train step)."""
  split = data_lib.load_split("digits", "train")
  model = models.make_embedder(
    "small", embedding_dim=16, widths=(8, 16), features=32
  )
  variables = models.init_embedder(model, jax.random.key(0), (2, 8, 8, 1))
  params = {"embed": variables["params"], "beta": {}}
  tx = optax.adam(3e-3)
  dsn_tx = optax.adam(1e-2)
  network = network_lib.DeepSamplerNetwork(features=8, hidden=8)
  state = {
    "params": params,
    "batch_stats": variables["batch_stats"],
    "opt": tx.init(params),
    "step": jnp.zeros((), jnp.int32),
    "rng": jax.random.key_data(jax.random.key(2)),
    "nonfinite_step": jnp.full((), -1, jnp.int32),
  }
  state = algorithm.add_sampler_state(
    state, network, dsn_tx, jax.random.key(3), (8, 8, 1)
  )
  settings = algorithm.Settings(
    loss="npair" if kind == "npair" else "triplet_l2sq",
    pool_classes=_POOL[0],
    pool_images_per_class=_POOL[1],
    num_minibatches=2,
    tuples_per_minibatch=4,
    reduction="mean",
  )
  step = algorithm.make_dsp_step(model, network, tx, dsn_tx, settings)
  pretrain = algorithm.make_dsp_step(
    model, network, tx, dsn_tx, settings, update_embedding=False
  )
  return split, state, step, pretrain


def _pools(split, num_steps):
  return data_lib.pk_batches(
    split,
    batch_size=_POOL[0] * _POOL[1],
    images_per_class=_POOL[1],
    num_steps=num_steps,
  )


def _max_change(before, after):
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), before, after)
  return max(jax.tree.leaves(moved))


@pytest.mark.parametrize("kind", ["triplet", "npair"])
def test_algorithm_step_runs_under_jit_and_training_lowers_the_loss(kind):
  split, state, step, _ = _digits_dsp(kind)
  losses = []
  dsn_before = state["dsn"]
  for pool in _pools(split, 60):
    state, metrics = step(state, pool)
    losses.append(float(metrics["loss"]))
    assert float(metrics["fraction_valid"]) == 1.0
  assert int(state["step"]) == 60 and int(state["nonfinite_step"]) == -1
  assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
  assert _max_change(dsn_before, state["dsn"]) > 0  # The sampler learned.


@pytest.mark.parametrize("kind", ["triplet", "npair"])
def test_pretraining_moves_the_sampler_only(kind):
  split, state, _, pretrain = _digits_dsp(kind)
  trained = state
  for pool in _pools(split, 5):
    trained, metrics = pretrain(trained, pool)
    assert np.isfinite(float(metrics["dsn_loss"]))
  assert int(trained["dsn_pretrain_step"]) == 5
  assert _max_change(state["dsn"], trained["dsn"]) > 0
  assert _max_change(state["dsn_opt"], trained["dsn_opt"]) > 0
  for frozen in ("params", "batch_stats", "opt", "step", "rng"):
    chex.assert_trees_all_equal(trained[frozen], state[frozen])


def test_pretrain_sampler_runs_the_missing_steps_once():
  config = methods.get_config("method=dsp_triplet,dataset=digits")
  config.dsp.pool_classes, config.dsp.pool_images_per_class = _POOL
  split, state, _, pretrain = _digits_dsp("triplet")

  def run(state, num_steps):
    config.dsp.pretrain_steps = num_steps
    return dsp_recipe.pretrain_sampler(
      config, state, pretrain, split, enabled=False
    )

  full, metrics = run(state, 4)
  assert int(full["dsn_pretrain_step"]) == 4
  assert set(metrics) == {"dsn_loss", "mean_score"}
  half, _ = run(state, 2)
  resumed, _ = run(half, 4)  # Steps 3 and 4: the same pools and keys.
  chex.assert_trees_all_close(resumed["dsn"], full["dsn"], rtol=1e-6)
  assert run(full, 4) == (full, None)  # Nothing missing.
  started = dict(state, step=jnp.ones((), jnp.int32))
  assert run(started, 4) == (started, None)  # Past step 0: never again.
  with pytest.raises(ValueError, match="pretrain_steps must be non-negative"):
    run(state, -1)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dsp_triplet", "dsp_npair"])
def test_dsp_configs_train_and_resume_to_the_same_metrics(name, tmp_path):
  import json  # noqa: PLC0415
  import os  # noqa: PLC0415
  import shutil  # noqa: PLC0415

  from dmljax.runtime import train  # noqa: PLC0415

  config = methods.get_config(f"method={name},dataset=digits,smoke")
  config.ckpt.max_to_keep = 3
  config.dsp.pretrain_steps = 3
  workdir = str(tmp_path / name)
  final = train.train_and_evaluate(config, workdir)
  # Forget the last checkpoint: the rerun resumes at step 2 (sampler and
  # its optimiser state included) and must end with the same numbers.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
  resumed = train.train_and_evaluate(config, workdir)
  assert resumed == pytest.approx(final, abs=1e-5)
  with open(os.path.join(workdir, "summary.json")) as f:
    assert json.load(f)["config"]["sampler"]["name"] == "dsp"
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    kinds = [json.loads(line)["kind"] for line in f]
  assert kinds.count("dsn_pretrain") == 1  # Once, before step 1.


@pytest.mark.slow
def test_bench_dsp_times_the_three_ways(tmp_path):
  import json  # noqa: PLC0415
  import os  # noqa: PLC0415
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = tmp_path / "bench_dsp.json"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.bench_dsp",
      "--classes=4",
      "--images_per_class=10",
      "--chunk=20",
      "--repeats=1",
      f"--out={out}",
    ],
    cwd=root,
    env=dict(os.environ, PYTHONPATH=root),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out) as f:
    seconds = json.load(f)["seconds"]
  assert set(seconds) == {"exhaustive", "dsn", "dsn_cached_summaries"}
  assert all(value > 0 for value in seconds.values())


@pytest.mark.parametrize("scale", [1.0, 16.0])
def test_npair_tuple_terms_are_eq9_of_the_chosen_pairs(scale):
  model = models.make_embedder("small", embedding_dim=8, widths=(4, 8))
  variables = models.init_embedder(model, jax.random.key(0), (2, 8, 8, 1))
  images = jax.random.uniform(jax.random.key(1), (12, 8, 8, 1))
  probes, gallery = jnp.array([0, 4, 8]), jnp.array([1, 5, 9])
  pairs = selection.PoolPairs(
    probes, gallery, jnp.zeros(3), jnp.zeros(3), jnp.array([True, True, False])
  )
  chosen, _ = objective.embed_chosen(
    model, variables, images, pairs, train=True
  )
  terms = objective.tuple_terms(chosen, pairs, npair_scale=scale)
  embeddings, _ = model.apply(
    variables,
    images[jnp.concatenate([probes, gallery])],
    train=True,
    mutable=["batch_stats"],
  )
  e = np.asarray(embeddings, np.float64)
  expected = reference.npair_terms(scale * e[:3] @ e[3:].T)
  np.testing.assert_allclose(terms[:2], expected[:2], rtol=1e-4)
  assert float(terms[2]) == 0.0  # A masked pair adds nothing.
