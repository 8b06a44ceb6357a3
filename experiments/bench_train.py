"""The training step the drivers run, timed, beside PyTorch + PML.

For each dataset of --datasets (embedded data: glyphs, digits) and the
config --method (default margin_dw, the main job):

- dmljax's step: the jitted step `experiments.<dataset>` runs (same model,
  optimiser, method and devices as `train_and_evaluate` chooses), on real
  batches already on the device, after compilation: ms per step, images/s.
- its breakdown, each part jitted on its own on one device: the network's
  forward (training mode), its backward (forward + backward − forward),
  sampler + loss forward + backward on the embeddings, the optimiser
  update, and the host input (`next(batches)` + placing the batch).
- the PyTorch twin (`experiments.torch_twin`: same network, PML's
  DistanceWeightedMiner + MarginLoss with per-class β, Adam + SGD) on the
  same batches, with the same breakdown, if torch and PML import
  (--peer=auto); the ratio torch ms / dmljax ms (> 1: dmljax faster).

Times are medians over about --budget_s seconds per cell. Run on an idle
machine: with 2 cores, any other busy process skews both sides.

Writes a table to stdout and JSON to --out.

  python -m experiments.bench_train
  python -m experiments.bench_train --datasets=glyphs --peer=off
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app
from absl import flags

from dmljax import data as data_lib
from dmljax.runtime import cpu_devices
from dmljax.runtime import recipes
from dmljax.runtime import train
from dmljax.runtime.recipes import pk_methods
from experiments import _machine
from experiments import torch_twin
from experiments.configs import methods

_DATASETS = flags.DEFINE_list("datasets", ["glyphs", "digits"], "Datasets.")
_METHOD = flags.DEFINE_string("method", "margin_dw", "Config name.")
_BUDGET = flags.DEFINE_float("budget_s", 4.0, "Timed seconds per cell.")
_PEER = flags.DEFINE_enum("peer", "auto", ["auto", "off"], "auto: PyTorch.")
_OUT = flags.DEFINE_string(
  "out", "bench_results/bench_train.json", "JSON path."
)
_TABLE = flags.DEFINE_bool("table", True, "Print the table.")
_NUM_BATCHES = 8  # Distinct real batches cycled through while timing.


def median_ms(fn, budget_s: float) -> float:
  """Median ms of fn() over ~budget_s seconds, after two warm-up calls."""
  fn()
  start = time.perf_counter()
  fn()
  estimate = max(time.perf_counter() - start, 1e-6)
  repeats = int(np.clip(budget_s / estimate, 5, 1000))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times) * 1e3)


def _blocked(fn):
  return lambda: jax.block_until_ready(fn())


def dmljax_cells(config, train_split, batches, budget_s) -> dict:
  """ms of the driver's step (its recipe's) and of each of its parts."""
  recipe = recipes.build(config, train_split.image_shape)
  tx = train.make_optimizer(config)
  state = train.create_train_state(
    config,
    recipe.model,
    tx,
    input_shape=(recipe.batch_size, *train_split.image_shape),
    num_classes=train_split.num_classes,
    num_images=len(train_split),
  )
  method = pk_methods.make_method(config)
  cells = parts_ms(config, state, tx, method, batches[0], budget_s / 2)
  prepared = recipe.prepare(state, tx)
  placed = [recipe.place_batch(b) for b in batches]
  carry = {"state": prepared.state, "i": 0}

  def step():  # The state is donated: the prepared one is gone after this.
    carry["i"] += 1
    batch = placed[carry["i"] % len(placed)]
    carry["state"], metrics = prepared.step(carry["state"], batch)
    return metrics

  cells["step"] = median_ms(_blocked(step), budget_s)
  cells["host input"] = _host_input_ms(config, train_split, recipe.place_batch)
  cells["devices"] = recipe.num_devices
  return cells


def parts_ms(config, state, tx, method, batch, budget_s) -> dict:
  """ms of the step's parts, each jitted alone on one device."""
  model = recipes.make_model(config)
  params = state["params"]["embed"]
  images = jnp.asarray(batch["image"])

  def embed(params, images):
    variables = {"params": params, "batch_stats": state["batch_stats"]}
    out, _ = model.apply(variables, images, train=True, mutable=True)
    return out

  forward = jax.jit(embed)
  embeddings = forward(params, images)
  cotangent = jax.random.normal(jax.random.key(0), embeddings.shape)
  backward = jax.jit(jax.grad(lambda p: jnp.vdot(embed(p, images), cotangent)))
  labels, index = jnp.asarray(batch["label"]), jnp.asarray(batch["index"])

  def loss(embeddings, beta):
    return method(jax.random.key(1), embeddings, labels, beta, index)[0]

  loss_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  beta = state["params"]["beta"]
  grads = jax.tree.map(jnp.ones_like, state["params"])

  @jax.jit
  def update(grads, opt, params):
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  cells = {
    "forward": median_ms(_blocked(lambda: forward(params, images)), budget_s)
  }
  forward_backward = median_ms(_blocked(lambda: backward(params)), budget_s)
  cells["backward"] = forward_backward - cells["forward"]
  cells["sampler + loss"] = median_ms(
    _blocked(lambda: loss_grad(embeddings, beta)), budget_s
  )
  cells["optimiser"] = median_ms(
    _blocked(lambda: update(grads, state["opt"], state["params"])), budget_s
  )
  return cells


def _host_input_ms(config, train_split, place_batch) -> float:
  """ms of next(batches) + placing the batch, the driver's iterator."""
  iterator = iter(_batches(config, train_split, num_steps=200))
  next(iterator)
  start = time.perf_counter()
  count = 0
  for batch in iterator:
    jax.block_until_ready(place_batch(batch))
    count += 1
    if count == 100:
      break
  return (time.perf_counter() - start) / count * 1e3


def _batches(config, train_split, num_steps):
  return data_lib.pk_batches(
    train_split,
    batch_size=config.data.batch_size,
    images_per_class=config.data.images_per_class,
    seed=config.seed,
    num_steps=num_steps,
    max_shift=config.data.max_shift,
    flip=config.data.flip,
    num_workers=config.data.num_workers,
  )


def torch_cells(torch, config, train_split, batches, budget_s) -> dict:
  """ms of the PyTorch twin's step and of each of its parts."""
  torch.manual_seed(0)
  net, miner, loss_fn, optimizers = torch_twin.make_twin(
    torch,
    config,
    num_classes=train_split.num_classes,
    image_shape=train_split.image_shape,
  )
  placed = [torch_twin.to_torch(torch, b) for b in batches]
  carry = {"i": 0}

  def step():
    carry["i"] += 1
    images, labels = placed[carry["i"] % len(placed)]
    for optimizer in optimizers:
      optimizer.zero_grad(set_to_none=True)
    embeddings = net(images)
    loss = loss_fn(embeddings, labels, miner(embeddings, labels))
    loss.backward()
    for optimizer in optimizers:
      optimizer.step()
    return float(loss)  # dmljax's driver also reads the loss back.

  cells = {"step": median_ms(step, budget_s)}
  images, labels = placed[0]
  with torch.no_grad():
    cells["forward"] = median_ms(lambda: net(images), budget_s / 2)
  cotangent = torch.randn(images.shape[0], config.model.embedding_dim)

  def network_backward():
    net.zero_grad(set_to_none=True)
    net(images).backward(cotangent)

  cells["backward"] = median_ms(network_backward, budget_s / 2)
  cells["backward"] -= cells["forward"]
  embeddings = net(images).detach().requires_grad_(True)

  def sampler_loss():
    embeddings.grad = None
    loss_fn(embeddings, labels, miner(embeddings, labels)).backward()

  cells["sampler + loss"] = median_ms(sampler_loss, budget_s / 2)
  cells["optimiser"] = median_ms(
    lambda: [o.step() for o in optimizers], budget_s / 2
  )
  return cells


def machine(peer) -> dict:
  info = _machine.machine_info(devices=jax.device_count())
  if peer is not None:
    info.update(torch=peer.__version__, torch_threads=peer.get_num_threads())
  return info


ROWS = ("step", "forward", "backward", "sampler + loss", "optimiser")


def print_table(dataset, batch_size, ours, theirs) -> None:
  print(f"\n{dataset}: batch {batch_size}, {ours['devices']} device(s)")
  print(f"{'ms':<16}{'dmljax':>10}{'PyTorch':>10}{'ratio':>8}")
  for row in (*ROWS, "host input"):
    other = theirs.get(row) if theirs else None
    ratio = f"{other / ours[row]:.2f}" if other else ""
    other_text = f"{other:.1f}" if other else ""
    print(f"{row:<16}{ours[row]:>10.1f}{other_text:>10}{ratio:>8}")
  rate = batch_size / ours["step"] * 1e3
  print(f"images/s: dmljax {rate:.0f}", end="")
  if theirs:
    print(f", PyTorch {batch_size / theirs['step'] * 1e3:.0f}", end="")
  print()


def load_peer():
  if _PEER.value == "off":
    return None
  try:
    import pytorch_metric_learning  # noqa: F401
    import torch
  except ImportError as error:
    print(f"PyTorch peer skipped: {error}")
    return None
  return torch


def bench_dataset(dataset: str) -> dict:
  """One dataset's cells, in this process (JAX not yet started)."""
  config = methods.get_config(f"method={_METHOD.value},dataset={dataset}")
  # As the drivers do, before JAX starts (see dmljax.runtime.cpu_devices).
  cpu_devices.configure(lambda count: recipes.uses_devices(config, count))
  peer = load_peer()
  train_split, _ = data_lib.load_splits(config)
  batches = list(_batches(config, train_split, num_steps=_NUM_BATCHES))
  ours = dmljax_cells(config, train_split, batches, _BUDGET.value)
  theirs = None
  if peer is not None:
    theirs = torch_cells(peer, config, train_split, batches, _BUDGET.value)
  return {
    "method": _METHOD.value,
    "batch_size": config.data.batch_size,
    "dmljax_ms": ours,
    "pytorch_ms": theirs,
    "images_per_s": config.data.batch_size / ours["step"] * 1e3,
    "machine": machine(peer),
  }


def main(argv):
  del argv
  if len(_DATASETS.value) == 1:  # Also the child of the branch below.
    results = {_DATASETS.value[0]: bench_dataset(_DATASETS.value[0])}
  else:  # One process per dataset: each sets its own CPU device count.
    results = {}
    for dataset in _DATASETS.value:
      with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "cells.json")
        command = [sys.executable, "-m", "experiments.bench_train"]
        command += [f"--datasets={dataset}", f"--out={out}"]
        command += [f"--method={_METHOD.value}", f"--peer={_PEER.value}"]
        command += [f"--budget_s={_BUDGET.value}", "--notable"]
        subprocess.run(command, check=True)
        with open(out) as f:
          results.update(json.load(f)["datasets"])
  if _TABLE.value:
    for dataset, cells in results.items():
      print_table(
        dataset, cells["batch_size"], cells["dmljax_ms"], cells["pytorch_ms"]
      )
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump({"datasets": results}, f, indent=2)
  if _TABLE.value:
    print(f"\nWrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
