"""End-to-end training on `digits`: outputs, resume, kill -9, NaN, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
from subprocesses import ROOT

from dmljax.runtime import recipes
from dmljax.runtime import reporting
from dmljax.runtime import train
from dmljax.runtime.recipes import pk_methods
from experiments.configs import methods


def _config(**train_overrides):
  config = methods.get_config("method=margin_dw,dataset=digits,smoke")
  for name, value in train_overrides.items():
    section, field = name.split("__")
    config[section][field] = value
  return config


def test_smoke_run_leaves_outputs_and_a_rerun_resumes(tmp_path):
  config = _config()
  final = train.train_and_evaluate(config, str(tmp_path))
  assert 0.0 <= final["recall@1"] <= 1.0
  assert {"recall@1", "recall@8", "map@r", "nmi", "f1"} <= set(final)
  for name in (
    "metrics.jsonl",
    "summary.json",
    "training.png",
    "eval.png",
    "retrieval.png",
    "tsne.png",
  ):
    assert (tmp_path / name).exists(), name
  records = reporting.read_metrics(str(tmp_path))
  steps = [r["step"] for r in records if r["kind"] == "train"]
  assert steps == list(range(1, config.train.num_steps + 1))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]

  again = train.train_and_evaluate(config, str(tmp_path))  # Nothing to train.
  assert again == pytest.approx(final, abs=1e-6)
  records = reporting.read_metrics(str(tmp_path))
  assert [r["kind"] for r in records].count("final") == 1
  assert [r["step"] for r in records if r["kind"] == "train"] == steps


def _driver(workdir, num_steps):
  return [
    sys.executable,
    "-m",
    "experiments.digits",
    "--config=margin_dw:smoke",
    f"--workdir={workdir}",
    f"--config.train.num_steps={num_steps}",
    "--config.train.eval_every=1000",
    "--config.ckpt.every=2",
  ]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics(tmp_path):
  num_steps = 24
  reference = train.train_and_evaluate(
    _config(train__num_steps=num_steps, train__eval_every=1000),
    str(tmp_path / "uninterrupted"),
  )
  killed = tmp_path / "killed"
  process = subprocess.Popen(
    _driver(killed, num_steps),
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 300
  while not (killed / "checkpoints" / "4").exists():
    assert process.poll() is None, "the run ended before it could be killed"
    assert time.time() < deadline, "no checkpoint within 300 s"
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (killed / "summary.json").exists()

  resumed = train.train_and_evaluate(
    _config(train__num_steps=num_steps, train__eval_every=1000), str(killed)
  )
  assert resumed == pytest.approx(reference, abs=1e-6)
  summary = json.loads((killed / "summary.json").read_text())
  assert summary["final"] == pytest.approx(reference, abs=1e-6)


def _nan_method(key, embeddings, labels, beta, image_ids):
  del key, labels, beta, image_ids
  return jnp.sum(embeddings) * jnp.nan, {}


def test_nonfinite_loss_stops_naming_the_step(tmp_path, monkeypatch):
  monkeypatch.setattr(pk_methods, "make_method", lambda config: _nan_method)
  with pytest.raises(FloatingPointError, match="NaN/inf at step 1"):
    train.train_and_evaluate(_config(), str(tmp_path))
  assert not os.listdir(tmp_path / "checkpoints")


def test_nonfinite_step_keeps_the_last_good_state():
  config = _config()
  model = recipes.make_model(config)
  tx = train.make_optimizer(config)
  state = train.create_train_state(
    config,
    model,
    tx,
    input_shape=(20, 8, 8, 1),
    num_classes=5,
    num_images=100,
  )
  before = np.asarray(state["params"]["embed"]["head"]["kernel"]).copy()
  step = pk_methods.make_train_step(model, _nan_method, tx)
  batch = {
    "image": jnp.ones((20, 8, 8, 1)),
    "label": jnp.repeat(jnp.arange(4), 5),
    "index": jnp.arange(20),
  }
  state, _ = step(state, batch)
  np.testing.assert_array_equal(
    state["params"]["embed"]["head"]["kernel"], before
  )
  assert int(state["nonfinite_step"]) == 1
  assert int(state["step"]) == 0


def test_batch_not_a_multiple_of_k_is_an_error(tmp_path):
  config = _config()
  config.data.batch_size = 22
  with pytest.raises(ValueError, match="not a multiple of images_per_class=5"):
    train.train_and_evaluate(config, str(tmp_path))


def test_unwritable_workdir_is_an_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(ValueError, match="Choose a --workdir you can write to"):
    train.train_and_evaluate(_config(), str(blocker / "run"))
