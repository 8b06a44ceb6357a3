"""experiments.bench_accelerator --smoke: every section runs, JSON fields.

Runs the script in a subprocess (its own absl flags; 2 CPU devices so that
the multi_device section has something to compare) and reads the JSON and
markdown it writes.
"""

import json
import os
import subprocess
import sys

import pytest
from subprocesses import ROOT

# experiments.bench_accelerator.SECTIONS, in order (not imported: its absl
# flags would meet other experiments' flags in this process).
SECTIONS = [
  "resnet50_synthetic",
  "resnet50_host_pipeline",
  "dw_margin",
  "evaluation",
  "glyphs_step",
  "dsp_step",
  "multi_device",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp("accelerator")
  env = dict(
    os.environ,
    PYTHONPATH=ROOT,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
  )
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.bench_accelerator",
      "--smoke",
      f"--out_dir={out_dir}",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out_dir / "accelerator_cpu_smoke.json") as f:
    report = json.load(f)
  with open(out_dir / "accelerator_cpu_smoke.md") as f:
    report["_markdown"] = f.read()
  report["_stdout"] = result.stdout
  return report


def _rows(report, name):
  return report["sections"][name]["rows"]


def test_every_section_ran_ok_within_its_budget(report):
  assert report["schema"] == "dmljax.bench_accelerator/1"
  assert report["smoke"] is True
  assert list(report["sections"]) == SECTIONS
  for name, section in report["sections"].items():
    assert section["status"] == "ok", (name, section.get("traceback"))
    assert 0 < section["seconds"] <= section["budget_s"] * 1.25 + 30
  machine = report["machine"]
  assert machine["backend"] == "cpu" and machine["device_count"] == 2
  for name in SECTIONS:
    assert f"## {name}: ok" in report["_markdown"]
  assert "## resnet50_synthetic" in report["_stdout"]


def test_training_sections_report_speed_and_memory(report):
  (row,) = _rows(report, "resnet50_synthetic")
  assert row["images_per_s"] > 0 and row["ms_per_step"] > 0
  assert row["dtype"] == "float32" and row["batch_size"] == 10
  assert "peak_bytes_in_use" in row  # None on CPU, bytes on a GPU.
  assert row["xla_planned_bytes"] > 0
  anchor = report["sections"]["resnet50_synthetic"]["paper_anchor"]
  assert anchor["images_per_s"] == pytest.approx(120 / 0.55)
  (fed,) = _rows(report, "resnet50_host_pipeline")
  assert fed["workers"] >= 1 and fed["pipeline_images_per_s"] > 0
  assert fed["fed_images_per_s"] > 0 and isinstance(fed["starved"], bool)
  assert 0 <= fed["host_wait_fraction"] <= 1
  assert _rows(report, "glyphs_step")[0]["ms_per_step"] > 0
  assert _rows(report, "dsp_step")[0]["ms_per_step"] > 0
  cells = {(r["devices"], r["mining"]) for r in _rows(report, "multi_device")}
  assert cells == {(2, "global")}


def test_kernel_sections_report_equal_gradients_and_recalls(report):
  rows = _rows(report, "dw_margin")
  assert {r["distance_gradient"] for r in rows} == {"dense", "gathered"}
  assert all(r["fwd_bwd_first_call_s"] > 0 for r in rows)
  (comparison,) = report["sections"]["dw_margin"]["comparisons"]
  assert comparison["loss_abs_difference"] == 0.0
  assert comparison["max_gradient_difference_relative"] < 1e-5
  evaluation = report["sections"]["evaluation"]
  recall, kmeans = evaluation["rows"]
  assert recall["metric"] == "recall" and recall["N"] == 600
  assert 0 <= recall["recall@1"] <= recall["recall@100"] <= 1
  assert kmeans["metric"] == "kmeans_nmi" and 0 < kmeans["nmi"] <= 1
  assert evaluation["chosen_tile"] == recall["tile"]
  assert evaluation["million"].startswith("skipped")
