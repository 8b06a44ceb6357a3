"""The benchmark readers by name: official archive layouts → `FileSplit`.

Every reader is a `Reader`: `reader(data_dir, split, *, preprocess,
check_counts, cropped) -> FileSplit` with split "train" or "test", around
its module's `load` (the layout, parsing and checks of that archive):

  "sop"      Stanford Online Products   (dmljax/data/sop.py)
  "cars196"  CARS196                    (cars196.py; cropped: boxes)
  "cub200"   CUB-200-2011               (cub200.py; cropped: boxes)
  "inshop"   In-Shop Clothes Retrieval  (inshop.py; test = query + gallery)
  "lfw"      CASIA-WebFace train, LFW pairs test (faces.py)
"""

import dataclasses
from collections.abc import Callable

from dmljax.data import cars196
from dmljax.data import cub200
from dmljax.data import faces
from dmljax.data import inshop
from dmljax.data import sop
from dmljax.data.files import FileSplit
from dmljax.data.images import PAPER_PADDED
from dmljax.data.images import PAPER_SQUARE
from dmljax.data.images import Preprocess


@dataclasses.dataclass(frozen=True)
class Reader:
  """A benchmark's reader: the common arguments and defaults of `load`.

  Attributes:
    load: the module's load(data_dir, split, *, preprocess, check_counts,
      cropped) -> FileSplit, every argument given.
    preprocess: the paper's preprocessing of the benchmark (the default).
  """

  load: Callable[..., FileSplit]
  preprocess: Preprocess

  def __call__(
    self,
    data_dir: str,
    split: str,
    *,
    preprocess: Preprocess | None = None,
    check_counts: bool = True,
    cropped: bool = False,
  ) -> FileSplit:
    """The `split` of the benchmark read from `data_dir`.

    Args:
      data_dir: the folder holding the official archive's files (the
        module docstring names them).
      split: "train" or "test".
      preprocess: scaling and crop; None for the paper's (`preprocess`).
      check_counts: compare with the official counts.
      cropped: cut each image to its bounding box first (CARS196, CUB);
        the benchmarks without boxes refuse it.
    """
    return self.load(
      data_dir,
      split,
      preprocess=self.preprocess if preprocess is None else preprocess,
      check_counts=check_counts,
      cropped=cropped,
    )


READERS: dict[str, Reader] = {
  "sop": Reader(sop.load, PAPER_SQUARE),
  "cars196": Reader(cars196.load, PAPER_SQUARE),
  "cub200": Reader(cub200.load, PAPER_PADDED),
  "inshop": Reader(inshop.load, PAPER_SQUARE),
  "lfw": Reader(faces.load, PAPER_SQUARE),
}


def load_file_split(
  name: str,
  split: str,
  *,
  data_dir: str,
  preprocess: Preprocess,
  check_counts: bool = True,
  cropped: bool = False,
) -> FileSplit:
  """The `split` of benchmark `name` read from `data_dir` (see READERS)."""
  if name not in READERS:
    raise ValueError(
      f"Unknown benchmark {name!r}; choose one of {sorted(READERS)}."
    )
  return READERS[name](
    data_dir,
    split,
    preprocess=preprocess,
    check_counts=check_counts,
    cropped=cropped,
  )
