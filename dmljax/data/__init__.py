"""Data: embedded datasets, benchmark readers, P×K and evaluation batches.

>>> from dmljax import data
>>> train = data.load_split("digits", "train")
>>> batch = next(iter(data.pk_batches(train, batch_size=10)))
>>> batch["image"].shape, batch["image"].dtype
((10, 8, 8, 1), dtype('float32'))
"""

from dmljax.data import folder
from dmljax.data.augment import random_flip
from dmljax.data.augment import random_shift
from dmljax.data.embedded import DATASETS
from dmljax.data.embedded import default_cache_dir
from dmljax.data.embedded import load_split
from dmljax.data.files import QUERY_GALLERY
from dmljax.data.files import VERIFICATION
from dmljax.data.files import FileSplit
from dmljax.data.from_config import load_splits
from dmljax.data.glyphs import render_glyphs
from dmljax.data.images import Preprocess
from dmljax.data.pk import eval_batches
from dmljax.data.pk import pk_batches
from dmljax.data.pk import pk_indices
from dmljax.data.readers import READERS
from dmljax.data.readers import load_file_split
from dmljax.data.split import RETRIEVAL
from dmljax.data.split import Split
from dmljax.data.split import split_by_class
