"""The benchmark drivers run end to end on tiny fabricated archives.

Each: fabricated official layout → reader → P×K pipeline (JPEG decode) →
two train steps → evaluation with the dataset's protocol and k list (the
`smoke` config: 32 px crops of 36 px images, the small CPU net).
"""

import json

import archives
import pytest
from subprocesses import run_module

# The final metrics each protocol reports (smoke: the first two ks).
_KEYS = {
  "sop": {"recall@1", "recall@10", "map@r", "nmi", "f1"},
  "cars196": {"recall@1", "recall@2", "map@r", "nmi", "f1"},
  "cub200": {"recall@1", "recall@2", "map@r", "nmi", "f1"},
  "inshop": {"recall@1", "recall@10"},
  "lfw": {"accuracy", "std"},
}


def _run(args, **kwargs):
  return run_module(*args, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", sorted(_KEYS))
def test_benchmark_driver_smoke(dataset, tmp_path):
  data_dir = archives.MAKERS[dataset](str(tmp_path / "data"))
  extra = {
    "cars196": ["--config.data.cropped=True"],
    # The faces options: bfloat16 compute and the 256-d embedding.
    "lfw": [
      "--config.model.dtype=bfloat16",
      "--config.model.embedding_dim=256",
    ],
  }.get(dataset, [])
  result = _run(
    [
      f"experiments.{dataset}",
      "--config=margin_dw:smoke",
      f"--data_dir={data_dir}",
      f"--workdir={tmp_path / 'run'}",
      "--config.train.num_steps=2",
      "--config.train.eval_every=1",
      *extra,
    ]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["config"]["data"]["name"] == dataset
  assert set(summary["final"]) == _KEYS[dataset]
  assert all(0.0 <= v <= 1.0 for v in summary["final"].values())
  records = [
    json.loads(line)
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  ]
  assert [r["kind"] for r in records].count("eval") == 1  # Every N steps.


def test_driver_without_data_dir_says_what_to_do(tmp_path):
  result = _run(
    [
      "experiments.sop",
      "--config=margin_dw:smoke",
      f"--workdir={tmp_path}",
    ]
  )
  assert result.returncode != 0
  assert "no data directory given. Pass --data_dir=DIR" in result.stderr
  assert "Stanford_Online_Products.zip" in result.stderr


def test_pipeline_benchmark_writes_its_table(tmp_path):
  out = tmp_path / "bench.json"
  result = _run(
    [
      "experiments.bench_pipeline",
      "--workers=0",
      "--num_images=10",
      "--batch_size=10",
      "--width=64",
      "--height=48",
      "--seconds=0.2",
      f"--out={out}",
    ]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(out.read_text())["rows"]
  assert [r["workers"] for r in rows] == [0]
  assert rows[0]["images_per_s"] > 0


def test_train_benchmark_times_the_step_and_its_parts(tmp_path):
  out = tmp_path / "bench_train.json"
  result = _run(
    [
      "experiments.bench_train",
      "--datasets=digits",
      "--budget_s=0.05",
      "--peer=off",
      f"--out={out}",
    ]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  cells = json.loads(out.read_text())["datasets"]["digits"]
  parts = ("step", "forward", "sampler + loss", "optimiser", "host input")
  assert all(cells["dmljax_ms"][part] > 0 for part in parts)
  assert 25 % cells["dmljax_ms"]["devices"] == 0  # Whole rows per device.
  assert cells["pytorch_ms"] is None
  assert cells["images_per_s"] == pytest.approx(
    25 / cells["dmljax_ms"]["step"] * 1e3
  )
