"""Data parallelism over a device mesh, with mining over the global batch.

Shape letters: B global batch, n devices on the mesh's "data" axis, b = B / n
rows per device, D embedding dimensions, K images per class.

The batch is split over the devices in contiguous slices: device i holds rows
i·b .. (i+1)·b − 1 of the P×K batch. Each device embeds its slice. Then:

* mining = "global" (default): the embeddings, labels and image ids are
  all-gathered in device order (`all_gather(tiled=True)`), which restores the
  global batch exactly as one device would see it, P×K layout included. Every
  device runs the sampler and the loss on the same [B, B] distance matrix
  with the same key, so the sampled tuples, the loss and the gradients do not
  depend on n.
* mining = "local": each device samples on its own [b, b] slice with its own
  key (the step key folded with the device index); the objective is the mean
  of the devices' losses. Each slice must hold whole classes: b a multiple of
  K (checked by `check_sharding`).

Gradients. The step runs under `jax.shard_map` with `check_vma=True`: the
parameters are replicated (device-invariant), so the gradient JAX returns for
them is already summed over the devices (the transpose of the implicit
broadcast is a psum). Each device therefore differentiates loss / n: under
global mining every device holds the whole loss and the sum of n copies of
loss / n is the loss; under local mining the sum is the mean of the local
losses. No explicit psum is applied to the gradients: one would multiply
them by n (the equivalence tests in tests/test_parallel.py catch it).

BatchNorm is synchronised: the models take `axis_name="data"`, and their
batch statistics in training are averaged over the mesh, so they are the
global batch's statistics whatever n. Running averages come out replicated.

Multi-host: every process holds its own devices' slices of the batch
(`shard_batch` builds the global array from the process-local rows, which
`dmljax.data.pk_batches(shard_index=process_index, shard_count=
process_count)` reads). `initialize_distributed` starts `jax.distributed`.
"""

import os
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

DATA_AXIS = "data"
MINING = ("global", "local")

# The environment variables `jax.distributed.initialize` reads itself (plus
# cluster auto-detection: SLURM, Open MPI, Kubernetes, Cloud TPU).
DISTRIBUTED_ENV = (
  "JAX_COORDINATOR_ADDRESS",
  "JAX_NUM_PROCESSES",
  "JAX_PROCESS_ID",
)


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  force: bool = False,
) -> bool:
  """Starts `jax.distributed` when asked to, by arguments or environment.

  Called by the drivers before any other JAX call. Nothing happens on a
  single host (no argument, none of `DISTRIBUTED_ENV` set, `force` False).

  Args:
    coordinator_address: "host:port" of process 0; None: JAX's default
      (environment or cluster auto-detection).
    num_processes: the number of processes; None: auto-detected.
    process_id: this process's index; None: auto-detected.
    force: initialise even with no argument or variable (auto-detection on a
      supported cluster).

  Returns:
    True if `jax.distributed.initialize` was called.
  """
  asked = (coordinator_address, num_processes, process_id)
  from_env = any(os.environ.get(name) for name in DISTRIBUTED_ENV)
  if not (force or from_env or any(a is not None for a in asked)):
    return False
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
  )
  return True


def check_sharding(
  batch_size: int, num_devices: int, images_per_class: int, mining: str
) -> None:
  """ValueError unless a batch of B splits into n slices for `mining`."""
  if mining not in MINING:
    raise ValueError(f"Unknown mining {mining!r}; choose one of {MINING}.")
  if num_devices < 1:
    raise ValueError(f"num_devices must be positive, got {num_devices}.")
  if batch_size % num_devices:
    raise ValueError(
      f"The batch of {batch_size} does not split over {num_devices} "
      "devices: make --config.data.batch_size a multiple of the device "
      "count, or set --config.parallel.num_devices."
    )
  local = batch_size // num_devices
  if mining == "local" and local % images_per_class:
    raise ValueError(
      f"Local mining needs whole classes on each device, but {num_devices} "
      f"devices get {local} images each, not a multiple of K = "
      f"{images_per_class}: make the batch a multiple of "
      f"{num_devices * images_per_class}, or use parallel.mining='global'."
    )


def choose_num_devices(
  batch_size: int,
  images_per_class: int,
  *,
  mining: str = "global",
  requested: int = 0,
  available: int | None = None,
  num_processes: int | None = None,
) -> int:
  """How many devices a run uses.

  `requested` > 0 is taken as is (and checked). 0 means all available
  devices when the batch splits over them; otherwise, on a single host, the
  largest count that it splits over (e.g. a batch of 25 on 8 devices uses
  5), so that the same command runs from one device to many. A multi-host
  run always uses every device.

  Args:
    batch_size: B.
    images_per_class: K.
    mining: "global" or "local" (local needs whole classes per device).
    requested: `config.parallel.num_devices`; 0 for automatic.
    available: the device count (default `jax.device_count()`).
    num_processes: the process count (default `jax.process_count()`).

  Returns:
    n, with `check_sharding(batch_size, n, images_per_class, mining)` true.
  """
  available = jax.device_count() if available is None else available
  processes = jax.process_count() if num_processes is None else num_processes
  if requested < 0 or requested > available:
    raise ValueError(
      f"num_devices must be in 0..{available} (0: automatic), got {requested}."
    )
  if requested or processes > 1:
    count = requested or available
    check_sharding(batch_size, count, images_per_class, mining)
    return count
  for count in range(available, 0, -1):
    try:
      check_sharding(batch_size, count, images_per_class, mining)
    except ValueError:
      continue
    return count
  raise AssertionError("one device always fits")  # pragma: no cover


def make_mesh(
  num_devices: int | None = None, devices: Sequence[Any] | None = None
) -> jax.sharding.Mesh:
  """A 1-D mesh with axis "data" over the first n devices (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  num_devices = len(devices) if num_devices is None else num_devices
  if not 1 <= num_devices <= len(devices):
    raise ValueError(
      f"num_devices must be in 1..{len(devices)}, got {num_devices}."
    )
  return jax.make_mesh(
    (num_devices,), (DATA_AXIS,), devices=devices[:num_devices]
  )


def local_mesh(devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
  """A 1-D "data" mesh over this process's devices (default: all local).

  For work each process does on its own (evaluation): no array on it spans
  processes. Its axis type is Auto (`jax.sharding.Mesh`'s default), so jit
  places the computation from its inputs' shardings.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  if not devices:
    raise ValueError("local_mesh needs at least one device.")
  return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The sharding of parameters and state: a full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The sharding of a batch: leading axis split over "data"."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Every leaf of `tree` (same values on every process) replicated."""
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(
      sharding, np.asarray(x), np.shape(x)
    ),
    tree,
  )


def shard_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh):
  """Global [B, ...] arrays from this process's rows of the batch."""
  sharding = batch_sharding(mesh)
  return {
    name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
    for name, value in batch.items()
  }


def to_host(tree: Any) -> Any:
  """NumPy copies of replicated arrays (any process; no communication)."""

  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = x.addressable_data(0)
    return np.asarray(jax.device_get(x))

  return jax.tree.map(fetch, tree)


def sharded_gradients(
  objective: Callable[..., tuple[jax.Array, dict[str, jax.Array], Any]],
  mesh: jax.sharding.Mesh,
  *,
  mining: str = "global",
) -> Callable:
  """Wraps a per-batch objective into a data-parallel gradient function.

  Args:
    objective: (params, batch_stats, key, batch, gather) → (loss, aux,
      new batch_stats), differentiable in params. `gather(x)` is what the
      objective applies to the embeddings, labels and image ids before the
      method: the all-gather for global mining, the identity for local.
    mesh: the mesh, with axis "data".
    mining: "global" or "local" (see the module docstring).

  Returns:
    fn(params, batch_stats, key, batch) → (loss, aux, grads, batch_stats):
    params, batch_stats and key replicated, batch sharded along its leading
    axis; every output replicated. loss and aux are the global batch's
    (global mining) or the device mean (local mining); aux as float32.
  """
  if mining not in MINING:
    raise ValueError(f"Unknown mining {mining!r}; choose one of {MINING}.")
  num_devices = mesh.shape[DATA_AXIS]

  def gather(x):
    return jax.lax.all_gather(x, DATA_AXIS, tiled=True)

  def per_device(params, batch_stats, key_data, batch):
    key = jax.random.wrap_key_data(key_data)
    if mining == "local":
      key = jax.random.fold_in(key, jax.lax.axis_index(DATA_AXIS))
    select = gather if mining == "global" else (lambda x: x)

    def scaled(params):
      loss, aux, stats = objective(params, batch_stats, key, batch, select)
      # Gradients of replicated params are summed over devices (vma).
      return loss / num_devices, (loss, aux, stats)

    grads, (loss, aux, stats) = jax.grad(scaled, has_aux=True)(params)
    mean = lambda x: jax.lax.pmean(jnp.asarray(x, jnp.float32), DATA_AXIS)  # noqa: E731
    return mean(loss), jax.tree.map(mean, aux), grads, stats

  spec = PartitionSpec()
  mapped = jax.shard_map(
    per_device,
    mesh=mesh,
    in_specs=(spec, spec, spec, PartitionSpec(DATA_AXIS)),
    out_specs=(spec, spec, spec, spec),
  )

  def fn(params, batch_stats, key, batch):
    return mapped(params, batch_stats, jax.random.key_data(key), batch)

  return fn
