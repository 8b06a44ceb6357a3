"""Data parallelism: the same numbers on 1, 2, 4 and 8 devices.

conftest.py gives this process 8 CPU devices. The references are the plain
single-device step (`make_train_step` without a mesh) and, for local mining,
the mean of the method over the batch's slices computed on one device.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from subprocesses import ROOT

from dmljax import data as data_lib
from dmljax import parallel
from dmljax.runtime import checkpoint as checkpoint_lib
from dmljax.runtime import recipes
from dmljax.runtime import train
from dmljax.runtime.recipes import pk_methods
from experiments.configs import methods

BATCH, IMAGES_PER_CLASS = 40, 5  # P = 8 classes: whole classes on 8 devices.


def _config(method="margin_dw", **parallel_options):
  config = methods.get_config(f"method={method},dataset=digits,smoke")
  config.data.batch_size = BATCH
  config.data.images_per_class = IMAGES_PER_CLASS
  config.parallel.update(parallel_options)
  return config


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  labels = np.repeat(rng.permutation(20)[: BATCH // IMAGES_PER_CLASS], 5)
  return {
    "image": rng.random((BATCH, 8, 8, 1), np.float32),
    "label": labels.astype(np.int32),
    "index": rng.permutation(100)[:BATCH].astype(np.int32),
  }


def _setup(config, axis_name):
  model = recipes.make_model(config, axis_name=axis_name)
  tx = train.make_optimizer(config)
  state = train.create_train_state(
    config,
    model,
    tx,
    input_shape=(BATCH, 8, 8, 1),
    num_classes=20,
    num_images=100,
  )
  return model, tx, state


def _relative_error(got, expected):
  """‖got − expected‖ / ‖expected‖ over all leaves together.

  Not a per-element bound: a ReLU whose input sits within float32 round-off
  of 0 can flip between device counts (the batch statistics are summed in
  another order) and move a few gradient entries by ~1 %, ~1e-3 of the
  norm. Gradients summed over the devices once too often, or not averaged,
  are off by a factor of n: a relative error ≥ 1.
  """
  flat = lambda tree: np.concatenate(  # noqa: E731
    [np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)]
  )
  got, expected = flat(got), flat(expected)
  return np.linalg.norm(got - expected) / np.linalg.norm(expected)


def _reference_gradients(config):
  """Loss, aux and gradients of the plain single-device objective."""
  model, _, state = _setup(config, axis_name=None)
  objective = pk_methods.make_objective(model, pk_methods.make_method(config))
  key = jax.random.key(7)

  def loss_fn(params):
    loss, aux, _ = objective(params, state["batch_stats"], key, _batch())
    return loss, aux

  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (loss, aux), grads = grad_fn(state["params"])
  return loss, aux, grads


@pytest.mark.parametrize(
  ("method", "num_devices"),
  [("margin_dw", n) for n in (1, 2, 4, 8)] + [("triplet_l2_semihard", 8)],
)
def test_global_mining_gives_the_single_device_gradients(method, num_devices):
  config = _config(method)
  loss, aux, grads = _reference_gradients(config)
  mesh = parallel.make_mesh(num_devices)
  model, _, state = _setup(config, axis_name=parallel.DATA_AXIS)
  gradients = jax.jit(
    parallel.sharded_gradients(
      pk_methods.make_objective(model, pk_methods.make_method(config)), mesh
    )
  )
  state = parallel.replicate(state, mesh)
  got = gradients(
    state["params"],
    state["batch_stats"],
    jax.random.key(7),
    parallel.shard_batch(_batch(), mesh),
  )
  got_loss, got_aux, got_grads, _ = parallel.to_host(got)
  np.testing.assert_allclose(got_loss, loss, rtol=1e-5)
  assert int(got_aux["num_tuples"]) == int(aux["num_tuples"])
  assert _relative_error(got_grads, grads) < 1e-2


@pytest.mark.parametrize("num_devices", [2, 8])
def test_train_steps_match_on_any_device_count(num_devices):
  config = _config()
  plain_model, tx, plain_state = _setup(config, axis_name=None)
  method = pk_methods.make_method(config)
  plain_step = pk_methods.make_train_step(plain_model, method, tx)
  mesh = parallel.make_mesh(num_devices)
  model, _, state = _setup(config, axis_name=parallel.DATA_AXIS)
  state = parallel.replicate(state, mesh)
  step = pk_methods.make_train_step(model, method, tx, mesh=mesh)
  for seed in range(3):
    plain_state, plain_metrics = plain_step(plain_state, _batch(seed))
    state, metrics = step(state, parallel.shard_batch(_batch(seed), mesh))
  state, metrics = parallel.to_host((state, metrics))
  # Adam divides by √v: a coordinate whose gradient is round-off on both
  # sides (summed in another order over devices) can step by a good part of
  # lr either way, so parameters agree to ~1e-4, not to round-off (8e-5 on
  # 2 devices with jax 0.10.2; the loss and BN statistics stay at 1e-5).
  assert _relative_error(state["params"], plain_state["params"]) < 2e-4
  assert _relative_error(state["batch_stats"], plain_state["batch_stats"]) < (
    1e-5
  )
  np.testing.assert_allclose(metrics["loss"], plain_metrics["loss"], rtol=1e-5)
  assert int(state["step"]) == 3


@pytest.mark.parametrize("num_devices", [2, 4])  # 8: one class per device.
def test_local_mining_is_the_mean_over_the_slices(num_devices):
  config = _config()
  model, _, state = _setup(config, axis_name=None)
  method = pk_methods.make_method(config)
  batch, key = _batch(), jax.random.key(3)
  rows = BATCH // num_devices

  def mean_of_slices(params):
    # One forward pass of the whole batch: synchronised BatchNorm sees the
    # global batch's statistics, as here.
    embeddings = model.apply(
      {"params": params["embed"], "batch_stats": state["batch_stats"]},
      batch["image"],
      train=True,
      mutable=["batch_stats"],
    )[0]
    losses = [
      method(
        jax.random.fold_in(key, i),
        embeddings[i * rows : (i + 1) * rows],
        batch["label"][i * rows : (i + 1) * rows],
        params["beta"],
        batch["index"][i * rows : (i + 1) * rows],
      )[0]
      for i in range(num_devices)
    ]
    return jnp.mean(jnp.stack(losses))

  loss, grads = jax.jit(jax.value_and_grad(mean_of_slices))(state["params"])
  mesh = parallel.make_mesh(num_devices)
  sharded_model, _, _ = _setup(config, axis_name=parallel.DATA_AXIS)
  gradients = jax.jit(
    parallel.sharded_gradients(
      pk_methods.make_objective(sharded_model, method), mesh, mining="local"
    )
  )
  replicated = parallel.replicate(state, mesh)
  got_loss, _, got_grads, _ = parallel.to_host(
    gradients(
      replicated["params"],
      replicated["batch_stats"],
      key,
      parallel.shard_batch(batch, mesh),
    )
  )
  np.testing.assert_allclose(got_loss, loss, rtol=1e-5)
  assert _relative_error(got_grads, grads) < 1e-2


def test_sharding_errors_name_the_fix():
  with pytest.raises(ValueError, match="multiple of the device count"):
    parallel.check_sharding(30, 4, 5, "global")
  with pytest.raises(ValueError, match="whole classes"):
    parallel.check_sharding(40, 5, 5, "local")
  with pytest.raises(ValueError, match="Unknown mining"):
    parallel.check_sharding(40, 4, 5, "everywhere")
  with pytest.raises(ValueError, match="num_devices must be in"):
    parallel.choose_num_devices(40, 5, requested=9, available=8)


@pytest.mark.parametrize(
  ("batch_size", "mining", "expected"),
  [(40, "global", 8), (25, "global", 5), (30, "global", 6), (30, "local", 6)],
)
def test_automatic_device_count_is_the_largest_that_fits(
  batch_size, mining, expected
):
  count = parallel.choose_num_devices(
    batch_size, 5, mining=mining, available=8, num_processes=1
  )
  assert count == expected
  parallel.check_sharding(batch_size, count, 5, mining)
  for more in range(count + 1, 9):
    with pytest.raises(ValueError):
      parallel.check_sharding(batch_size, more, 5, mining)


@pytest.mark.parametrize("shard_count", [2, 4])
def test_process_shards_rebuild_the_single_process_batch(shard_count):
  split = data_lib.load_split("digits", "train")
  options = dict(batch_size=40, images_per_class=8, seed=3, max_shift=1)
  whole = next(iter(data_lib.pk_batches(split, **options)))
  shards = [
    next(
      iter(
        data_lib.pk_batches(
          split, shard_index=i, shard_count=shard_count, **options
        )
      )
    )
    for i in range(shard_count)
  ]
  for name, value in whole.items():
    np.testing.assert_array_equal(
      np.concatenate([shard[name] for shard in shards]), value
    )
  with pytest.raises(ValueError, match="split evenly"):
    data_lib.pk_batches(split, shard_count=3, **options)
  with pytest.raises(ValueError, match="shard_index"):
    data_lib.pk_batches(split, shard_index=2, shard_count=2, **options)


def _final(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)["final"]


def _params(workdir, step=None):
  directory = os.path.join(workdir, "checkpoints")
  return checkpoint_lib.read_state(directory, step)["params"]


@pytest.mark.slow
def test_training_run_gives_the_same_metrics_on_1_and_8_devices(tmp_path):
  runs = {}
  for num_devices in (1, 8):
    workdir = str(tmp_path / f"devices{num_devices}")
    config = _config(num_devices=num_devices)
    config.data.images_per_class = 8  # digits' 5 classes × 8 = 40.
    train.train_and_evaluate(config, workdir)
    runs[num_devices] = workdir
  assert _relative_error(_params(runs[8]), _params(runs[1])) < 1e-4
  one, eight = _final(runs[1]), _final(runs[8])
  assert one.keys() == eight.keys()
  for name in one:
    assert eight[name] == pytest.approx(one[name], abs=2e-3), name


@pytest.mark.slow
def test_checkpoint_from_8_devices_resumes_on_1(tmp_path):
  config = _config(num_devices=8)
  config.data.images_per_class = 8
  config.ckpt.max_to_keep = 3
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)  # Steps 1..4, saved at 2 and 4.
  uninterrupted = _params(workdir, 4)
  final = _final(workdir)
  # Forget step 4: the rerun on one device resumes from step 2 (8 devices).
  checkpoints = os.path.join(workdir, "checkpoints")
  subprocess.run(["rm", "-r", os.path.join(checkpoints, "4")], check=True)
  config.parallel.num_devices = 1
  resumed_final = train.train_and_evaluate(config, workdir)
  assert _relative_error(_params(workdir, 4), uninterrupted) < 1e-4
  for name, value in final.items():
    assert resumed_final[name] == pytest.approx(value, abs=2e-3), name


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _driver(workdir, *flags):
  """The digits driver, 3 smoke steps, 2 CPU devices, in a subprocess."""
  env = dict(
    os.environ,
    PYTHONPATH=ROOT,
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
  )
  command = [
    sys.executable,
    "-m",
    "experiments.digits",
    "--config=margin_dw:smoke",
    "--config.train.num_steps=3",
    "--config.ckpt.every=3",
    f"--workdir={workdir}",
    *flags,
  ]
  return subprocess.Popen(
    command,
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
  """Two jax.distributed processes (2 CPU devices each) vs one process."""
  address = f"127.0.0.1:{_free_port()}"
  two = str(tmp_path / "two")
  workers = [
    _driver(
      two,
      f"--coordinator_address={address}",
      "--num_processes=2",
      f"--process_id={i}",
    )
    for i in range(2)
  ]
  outputs = []
  for worker in workers:
    try:
      outputs.append(worker.communicate(timeout=400)[0])
    except subprocess.TimeoutExpired:
      for w in workers:
        w.kill()
      pytest.fail("the two-process run did not finish in 400 s")
  for worker, output in zip(workers, outputs, strict=True):
    assert worker.returncode == 0, output[-3000:]
  one = str(tmp_path / "one")
  single = _driver(one)
  output = single.communicate(timeout=400)[0]
  assert single.returncode == 0, output[-3000:]
  assert _relative_error(_params(two), _params(one)) < 1e-5
  assert _final(two) == pytest.approx(_final(one), abs=1e-4)
  # Only process 0 wrote the logs: one metrics file, no duplicate lines.
  with open(os.path.join(two, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  train_steps = [r["step"] for r in records if r["kind"] == "train"]
  assert train_steps == [1, 2, 3]


@pytest.mark.slow
def test_bench_parallel_writes_a_row_per_cell(tmp_path):
  out = tmp_path / "bench.json"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.bench_parallel",
      "--devices=2,16",
      "--mining=global,local",
      "--batch_size=20",
      "--image_size=8",
      "--repeats=1",
      f"--out={out}",
    ],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=ROOT),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out) as f:
    rows = json.load(f)["rows"]
  # 20 images on 2 devices: 10 each, two whole classes, so local runs too.
  # 16 > the 8 devices there are: skipped with a line, no row.
  assert [(r["devices"], r["mining"]) for r in rows] == [
    (2, "global"),
    (2, "local"),
  ]
  assert all(r["seconds"] > 0 for r in rows)
