"""Input pipeline throughput: JPEG decode + the paper's augmentation.

Writes --num_images synthetic JPEGs of --width × --height (SOP's and CUB's
photos are around 500 × 375) under a temporary folder, reads them as a
`FileSplit` and times `pk_batches` (decode, scale to 256 × 256, random 224
crop, mirror, standardise) with 0, 1, 2, ... grain worker processes: images
per second overall and per worker (0 workers = the main process alone).
No model runs: this is the host's ceiling on training images/s.

  python -m experiments.bench_pipeline --workers=0,1,2
"""

import json
import os
import platform
import tempfile
import time

import numpy as np
from absl import app
from absl import flags
from PIL import Image

from dmljax import data

_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker counts.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 200, "JPEGs to write.")
_WIDTH = flags.DEFINE_integer("width", 500, "JPEG width.")
_HEIGHT = flags.DEFINE_integer("height", 375, "JPEG height.")
_BATCH = flags.DEFINE_integer("batch_size", 80, "B (P × K, K = 5).")
_SECONDS = flags.DEFINE_float("seconds", 20.0, "Timed seconds per cell.")
_MODE = flags.DEFINE_enum("mode", "square", ["square", "pad"], "Scaling.")
_OUT = flags.DEFINE_string(
  "out", "bench_results/bench_pipeline.json", "JSON path."
)


def _write_images(folder: str) -> data.FileSplit:
  rng = np.random.default_rng(0)
  paths, labels = [], []
  for i in range(_NUM_IMAGES.value):
    # Smooth content compresses like a photo (noise would not).
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(
      (_WIDTH.value, _HEIGHT.value), Image.Resampling.BICUBIC
    )
    path = os.path.join(folder, f"{i:06d}.jpg")
    image.save(path, quality=90)
    paths.append(path)
    labels.append(i // 5)
  return data.FileSplit(
    paths=tuple(paths),
    labels=np.asarray(labels, np.int32),
    class_names=tuple(str(c) for c in range(max(labels) + 1)),
    name="synthetic/train",
    preprocess=data.Preprocess(mode=_MODE.value),
  )


def _rate(split: data.FileSplit, num_workers: int) -> float:
  batches = iter(
    data.pk_batches(
      split, batch_size=_BATCH.value, seed=0, num_workers=num_workers
    )
  )
  next(batches)  # Start the workers, fill the prefetch buffer.
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < _SECONDS.value:
    count += next(batches)["image"].shape[0]
  return count / (time.perf_counter() - start)


def main(argv):
  del argv
  rows = []
  with tempfile.TemporaryDirectory() as folder:
    split = _write_images(folder)
    for workers in map(int, _WORKERS.value):
      rate = _rate(split, workers)
      rows.append(
        {
          "workers": workers,
          "images_per_s": rate,
          "images_per_s_per_worker": rate / max(workers, 1),
        }
      )
      print(
        f"workers={workers}: {rate:7.1f} images/s, "
        f"{rate / max(workers, 1):6.1f} per worker"
      )
  result = {
    "jpeg": f"{_WIDTH.value}x{_HEIGHT.value}",
    "preprocess": f"{_MODE.value} 256, crop 224, flip",
    "batch_size": _BATCH.value,
    "cpu_count": os.cpu_count(),
    "machine": platform.processor() or platform.machine(),
    "rows": rows,
  }
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(result, f, indent=2)
  print(f"JSON: {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
