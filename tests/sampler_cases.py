"""Shared helpers of the sampler tests: calling samplers, checking tuples."""

import numpy as np
import reference
import scipy.stats

from dmljax import samplers

SAMPLER_FNS = {
  "random": samplers.random_sampling,
  "hard": samplers.hard_sampling,
  "semihard": samplers.semihard_sampling,
  "distance_weighted": samplers.distance_weighted_sampling,
}


def distances_of(x) -> np.ndarray:
  """float32 distances, computed in float64 (inputs for the samplers).

  The references read the same float32 values, so comparisons such as
  D_an > D_ap are decided identically on both sides.
  """
  x = np.asarray(x, np.float64)
  d = np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0.0))
  return d.astype(np.float32)


def sample(kernel, name, key, distances, labels, *, jit=True, dim=None, **kw):
  if name == "distance_weighted":
    kw["dim"] = dim
    kw.setdefault("method", "categorical")
  return kernel(SAMPLER_FNS[name], jit=jit, **kw)(key, distances, labels)


def as_numpy(triplets):
  return tuple(np.asarray(v) for v in triplets)


def assert_triplets_valid(
  triplets, labels, *, images_per_class, num_negatives, usable=None
):
  """Layout (shapes, order, every pair once per r) and validity invariants."""
  a, p, n, m = as_numpy(triplets)
  b, k, nn = len(labels), images_per_class, num_negatives
  t = b * (k - 1) * nn
  for v in (a, p, n):
    assert v.shape == (t,) and v.dtype == np.int32
  assert m.shape == (t,) and m.dtype == np.bool_
  slots = reference.positive_slots(labels, k)
  np.testing.assert_array_equal(a, np.repeat([s[0] for s in slots], nn))
  np.testing.assert_array_equal(p, np.repeat([s[1] for s in slots], nn))
  slot_valid = np.repeat([s[2] for s in slots], nn)
  assert not np.any(m & ~slot_valid)  # a slot without a positive is masked
  pairs = sorted((s[0], s[1]) for s in slots if s[2])
  for r in range(nn):
    got = sorted(
      (int(i), int(j))
      for i, j, v in zip(a[r::nn], p[r::nn], slot_valid[r::nn], strict=True)
      if v
    )
    assert got == pairs, f"slot {r}"
  np.testing.assert_array_equal(n[~m], a[~m])  # the defined placeholder
  assert np.all(a[m] != p[m]) and np.all(labels[a[m]] == labels[p[m]])
  assert np.all(n[m] != a[m])
  assert np.all(labels[n[m]] != labels[a[m]])
  if usable is not None:
    assert np.all(usable[a[m], n[m]])


def pooled(obs, exp, min_expected=5.0):
  """Pools the smallest cells until every cell expects >= min_expected."""
  order = np.argsort(exp, kind="stable")
  obs, exp = obs[order], exp[order]
  k, pooled = 0, 0.0
  while k < len(exp) and (exp[k] < min_expected or 0 < pooled < min_expected):
    pooled += exp[k]
    k += 1
  if k <= 1:
    return obs, exp
  return (
    np.concatenate([[obs[:k].sum()], obs[k:]]),
    np.concatenate([[exp[:k].sum()], exp[k:]]),
  )


def chisquare_rows(counts, probabilities):
  """One chi-square statistic over rows (per-row cells pooled), its p."""
  obs_all, exp_all, rows = [], [], 0
  for c, pr in zip(counts, probabilities, strict=True):
    if c.sum() == 0:
      continue
    assert np.all(c[pr == 0] == 0), "draw from a zero-probability cell"
    live = pr > 0
    obs, exp = pooled(c[live].astype(float), c.sum() * pr[live] / pr.sum())
    if len(obs) < 2:
      continue
    obs_all.append(obs)
    exp_all.append(exp)
    rows += 1
  obs, exp = np.concatenate(obs_all), np.concatenate(exp_all)
  # Each row loses one degree of freedom; chisquare already removes one.
  return scipy.stats.chisquare(obs, exp, ddof=rows - 1).pvalue


def draw_counts(anchors, negatives, mask, b):
  counts = np.zeros((b, b), np.int64)
  np.add.at(counts, (anchors[mask], negatives[mask]), 1)
  return counts
