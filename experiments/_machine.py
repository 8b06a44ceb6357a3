"""What a benchmark's JSON records about the machine it ran on."""

import os
import platform


def machine_info(**extra) -> dict:
  """jax, its backend, the host (cores, load, OS, Python), XLA_FLAGS, + extra.

  Imports jax here, so that a driver's --help stays fast.
  """
  # pylint: disable=import-outside-toplevel
  import jax
  import numpy as np

  import dmljax

  return dict(
    jax=jax.__version__,
    backend=jax.default_backend(),
    cpu_count=os.cpu_count(),
    load_average_1min=os.getloadavg()[0],
    platform=platform.platform(),
    python=platform.python_version(),
    numpy=np.__version__,
    dmljax=dmljax.__version__,
    XLA_FLAGS=os.environ.get("XLA_FLAGS", ""),
    **extra,
  )
