"""Every named config builds and locks; the CLI rewrites --config names."""

import inspect

import ml_collections
import pytest

from dmljax import samplers
from experiments import _cli
from experiments.configs import common
from experiments.configs import datasets
from experiments.configs import methods


@pytest.mark.parametrize("dataset", sorted(datasets.DATASETS))
@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_every_config_builds_and_locks(name, dataset):
  config = methods.get_config(f"method={name},dataset={dataset}")
  sampler, loss, overrides = methods.METHODS[name]
  assert (config.sampler.name, config.loss.name) == (sampler, loss)
  assert config.data.name == dataset
  for dotted, value in overrides.items():
    section, field = dotted.split(".")
    assert config[section][field] == value
  config.lock()
  with pytest.raises(AttributeError):
    config.loss.margni = 0.1  # A mistyped key is an error once locked.


def test_paper_defaults():
  config = methods.get_config()
  assert config.method == "margin_dw"
  assert config.loss.margin == pytest.approx(0.2)  # α
  assert config.beta.beta0 == pytest.approx(1.2)  # β⁽⁰⁾
  assert config.data.images_per_class == 5  # m
  assert config.model.embedding_dim == 128
  assert (config.sampler.cutoff, config.sampler.nonzero_loss_cutoff) == (
    0.5,
    1.4,
  )


def test_smoke_and_seed_args():
  config = methods.get_config("method=margin_dw,dataset=digits,smoke,seed=3")
  assert config.seed == 3
  assert config.train.num_steps < 10


@pytest.mark.parametrize(
  "arg,match",
  [
    ("method=nope", "Unknown config 'nope'"),
    ("dataset=sop2", "Unknown dataset"),
    ("colour=red", "Unknown config argument 'colour'"),
    ("seed", "needs a value"),
  ],
  ids=["method", "dataset", "key", "missing-value"],
)
def test_bad_config_args_raise(arg, match):
  with pytest.raises(ValueError, match=match):
    methods.get_config(arg)


def test_parse_arg_types():
  parsed = common.parse_arg("a=3,b=x,c", a=1, b="y", c=False)
  assert parsed == ml_collections.ConfigDict({"a": 3, "b": "x", "c": True})


@pytest.mark.parametrize(
  "argv,expected",
  [
    (["--config=margin_dw"], "method=margin_dw,dataset=glyphs"),
    (["--config", "margin_dw:smoke"], "method=margin_dw,dataset=glyphs,smoke"),
    ([], "dataset=glyphs"),
  ],
  ids=["equals", "space-and-args", "default"],
)
def test_cli_rewrites_config_names(argv, expected):
  out = _cli._rewrite_config_arg(["prog", *argv], "glyphs")
  assert out[0] == "prog"
  assert out[-1].endswith("configs/methods.py:" + expected)


def test_cli_passes_explicit_paths_through():
  out = _cli._rewrite_config_arg(["prog", "--config=/x/my.py:a"], "digits")
  assert out == ["prog", "--config=/x/my.py:a"]


def test_ablation_overrides_set_typed_values():
  config = methods.get_config("method=dsp_triplet,dataset=digits")
  common.apply_overrides(
    config,
    [
      "dsp.num_minibatches=4",
      "sampler.lower_bound=None",
      "sampler.lower_bound=0.3",
      "beta.trainable=('beta0',)",
      "dsp.baseline=leave_one_out",
    ],
  )
  assert config.dsp.num_minibatches == 4
  assert config.sampler.lower_bound == 0.3
  assert config.beta.trainable == ("beta0",)
  assert config.dsp.baseline == "leave_one_out"


@pytest.mark.parametrize(
  "item,error,match",
  [
    ("dsp.num_minibatches", ValueError, "is dotted.key=value"),
    ("dsp.minibatches=4", ValueError, "Unknown config key 'dsp.minibatches'"),
    ("seed.x=1", ValueError, "Unknown config key 'seed.x'"),
    ("train.num_steps=many", TypeError, "num_steps"),
  ],
  ids=["no-value", "unknown-field", "not-a-section", "wrong-type"],
)
def test_ablation_overrides_reject_bad_items(item, error, match):
  config = methods.get_config("method=margin_dw,dataset=digits")
  with pytest.raises(error, match=match):
    common.apply_overrides(config, [item])


def test_sampler_options_default_to_the_samplers_own_defaults():
  # One default per option: the config carries the function's.
  config = common.base_config("glyphs")
  for name, options in samplers.SAMPLER_OPTIONS.items():
    parameters = inspect.signature(samplers.SAMPLERS[name]).parameters
    for option in options:
      assert config.sampler[option] == parameters[option].default, option
