"""The numbers behind the reproduced figures (not the pictures).

Figure 2 against the closed-form CDF (tests/reference.py), Figure 3a against
its small-noise limit, Figure 3b's ordering of the samplers, Figure 4's
curves against the loss formulas of Wu et al. Sec. 3-4, and Figure 6 on
fabricated training logs.
"""

import json
import os

import numpy as np
import pytest
import reference
import scipy.stats
from subprocesses import run_module

from experiments.figures import analysis
from experiments.figures import plots


@pytest.fixture(scope="module")
def figure_2():
  return analysis.sphere_density((4, 16, 128), num_pairs=4000, seed=1)


def test_q_integrates_to_one(figure_2):
  for dim, row in figure_2["dims"].items():
    assert row["integral"] == pytest.approx(1.0, abs=2e-3), dim


def test_q_matches_the_closed_form_cdf(figure_2):
  """∫_0^x q (dmljax's density) = I_{x²/4}((n−1)/2, (n−1)/2)."""
  grid = np.asarray(figure_2["grid"])
  for dim, row in figure_2["dims"].items():
    density = np.asarray(row["density"])
    integral = np.concatenate(
      [[0.0], np.cumsum(np.diff(grid) * 0.5 * (density[1:] + density[:-1]))]
    )
    want = reference.sphere_distance_cdf(grid, int(dim))
    np.testing.assert_allclose(integral, want - want[0], atol=3e-3)


def test_histogram_fits_q_by_ks_and_concentrates(figure_2):
  for dim, row in figure_2["dims"].items():
    assert row["ks_pvalue"] > 1e-3, dim
    # Concentration of measure: std → 1/√(2n) (Wu et al. Sec. 4).
    if int(dim) >= 16:
      assert row["empirical_std"] == pytest.approx(
        row["gaussian_limit_std"], rel=0.1
      )
  stds = [row["empirical_std"] for row in figure_2["dims"].values()]
  assert stds == sorted(stds, reverse=True)


def test_ks_rejects_the_wrong_dimension():
  rng = np.random.default_rng(2)
  x, y = (
    analysis.uniform_sphere(rng, 4000, 8),
    analysis.uniform_sphere(rng, 4000, 8),
  )
  d = np.linalg.norm(x - y, axis=1)
  wrong = scipy.stats.kstest(d, lambda v: analysis.sphere_distance_cdf(v, 16))
  right = scipy.stats.kstest(d, lambda v: analysis.sphere_distance_cdf(v, 8))
  assert wrong.pvalue < 1e-6 < right.pvalue


def test_gradient_variance_falls_with_distance():
  numbers = analysis.gradient_direction_variance(
    (0.02, 0.1), dim=32, num_distances=11, num_samples=1000, seed=3
  )
  grid = np.asarray(numbers["distances"])
  small, large = (np.asarray(v) for v in numbers["sigmas"].values())
  for norms in (small, large):
    assert norms[0] == pytest.approx(1.0, abs=0.05)  # uniform direction
    assert np.all(np.diff(norms) < 0)
  assert np.all(large[1:] > small[1:])  # more noise, more variance
  # Small noise: each of the n − 1 orthogonal directions varies by σ²/d².
  limit = (32 - 1) * 0.02**2 / grid[-3:] ** 2
  np.testing.assert_allclose(small[-3:], limit, rtol=0.1)


def test_samplers_pick_the_distances_the_paper_describes():
  numbers = analysis.sampled_distances(num_classes=32, num_batches=3, seed=4)
  stats = numbers["samplers"]
  assert stats["random"]["count"] == 3 * 32 * 4 * 3  # B (K − 1) per batch
  # Random follows all negatives; hard sits at the near end, narrowly;
  # distance weighted spreads below the 1.4 non-zero-loss cutoff.
  assert stats["random"]["mean"] == pytest.approx(
    stats["all_negatives"]["mean"], abs=0.03
  )
  assert stats["hard"]["mean"] < stats["distance_weighted"]["mean"]
  assert stats["distance_weighted"]["mean"] < stats["random"]["mean"]
  assert stats["distance_weighted"]["quantiles_5_25_50_75_95"][-1] < 1.4
  assert stats["distance_weighted"]["std"] > 2 * stats["hard"]["std"]
  assert stats["semihard"]["mean"] > stats["hard"]["mean"]


def test_loss_curves_match_the_formulas():
  numbers = analysis.loss_curves(num_distances=41, other_distance=1.0)
  d = np.asarray(numbers["distances"])
  a, beta, a_c = numbers["margin"], numbers["beta"], 1.0
  relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
  want = {
    "contrastive": (d**2, relu(a_c - d) ** 2),
    "triplet_l2sq": (relu(d**2 - 1.0 + a), relu(1.0 - d**2 + a)),
    "triplet_l2": (relu(d - 1.0 + a), relu(1.0 - d + a)),
    "margin": (relu(a + d - beta), relu(a - d + beta)),
  }
  for name, (positive, negative) in want.items():
    row = numbers["losses"][name]
    np.testing.assert_allclose(row["positive"], positive, atol=1e-5)
    np.testing.assert_allclose(row["negative"], negative, atol=1e-5)
  # Hard negatives: ℓ2² barely pushes them (Fig. 4b); ℓ2 and margin do.
  slopes = {k: v["negative_slope_at_0"] for k, v in numbers["losses"].items()}
  assert abs(slopes["triplet_l2sq"]) < 0.15
  assert slopes["triplet_l2"] == pytest.approx(-1.0, abs=1e-3)
  assert slopes["margin"] == pytest.approx(-1.0, abs=1e-3)


def _write_log(path, records):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)


def fabricated_runs(root):
  """margin_dw over two seeds (one with an extra step), contrastive_random."""

  def evals(values, steps=(100, 200, 300)):
    records = [{"step": 10, "kind": "train", "loss": 1.0}]
    kinds = ["eval"] * (len(steps) - 1) + ["final"]
    records += [
      {"step": s, "kind": k, "recall@1": v, "nmi": 0.5}
      for s, k, v in zip(steps, kinds, values, strict=True)
    ]
    return records

  _write_log(root / "margin_dw" / "seed0", evals([0.5, 0.7, 0.8]))
  _write_log(
    root / "margin_dw" / "seed1",
    evals([0.3, 0.5, 0.6, 0.9], steps=(100, 150, 200, 300)),
  )
  _write_log(root / "contrastive_random" / "seed0", evals([0.1, 0.2, 0.3]))
  _write_log(root / "triplet_l2_semihard" / "seed0", [])  # an empty log


def test_convergence_curves_average_seeds_at_shared_steps(tmp_path):
  fabricated_runs(tmp_path)
  numbers = analysis.convergence_curves(str(tmp_path))
  margin = numbers["methods"]["margin_dw"]
  assert margin["steps"] == [100, 200, 300]
  np.testing.assert_allclose(margin["mean"], [0.4, 0.65, 0.85])
  np.testing.assert_allclose(margin["std"], [0.1, 0.05, 0.05])
  assert numbers["methods"]["contrastive_random"]["mean"] == [0.1, 0.2, 0.3]
  assert numbers["missing"] == ["triplet_l2_semihard"]
  assert os.path.exists(plots.figure_6(numbers, str(tmp_path)))


@pytest.mark.slow
def test_driver_writes_every_figure_and_skips_figure_6_without_logs(tmp_path):
  result = run_module("experiments.figures", f"--out={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "figure6: skipped" in result.stdout
  for name in ("figure2", "figure3a", "figure3b", "figure4"):
    assert (tmp_path / f"{name}.png").stat().st_size > 0
    numbers = json.loads((tmp_path / f"{name}.json").read_text())
    assert numbers
  assert not (tmp_path / "figure6.png").exists()
