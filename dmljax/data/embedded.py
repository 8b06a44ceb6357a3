"""The embedded datasets: real data that ships with the dependencies.

Shape letters: N images, S pixels a side, C classes.

- "digits": scikit-learn's 1,797 handwritten digits, 8 × 8, values 0–16
  scaled to 0–255. Train on the digits 0–4, test on 5–9.
- "glyphs": characters rendered from the TrueType fonts inside matplotlib
  (see `glyphs.py`): 2,320 code points with 12–21 images each, 32 × 32
  by default. Train on the first half of the code points, test on the rest.
  Many classes, few images per class and fine-grained neighbours (É, È, Ê):
  a CPU-sized cousin of Stanford Online Products.

Both are white on black. Rendering the glyphs takes about 20 s, so the arrays
are cached in a versioned .npz under `cache_dir`, the `DMLJAX_CACHE`
environment variable, or ~/.cache/dmljax; the file name holds
`GLYPHS_VERSION`, the image size and a hash of the font files and FreeType
version, so a change to any of them renders afresh.
"""

import hashlib
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Callable

import numpy as np
import PIL.features
from PIL import Image
from sklearn import datasets

from dmljax.data import glyphs
from dmljax.data.split import SPLITS
from dmljax.data.split import Split
from dmljax.data.split import split_by_class

GLYPHS_VERSION = 1
CACHE_ENV = "DMLJAX_CACHE"

_logger = logging.getLogger(__name__)

# (images uint8 [N, S, S, 1], classes [N] in 0..C-1, class names [C]).
_Arrays = tuple[np.ndarray, np.ndarray, tuple[str, ...]]


def default_cache_dir() -> str:
  """$DMLJAX_CACHE if set, else ~/.cache/dmljax."""
  return os.environ.get(CACHE_ENV) or os.path.join(
    os.path.expanduser("~"), ".cache", "dmljax"
  )


def _resized(images: np.ndarray, image_size: int) -> np.ndarray:
  """uint8 [N, h, w] images resized to [N, S, S] with a Lanczos filter."""
  return np.stack(
    [
      np.asarray(
        Image.fromarray(image).resize(
          (image_size, image_size), Image.Resampling.LANCZOS
        )
      )
      for image in images
    ]
  )


def _digits(image_size: int | None, cache_dir: str | None) -> _Arrays:
  del cache_dir  # Ships with scikit-learn.
  digits = datasets.load_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)
  if image_size is not None and image_size != images.shape[1]:
    images = _resized(images, image_size)
  names = tuple(str(name) for name in digits.target_names)
  return images[..., None], digits.target.astype(np.int32), names


def glyphs_cache_key(image_size: int) -> str:
  """What the glyphs rendered at `image_size` depend on, as one string."""
  fonts = ",".join(
    f"{os.path.basename(path)}:{os.path.getsize(path)}"
    for path in glyphs.font_paths()
  )
  freetype = PIL.features.version("freetype2")
  return (
    f"glyphs v{GLYPHS_VERSION} {image_size}px min_fonts={glyphs.MIN_FONTS} "
    f"fonts={fonts} freetype={freetype}"
  )


def glyphs_cache_path(image_size: int, cache_dir: str | None = None) -> str:
  """Where the glyphs rendered at `image_size` are cached."""
  digest = hashlib.sha256(glyphs_cache_key(image_size).encode()).hexdigest()
  return os.path.join(
    cache_dir or default_cache_dir(),
    f"glyphs-v{GLYPHS_VERSION}-{image_size}px-{digest[:12]}.npz",
  )


def cached_arrays(
  path: str, key: str, render: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
  """The arrays stored at `path` under `key`, or `render()`'s, stored there.

  The file is written to a temporary name in the same folder, then renamed:
  a killed run or a concurrent reader never sees half a file. A file that
  cannot be read, or that was stored under another key, is replaced.

  Args:
    path: the .npz file.
    key: describes everything the arrays depend on; stored beside them.
    render: makes the arrays, a dict of NumPy arrays.

  Returns:
    The arrays, a dict.
  """
  if os.path.exists(path):
    try:
      with np.load(path, allow_pickle=False) as stored:
        arrays = dict(stored)
      if str(arrays.pop("cache_key")) == key:
        return arrays
      _logger.warning("Rendering again: %s holds other data.", path)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
      _logger.warning("Rendering again: cannot read %s (%s).", path, e)
  arrays = render()
  folder = os.path.dirname(path) or "."
  os.makedirs(folder, exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
  try:
    with os.fdopen(handle, "wb") as file:
      np.savez_compressed(file, cache_key=np.array(key), **arrays)
    os.replace(temporary, path)
  except BaseException:
    os.unlink(temporary)
    raise
  return arrays


def _render_glyphs(image_size: int) -> dict[str, np.ndarray]:
  start = time.perf_counter()
  rendered = glyphs.render_glyphs(image_size=image_size)
  _logger.info(
    "Rendered %d glyph images of %d code points in %.1f s.",
    len(rendered.images),
    len(np.unique(rendered.code_points)),
    time.perf_counter() - start,
  )
  return {
    "images": rendered.images,
    "code_points": rendered.code_points,
    "fonts": rendered.fonts,
  }


def _glyphs(image_size: int | None, cache_dir: str | None) -> _Arrays:
  image_size = 32 if image_size is None else image_size
  arrays = cached_arrays(
    glyphs_cache_path(image_size, cache_dir),
    glyphs_cache_key(image_size),
    lambda: _render_glyphs(image_size),
  )
  code_points, classes = np.unique(arrays["code_points"], return_inverse=True)
  names = tuple(f"U+{code_point:04X}" for code_point in code_points)
  return arrays["images"][..., None], classes.astype(np.int32), names


DATASETS: dict[str, Callable[[int | None, str | None], _Arrays]] = {
  "digits": _digits,
  "glyphs": _glyphs,
}


def load_split(
  name: str,
  split: str,
  *,
  image_size: int | None = None,
  cache_dir: str | None = None,
) -> Split:
  """One split of an embedded dataset.

  Args:
    name: a key of `DATASETS`: "digits" or "glyphs".
    split: "train" (the first half of the classes) or "test" (the rest).
    image_size: S; None for the native size (digits 8, glyphs 32).
    cache_dir: where rendered glyphs are cached (default: `$DMLJAX_CACHE`,
      else ~/.cache/dmljax).

  Returns:
    The split: images uint8 [N, S, S, 1], labels int32 [N] in 0..C-1 in
    the original class order (digits "5".."9" are labels 0..4 of the test
    split; glyph classes are named "U+XXXX").

  >>> train = load_split("digits", "train")
  >>> train.images.shape, train.class_names
  ((901, 8, 8, 1), ('0', '1', '2', '3', '4'))
  """
  if name not in DATASETS:
    raise ValueError(
      f"Unknown dataset {name!r}; valid datasets: {sorted(DATASETS)}."
    )
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; valid splits: {SPLITS}.")
  if image_size is not None and image_size < 8:
    raise ValueError(f"image_size must be at least 8, got {image_size}.")
  images, classes, names = DATASETS[name](image_size, cache_dir)
  return split_by_class(images, classes, names, split, name=name)
