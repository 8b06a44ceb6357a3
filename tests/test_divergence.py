"""A collapsed embedding ends the run with the last good checkpoint (7)."""

import os

import jax.numpy as jnp
import pytest

from dmljax.runtime import checkpoint as checkpoint_lib
from dmljax.runtime import divergence
from dmljax.runtime import train
from dmljax.runtime.recipes import pk_methods
from experiments.configs import methods

_HEALTHY = {
  "loss": 1.05,
  "grad_norm": 1.6,
  "num_tuples": 80.0,
  "mean_positive_distance": 0.33,
  "mean_negative_distance": 0.35,
}
# lr = 1e6 on digits: every distance 0, only β still gets a gradient.
_COLLAPSED = {
  **_HEALTHY,
  "loss": 1.37,
  "grad_norm": 1.095,
  "mean_positive_distance": 0.0,
  "mean_negative_distance": 0.0,
}


@pytest.mark.parametrize(
  "metrics, collapsed",
  [
    (_HEALTHY, False),
    (_COLLAPSED, True),
    ({**_HEALTHY, "grad_norm": 0.0}, True),  # A loss nothing can reduce.
    ({**_HEALTHY, "loss": 0.0, "grad_norm": 0.0}, False),  # All satisfied.
    ({**_COLLAPSED, "num_tuples": 0.0}, False),  # All masked: no distances.
    ({**_COLLAPSED, "loss": 0.0}, False),
    ({"loss": 2.3, "grad_norm": 0.7}, False),  # A method without distances.
    ({"loss": 2.3, "grad_norm": 0.0}, True),
    ({**_HEALTHY, "mean_positive_distance": 0.0}, False),  # Duplicates.
  ],
)
def test_looks_collapsed(metrics, collapsed):
  assert divergence.looks_collapsed(metrics) is collapsed


def test_the_watch_needs_consecutive_collapsed_steps():
  watch = divergence.CollapseWatch(patience=3)
  for step in (10, 20):
    watch.observe(step, _COLLAPSED, last_checkpoint=None)
  watch.observe(30, _HEALTHY, last_checkpoint=None)  # Recovered: reset.
  for step in (40, 50):
    watch.observe(step, _COLLAPSED, last_checkpoint=30)
  with pytest.raises(divergence.EmbeddingCollapseError) as error:
    watch.observe(60, _COLLAPSED, last_checkpoint=30)
  message = str(error.value)
  assert "collapsed to a point at step 40 (still at step 60" in message
  assert "the last checkpoint (step 30) is kept" in message
  assert "--config.optim.learning_rate" in message
  assert isinstance(error.value, FloatingPointError)


def test_a_collapsed_last_step_stops_at_once():
  watch = divergence.CollapseWatch(patience=3)
  with pytest.raises(divergence.EmbeddingCollapseError, match="no checkpoint"):
    watch.observe(4, _COLLAPSED, last_checkpoint=None, final=True)


def _config():
  return methods.get_config("method=margin_dw,dataset=digits,smoke")


def _collapsed_method(key, embeddings, labels, beta, image_ids):
  """A positive loss with no gradient and every distance 0."""
  del key, labels, beta, image_ids
  aux = {
    "num_tuples": jnp.asarray(80.0),
    "mean_positive_distance": jnp.asarray(0.0),
    "mean_negative_distance": jnp.asarray(0.0),
  }
  return 1.0 + 0.0 * jnp.sum(embeddings), aux


def test_a_collapsed_run_stops_and_saves_no_collapsed_checkpoint(
  tmp_path, monkeypatch
):
  monkeypatch.setattr(
    pk_methods, "make_method", lambda config: _collapsed_method
  )
  with pytest.raises(divergence.EmbeddingCollapseError, match="at step 1"):
    train.train_and_evaluate(_config(), str(tmp_path))
  assert checkpoint_lib.saved_steps(str(tmp_path / "checkpoints")) == []


def _nan_method(key, embeddings, labels, beta, image_ids):
  del key, labels, beta, image_ids
  return jnp.sum(embeddings) * jnp.nan, {}


def test_a_nonfinite_step_without_checkpoint_says_so(tmp_path, monkeypatch):
  monkeypatch.setattr(pk_methods, "make_method", lambda config: _nan_method)
  with pytest.raises(FloatingPointError) as error:
    train.train_and_evaluate(_config(), str(tmp_path))
  assert "no checkpoint had been saved yet" in str(error.value)
  assert "None" not in str(error.value)


@pytest.mark.slow
def test_learning_rate_1e6_on_digits_is_reported_as_a_collapse(tmp_path):
  config = methods.get_config("method=margin_dw,dataset=digits")
  config.optim.learning_rate = 1e6
  config.train.num_steps = 60
  config.train.log_every = 5
  config.train.eval_every = 1000
  config.ckpt.every = 5
  with pytest.raises(divergence.EmbeddingCollapseError) as error:
    train.train_and_evaluate(config, str(tmp_path))
  first = int(str(error.value).split("at step ")[1].split(" ")[0])
  kept = checkpoint_lib.saved_steps(os.path.join(tmp_path, "checkpoints"))
  assert all(step < first for step in kept)  # Only good ones are kept.
