"""The train-step sections of experiments.bench_accelerator.

Each section is a function of a `Context` (see bench_accelerator) that
appends finished rows to `ctx.out["rows"]`, calls `ctx.save()` after each,
and checks `ctx.budget.expired()` before starting a cell, so a slow section
keeps what it measured and leaves the rest of the run its time.

Steps are the drivers' own: `dmljax.pk_methods.make_train_step` on a one-device
mesh (`parallel.make_mesh`), the state replicated and the batch sharded as
`train_and_evaluate` does, BatchNorm with `axis_name="data"`. The batch is
synthetic (random pixels, P × K labels with K = 5, the last class short when
K does not divide B) and placed on the device once, unless the section says
it is fed by the host pipeline.
"""

import os
import tempfile
import time

import jax
import numpy as np
from PIL import Image

from dmljax import data
from dmljax import parallel
from dmljax.runtime import recipes
from dmljax.runtime import train
from dmljax.runtime.recipes import dsp as dsp_recipe
from dmljax.runtime.recipes import pk_methods
from experiments.configs import methods as configs

# Train split sizes for β's tables (per-class β): SOP (Song et al.) and
# glyphs' first half of the code points. Only the table sizes depend on them.
TRAIN_SIZES = {"sop": (11318, 59551), "glyphs": (1160, 16000)}
PAPER_ANCHOR = {
  "seconds_per_batch": 0.55,
  "batch_size": 120,
  "images_per_s": 120 / 0.55,
  "device": "P100 (Wu et al. 2017, Sec. 5)",
}


def get_config(method: str, dataset: str, smoke: bool):
  return configs.get_config(
    f"method={method},dataset={dataset}" + (",smoke" if smoke else "")
  )


def image_shape(config) -> tuple[int, int, int]:
  """(H, W, C): photos (a resize_size) are RGB, the embedded sets gray."""
  channels = 3 if config.data.resize_size else 1
  return (config.data.image_size, config.data.image_size, channels)


def synthetic_batch(config, batch_size: int, seed: int = 0) -> dict:
  """Random pixels, P × K labels (K = images_per_class), dataset ids."""
  k = config.data.images_per_class
  rng = np.random.default_rng(seed)
  return {
    "image": rng.random((batch_size, *image_shape(config)), np.float32),
    "label": np.repeat(np.arange(-(-batch_size // k)), k)[:batch_size].astype(
      np.int32
    ),
    "index": np.arange(batch_size, dtype=np.int32),
  }


def device_memory() -> dict:
  """The first device's allocator statistics (GPU/TPU); None on CPU."""
  stats = jax.devices()[0].memory_stats() or {}
  return {
    "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
    "bytes_limit": stats.get("bytes_limit"),
  }


def planned_bytes(compiled) -> int | None:
  """XLA's buffers for one call: arguments + outputs + temporaries − aliases."""
  try:
    m = compiled.memory_analysis()
    return int(
      m.argument_size_in_bytes
      + m.output_size_in_bytes
      + m.temp_size_in_bytes
      - m.alias_size_in_bytes
    )
  except Exception:  # Not every backend reports it.
    return None


class TrainCell:
  """One compiled train step with its state and an on-device batch."""

  def __init__(self, config, *, num_devices: int = 1, mining: str = "global"):
    self.config = config
    self.batch_size = config.data.batch_size
    self.mesh = parallel.make_mesh(num_devices)
    model = recipes.make_model(config, axis_name=parallel.DATA_AXIS)
    tx = train.make_optimizer(config)
    host = synthetic_batch(config, self.batch_size)
    num_classes, num_images = TRAIN_SIZES.get(config.data.name, (1000, 10000))
    state = train.create_train_state(
      config,
      model,
      tx,
      input_shape=host["image"].shape,
      num_classes=num_classes,
      num_images=num_images,
    )
    self.state = parallel.replicate(state, self.mesh)
    self.batch = parallel.shard_batch(host, self.mesh)
    step = pk_methods.make_train_step(
      model, pk_methods.make_method(config), tx, mesh=self.mesh, mining=mining
    )
    start = time.perf_counter()
    self.step = step.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    self.planned_bytes = planned_bytes(self.step)

  def run(self, batch=None):
    self.state, metrics = self.step(
      self.state, self.batch if batch is None else batch
    )
    return metrics

  def time(self, budget, seconds: float, min_chunks: int = 3) -> dict:
    """Median step time over ~`seconds`, after two warm-up steps.

    Steps run back to back in chunks of ~0.25 s (as the training loop
    dispatches them, without a host sync per step); each chunk ends with
    one sync and gives one per-step time.
    """
    start = time.perf_counter()
    jax.block_until_ready(self.run())
    first = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(self.run())
    chunk = int(np.clip(0.25 / max(time.perf_counter() - start, 1e-6), 1, 50))
    times = []
    deadline = time.perf_counter() + max(min(seconds, budget.left()), 0)
    while len(times) < min_chunks or time.perf_counter() < deadline:
      start = time.perf_counter()
      for _ in range(chunk):
        metrics = self.run()
      jax.block_until_ready(metrics)
      times.append((time.perf_counter() - start) / chunk)
      if len(times) >= 200:
        break
    median = float(np.median(times))
    return {
      "compile_s": self.compile_s,
      "first_step_s": first,
      "ms_per_step": 1e3 * median,
      "images_per_s": self.batch_size / median,
      "steps_timed": chunk * len(times),
      "loss": float(metrics["loss"]),
      "xla_planned_bytes": self.planned_bytes,
      **device_memory(),
    }


def _cell(ctx, config, row: dict, **kwargs) -> TrainCell | None:
  """Builds and times one cell into `row` (error recorded, not raised)."""
  cell = None
  try:
    cell = TrainCell(config, **kwargs)
    row.update(cell.time(ctx.budget, ctx.cell_seconds))
  except Exception as error:  # One failing cell must not end the section.
    row["error"] = f"{type(error).__name__}: {error}"[:400]
  ctx.out.setdefault("rows", []).append(row)
  ctx.save()
  return cell


def resnet50_synthetic(ctx) -> None:
  """The paper's network, float32 and bfloat16, batch 80 and 128."""
  ctx.out["paper_anchor"] = PAPER_ANCHOR
  cells = [("float32", 80), ("bfloat16", 80), ("float32", 128)]
  cells.append(("bfloat16", 128))
  if ctx.smoke:  # One compile: the smoke test must stay quick.
    cells = [("float32", 10)]
  longest = 0.0  # A cell starts only if the longest so far still fits.
  for dtype, batch_size in cells:
    if ctx.budget.expired(need=1.2 * longest):
      break
    start = time.perf_counter()
    config = get_config("margin_dw", "sop", ctx.smoke)
    config.model.dtype = dtype
    config.data.batch_size = batch_size
    row = dict(
      model=config.model.name,
      image_size=config.data.image_size,
      dtype=dtype,
      batch_size=batch_size,
    )
    cell = _cell(ctx, config, row)
    if cell is not None and (dtype, batch_size) == cells[0]:
      ctx.shared["resnet_cell"] = cell  # The host-pipeline section feeds it.
    longest = max(longest, time.perf_counter() - start)


def _write_jpegs(folder: str, count: int, size: tuple[int, int]):
  rng = np.random.default_rng(0)
  paths = []
  for i in range(count):
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    path = os.path.join(folder, f"{i:06d}.jpg")
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(
      path, quality=90
    )
    paths.append(path)
  return paths


def available_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not Linux.
    return os.cpu_count() or 1


def _rate(batches, seconds: float, step=None) -> tuple[float, float]:
  """(images/s, fraction of the time spent waiting for the host)."""
  count, waited, pending = 0, 0.0, None
  start = time.perf_counter()
  while time.perf_counter() - start < seconds:
    t0 = time.perf_counter()
    batch = next(batches)
    waited += time.perf_counter() - t0
    if step is not None:
      metrics = step(batch)
      if pending is not None:  # One step in flight while the next loads.
        jax.block_until_ready(pending)
      pending = metrics
    count += len(batch["label"])
  if pending is not None:
    jax.block_until_ready(pending)
  elapsed = time.perf_counter() - start
  return count / elapsed, waited / elapsed


def resnet50_host_pipeline(ctx) -> None:
  """The float32 batch-80 step fed by JPEG decode + augmentation (grain)."""
  cell = ctx.shared.get("resnet_cell")
  if cell is None:
    config = get_config("margin_dw", "sop", ctx.smoke)
    config.data.batch_size = 10 if ctx.smoke else 80
    cell = TrainCell(config)
    ctx.shared["resnet_cell"] = cell
  config = cell.config
  workers = ctx.options["workers"] or max(1, available_cores() - 1)
  count = 40 if ctx.smoke else ctx.options["num_jpegs"]
  size = (64, 48) if ctx.smoke else (500, 375)
  synthetic = cell.time(ctx.budget, min(ctx.cell_seconds, 3.0))
  row = dict(
    model=config.model.name,
    dtype=config.model.dtype,
    batch_size=cell.batch_size,
    workers=workers,
    cores=available_cores(),
    jpeg=f"{size[0]}x{size[1]}",
    num_jpegs=count,
    synthetic_images_per_s=synthetic["images_per_s"],
  )
  with tempfile.TemporaryDirectory(prefix="dmljax_jpegs_") as folder:
    start = time.perf_counter()
    paths = _write_jpegs(folder, count, size)
    row["write_jpegs_s"] = time.perf_counter() - start
    k = config.data.images_per_class
    split = data.FileSplit(
      paths=tuple(paths),
      labels=(np.arange(count) // k).astype(np.int32),
      class_names=tuple(str(c) for c in range(-(-count // k))),
      name="synthetic/train",
      preprocess=data.Preprocess(
        resize=config.data.resize_size, crop=config.data.image_size
      ),
    )
    batches = iter(
      data.pk_batches(
        split,
        batch_size=cell.batch_size,
        images_per_class=k,
        seed=0,
        num_workers=workers,
      )
    )
    start = time.perf_counter()
    next(batches)  # Starts the workers.
    row["start_workers_s"] = time.perf_counter() - start
    seconds = max(min(ctx.cell_seconds, ctx.budget.left() / 3), 0.5)
    row["pipeline_images_per_s"], _ = _rate(batches, seconds)

    def step(batch):
      return cell.run(parallel.shard_batch(batch, cell.mesh))

    fed, waited = _rate(batches, 2 * seconds, step)
  row["fed_images_per_s"] = fed
  row["host_wait_fraction"] = waited
  row["starved"] = bool(fed < 0.9 * synthetic["images_per_s"])
  ctx.out.setdefault("rows", []).append(row)
  ctx.save()


def glyphs_step(ctx) -> None:
  """The main job's step: margin_dw on glyphs (small net, 32 × 32, B 120)."""
  config = get_config("margin_dw", "glyphs", ctx.smoke)
  row = dict(model=config.model.name, batch_size=config.data.batch_size)
  _cell(ctx, config, row)


def dsp_step(ctx) -> None:
  """One DE-DSP step (Algorithm 1) on glyphs, via recipes.dsp.setup."""
  config = get_config("dsp_triplet", "glyphs", ctx.smoke)
  settings = dsp_recipe.settings(config)
  classes, per_class = settings.pool_shape
  config.data.batch_size = classes * per_class
  model = recipes.make_model(config, axis_name=None)
  tx = train.make_optimizer(config)
  host = synthetic_batch(config, classes * per_class)
  host["label"] = np.repeat(np.arange(classes), per_class).astype(np.int32)
  num_classes, num_images = TRAIN_SIZES["glyphs"]
  state = train.create_train_state(
    config,
    model,
    tx,
    input_shape=host["image"].shape,
    num_classes=num_classes,
    num_images=num_images,
  )
  out = dsp_recipe.setup(
    config, model, tx, state, image_shape(config), settings
  )
  state, step = out[0], out[1]
  batch = jax.device_put(host)
  start = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - start
  times = []
  deadline = time.perf_counter() + min(ctx.cell_seconds, ctx.budget.left())
  while len(times) < 3 or time.perf_counter() < deadline:
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  median = float(np.median(times))
  ctx.out.setdefault("rows", []).append(
    dict(
      pool=f"{classes} x {per_class}",
      minibatches=config.dsp.num_minibatches,
      first_step_s=first,
      ms_per_step=1e3 * median,
      pool_images_per_s=classes * per_class / median,
      steps_timed=len(times),
    )
  )
  ctx.save()


def multi_device(ctx) -> None:
  """Step time on 1, 2, 4, ... N devices (weak scaling), global vs local."""
  available = jax.device_count()
  if available < 2:
    ctx.out["skipped"] = f"one device ({jax.devices()[0].device_kind})"
    return
  counts = sorted({2**i for i in range(available.bit_length())} | {available})
  counts = [n for n in counts if n <= available]
  if ctx.smoke:  # One device is every other section's cell.
    counts = [available]
  dataset = ctx.options["multi_device_dataset"]
  per_device = get_config("margin_dw", dataset, ctx.smoke).data.batch_size
  if ctx.smoke:
    per_device = 10
  longest = 0.0
  for n in counts:
    minings = ("global", "local") if n > 1 and not ctx.smoke else ("global",)
    for mining in minings:
      if ctx.budget.expired(need=1.2 * longest):
        return
      start = time.perf_counter()
      config = get_config("margin_dw", dataset, ctx.smoke)
      config.data.batch_size = per_device * n
      row = dict(
        model=config.model.name,
        devices=n,
        mining=mining,
        batch_size=per_device * n,
        batch_per_device=per_device,
      )
      _cell(ctx, config, row, num_devices=n, mining=mining)
      longest = max(longest, time.perf_counter() - start)
