"""Each absl driver runs end to end for a few steps (the `smoke` configs)."""

import json

import pytest
from subprocesses import run_module


def _run(*args):
  result = run_module(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.mark.slow
@pytest.mark.parametrize("driver", ["glyphs", "digits"])
def test_training_driver_smoke(driver, tmp_path):
  result = _run(
    f"experiments.{driver}", "--config=margin_dw:smoke", f"--workdir={tmp_path}"
  )
  assert "recall@1" in result.stdout
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["config"]["data"]["name"] == driver
  assert 0.0 <= summary["final"]["recall@1"] <= 1.0


def test_driver_rejects_an_unknown_config(tmp_path):
  result = run_module(
    "experiments.digits",
    "--config=margin_dx",
    f"--workdir={tmp_path}",
    timeout=300,
  )
  assert result.returncode != 0
  assert "Unknown config 'margin_dx'" in result.stderr


@pytest.mark.slow
def test_ablation_smoke(tmp_path):
  _run(
    "experiments.ablation",
    "--dataset=digits",
    "--seeds=2",
    "--methods=margin_dw,contrastive_random",
    "--smoke",
    "--set=eval.kmeans_iters=7",
    f"--workdir={tmp_path}",
  )
  table = (tmp_path / "ablation.md").read_text()
  assert "| margin_dw |" in table and "| contrastive_random |" in table
  assert "config changes: eval.kmeans_iters=7" in table
  summary = tmp_path / "margin_dw" / "seed1" / "summary.json"
  assert json.loads(summary.read_text())["config"]["eval"]["kmeans_iters"] == 7
  results = json.loads((tmp_path / "ablation.json").read_text())
  assert {len(runs) for runs in results.values()} == {2}
