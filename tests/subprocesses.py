"""Running the project's drivers as a user does, for the end-to-end tests."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(*command: str, timeout: float = 600, **kwargs):
  """`python -m command...` from the repository root, output as text.

  Returns the CompletedProcess (the caller checks its returncode); kwargs
  go to `subprocess.run` (e.g. env).
  """
  return subprocess.run(
    [sys.executable, "-m", *command],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    **kwargs,
  )
