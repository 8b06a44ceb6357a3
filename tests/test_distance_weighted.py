"""Distance weighted sampling against float64 loops and the paper's forms.

Wu et al. 2017 Sec. 4: q(d), Pr(n | a) ∝ min(λ, q(D_an)⁻¹), Figures 2 and 3b,
and the per-anchor normalisation that keeps every anchor in float32.
"""

import jax
import numpy as np
import pytest
import reference
import sampler_cases as cases
import scipy.integrate
import scipy.stats

from dmljax import samplers

# ----------------------------------------------------------------------------
# Distance weighted sampling: probabilities.
# ----------------------------------------------------------------------------


def _sphere_with_close_pair(seed, dim, num_classes=8, images_per_class=4):
  """Uniform points on S^(dim-1) plus one near pair of different classes.

  The near pair (distance ~0.3, below the 0.5 cutoff) carries the largest
  weight in the batch; the other negatives sit near sqrt(2) in high dims.
  """
  rng = np.random.default_rng(seed)
  x, labels = reference.pk_batch(seed, num_classes, images_per_class, dim)
  i = 0
  j = int(np.flatnonzero(labels != labels[0])[0])
  if dim == 2:
    angle = np.arctan2(x[i, 1], x[i, 0]) + 0.3
    x[j] = [np.cos(angle), np.sin(angle)]
  else:
    noise = reference.unit_rows(rng.normal(size=(1, dim)))[0]
    x[j] = reference.unit_rows((x[i] + 0.3 * noise)[None])[0]
  return x.astype(np.float32), labels


def _one_far_pair(seed, num_classes=5, images_per_class=4):
  """Distances where one class's anchors have a single usable negative at
  1.39 (all its other negatives >= 1.4) while the rest are close (<= 1.3)."""
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.repeat(np.arange(num_classes), images_per_class))
  b = len(labels)
  d = rng.uniform(0.2, 1.3, size=(b, b))
  d = np.triu(d, 1)
  d = d + d.T
  far = np.flatnonzero(labels == 0)
  others = np.flatnonzero(labels != 0)
  for a in far:
    d[a, others] = d[others, a] = 1.45
  for a in far:
    n = rng.choice(others)
    d[a, n] = d[n, a] = 1.39
  return d.astype(np.float32), labels.astype(np.int32)


def _probabilities_close(got_log, want_log, rtol):
  got_log, want_log = np.asarray(got_log, np.float64), np.asarray(want_log)
  np.testing.assert_array_equal(np.isneginf(got_log), np.isneginf(want_log))
  assert not np.any(np.isnan(got_log))
  np.testing.assert_allclose(
    np.exp(got_log), np.exp(want_log), rtol=rtol, atol=1e-30
  )


@pytest.mark.parametrize("dim", [2, 3, 16, 128, 512])
def test_dw_log_probabilities_match_reference(kernel, jit, dim):
  x, labels = _sphere_with_close_pair(dim, dim)
  d = cases.distances_of(x)
  got = kernel(samplers.distance_weighted_log_probabilities, jit=jit, dim=dim)(
    d, labels
  )
  assert got.shape == d.shape and got.dtype == np.float32
  want = reference.distance_weighted_log_probabilities(d, labels, dim=dim)
  # Relative error of a probability = absolute error of its log weight:
  # (dim - 2) log d in float32 carries ~dim * 6e-8, 3e-5 at dim 512.
  _probabilities_close(got, want, rtol=1e-4)


@pytest.mark.parametrize(
  "cutoff,nonzero_loss_cutoff", [(0.5, 1.4), (0.25, 1.2), (0.8, 2.0)], ids=str
)
def test_dw_log_probabilities_hyperparameters(
  kernel, cutoff, nonzero_loss_cutoff
):
  x, labels = reference.pk_batch(6, 4, 3, 3)
  d = cases.distances_of(x)
  kw = dict(dim=3, cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff)
  got = kernel(samplers.distance_weighted_log_probabilities, **kw)(d, labels)
  want = reference.distance_weighted_log_probabilities(d, labels, **kw)
  _probabilities_close(got, want, rtol=1e-5)


def test_dw_rows_normalised_and_clipped(kernel):
  labels = np.array([0, 0, 1, 1, 2, 2, 3, 3], np.int32)
  d = np.full((8, 8), 1.0, np.float32)
  np.fill_diagonal(d, 0.0)
  # Row 0: negatives at 0.1, 0.3 and 0.49 (all clipped to 0.5: equal
  # weights), 1.2, and two at >= 1.4 (unusable).
  d[0, 2:] = d[2:, 0] = [0.1, 0.3, 0.49, 1.2, 1.4, 1.7]
  # Row 6's negatives are all at or beyond the non-zero-loss cutoff.
  d[6, :6] = d[:6, 6] = 1.5
  d[6, 7] = d[7, 6] = 0.2
  d[7, :6] = d[:6, 7] = 1.41
  logp = np.asarray(
    kernel(samplers.distance_weighted_log_probabilities, dim=16)(d, labels)
  )
  p = np.exp(logp.astype(np.float64))
  np.testing.assert_allclose(p[0, 2], p[0, 3], rtol=1e-6)
  np.testing.assert_allclose(p[0, 2], p[0, 4], rtol=1e-6)
  assert p[0, 5] < p[0, 2]
  assert np.all(np.isneginf(logp[0, [0, 1, 6, 7]]))
  assert np.all(np.isneginf(logp[6])) and np.all(np.isneginf(logp[7]))
  usable_rows = [0, 1, 2, 3, 4, 5]
  np.testing.assert_allclose(p[usable_rows].sum(1), 1.0, rtol=1e-5)
  want = reference.distance_weighted_log_probabilities(d, labels, dim=16)
  _probabilities_close(logp, want, rtol=1e-5)


KEEP_DIMS = [2, 3, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
SAMPLE_DIMS = (2048,)  # sampler compiles are costly: draw where it matters


def _keep_case(case, dim):
  if case == "sphere_close_pair":
    x, labels = _sphere_with_close_pair(dim, dim)
    return cases.distances_of(x), labels
  return _one_far_pair(dim)


@pytest.mark.parametrize("case", ["sphere_close_pair", "one_far_pair"])
@pytest.mark.parametrize("dim", KEEP_DIMS)
def test_dw_keeps_every_anchor_with_a_usable_negative(kernel, dim, case):
  d, labels = _keep_case(case, dim)
  usable = reference.distance_weighted_usable(d, labels)
  has = usable.any(1)
  logp = np.asarray(
    kernel(samplers.distance_weighted_log_probabilities, dim=dim)(d, labels)
  )
  np.testing.assert_array_equal(np.isfinite(logp), usable)
  lse = scipy.special.logsumexp(logp.astype(np.float64), axis=1)
  np.testing.assert_allclose(lse[has], 0.0, atol=1e-4)
  want = reference.distance_weighted_log_probabilities(d, labels, dim=dim)
  # At dim 2048 a float32 log weight of ~1500 carries ~1e-4 absolute error.
  _probabilities_close(logp, want, rtol=1e-3)
  if dim not in SAMPLE_DIMS:
    return
  for method in ("categorical", "inverse_cdf"):
    trip = kernel(
      samplers.distance_weighted_sampling,
      dim=dim,
      images_per_class=4,
      num_negatives=2,
      method=method,
    )(jax.random.key(dim), d, labels)
    a, _, n, m = cases.as_numpy(trip)
    np.testing.assert_array_equal(m, has[a], err_msg=method)  # all kept
    assert np.all(usable[a[m], n[m]]), method


@pytest.mark.parametrize("dim", [256, 512, 1024, 2048])
@pytest.mark.parametrize("case", ["sphere_close_pair", "one_far_pair"])
def test_global_max_normalisation_loses_anchors_ours_keeps_them(
  kernel, dim, case
):
  """The authors' / PML's single global max underflows in float32."""
  if case == "sphere_close_pair":
    x, labels = _sphere_with_close_pair(dim, dim)
    d = cases.distances_of(x)
  else:
    d, labels = _one_far_pair(dim)
  usable = reference.distance_weighted_usable(d, labels)
  has = usable.any(1)
  theirs = reference.global_max_probabilities_float32(d, labels, dim=dim)
  theirs_kept = np.all(np.isfinite(theirs), axis=1) & has
  assert theirs_kept.sum() < has.sum()  # the old normalisation loses anchors
  ours = np.asarray(
    kernel(samplers.distance_weighted_log_probabilities, dim=dim)(d, labels)
  )
  ours_kept = np.isfinite(ours).any(1)
  np.testing.assert_array_equal(ours_kept, has)  # ours keeps them all


@pytest.mark.parametrize(
  "jit,method",
  [(True, "categorical"), (True, "inverse_cdf"), (False, "inverse_cdf")],
  ids=["jit-categorical", "jit-inverse_cdf", "nojit-inverse_cdf"],
)
def test_dw_fully_masked_anchor(kernel, jit, method):
  # 4 classes x 3 in the property tests' shapes (compiles are shared).
  labels = np.repeat(np.array([5, 1, 9, 3], np.int32), 3)[
    [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]
  ]
  d = np.full((12, 12), 0.8, np.float32)
  np.fill_diagonal(d, 0.0)
  negatives = labels != labels[0]
  d[0, negatives] = d[negatives, 0] = 1.5  # anchor 0: all beyond 1.4
  logp = kernel(samplers.distance_weighted_log_probabilities, jit=jit, dim=5)(
    d, labels
  )
  assert np.all(np.isneginf(np.asarray(logp)[0]))
  trip = kernel(
    samplers.distance_weighted_sampling,
    jit=jit,
    dim=5,
    images_per_class=3,
    num_negatives=2,
    method=method,
  )(jax.random.key(3), d, labels)
  a, _, n, m = cases.as_numpy(trip)
  np.testing.assert_array_equal(m, a != 0)
  np.testing.assert_array_equal(n[a == 0], 0)
  assert not np.any(np.isnan(np.asarray(logp)[1:]))


@pytest.mark.parametrize("method", ["categorical", "inverse_cdf"])
def test_dw_uniform_fallback_keeps_the_positive_with_a_negative(kernel, method):
  """no_usable_negative="uniform": the anchor without usable negatives stays
  valid, draws only negatives, and uniformly (chi-square); the other rows
  are drawn exactly as with "mask" (same key, same draws)."""
  labels = np.repeat(np.arange(4, dtype=np.int32), 3)
  d = np.full((12, 12), 0.8, np.float32)
  np.fill_diagonal(d, 0.0)
  negatives = labels != labels[0]
  d[0, negatives] = d[negatives, 0] = 1.5  # anchor 0: all beyond 1.4
  draws = 3000
  sample = {
    mode: cases.as_numpy(
      kernel(
        samplers.distance_weighted_sampling,
        dim=5,
        images_per_class=3,
        num_negatives=draws,
        method=method,
        no_usable_negative=mode,
      )(jax.random.key(4), d, labels)
    )
    for mode in ("mask", "uniform")
  }
  a, p, n, m = sample["uniform"]
  assert np.all(m)
  first = a == 0
  assert np.all(labels[n[first]] != labels[0])
  counts = np.bincount(n[first], minlength=12)[negatives]
  assert scipy.stats.chisquare(counts).pvalue > 1e-3
  a_mask, p_mask, n_mask, _ = sample["mask"]
  np.testing.assert_array_equal(p, p_mask)
  np.testing.assert_array_equal(n[~first], n_mask[~first])


def test_dw_unknown_method_raises(key, pk_batch):
  x, labels = pk_batch
  with pytest.raises(ValueError, match="method|categorical"):
    samplers.distance_weighted_sampling(
      key,
      cases.distances_of(x),
      labels,
      dim=5,
      images_per_class=3,
      method="gumbel",
    )


# ----------------------------------------------------------------------------
# Distance weighted sampling: the draws.
# ----------------------------------------------------------------------------

GOF_DIM = 8
GOF_DRAWS = 1000  # per (anchor, positive): 2,000 draws per anchor, 24,000 all


def _gof_batch():
  x, labels = reference.pk_batch(3, 4, 3, GOF_DIM)
  return cases.distances_of(x), labels


def _dw_draws(kernel, method, seed):
  d, labels = _gof_batch()
  trip = kernel(
    samplers.distance_weighted_sampling,
    dim=GOF_DIM,
    images_per_class=3,
    num_negatives=GOF_DRAWS,
    method=method,
  )(jax.random.key(seed), d, labels)
  return d, labels, cases.as_numpy(trip)


@pytest.mark.parametrize("method", ["categorical", "inverse_cdf"])
def test_dw_draws_fit_the_stated_probabilities(kernel, method):
  d, labels, (a, _, n, m) = _dw_draws(kernel, method, 11)
  probs = np.exp(
    reference.distance_weighted_log_probabilities(d, labels, dim=GOF_DIM)
  )
  assert np.all(m)
  pvalue = cases.chisquare_rows(cases.draw_counts(a, n, m, len(labels)), probs)
  assert pvalue > 1e-3


def test_dw_methods_draw_the_same_distribution(kernel):
  _, labels, (a1, _, n1, m1) = _dw_draws(kernel, "categorical", 21)
  _, _, (a2, _, n2, m2) = _dw_draws(kernel, "inverse_cdf", 22)
  c1 = cases.draw_counts(a1, n1, m1, len(labels))
  c2 = cases.draw_counts(a2, n2, m2, len(labels))
  stat, dof = 0.0, 0
  for r1, r2 in zip(c1, c2, strict=True):
    live = (r1 + r2) > 0
    table = np.stack([r1[live], r2[live]])
    if table.shape[1] < 2:
      continue
    res = scipy.stats.chi2_contingency(table, correction=False)
    stat += res.statistic
    dof += res.dof
  assert scipy.stats.chi2.sf(stat, dof) > 1e-3


def test_dw_draws_are_independent_across_positives(kernel):
  """Slots (a, p1, r) and (a, p2, r) are independent draws of row a."""
  d, labels, (a, p, n, _) = _dw_draws(kernel, "categorical", 31)
  probs = np.exp(
    reference.distance_weighted_log_probabilities(d, labels, dim=GOF_DIM)
  )
  stat, dof = 0.0, 0
  for anchor in range(len(labels)):
    rows = np.flatnonzero(a == anchor)
    first, second = rows[:GOF_DRAWS], rows[GOF_DRAWS : 2 * GOF_DRAWS]
    assert np.all(p[first] != p[second])
    # Cells: negatives with probability >= 0.1, the rest pooled.
    big = np.flatnonzero(probs[anchor] >= 0.1)
    if len(big) < 2:
      continue
    code = {int(v): i for i, v in enumerate(big)}
    u = np.array([code.get(int(v), len(big)) for v in n[first]])
    w = np.array([code.get(int(v), len(big)) for v in n[second]])
    table = np.zeros((len(big) + 1, len(big) + 1))
    np.add.at(table, (u, w), 1)
    table = table[table.sum(1) > 0][:, table.sum(0) > 0]
    res = scipy.stats.chi2_contingency(table, correction=False)
    stat += res.statistic
    dof += res.dof
  assert dof > 0
  assert scipy.stats.chi2.sf(stat, dof) > 1e-3


@pytest.mark.slow
def test_figure_3b_distance_weighted_picks_spread_wider_than_random(kernel):
  """Fig. 3b on uniform points of S^127: random picks concentrate at sqrt(2).

  In a finite batch of uniform 128-D points every distance lies within
  ~[1.15, 1.65], so the plain standard deviations of the two samples are
  alike (~0.06); the spread that differs is around sqrt(2), where random
  sampling concentrates and distance weighted sampling does not.
  """
  dim, num_classes, k = 128, 40, 5
  rng = np.random.default_rng(0)
  x = reference.unit_rows(rng.normal(size=(num_classes * k, dim)))
  labels = rng.permutation(np.repeat(np.arange(num_classes), k)).astype(
    np.int32
  )
  d = cases.distances_of(x)
  picked = {}
  for name in ("random", "distance_weighted"):
    trip = cases.sample(
      kernel,
      name,
      jax.random.key(5),
      d,
      labels,
      dim=dim,
      images_per_class=k,
      num_negatives=5,
    )
    a, _, n, m = cases.as_numpy(trip)
    assert np.all(m)
    picked[name] = d[a, n].astype(np.float64)
  rms = {s: np.sqrt(np.mean((v - np.sqrt(2)) ** 2)) for s, v in picked.items()}
  assert abs(np.mean(picked["random"]) - np.sqrt(2)) < 0.01
  assert rms["random"] < 0.08  # q(d) ~ N(sqrt 2, 1/(2n)): sd 0.0625
  assert rms["distance_weighted"] > 1.8 * rms["random"]
  far_from_mode = {s: np.mean(v < np.sqrt(2) - 0.1) for s, v in picked.items()}
  assert far_from_mode["random"] < 0.1
  assert far_from_mode["distance_weighted"] > 0.3


# ----------------------------------------------------------------------------
# q(d): Figure 2.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 3, 4, 16, 128, 512, 2048])
def test_sphere_density_matches_reference(kernel, jit, dim):
  d = np.linspace(0.02, 1.98, 99).astype(np.float32)
  got = kernel(samplers.sphere_distance_log_density, jit=jit, dim=dim)(d)
  want = [reference.sphere_distance_log_density(float(v), dim) for v in d]
  # |log q| reaches ~8000 at dim 2048 near d = 0: float32 ulp ~5e-4 there.
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def _density_grid(kernel, dim, n=200_001):
  d = np.linspace(0.0, 2.0, n)[1:-1]
  logq = kernel(samplers.sphere_distance_log_density, dim=dim)(
    d.astype(np.float32)
  )
  return d, np.exp(np.asarray(logq, np.float64))


@pytest.mark.parametrize("dim", [3, 4, 16, 128, 512])
def test_sphere_density_integrates_to_one(kernel, dim):
  d, q = _density_grid(kernel, dim)
  assert np.all(np.isfinite(q))
  np.testing.assert_allclose(scipy.integrate.trapezoid(q, d), 1.0, atol=1e-4)


@pytest.mark.parametrize("dim", [4, 16, 128])
def test_sphere_density_matches_uniform_points(kernel, dim):
  """Figure 2: the distance of two independent uniform points has density q."""
  d, q = _density_grid(kernel, dim)
  cdf = scipy.integrate.cumulative_trapezoid(q, d, initial=0.0)
  # The numerical CDF of the kernel's density equals the closed form.
  np.testing.assert_allclose(
    cdf, reference.sphere_distance_cdf(d, dim), atol=1e-4
  )
  rng = np.random.default_rng(dim)
  n = 20_000
  x = reference.unit_rows(rng.normal(size=(n, dim)))
  y = reference.unit_rows(rng.normal(size=(n, dim)))
  samples = np.linalg.norm(x - y, axis=1)  # independent pairs
  res = scipy.stats.kstest(samples, lambda v: np.interp(v, d, cdf))
  assert res.pvalue > 1e-3
  # Binned too: 20 equal-probability bins.
  edges = np.interp(np.linspace(0, 1, 21), cdf, d)
  edges[0], edges[-1] = 0.0, 2.0
  obs, _ = np.histogram(samples, edges)
  exp = np.diff(np.interp(edges, d, cdf)) * n
  exp *= n / exp.sum()
  assert scipy.stats.chisquare(obs, exp).pvalue > 1e-3
