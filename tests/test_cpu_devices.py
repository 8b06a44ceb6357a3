"""How many XLA:CPU devices the drivers ask for, and when they leave it."""

import pytest

from dmljax.runtime import cpu_devices
from dmljax.runtime import recipes
from experiments.configs import methods

_FLAG = "--xla_force_host_platform_device_count"


def plan(environ, cores=2, usable=None):
  return cpu_devices.planned_device_count(
    usable, environ=environ, cpu_count=cores
  )


def test_one_device_per_core_up_to_the_measured_maximum():
  assert plan({}, cores=1) == 1
  assert plan({}, cores=2) == 2
  assert plan({}, cores=64) == cpu_devices.MAX_DEVICES


def test_a_run_that_cannot_use_the_devices_keeps_one():
  assert plan({}, usable=lambda count: count == 1) == 1
  assert plan({}, usable=lambda count: True) == 2


@pytest.mark.parametrize(
  "environ",
  [
    {"XLA_FLAGS": f"{_FLAG}=8"},  # The user's own choice wins.
    {"JAX_PLATFORMS": "cuda"},  # An accelerator run.
    {"DMLJAX_CPU_DEVICES": "1"},
  ],
)
def test_left_alone(environ):
  assert plan(environ, cores=8) == 1
  before = dict(environ)
  assert cpu_devices.configure(environ=environ) == 1
  assert environ.get("XLA_FLAGS") == before.get("XLA_FLAGS")


def test_configure_appends_the_flag_to_existing_xla_flags(monkeypatch):
  monkeypatch.setattr(cpu_devices.os, "cpu_count", lambda: 2)
  monkeypatch.setattr(cpu_devices, "_has_accelerator_plugin", lambda: False)
  environ = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
  assert cpu_devices.configure(environ=environ) == 2
  assert environ["XLA_FLAGS"] == (f"--xla_cpu_enable_fast_math=false {_FLAG}=2")


def test_an_explicit_count_is_taken_and_a_bad_one_refused():
  assert plan({"DMLJAX_CPU_DEVICES": "4"}) == 4
  with pytest.raises(ValueError, match="DMLJAX_CPU_DEVICES must be a posi"):
    plan({"DMLJAX_CPU_DEVICES": "two"})


@pytest.mark.parametrize(
  "method, dataset, count, uses",
  [
    ("margin_dw", "glyphs", 2, True),  # 120 = 2 × 60.
    ("margin_dw", "digits", 2, False),  # 25 does not split in two.
    ("margin_dw", "digits", 1, True),
    ("dsp_triplet", "glyphs", 2, False),  # DE-DSP runs on one device.
  ],
)
def test_uses_devices_follows_the_batch_and_the_recipe(
  method, dataset, count, uses
):
  config = methods.get_config(f"method={method},dataset={dataset}")
  assert recipes.uses_devices(config, count) is uses
