"""The optional TensorBoard view: event files, image, hparams, projector."""

import glob
import os

import numpy as np
import pytest
from PIL import Image

from dmljax.runtime import reporting
from dmljax.runtime import rundir
from dmljax.runtime import tensorboard

tensorboardX = pytest.importorskip("tensorboardX")


def read_scalars(folder: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value)]} of every event file under `folder`."""
  from tensorboardX.proto import event_pb2

  scalars = {}
  for path in glob.glob(os.path.join(folder, "**", "events.*"), recursive=True):
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):  # TFRecord: length, crc, payload, crc.
      length = int.from_bytes(data[offset : offset + 8], "little")
      payload = data[offset + 12 : offset + 12 + length]
      offset += 12 + length + 4
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        if value.HasField("simple_value"):
          scalars.setdefault(value.tag, []).append(
            (event.step, value.simple_value)
          )
  return scalars


def test_metrics_log_mirrors_every_record_as_scalars(tmp_path):
  log = reporting.MetricsLog(str(tmp_path))
  log.write(10, "train", {"loss": 0.5, "beta_median": 1.2})
  log.write(20, "train", {"loss": 0.25, "beta_median": 1.1})
  log.write(20, "eval", {"recall@1": 0.75})
  log.events.writer.close()  # Joins the writer's thread.
  scalars = read_scalars(str(tmp_path / rundir.TENSORBOARD_FOLDER))
  assert scalars["train/loss"] == [(10, 0.5), (20, 0.25)]
  assert scalars["eval/recall_at_1"] == [(20, 0.75)]
  records = reporting.read_metrics(str(tmp_path))  # Still the truth.
  assert [r["step"] for r in records] == [10, 20, 20]


def test_finish_writes_image_hparams_and_projector(tmp_path):
  png = tmp_path / "retrieval.png"
  Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(png)
  writer = tensorboard.EventWriter(str(tmp_path / rundir.TENSORBOARD_FOLDER))
  rng = np.random.default_rng(0)
  writer.finish(
    5,
    hparams=tensorboard.flat_hparams({"optim": {"learning_rate": 0.1}}),
    final={"recall@1": 0.5},
    retrieval_png=str(png),
    embeddings=rng.standard_normal((6, 4)).astype(np.float32),
    names=["a", "a", "b", "b", "c", "c"],
    thumbnails=rng.random((6, 8, 8, 1)).astype(np.float32),
  )
  folder = tmp_path / rundir.TENSORBOARD_FOLDER
  projector = glob.glob(
    str(folder / "**" / "projector_config.pbtxt"), recursive=True
  )
  assert projector, "no projector export"
  config = open(projector[0]).read()
  assert "metadata.tsv" in config and "sprite.png" in config
  metadata = glob.glob(str(folder / "**" / "metadata.tsv"), recursive=True)
  assert open(metadata[0]).read().split() == ["a", "a", "b", "b", "c", "c"]
  scalars = read_scalars(str(folder))
  assert any(tag.endswith("hparam/recall_at_1") for tag in scalars)
  assert writer.writer is None  # Closed.


def test_a_disabled_writer_writes_nothing(tmp_path):
  writer = tensorboard.EventWriter(
    str(tmp_path / rundir.TENSORBOARD_FOLDER), enabled=False
  )
  writer.scalars(1, "train", {"loss": 1.0})
  writer.finish(1, hparams={}, final={})
  assert not os.path.exists(tmp_path / rundir.TENSORBOARD_FOLDER)


def test_projector_sample_is_seeded_sorted_and_capped():
  labels = np.arange(5000) % 7
  rows = tensorboard.projector_sample(labels, seed=3)
  assert rows.size == tensorboard.MAX_PROJECTED
  assert np.all(np.diff(rows) > 0)
  np.testing.assert_array_equal(
    rows, tensorboard.projector_sample(labels, seed=3)
  )
  assert tensorboard.projector_sample(labels[:10]).tolist() == list(range(10))
