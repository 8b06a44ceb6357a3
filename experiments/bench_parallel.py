"""Step time of the data-parallel train step vs device count and mining.

On CPU the devices are fake (`--xla_force_host_platform_device_count`, set
here before JAX starts): they share the same cores, so the table is a sanity
check that the sharded step works at every device count and what its
overhead is, not a scaling figure. On a GPU it times the real step of the
chosen model with global vs local mining (the paper's ResNet-50 at 224 px:
`--model=resnet50 --image_size=224 --channels=3 --batch_size=80`).

Each cell: compile + warm-up, then the median of --repeats steps on a fixed
random batch (P classes × K images), state donated as in training.

Usage:
  python -m experiments.bench_parallel                   # CPU, small net
  python -m experiments.bench_parallel --model=resnet50 --image_size=224 \
    --channels=3 --batch_size=80 --devices=1             # one GPU
"""

import os

if "xla_force_host_platform_device_count" not in os.environ.get(
  "XLA_FLAGS", ""
):  # Fake CPU devices; no effect on accelerators.
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8"
  ).strip()

import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from dmljax import parallel  # noqa: E402
from dmljax.runtime import recipes  # noqa: E402
from dmljax.runtime import train  # noqa: E402
from dmljax.runtime.recipes import pk_methods  # noqa: E402
from experiments.configs import methods  # noqa: E402

_METHOD = flags.DEFINE_string("method", "margin_dw", "A config name.")
_MODEL = flags.DEFINE_string("model", "small", "Backbone name.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "H = W.")
_CHANNELS = flags.DEFINE_integer("channels", 1, "Image channels.")
_BATCH = flags.DEFINE_integer("batch_size", 120, "Global batch B.")
_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Counts.")
_MINING = flags.DEFINE_list("mining", ["global", "local"], "Modes.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed steps per cell.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Compute dtype.")
_OUT = flags.DEFINE_string(
  "out", "bench_results/bench_parallel.json", "JSON path."
)


def _config():
  config = methods.get_config(f"method={_METHOD.value},dataset=glyphs")
  config.model.name = _MODEL.value
  config.model.dtype = _DTYPE.value
  config.data.batch_size = _BATCH.value
  return config


def _batch(config, rng):
  size, k = _BATCH.value, config.data.images_per_class
  shape = (size, _IMAGE_SIZE.value, _IMAGE_SIZE.value, _CHANNELS.value)
  return {
    "image": rng.random(shape, np.float32),
    "label": np.repeat(np.arange(size // k), k).astype(np.int32),
    "index": np.arange(size, dtype=np.int32),
  }


def time_step(config, num_devices: int, mining: str) -> float:
  """Median seconds of one train step on `num_devices` devices."""
  parallel.check_sharding(
    config.data.batch_size, num_devices, config.data.images_per_class, mining
  )
  mesh = parallel.make_mesh(num_devices)
  model = recipes.make_model(config, axis_name=parallel.DATA_AXIS)
  tx = train.make_optimizer(config)
  host_batch = _batch(config, np.random.default_rng(0))
  state = train.create_train_state(
    config,
    model,
    tx,
    input_shape=host_batch["image"].shape,
    num_classes=10**4,
    num_images=10**5,
  )
  state = parallel.replicate(state, mesh)
  step = pk_methods.make_train_step(
    model, pk_methods.make_method(config), tx, mesh=mesh, mining=mining
  )
  batch = parallel.shard_batch(host_batch, mesh)
  for _ in range(2):  # Compile, warm up.
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv):
  del argv
  config = _config()
  rows = []
  available = jax.device_count()
  print(
    f"{jax.devices()[0].platform} × {available}, {_MODEL.value} "
    f"{_IMAGE_SIZE.value}px, B = {_BATCH.value}, {_METHOD.value}"
  )
  print(f"{'devices':>8} {'mining':>8} {'ms/step':>9} {'img/s':>8}")
  for count in map(int, _DEVICES.value):
    if count > available:
      print(f"{count:>8} skipped: only {available} devices")
      continue
    for mining in _MINING.value:
      try:
        seconds = time_step(config, count, mining)
      except ValueError as error:
        print(f"{count:>8} {mining:>8} skipped: {error}")
        continue
      rate = _BATCH.value / seconds
      rows.append(
        dict(devices=count, mining=mining, seconds=seconds, images_s=rate)
      )
      print(f"{count:>8} {mining:>8} {1e3 * seconds:>9.1f} {rate:>8.0f}")
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(
      dict(
        platform=jax.devices()[0].platform,
        device_kind=jax.devices()[0].device_kind,
        host=platform.node(),
        cpu_count=os.cpu_count(),
        model=_MODEL.value,
        image_size=_IMAGE_SIZE.value,
        batch_size=_BATCH.value,
        method=_METHOD.value,
        dtype=_DTYPE.value,
        rows=rows,
      ),
      f,
      indent=2,
    )
  print(f"JSON: {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
