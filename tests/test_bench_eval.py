"""experiments.bench_eval: its synthetic SOP data and a tiny end-to-end run.

The run checks the table's claim that every implementation computes the
same Recall@k (peers where installed), not any timing.
"""

import importlib.util
import json

import numpy as np
import pytest
from subprocesses import run_module

from experiments import bench_eval


@pytest.mark.parametrize("num_points,num_classes", [(60502, 11316), (230, 40)])
def test_class_sizes_have_sop_totals_and_range(num_points, num_classes):
  sizes = bench_eval.class_sizes(
    num_points, num_classes, np.random.default_rng(0)
  )
  assert sizes.shape == (num_classes,) and sizes.sum() == num_points
  assert sizes.min() >= 2 and sizes.max() <= 12


def test_class_sizes_reject_impossible_totals():
  with pytest.raises(ValueError, match="num_points / num_classes"):
    bench_eval.class_sizes(100, 60, np.random.default_rng(0))


def test_make_data_gives_unit_vectors_and_balanced_classes():
  x, labels = bench_eval.make_data(103, 10, 16, 0.1, 0, sop_sizes=False)
  assert x.shape == (103, 16) and x.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
  counts = np.bincount(labels)
  assert counts.max() - counts.min() <= 1


@pytest.mark.slow
def test_tiny_run_agrees_with_the_installed_peers(tmp_path):
  peers = [
    name
    for name, module in (("faiss", "faiss"), ("sklearn", "sklearn"))
    if importlib.util.find_spec(module)
  ]
  out = tmp_path / "bench.json"
  args = [
    "--num_points=700",
    "--num_classes=120",
    "--ks=1,10,100",
    "--block_size=128",
    "--kmeans_points=300",
    "--kmeans_clusters=15",
    "--kmeans_iters=5",
    "--sop_kmeans_iters=0",
    "--repeats=1",
    f"--peers={','.join(peers)}",
    f"--out={out}",
  ]
  result = run_module("experiments.bench_eval", *args)
  assert result.returncode == 0, result.stderr[-3000:]
  cells = json.loads(out.read_text())["cells"]
  recall_rows = cells[0]["rows"]
  assert [r["impl"] for r in recall_rows] == [
    "recall_dmljax",
    *(f"recall_{p}" for p in peers),
  ]
  for row in recall_rows:  # float32 vs float64 means; one query is 1/700
    assert row["values"] == pytest.approx(recall_rows[0]["values"], abs=1e-6)
  dmljax = recall_rows[0]["extra"]
  assert dmljax["xla_temp_bytes"] < dmljax["all_distances_bytes"]
  kmeans_rows = cells[2]["rows"]
  assert all(0.0 <= r["values"]["nmi"] <= 1.0 for r in kmeans_rows)
