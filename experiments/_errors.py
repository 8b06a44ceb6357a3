"""A user's mistake ends a driver with one line; a bug keeps its traceback.

`run_main(main)` is `absl.app.run(main)` where a `ValueError`,
`FloatingPointError` or `FileNotFoundError` raised by dmljax's or the
drivers' own code (a bad value, a missing file, a refused resume, a
diverged run: messages written to be read) is printed as

  error: <the message>

on stderr, and the process exits with status 2. Errors raised inside other
libraries (JAX, Orbax, grain, ...) and every other exception are programming
errors: they keep their traceback. `--debug` (or `--verbosity=1`) shows the
traceback of user errors too.
"""

import importlib.util
import os
import sys
import traceback

from absl import app
from absl import flags

_DEBUG = flags.DEFINE_bool(
  "debug", False, "Show the full traceback of errors in the input as well."
)
# Where our own code lives (found without importing dmljax: --help stays
# fast).
_OURS = tuple(
  os.path.abspath(folder) + os.sep
  for folder in [
    *importlib.util.find_spec("dmljax").submodule_search_locations,
    os.path.dirname(os.path.abspath(__file__)),
  ]
)
USER_ERRORS = (ValueError, FloatingPointError, FileNotFoundError)
EXIT_USER_ERROR = 2


def raised_by_us(error: BaseException) -> bool:
  """Whether `error` was raised by dmljax's or experiments' own code."""
  frames = traceback.extract_tb(error.__traceback__)
  if not frames:
    return False
  origin = os.path.abspath(frames[-1].filename)
  return origin.startswith(_OURS)


def one_line(error: BaseException) -> str:
  """The message on one line."""
  return " ".join(str(error).split()) or type(error).__name__


def _verbose() -> bool:
  verbosity = flags.FLAGS["verbosity"]
  return _DEBUG.value or (verbosity.present and verbosity.value > 0)


def fail(message: str) -> None:
  """Prints `error: message` to stderr and exits with status 2."""
  reporting = sys.modules.get("dmljax.runtime.reporting")
  if reporting is not None:  # The message goes on a line of its own.
    reporting.close_progress_bars()
  print(f"error: {message}", file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)


def user_errors(main):
  """`main` with user errors reported as one line (module docstring)."""

  def wrapped(argv):
    try:
      return main(argv)
    except USER_ERRORS as error:
      if _verbose() or not raised_by_us(error):
        raise
      fail(one_line(error))

  return wrapped


def run_main(main) -> None:
  """`app.run(main)` with user errors as one line."""
  app.run(user_errors(main))
