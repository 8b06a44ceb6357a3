"""The numbers behind Wu et al.'s analysis figures (2, 3a, 3b, 4, 6).

Each function returns a JSON-ready dict of lists and floats; `plots.py`
draws them. Samplers and losses are dmljax's own, so the figures show what
the library does, not a re-derivation.
"""

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
import scipy.stats

from dmljax import distances as distances_lib
from dmljax import losses
from dmljax import samplers
from dmljax.runtime import reporting
from dmljax.samplers import Triplets
from experiments import figures


def uniform_sphere(rng: np.random.Generator, num_points: int, dim: int):
  """[num_points, dim] float64 points uniform on the unit sphere S^(dim−1)."""
  x = rng.standard_normal((num_points, dim))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def sphere_distance_cdf(d, dim: int):
  """Pr(D ≤ d) = I_{d²/4}((n − 1)/2, (n − 1)/2) for two uniform points.

  (1 + ⟨x, y⟩)/2 ~ Beta((n − 1)/2, (n − 1)/2) and D² = 2 − 2⟨x, y⟩.
  """
  a = 0.5 * (dim - 1)
  return scipy.special.betainc(a, a, np.square(np.asarray(d, np.float64)) / 4)


# ----------------------------------------------------------------------------
# Figure 2: q(d) on the unit sphere.
# ----------------------------------------------------------------------------


def sphere_density(
  dims: Sequence[int] = (4, 8, 16, 32, 64, 128),
  *,
  num_pairs: int = 20000,
  num_bins: int = 100,
  grid_size: int = 2001,
  seed: int = 0,
) -> dict:
  """q(d) (Wu et al. Sec. 4) against distances of uniform point pairs.

  For each n: the closed form q(d) = d^(n−2) [1 − d²/4]^((n−3)/2) /
  B(1/2, (n−1)/2) on a grid of (0, 2) (dmljax's
  `sphere_distance_log_density`), its trapezoid integral, the histogram
  (density) of ‖x − y‖ over `num_pairs` independent pairs of uniform points,
  and the Kolmogorov–Smirnov test of those distances against the closed-form
  CDF. The Gaussian limit N(√2, 1/(2n)) is given by its std.
  """
  rng = np.random.default_rng(seed)
  grid = np.linspace(0.0, 2.0, grid_size)[1:-1]
  edges = np.linspace(0.0, 2.0, num_bins + 1)
  out = {"grid": grid.tolist(), "bin_edges": edges.tolist(), "dims": {}}
  for dim in dims:
    density = np.exp(
      np.asarray(
        samplers.sphere_distance_log_density(jnp.asarray(grid), dim=dim),
        np.float64,
      )
    )
    x, y = (
      uniform_sphere(rng, num_pairs, dim),
      uniform_sphere(rng, num_pairs, dim),
    )
    d = np.linalg.norm(x - y, axis=1)
    histogram, _ = np.histogram(d, bins=edges, density=True)
    ks = scipy.stats.kstest(d, lambda v, dim=dim: sphere_distance_cdf(v, dim))
    out["dims"][str(dim)] = dict(
      density=density.tolist(),
      integral=float(np.trapezoid(density, grid)),
      histogram=histogram.tolist(),
      ks_statistic=float(ks.statistic),
      ks_pvalue=float(ks.pvalue),
      empirical_mean=float(d.mean()),
      empirical_std=float(d.std()),
      gaussian_limit_std=float(np.sqrt(1.0 / (2 * dim))),
    )
  return out


# ----------------------------------------------------------------------------
# Figure 3a: variance of the noisy gradient direction.
# ----------------------------------------------------------------------------


def gradient_direction_variance(
  sigmas: Sequence[float] = (0.01, 0.02, 0.05, 0.1),
  *,
  dim: int = 128,
  num_distances: int = 41,
  num_samples: int = 2000,
  seed: int = 0,
) -> dict:
  """‖Cov[(h + z)/‖h + z‖]‖_* against d = ‖h‖, z ~ N(0, σ² I_n).

  Wu et al. Sec. 4 (Fig. 3a): the gradient of a pair loss w.r.t. the
  negative points along h_an/‖h_an‖; with noise z in the embeddings its
  direction is (h + z)/‖h + z‖. h = d e₁ (the covariance does not depend on
  the direction of h), d on a grid of [0, 2]; the covariance is estimated
  from `num_samples` draws (ddof = 1). Its nuclear norm (the sum of its
  singular values; for a covariance, its trace Σ_j Var[u_j]) ranges from 1
  (a uniformly random direction: d = 0, for every σ) down to 0
  (deterministic).
  """
  rng = np.random.default_rng(seed)
  grid = np.linspace(0.0, 2.0, num_distances)
  out = {"distances": grid.tolist(), "dim": dim, "sigmas": {}}
  for sigma in sigmas:
    norms = []
    for d in grid:
      z = sigma * rng.standard_normal((num_samples, dim))
      z[:, 0] += d
      u = z / np.linalg.norm(z, axis=1, keepdims=True)
      # A covariance is symmetric PSD: its nuclear norm is its trace.
      norms.append(float(np.sum(np.var(u, axis=0, ddof=1))))
    out["sigmas"][str(sigma)] = norms
  return out


# ----------------------------------------------------------------------------
# Figure 3b: distances picked by each sampler.
# ----------------------------------------------------------------------------

FIGURE_3B_SAMPLERS = ("random", "semihard", "hard", "distance_weighted")


def sampled_distances(
  *,
  dim: int = 16,
  num_classes: int = 128,
  images_per_class: int = 4,
  num_batches: int = 20,
  num_bins: int = 80,
  seed: int = 0,
) -> dict:
  """Anchor–negative distances chosen by dmljax's samplers on uniform points.

  Each batch is P = `num_classes` × K uniform points on S^(dim−1) with
  shuffled P×K labels; every sampler runs with its defaults (distance
  weighted: cutoff 0.5, nonzero-loss cutoff 1.4, q of this `dim`) and the
  D_an of its unmasked triplets are pooled over batches. `dim` is 16, not
  128: at 128 dimensions uniform points are all within ±0.06 of √2 and no
  strategy has a range to choose from (Figure 2). With uniform positives,
  D_ap is distributed like a random negative distance, so semi-hard (the
  nearest negative beyond D_ap) lands close to random here; it becomes the
  paper's narrow band once training pulls positives closer.
  """
  rng = np.random.default_rng(seed)
  batch = num_classes * images_per_class
  picked = {name: [] for name in FIGURE_3B_SAMPLERS}
  all_negative = []
  jitted = {
    name: jax.jit(
      lambda key, d, y, name=name: samplers.SAMPLERS[name](
        key,
        d,
        y,
        images_per_class=images_per_class,
        **({"dim": dim} if name == "distance_weighted" else {}),
      )
    )
    for name in FIGURE_3B_SAMPLERS
  }
  for b in range(num_batches):
    x = jnp.asarray(uniform_sphere(rng, batch, dim), jnp.float32)
    labels = jnp.asarray(
      rng.permutation(np.repeat(np.arange(num_classes), images_per_class)),
      jnp.int32,
    )
    d = distances_lib.pairwise_distances(x)
    negative = np.asarray(labels[:, None] != labels[None, :])
    all_negative.append(np.asarray(d)[negative])
    for i, name in enumerate(FIGURE_3B_SAMPLERS):
      key = jax.random.fold_in(jax.random.key(seed), b * 16 + i)
      t = jitted[name](key, d, labels)
      mask = np.asarray(t.mask)
      chosen = np.asarray(d[t.anchors, t.negatives])[mask]
      picked[name].append(chosen)
  edges = np.linspace(0.0, 2.0, num_bins + 1)
  out = {"bin_edges": edges.tolist(), "dim": dim, "batch": batch}
  out["samplers"] = {}
  for name, chunks in [("all_negatives", all_negative), *picked.items()]:
    values = np.concatenate(chunks)
    histogram, _ = np.histogram(values, bins=edges, density=True)
    quantiles = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
    out["samplers"][name] = dict(
      histogram=histogram.tolist(),
      count=int(values.size),
      mean=float(values.mean()),
      std=float(values.std()),
      quantiles_5_25_50_75_95=quantiles.tolist(),
    )
  return out


# ----------------------------------------------------------------------------
# Figure 4: loss against pairwise distance.
# ----------------------------------------------------------------------------


def _one_triplet(positive_distance, negative_distance):
  """[3, 3] distances of anchor 0, positive 1, negative 2, and the triplet."""
  d = jnp.zeros((3, 3))
  d = d.at[0, 1].set(positive_distance).at[1, 0].set(positive_distance)
  d = d.at[0, 2].set(negative_distance).at[2, 0].set(negative_distance)
  triplet = Triplets(*(jnp.array([i]) for i in range(3)), jnp.array([True]))
  return d, triplet


def loss_curves(
  *,
  num_distances: int = 201,
  margin: float = 0.2,
  contrastive_margin: float = 1.0,
  beta: float = 1.2,
  other_distance: float = 1.0,
) -> dict:
  """Loss of a positive and of a negative pair against its distance.

  Wu et al. Fig. 4, from dmljax's loss terms: contrastive (α =
  `contrastive_margin`, the configs' 1.0), triplet ℓ2² and ℓ2 (α = `margin`),
  margin (α = `margin`, β = `beta`). A triplet's loss depends on both of its
  distances: its positive curve holds D_an = `other_distance` and its
  negative curve holds D_ap = `other_distance`. Also the slope of each
  negative curve near d = 0 (finite difference), which says whether hard
  negatives are pushed away.
  """
  grid = np.linspace(0.0, 2.0, num_distances)
  fixed = jnp.full(num_distances, other_distance)
  grid_j = jnp.asarray(grid, jnp.float32)

  def evaluate(term_fn, positive, negative):
    def one(p, n):
      d, triplet = _one_triplet(p, n)
      return term_fn(d, triplet)

    return jax.vmap(one)(positive, negative)

  def pair_loss(loss_fn):
    pos = evaluate(lambda d, t: loss_fn(d, t)[0][0], grid_j, fixed)
    neg = evaluate(lambda d, t: loss_fn(d, t)[1][0], fixed, grid_j)
    return pos, neg

  def triplet(squared):
    def fn(d, t):
      return losses.triplet_loss(d, t, margin=margin, squared=squared)[0]

    return evaluate(fn, grid_j, fixed), evaluate(fn, fixed, grid_j)

  curves = {
    "contrastive": pair_loss(
      lambda d, t: losses.contrastive_loss(d, t, margin=contrastive_margin)
    ),
    "triplet_l2sq": triplet(True),
    "triplet_l2": triplet(False),
    "margin": pair_loss(
      lambda d, t: losses.margin_loss(d, t, beta, margin=margin)
    ),
  }
  step = grid[1] - grid[0]
  out = dict(
    distances=grid.tolist(),
    margin=margin,
    contrastive_margin=contrastive_margin,
    beta=beta,
    other_distance=other_distance,
    losses={},
  )
  for name, (pos, neg) in curves.items():
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    out["losses"][name] = dict(
      positive=pos.tolist(),
      negative=neg.tolist(),
      negative_slope_at_0=float((neg[1] - neg[0]) / step),
    )
  return out


# ----------------------------------------------------------------------------
# Figure 6: convergence curves from training logs.
# ----------------------------------------------------------------------------

# Defined in the package (the driver's --help needs it without JAX).
FIGURE_6_METHODS = figures.FIGURE_6_METHODS


def convergence_curves(
  runs_dir: str,
  methods: Sequence[str] = FIGURE_6_METHODS,
  *,
  metric: str = "recall@1",
) -> dict:
  """`metric` against step for each method, over seeds, from metrics.jsonl.

  Reads `<runs_dir>/<method>/seed<N>/metrics.jsonl` (the layout
  `experiments.ablation` writes; `reporting.read_metrics`), keeps the "eval"
  and "final" records, and averages the seeds at the steps they share.
  Methods without logs are listed under "missing".
  """
  out = {"metric": metric, "methods": {}, "missing": []}
  for method in methods:
    method_dir = os.path.join(runs_dir, method)
    seeds = sorted(
      name
      for name in (os.listdir(method_dir) if os.path.isdir(method_dir) else [])
      if name.startswith("seed")
    )
    per_seed = {}
    for seed in seeds:
      records = reporting.read_metrics(os.path.join(method_dir, seed))
      points = {
        r["step"]: r[metric]
        for r in records
        if r["kind"] in ("eval", "final") and metric in r
      }
      if points:
        per_seed[seed] = points
    if not per_seed:
      out["missing"].append(method)
      continue
    steps = sorted(set.intersection(*(set(p) for p in per_seed.values())))
    values = np.array([[p[s] for s in steps] for p in per_seed.values()])
    out["methods"][method] = dict(
      steps=steps,
      mean=values.mean(0).tolist(),
      std=values.std(0).tolist(),
      seeds={seed: [p[s] for s in steps] for seed, p in per_seed.items()},
    )
  return out
