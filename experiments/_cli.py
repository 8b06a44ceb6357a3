"""The shared absl entry point of the training drivers.

`run(dataset=...)` rewrites `--config=NAME[:args]` into the config file
`configs/methods.py:method=NAME,dataset=<dataset>[,args]` (ml_collections
loads configs by path only), then trains and evaluates with
`dmljax.runtime.train.train_and_evaluate`. Explicit `.py` paths pass through.

On the CPU the host is split into one XLA device per core (up to two,
`dmljax.runtime.cpu_devices`) when the run's batch splits over them, and JAX's
persistent compilation cache is kept in ~/.cache/dmljax/jax.

Before any work, the `--config.*` overrides are checked against the config
(an unknown key is one line with the nearest known key), then every value
(`configs.common.check_config`); a user error ends the driver with one line
(`experiments/_errors.py`). `--print_config` prints the resolved config
and exits before JAX is imported. Only the file-backed drivers have
--data_dir / --data_source (`define_data_flags`).
"""

import difflib
import importlib.util
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import _errors
from experiments.configs import common
from experiments.configs import methods

flags.adopt_module_key_flags(_errors)  # The drivers' --help lists --debug.

_CONFIGS = os.path.join(os.path.dirname(__file__), "configs", "methods.py")

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Method config: NAME[:args], NAME one of "
  + ", ".join(sorted(methods.METHODS))
  + "; args: smoke (4 steps of a tiny net through the whole pipeline, "
  "under a minute on a CPU), "
  "seed=N. Override any field with --config.SECTION.FIELD=VALUE, e.g. "
  "--config.train.num_steps=500; --print_config lists every field.",
  lock_config=True,
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address",
  None,
  "Multi-host: host:port of process 0, for jax.distributed (also read from "
  "$JAX_COORDINATOR_ADDRESS; SLURM, Open MPI and Cloud TPU are detected).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "Multi-host: the number of processes."
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "Multi-host: this process's index, 0..num_processes-1."
)
_MULTIHOST = flags.DEFINE_bool(
  "multihost",
  False,
  "Start jax.distributed with cluster auto-detection (no other flag needed "
  "on SLURM, Open MPI or a Cloud TPU slice).",
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Run directory for checkpoints, metrics.jsonl, plots and summary.json. "
  "Rerunning with the same workdir resumes. Default: runs/<dataset>/<config>.",
)
_PRINT_CONFIG = flags.DEFINE_bool(
  "print_config",
  False,
  "Print the resolved config (every field, after --config.* and the other "
  "flags) and exit without training; the values are checked when it runs.",
)


# The flags of `define_data_flags`: config.data field -> its flag holder.
_DATA_FLAGS = {}


def define_data_flags(*, data_source: bool = True) -> None:
  """Defines --data_dir (and --data_source) for a file-backed driver.

  The embedded datasets (glyphs, digits) have neither. A driver calls this
  at import, before `flags.adopt_module_key_flags(_cli)`, so that its
  `--help` lists them; `data_source=False` leaves out --data_source (the
  folder driver reads files only). A second call defines nothing again.
  """
  if "data_dir" not in _DATA_FLAGS:
    _DATA_FLAGS["data_dir"] = flags.DEFINE_string(
      "data_dir",
      None,
      "The unpacked official archive (its layout is in the error message of "
      "a missing one, and in dmljax/data/<dataset>.py), or your folder / "
      "CSV. Same as --config.data.data_dir.",
    )
  if data_source and "data_source" not in _DATA_FLAGS:
    _DATA_FLAGS["data_source"] = flags.DEFINE_enum(
      "data_source",
      None,
      ["files", "tfds"],
      "'files' (official layout under --data_dir) or 'tfds' (a prepared "
      "tfds dataset). Same as --config.data.data_source.",
    )


def _apply_data_flags(config) -> None:
  """Copies the given --data_dir / --data_source into `config.data`."""
  for field, holder in _DATA_FLAGS.items():
    if holder.value is not None:
      config.data[field] = holder.value


def _rewrite_config_arg(argv: list[str], dataset: str) -> list[str]:
  out, i = [], 0
  while i < len(argv):
    arg = argv[i]
    value = None
    if arg.startswith("--config="):
      value = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      value, i = argv[i + 1], i + 1
    if value is None:
      out.append(arg)
    else:
      name, _, extra = value.partition(":")
      if name.endswith(".py"):
        out.append(f"--config={value}")
      else:
        args = f"method={name},dataset={dataset}" + (
          f",{extra}" if extra else ""
        )
        out.append(f"--config={_CONFIGS}:{args}")
    i += 1
  if not any(a.startswith("--config=") for a in out) and "--help" not in out:
    out.append(f"--config={_CONFIGS}:dataset={dataset}")
  return out


def _load_config(value: str):
  """The config that `--config=FILE.py[:arg]` names (None if not a file)."""
  path, _, arg = value.partition(":")
  if not path.endswith(".py") or not os.path.isfile(path):
    return None
  if os.path.abspath(path) == os.path.abspath(_CONFIGS):
    return methods.get_config(arg or None)
  spec = importlib.util.spec_from_file_location("_config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _override_problem(name: str, config) -> str | None:
  """Why `--config.<name>` cannot be set in `config`, or None."""
  node, walked = config, []
  for part in name.split("."):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      where = ".".join(walked) or "the config"
      close = difflib.get_close_matches(part, keys, n=1)
      hint = f" Did you mean {'.'.join([*walked, close[0]])}?" if close else ""
      return (
        f"--config.{name}: {where} has no key {part!r}.{hint} Its keys: "
        f"{', '.join(sorted(keys))}."
      )
    node, walked = node[part], [*walked, part]
  return None


def _check_overrides(argv: list[str]) -> None:
  """Ends the driver with one line for an unknown `--config.KEY`."""
  value = next(
    (a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None
  )
  if value is None:
    return
  path = value.partition(":")[0]
  if path.endswith(".py") and not os.path.isfile(path):
    _errors.fail(f"--config={value}: no config file {path!r}.")
  try:
    config = _load_config(value)
  except ValueError as error:
    message = _errors.one_line(error)
    name = dict(
      item.partition("=")[::2] for item in value.partition(":")[2].split(",")
    ).get("method")
    close = difflib.get_close_matches(name or "", list(methods.METHODS), n=1)
    if close and name not in methods.METHODS:
      message += f" Did you mean {close[0]}?"
    _errors.fail(message)
  if config is None:
    return
  for arg in argv:
    if arg.startswith("--config."):
      name = arg[len("--config.") :].split("=", 1)[0]
      problem = _override_problem(name, config)
      if problem:
        _errors.fail(problem)


def _use_compilation_cache() -> None:
  """JAX's persistent compilation cache in the user's cache folder.

  A rerun (or a resumed run) of the same config loads the compiled step
  and evaluation instead of compiling them again. $JAX_COMPILATION_CACHE_DIR
  or an earlier `jax_compilation_cache_dir` wins; an empty
  $JAX_COMPILATION_CACHE_DIR turns the cache off.
  """
  import jax  # pylint: disable=import-outside-toplevel

  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return
  if jax.config.jax_compilation_cache_dir:
    return
  base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
  jax.config.update(
    "jax_compilation_cache_dir", os.path.join(base, "dmljax", "jax")
  )


def run(*, dataset: str) -> None:
  """Parses flags and runs the training job on `dataset`."""
  sys.argv = _rewrite_config_arg(sys.argv, dataset)
  _check_overrides(sys.argv)

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    _apply_data_flags(config)
    if _PRINT_CONFIG.value:  # Before JAX or dmljax are imported.
      print(config, end="")
      return
    _train(config)

  _errors.run_main(main)


def _train(config) -> None:
  """Starts JAX (devices, cache, multi-host), checks `config` and trains."""
  from dmljax import parallel  # pylint: disable=import-outside-toplevel
  from dmljax.runtime import cpu_devices  # pylint: disable=import-outside-toplevel
  from dmljax.runtime import recipes  # pylint: disable=import-outside-toplevel
  from dmljax.runtime import train  # pylint: disable=import-outside-toplevel

  single_process = not (
    _MULTIHOST.value
    or _COORDINATOR.value
    or _NUM_PROCESSES.value
    or any(os.environ.get(name) for name in parallel.DISTRIBUTED_ENV)
  )
  if single_process:  # Before JAX starts: one CPU device per core.
    cpu_devices.configure(lambda count: recipes.uses_devices(config, count))
  _use_compilation_cache()
  parallel.initialize_distributed(
    _COORDINATOR.value,
    _NUM_PROCESSES.value,
    _PROCESS_ID.value,
    force=_MULTIHOST.value,
  )
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file at INFO.
  workdir = _WORKDIR.value or os.path.join(
    "runs", config.data.name, config.method
  )
  logging.info("Config:\n%s", config)
  common.check_config(config)  # Every value, and unknown keys.
  # Checks the workdir, then writes its config.json (dmljax.runtime.rundir).
  train.train_and_evaluate(config, workdir)
