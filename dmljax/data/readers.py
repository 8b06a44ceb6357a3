"""The benchmark readers by name: official archive layouts → `FileSplit`.

Every reader is `load(data_dir, split, *, preprocess, check_counts,
cropped) -> FileSplit` with split "train" or "test":

  "sop"      Stanford Online Products   (dmljax/data/sop.py)
  "cars196"  CARS196                    (cars196.py; cropped: boxes)
  "cub200"   CUB-200-2011               (cub200.py; cropped: boxes)
  "inshop"   In-Shop Clothes Retrieval  (inshop.py; test = query + gallery)
  "lfw"      CASIA-WebFace train, LFW pairs test (faces.py)
"""

from collections.abc import Callable

from dmljax.data import cars196
from dmljax.data import cub200
from dmljax.data import faces
from dmljax.data import inshop
from dmljax.data import sop
from dmljax.data.files import FileSplit
from dmljax.data.images import Preprocess

READERS: dict[str, Callable[..., FileSplit]] = {
  "sop": sop.load,
  "cars196": cars196.load,
  "cub200": cub200.load,
  "inshop": inshop.load,
  "lfw": faces.load,
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
