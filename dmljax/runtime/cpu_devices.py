"""One XLA:CPU device per core (up to two), set before JAX starts.

On a CPU-only host, XLA runs each operation of a step on one device with
its own intra-op threads, and most of the small network's operations
(BatchNorm, ReLU, pooling and their gradients) run on a single thread.
Splitting the host into two devices lets the data-parallel step
(`dmljax.parallel`: synchronised BatchNorm, global mining, so the numbers
do not depend on the device count) run the two halves of every batch at
once: the glyphs main job's step is 1.2× faster on 2 cores (measured by
`experiments.bench_train`, see WORKSPACE.md). Four devices on 2 cores
were no faster than two, so the count stops at two.

`configure()` must run before the first JAX computation (the drivers call
it first thing); it only adds `--xla_force_host_platform_device_count` to
`XLA_FLAGS`, and only when no accelerator plugin is installed (the flag
would not touch a GPU or TPU backend, but there it buys nothing either),
the user has not set the flag, and `DMLJAX_CPU_DEVICES` does not say
otherwise (`DMLJAX_CPU_DEVICES=1` keeps one device; `=N` asks for N).
"""

import importlib.util
import os
from collections.abc import Callable

_FLAG = "--xla_force_host_platform_device_count"
_ACCELERATOR_PLUGINS = (
  "jax_cuda12_plugin",
  "jax_cuda13_plugin",
  "jax_rocm60_plugin",
  "jax_rocm7_plugin",
  "libtpu",
)
MAX_DEVICES = 2  # Measured on 2 cores: 4 devices were no faster than 2.


def _has_accelerator_plugin() -> bool:
  return any(importlib.util.find_spec(m) for m in _ACCELERATOR_PLUGINS)


def planned_device_count(
  usable: Callable[[int], bool] | None = None,
  *,
  environ=None,
  cpu_count: int | None = None,
) -> int:
  """How many CPU devices `configure` asks for (1: leaves XLA_FLAGS alone).

  Args:
    usable: whether the run can use n devices (e.g. the batch splits over
      them); a run that would use one device anyway keeps one, since
      splitting the host halves the threads of each device.
    environ: the environment (default os.environ).
    cpu_count: the core count (default os.cpu_count()).

  Raises:
    ValueError: DMLJAX_CPU_DEVICES is not a positive integer.
  """
  environ = os.environ if environ is None else environ
  requested = environ.get("DMLJAX_CPU_DEVICES", "").strip()
  if requested:
    if not requested.isdigit() or int(requested) < 1:
      raise ValueError(
        f"DMLJAX_CPU_DEVICES must be a positive integer, got {requested!r}; "
        "unset it for the default (one device per core, up to "
        f"{MAX_DEVICES})."
      )
    return int(requested)
  if _FLAG in environ.get("XLA_FLAGS", ""):
    return 1
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms and not platforms.startswith("cpu"):
    return 1
  if not platforms and _has_accelerator_plugin():
    return 1
  cores = os.cpu_count() if cpu_count is None else cpu_count
  count = max(1, min(cores or 1, MAX_DEVICES))
  while count > 1 and usable is not None and not usable(count):
    count -= 1
  return count


def configure(
  usable: Callable[[int], bool] | None = None, *, environ=None
) -> int:
  """Adds the device-count flag to XLA_FLAGS if it helps; returns the count.

  Call before any JAX computation (`usable` as in `planned_device_count`);
  later calls have no effect on a backend that has already started.
  """
  environ = os.environ if environ is None else environ
  count = planned_device_count(usable, environ=environ)
  if count > 1 and _FLAG not in environ.get("XLA_FLAGS", ""):
    flags = environ.get("XLA_FLAGS", "")
    environ["XLA_FLAGS"] = f"{flags} {_FLAG}={count}".strip()
  return count
