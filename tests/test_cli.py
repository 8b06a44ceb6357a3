"""The drivers' command line: user errors, --print_config and --help.

Each test runs a driver as a subprocess and stops before training (nothing
here compiles a step), so the file takes seconds.
"""

import subprocess
import sys

from subprocesses import ROOT
from subprocesses import run_module

from experiments import _errors
from experiments.configs import methods

# Runs a driver as `python -m` would, then says whether JAX was imported.
_RUN_AND_REPORT_JAX = """
import runpy, sys
module = sys.argv.pop(1)
try:
  runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
  print("jax imported:", "jax" in sys.modules)
"""


def _driver(module, *args):
  return run_module(module, *args, timeout=300)


def _error_lines(result):
  return [line for line in result.stderr.splitlines() if line.strip()]


def test_unknown_config_name_is_one_line_naming_the_valid_ones():
  result = _driver("experiments.glyphs", "--config=margin_dww")
  assert result.returncode == _errors.EXIT_USER_ERROR
  lines = _error_lines(result)
  assert len(lines) == 1, result.stderr
  line = lines[0]
  assert line.startswith("error: ") and "'margin_dww'" in line
  assert all(name in line for name in methods.METHODS)
  assert "Did you mean margin_dw?" in line
  assert "methods.py" not in line and "Traceback" not in result.stderr


def test_print_config_shows_the_resolved_config_without_jax():
  result = subprocess.run(
    [
      sys.executable,
      "-c",
      _RUN_AND_REPORT_JAX,
      "experiments.glyphs",
      "--config=margin_semihard:seed=3",
      "--config.train.num_steps=7",
      "--print_config",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  expected = methods.get_config("method=margin_semihard,dataset=glyphs,seed=3")
  out = result.stdout
  assert f"batch_size: {expected.data.batch_size}" in out
  assert "num_steps: 7" in out and "seed: 3" in out
  assert f"name: {expected.sampler.name}" in out
  assert "jax imported: False" in out


def test_print_config_includes_the_data_flags_of_a_benchmark(tmp_path):
  result = _driver(
    "experiments.sop",
    "--config=margin_dw",
    f"--data_dir={tmp_path}",
    "--data_source=tfds",
    "--print_config",
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"data_dir: {tmp_path}" in result.stdout
  assert "data_source: tfds" in result.stdout


def test_help_lists_only_the_flags_that_apply():
  glyphs = _driver("experiments.glyphs", "--help").stdout
  sop = _driver("experiments.sop", "--help").stdout
  for text in (glyphs, sop):
    assert "--config.SECTION.FIELD=VALUE" in text and "--print_config" in text
  assert "--data_dir" not in glyphs and "--data_source" not in glyphs
  assert "--data_dir" in sop and "--data_source" in sop


def test_data_flags_are_refused_where_they_do_not_apply(tmp_path):
  result = _driver("experiments.glyphs", f"--data_dir={tmp_path}")
  assert result.returncode != 0
  assert "data_dir" in result.stderr and "Traceback" not in result.stderr


def test_empty_data_dir_says_which_layout_is_missing(tmp_path):
  result = _driver(
    "experiments.sop",
    "--config=margin_dw",
    f"--data_dir={tmp_path}",
    f"--workdir={tmp_path / 'run'}",
  )
  assert result.returncode == _errors.EXIT_USER_ERROR
  lines = _error_lines(result)
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  assert str(tmp_path) in lines[0] and "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()
