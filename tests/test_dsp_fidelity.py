"""DE-DSP against the paper: eqs. 2 and 9 per mini-batch, eq. 8, rewards.

Each test recomputes from the tuples the code chose, in float64 NumPy (or in
float64 JAX for the policy gradient), what Duan et al. define.
"""

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

from dmljax import models
from dmljax.dsp import algorithm
from dmljax.dsp import network as network_lib
from dmljax.dsp import objective
from dmljax.dsp import policy
from dmljax.dsp import reinforce
from dmljax.dsp import selection

_P, _M, _K, _m = 5, 4, 2, 4  # Pool classes, images per class, K, m.


def _setup(kind, **options):
  """(model, state, pool, step, sampler_updates): a random 5 × 4 pool, a
  small embedder, the DE-DSP step and the sampler updates it runs."""
  images = np.random.default_rng(0).random((_P * _M, 8, 8, 1))
  pool = {
    "image": jnp.asarray(images, jnp.float32),
    "label": jnp.repeat(jnp.arange(_P), _M),
    "index": jnp.arange(_P * _M, dtype=jnp.int32),
  }
  model = models.make_embedder("small", embedding_dim=8, widths=(4, 8))
  variables = models.init_embedder(model, jax.random.key(0), (2, 8, 8, 1))
  params = {"embed": variables["params"], "beta": {}}
  tx, dsn_tx = optax.adam(1e-3), optax.adam(1e-2)
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
  squared = options.pop("squared", True)
  loss = "npair" if kind == "npair" else ("triplet_l2" + "sq" * squared)
  settings = algorithm.Settings(
    loss=loss,
    pool_classes=_P,
    pool_images_per_class=_M,
    num_minibatches=_K,
    tuples_per_minibatch=_m,
    **options,
  )
  step = algorithm.make_dsp_step(model, network, tx, dsn_tx, settings)
  updates = algorithm.make_sampler_updates(model, network, dsn_tx, settings)
  return model, state, pool, step, updates


def _step_tuples_and_embeddings(model, state, pool, sampler_updates, fields):
  """The step's tuples ([K, m] NumPy fields) and float64 embeddings.

  The embeddings come from one training-mode pass over every chosen image
  (BatchNorm over the whole batch, as the θ update runs), in this test's
  own order: all of the first field, then all of the second, ...
  """
  key = algorithm.step_key(state)
  _, (tuples, _, _) = sampler_updates(state, pool, key)
  tuples = jax.tree.map(np.asarray, tuples)
  order = np.concatenate([getattr(tuples, f).reshape(-1) for f in fields])
  embeddings, _ = model.apply(
    algorithm.embedding_variables(state),
    pool["image"][order],
    train=True,
    mutable=["batch_stats"],
  )
  blocks = np.split(np.asarray(embeddings, np.float64), len(fields))
  return tuples, [b.reshape(_K, -1, b.shape[-1]) for b in blocks]


@pytest.mark.parametrize(
  ("scale", "reduction"), [(1.0, "mean"), (16.0, "nonzero")]
)
def test_npair_loss_is_the_mean_of_per_minibatch_eq9_losses(scale, reduction):
  model, state, pool, step, updates = _setup(
    "npair", npair_scale=scale, reduction=reduction
  )
  _, metrics = step(state, pool)
  pairs, (probes, gallery) = _step_tuples_and_embeddings(
    model, state, pool, updates, ("probes", "gallery")
  )
  assert pairs.mask.all() and pairs.probes.shape == (_K, _P)
  # Eq. 9 within mini-batch k: its probes against its own gallery only.
  losses = [
    reference.npair_terms(scale * probes[k] @ gallery[k].T).mean()
    for k in range(_K)
  ]
  np.testing.assert_allclose(metrics["loss"], np.mean(losses), rtol=2e-5)
  # One N-pair loss over all K·P pairs (the defect) is a different number.
  pooled = reference.npair_terms(
    scale * probes.reshape(_K * _P, -1) @ gallery.reshape(_K * _P, -1).T
  ).mean()
  assert abs(pooled - np.mean(losses)) > 1e-2


def _reference_triplet_loss(
  anchors, positives, negatives, *, squared, margin=0.2
):
  """[D_ap² − D_an² + α]₊ (eq. 2) or [D_ap − D_an + α]₊ per triplet."""
  d_ap = np.linalg.norm(anchors - positives, axis=-1)
  d_an = np.linalg.norm(anchors - negatives, axis=-1)
  if squared:
    d_ap, d_an = d_ap**2, d_an**2
  return np.maximum(d_ap - d_an + margin, 0.0)


@pytest.mark.parametrize(
  ("squared", "reduction"),
  [(True, "nonzero"), (False, "mean")],
  ids=["l2sq-nonzero", "l2-mean"],
)
def test_triplet_loss_is_eq2_of_exactly_the_sampled_triplets(
  squared, reduction
):
  model, state, pool, step, updates = _setup(
    "triplet", squared=squared, reduction=reduction
  )
  _, metrics = step(state, pool)
  fields = ("anchors", "positives", "negatives")
  triplets, embedded = _step_tuples_and_embeddings(
    model, state, pool, updates, fields
  )
  assert triplets.mask.all() and triplets.anchors.shape == (_K, _m)
  labels = np.asarray(pool["label"])
  np.testing.assert_array_equal(
    labels[triplets.anchors], labels[triplets.positives]
  )
  assert np.all(labels[triplets.anchors] != labels[triplets.negatives])
  terms = _reference_triplet_loss(*embedded, squared=squared).reshape(-1)
  assert terms.max() > 0
  if reduction == "nonzero":
    expected = terms.sum() / max(np.count_nonzero(terms), 1)
  else:
    expected = terms.mean()
  np.testing.assert_allclose(metrics["loss"], expected, rtol=2e-5)
  nonzero = np.count_nonzero(terms) / terms.size
  np.testing.assert_allclose(metrics["fraction_nonzero"], nonzero)


@hypothesis.given(seed=st.integers(0, 2**16))
@hypothesis.settings(
  deadline=None,
  max_examples=25,
  suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
def test_npair_terms_only_see_their_own_minibatch(seed, kernel, jit):
  """[K, 2P, D] embeddings: mini-batch k's terms are eq. 9 on block k
  alone (the other blocks never enter them)."""
  count = 3
  zeros = jnp.zeros((_K, count), jnp.int32)
  pairs = selection.PoolPairs(zeros, zeros, zeros, zeros, zeros == 0)
  terms_of = kernel(objective.tuple_terms, jit=jit, npair_scale=4.0)
  rng = np.random.default_rng(seed)
  embeddings = rng.normal(size=(_K, 2 * count, 5)).astype(np.float32)
  terms = np.asarray(terms_of(jnp.asarray(embeddings), pairs))
  chex.assert_shape(terms, (_K, count))
  for k in range(_K):
    e = embeddings[k].astype(np.float64)
    expected = reference.npair_terms(4.0 * e[:count] @ e[count:].T)
    np.testing.assert_allclose(terms[k], expected, rtol=1e-5, atol=1e-6)


# The policy-gradient test: a 3 × 3 pool, anchors (class 0, slot 0) and
# (class 1, slot 2); image (0, 1) is a copy of the anchor (0, 0), so it is
# never that anchor's positive.
_POLICY_SHAPE = (3, 3)
_ANCHORS = ((0, 0), (1, 2))


def _policy_problem():
  num_classes, per_class = _POLICY_SHAPE
  rng = np.random.default_rng(0)
  # Multiples of 1/8: the trunk's float32 input and 2 × 2 pooling are exact.
  images = rng.integers(0, 8, (num_classes * per_class, 8, 8, 1)) / 8
  ids = np.arange(num_classes * per_class, dtype=np.int32).reshape(3, 3)
  ids[0, 1] = ids[0, 0]
  network = network_lib.DeepSamplerNetwork(features=4, hidden=4)
  params = network_lib.init_sampler(network, jax.random.key(0), (8, 8, 1))
  # Non-zero heads (their output layers start at 0): a non-uniform policy.
  params = jax.tree.map(
    lambda x: np.asarray(x, np.float64) + 0.5 * rng.normal(size=x.shape),
    params,
  )
  return network, params, images, ids


def _tuple_space(ids, anchor_class, anchor_slot):
  """Every valid (positive slot, negative class, negative slot)."""
  anchor_id = ids[anchor_class, anchor_slot]
  num_classes, per_class = ids.shape
  return [
    (j, q, r)
    for j in range(per_class)
    if ids[anchor_class, j] != anchor_id
    for q in range(num_classes)
    if q != anchor_class
    for r in range(per_class)
    if ids[q, r] != anchor_id
  ]


def _reference_log_probs(network, params, images, ids, anchor, space):
  """log p(tuple) for each tuple of `space`, from eqs. 4–5 and Sec. 3.2.

  p = p(positive | anchor) · p(class | anchor) · p(negative | anchor,
  positive, class), each a softmax over the valid candidates only; a class
  is summarised by the mean trunk feature of its pool images.
  """
  net = network_lib.DeepSamplerNetwork

  def apply(method, *args):
    return network.apply({"params": params}, *args, method=method)

  features = apply(net.features_of, images).reshape(*_POLICY_SHAPE, -1)
  c, s = anchor
  a = features[c, s][None]
  positives = sorted({j for j, _, _ in space})
  classes = sorted({q for _, q, _ in space})
  logits = apply(net.positive_logits, a, features[c][None])[0]
  lp_positive = jax.nn.log_softmax(logits[jnp.array(positives)])
  logits = apply(net.class_logits, a, features.mean(1)[None])[0]
  lp_class = jax.nn.log_softmax(logits[jnp.array(classes)])
  negatives = {}  # (positive slot, class) → (valid slots, log p(slot)).
  for j, q in sorted({(j, q) for j, q, _ in space}):
    valid = [t for t in range(ids.shape[1]) if ids[q, t] != ids[c, s]]
    logits = apply(
      net.negative_logits, a, features[c, j][None], features[q][None]
    )[0]
    negatives[j, q] = valid, jax.nn.log_softmax(logits[jnp.array(valid)])
  out = []
  for j, q, r in space:
    valid, lp_negative = negatives[j, q]
    out.append(
      lp_positive[positives.index(j)]
      + lp_class[classes.index(q)]
      + lp_negative[valid.index(r)]
    )
  return jnp.stack(out)


def _forced_pick(chosen):
  """A `selection.Pick` that takes the given choice of every row."""

  def pick(name, logits, mask):
    index = chosen[name]
    log_prob = policy.log_prob_of(logits, mask, index)
    return index, log_prob, policy.has_choice(mask)

  return pick


def _code_gradient(network, images, ids, baseline):
  """−∇ of the step's REINFORCE surrogate for one joint choice [m, 3]."""
  classes = jnp.array([c for c, _ in _ANCHORS])
  slots = jnp.array([s for _, s in _ANCHORS])

  def gradient(params, combo, scores):
    def surrogate(params):
      features = network.apply(
        {"params": params}, images, method=network.features_of
      ).reshape(*_POLICY_SHAPE, -1)
      names = ("positive", "class", "negative")
      pick = _forced_pick({n: combo[:, i] for i, n in enumerate(names)})
      tuples = selection.triplet_choices(
        network, params, features, ids, classes, slots, pick
      )
      centred = reinforce.advantages(scores, tuples.mask, baseline)
      loss = reinforce.reinforce_loss(tuples.log_prob, centred, tuples.mask)
      return loss, tuples

    grads, tuples = jax.grad(surrogate, has_aux=True)(params)
    return jax.tree.map(jnp.negative, grads), tuples

  return gradient


def _largest(tree):
  return max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(tree))


def _joint_choices(spaces, values):
  """Every joint choice of the m anchors' tuples: [C, m, 3] tuples and the
  [C, m] of each per-anchor table in `values` at the chosen tuples."""
  joint = list(itertools.product(*(range(len(s)) for s in spaces)))
  combos = np.array([[spaces[i][t] for i, t in enumerate(c)] for c in joint])
  picked = [
    np.array([[table[i][t] for i, t in enumerate(c)] for c in joint])
    for table in values
  ]
  return combos, picked


@pytest.mark.parametrize("baseline", reinforce.BASELINES)
def test_reinforce_on_the_triplet_policy_is_the_exact_gradient(baseline):
  """E over every joint choice of the m = 2 anchors' triplets, enumerated
  with their probabilities, of the REINFORCE gradient = ∇η E[S] (times
  1 − 1/m for the mean baseline, whose expectation that is)."""
  with jax.enable_x64(True):
    network, params, images, ids = _policy_problem()
    images = jnp.asarray(images)
    spaces = [_tuple_space(ids, c, s) for c, s in _ANCHORS]
    rng = np.random.default_rng(1)
    scores = [rng.normal(size=len(space)) for space in spaces]

    def log_probs(params):
      return [
        _reference_log_probs(network, params, images, ids, anchor, space)
        for anchor, space in zip(_ANCHORS, spaces, strict=True)
      ]

    def expected_score(params):  # J = (1/m) Σ_i Σ_t p_i(t) S_i(t)
      terms = [
        jnp.sum(jnp.exp(lp) * s)
        for lp, s in zip(log_probs(params), scores, strict=True)
      ]
      return sum(terms) / len(terms)

    exact = jax.jit(jax.grad(expected_score))(params)
    assert _largest(exact) > 1e-3
    reference_lp = [np.asarray(lp) for lp in jax.jit(log_probs)(params)]
    for lp in reference_lp:
      np.testing.assert_allclose(np.exp(lp).sum(), 1.0, rtol=1e-12)
    combos, (joint_scores, joint_lp) = _joint_choices(
      spaces, (scores, reference_lp)
    )
    gradient = _code_gradient(network, images, jnp.asarray(ids), baseline)
    grads, tuples = jax.jit(jax.vmap(gradient, in_axes=(None, 0, 0)))(
      params, jnp.asarray(combos), jnp.asarray(joint_scores)
    )
    # The code chose the enumerated tuples, with the reference's log p.
    per_class = _POLICY_SHAPE[1]
    anchor_classes = np.array([c for c, _ in _ANCHORS])
    np.testing.assert_array_equal(
      tuples.positives, anchor_classes * per_class + combos[..., 0]
    )
    np.testing.assert_array_equal(
      tuples.negatives, combos[..., 1] * per_class + combos[..., 2]
    )
    np.testing.assert_allclose(tuples.log_prob, joint_lp, rtol=1e-10)
    weights = jnp.asarray(np.exp(joint_lp.sum(-1)))  # p(joint choice).
    expected = jax.tree.map(lambda g: jnp.tensordot(weights, g, 1), grads)
    factor = 1 - 1 / len(_ANCHORS) if baseline == "mean" else 1.0
    chex.assert_trees_all_close(
      expected,
      jax.tree.map(lambda g: factor * g, exact),
      rtol=1e-8,
      atol=1e-12,
    )


def test_sampled_triplets_carry_their_exact_log_probability():
  """The step's path (`sampling_pick`): every sampled tuple is valid and its
  log_prob is the enumerated reference's log p of that tuple."""
  with jax.enable_x64(True):
    network, params, images, ids = _policy_problem()
    images = jnp.asarray(images)
    tables = []
    for anchor in _ANCHORS:
      space = _tuple_space(ids, *anchor)
      lp = _reference_log_probs(network, params, images, ids, anchor, space)
      tables.append(dict(zip(space, np.asarray(lp).tolist(), strict=True)))
    features = network.apply(
      {"params": params}, images, method=network.features_of
    ).reshape(*_POLICY_SHAPE, -1)

    @jax.jit
    def sample(key):
      return selection.triplet_choices(
        network,
        params,
        features,
        jnp.asarray(ids),
        jnp.array([c for c, _ in _ANCHORS]),
        jnp.array([s for _, s in _ANCHORS]),
        selection.sampling_pick(key),
      )

    per_class = _POLICY_SHAPE[1]
    for key in jax.random.split(jax.random.key(4), 16):
      tuples = jax.tree.map(np.asarray, sample(key))
      assert tuples.mask.all()
      for i, (c, _) in enumerate(_ANCHORS):
        assert tuples.positives[i] // per_class == c
        choice = (
          int(tuples.positives[i] % per_class),
          int(tuples.negatives[i] // per_class),
          int(tuples.negatives[i] % per_class),
        )
        assert choice in tables[i]
        np.testing.assert_allclose(
          tuples.log_prob[i], tables[i][choice], rtol=1e-10
        )


def _reward_problem():
  model = models.make_embedder("small", embedding_dim=8, widths=(4, 8))
  variables = models.init_embedder(model, jax.random.key(0), (2, 8, 8, 1))
  images = jax.random.uniform(jax.random.key(1), (12, 8, 8, 1))
  # Running averages of real statistics, not the initial 0 / 1.
  _, updates = model.apply(
    variables, images, train=True, mutable=["batch_stats"]
  )
  return model, dict(variables, batch_stats=updates["batch_stats"]), images


def _triplets(anchors, positives, negatives):
  fields = [jnp.array(x) for x in (anchors, positives, negatives)]
  zeros = jnp.zeros(len(anchors))
  return selection.PoolTriplets(*fields, zeros, zeros, zeros == 0)


def test_inference_rewards_do_not_depend_on_the_other_tuples(jit):
  """The triplet (0, 4, 8) scored alone and in two different mini-batches:
  the same score with running averages, three scores with batch
  statistics."""
  model, variables, images = _reward_problem()
  batches = [
    _triplets([0], [4], [8]),
    _triplets([0, 1, 2], [4, 5, 6], [8, 9, 10]),
    _triplets([0, 3, 1], [4, 7, 5], [8, 11, 9]),
  ]

  def scores(tuples, mode):
    options = dict(reward_mode=mode, margin=2.0, squared=True)
    return objective.reward_scores(model, variables, images, tuples, **options)

  scores = jax.jit(scores, static_argnums=1) if jit else scores
  first = {
    mode: np.array([float(scores(b, mode)[0]) for b in batches])
    for mode in objective.REWARD_MODES
  }
  assert np.all(first["train"] > 0) and np.all(first["inference"] > 0)
  np.testing.assert_allclose(
    first["inference"], first["inference"][0], rtol=1e-6
  )
  # Batch statistics move it by > 1e-3 (inference: within 1e-6 relative).
  assert np.ptp(first["train"]) > 1e-3, first["train"]
  # Inference mode is the network's train=False embedding of the tuple.
  e = np.asarray(
    model.apply(variables, images[jnp.array([0, 4, 8])], train=False),
    np.float64,
  )
  expected = _reference_triplet_loss(
    e[:1], e[1:2], e[2:], squared=True, margin=2.0
  )
  np.testing.assert_allclose(first["inference"][0], expected[0], rtol=1e-5)


def test_unknown_reward_mode_is_rejected_naming_the_choices():
  with pytest.raises(ValueError, match=r"reward mode 'eval'.*'inference'"):
    _setup("triplet", reward_mode="eval")
  with pytest.raises(ValueError, match="choose one of"):
    objective.embedding_loss(
      jnp.zeros((2, 3)), jnp.ones((2, 3), bool), reduction="sum"
    )
