"""Every bad value is refused before work starts, in one line (finding 6).

Most cases need no training: `config_checks` on a config, and the drivers
stopped before they import JAX's backend or write anything.
"""

import re

import ml_collections
import numpy as np
import pytest
from subprocesses import run_module

from dmljax.runtime import config_checks
from dmljax.runtime import export
from dmljax.runtime import rundir
from dmljax.runtime import train
from experiments import _errors
from experiments.configs import common
from experiments.configs import datasets
from experiments.configs import methods


def _config(dataset="digits"):
  return methods.get_config(f"method=margin_dw,dataset={dataset},smoke")


_SHIPPED = [
  (name, dataset)
  for name in sorted(methods.METHODS)
  for dataset in sorted(datasets.DATASETS)
]


@pytest.mark.parametrize("name, dataset", _SHIPPED)
def test_every_shipped_config_is_valid(name, dataset, tmp_path):
  config = methods.get_config(f"method={name},dataset={dataset}")
  config.data.data_dir = str(tmp_path)  # The file-backed ones need one.
  common.check_config(config)


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("train.num_steps", 0, "train.num_steps must be ≥ 1, got 0"),
    ("train.num_steps", -5, "train.num_steps must be ≥ 1, got -5"),
    ("ckpt.every", 0, "ckpt.every must be ≥ 1"),
    ("train.log_every", 0, "train.log_every must be ≥ 1"),
    ("train.eval_every", 0, "train.eval_every must be ≥ 1"),
    ("ckpt.max_to_keep", 0, "ckpt.max_to_keep must be ≥ 1"),
    ("model.embedding_dim", 0, "model.embedding_dim must be ≥ 1, got 0"),
    ("model.embedding_dim", -4, "model.embedding_dim must be ≥ 1, got -4"),
    ("eval.batch_size", 0, "eval.batch_size must be ≥ 1"),
    ("data.batch_size", 22, "not a multiple of images_per_class=5"),
    ("data.images_per_class", 1, "data.images_per_class must be ≥ 2"),
    ("model.dtype", "flaot32", "model.dtype must name a floating-point"),
    ("model.dtype", "int32", "model.dtype must name a floating-point"),
    ("optim.schedule", "cosine", "did you mean 'warmup_cosine'"),
    ("optim.learning_rate", 0.0, "optim.learning_rate must be in (0"),
    ("optim.learning_rate", float("nan"), "must be finite"),
    ("optim.weight_decay_mode", "L2", "optim.weight_decay_mode must be one"),
    ("optim.gradient_divisor", "batch", "did you mean 'batch_size'"),
    ("beta.gradient_divisor", "nope", "beta.gradient_divisor must be one of"),
    ("beta.trainable", ("beta0", "klass"), "unknown names ['klass']"),
    ("sampler.name", "distance_weigthed", "did you mean 'distance_weighted'"),
    ("sampler.no_usable_negative", "drop", "no_usable_negative must be one"),
    ("loss.name", "margn", "did you mean 'margin'"),
    ("optim.decay_at", (0.6, 1.5), "optim.decay_at must be in (0, 1)"),
    ("eval.ks", (), "eval.ks must be a non-empty tuple"),
    ("parallel.mining", "everywhere", "parallel.mining must be one of"),
    ("model.pretrained", "/no/such.safetensors", "names no file"),
    ("dsp.reward_mode", "eval", "dsp.reward_mode must be one of"),
  ],
)
def test_bad_values_are_refused_naming_the_field(field, value, message):
  config = _config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(config_checks.ConfigError, match=re.escape(message)):
    config_checks.check_config(config)


def test_every_problem_is_listed_at_once():
  config = _config()
  config.train.log_every = 0
  config.ckpt.max_to_keep = 0
  problems = config_checks.problems_of(config)
  assert any(p.startswith("train.log_every") for p in problems)
  assert any(p.startswith("ckpt.max_to_keep") for p in problems)


def test_unknown_key_gets_the_nearest_known_one():
  config = _config().to_dict()
  config["train"]["num_stpes"] = 5
  schema = common.base_config("digits")
  problems = config_checks.problems_of(
    ml_collections.ConfigDict(config), schema
  )
  assert any("did you mean train.num_steps" in p for p in problems)


def test_missing_data_dir_is_refused_before_loading():
  config = _config("folder")
  config.data.data_dir = "/no/such/folder"
  with pytest.raises(config_checks.ConfigError, match="does not exist"):
    config_checks.check_config(config)


def test_train_and_evaluate_checks_before_writing(tmp_path):
  config = _config()
  config.train.num_steps = 0
  with pytest.raises(config_checks.ConfigError, match="train.num_steps"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def _driver(*args, module="experiments.digits", timeout=300):
  return run_module(module, *args, timeout=timeout)


def _one_line_error(result, *fragments):
  assert result.returncode == _errors.EXIT_USER_ERROR, result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("error: ")]
  assert len(errors) == 1, result.stderr[-2000:]
  for fragment in fragments:
    assert fragment in errors[0], errors[0]
  return errors[0]


@pytest.mark.parametrize(
  "override, fragment",
  [
    ("--config.train.bogus=1", "train has no key 'bogus'"),
    ("--config.trian.num_steps=3", "Did you mean train?"),
    ("--config.train.num_steps=0", "train.num_steps must be ≥ 1"),
    ("--config.ckpt.max_to_keep=0", "ckpt.max_to_keep must be ≥ 1"),
    ("--config.model.embedding_dim=-4", "model.embedding_dim must be ≥ 1"),
    ("--config.eval.batch_size=0", "eval.batch_size must be ≥ 1"),
  ],
)
def test_driver_refuses_in_one_line_and_writes_nothing(
  override, fragment, tmp_path
):
  workdir = tmp_path / "run"
  result = _driver("--config=margin_dw:smoke", f"--workdir={workdir}", override)
  _one_line_error(result, fragment)
  assert not workdir.exists()


def test_driver_suggests_the_nearest_config_name(tmp_path):
  result = _driver("--config=margin_dx", f"--workdir={tmp_path}")
  _one_line_error(result, "Unknown config 'margin_dx'", "Did you mean")


def test_debug_shows_the_traceback(tmp_path):
  result = _driver(
    "--config=margin_dw:smoke",
    f"--workdir={tmp_path / 'run'}",
    "--config.train.num_steps=0",
    "--debug",
  )
  assert result.returncode != 0
  assert "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_embed_checks_out_before_loading_anything(tmp_path):
  result = _driver(
    f"--workdir={tmp_path / 'no_run'}",
    f"--data_dir={tmp_path}",
    f"--out={tmp_path / 'emb.txt'}",
    module="experiments.embed",
  )
  _one_line_error(result, "--out must end in .npz or .npy")


def test_embed_refuses_a_run_on_embedded_arrays(tmp_path):
  workdir = str(tmp_path / "run")
  with rundir.claim(workdir, _config()):  # A digits run's config.json.
    pass
  result = _driver(
    f"--workdir={workdir}",
    f"--data_dir={tmp_path}",
    f"--out={tmp_path / 'emb.npz'}",
    module="experiments.embed",
  )
  _one_line_error(result, "trained on the embedded 'digits' arrays")


def test_query_checks_the_image_before_the_model(tmp_path):
  out = str(tmp_path / "e.npz")
  export.write_embeddings(  # No weights and no workdir: loading would fail.
    out,
    np.eye(2, dtype=np.float32),
    ["a.png", "b.png"],
    ["x", "y"],
    {"workdir": str(tmp_path / "gone"), "step": 1, "config": {}},
  )
  result = _driver(
    f"--embeddings={out}",
    f"--image={tmp_path / 'missing.png'}",
    module="experiments.query",
  )
  _one_line_error(result, "missing.png is neither an image file nor a folder")


def test_user_errors_are_ours_and_other_errors_are_not():
  try:
    config_checks.check_config(ml_collections.ConfigDict({"seed": -1}))
  except ValueError as error:
    assert _errors.raised_by_us(error)
  try:
    np.zeros(2).reshape(3)
  except ValueError as error:
    assert not _errors.raised_by_us(error)
