"""The P × K recipe: a sampler + loss method on class-balanced batches.

Each step draws P classes × K images (`dmljax.data.pk_batches`), embeds
them, runs the method (`dmljax.methods`: sampler + loss) and applies one
Optax update. Data parallel over as many devices as the batch splits over
(`dmljax.parallel`): BatchNorm synchronised, mining global or local.
"""

import functools

import jax
import ml_collections

from dmljax import beta as beta_lib
from dmljax import methods as methods_lib
from dmljax import optim as optim_lib
from dmljax import parallel
from dmljax import samplers
from dmljax.runtime.recipes import base


def make_method(config: ml_collections.ConfigDict) -> methods_lib.Method:
  """The (sampler, loss) of `config` as a pure function."""
  sampler = config.sampler.name
  options = {
    name: config.sampler[name]
    for name in samplers.SAMPLER_OPTIONS.get(sampler, ())
    if config.sampler[name] is not None
  }
  return methods_lib.make_method(
    sampler=sampler,
    loss=config.loss.name,
    images_per_class=config.data.images_per_class,
    num_negatives=config.sampler.num_negatives,
    margin=config.loss.margin,
    nu=config.loss.nu,
    reduction=config.loss.reduction,
    sampler_kwargs=options,
    npair_scale=config.loss.npair_scale,
  )


def make_objective(model, method):
  """objective(params, batch_stats, key, batch, gather) → (loss, aux, stats).

  Embeds the batch in training mode, applies `gather` (the identity, or the
  all-gather of global mining, see `dmljax.parallel`) to the embeddings,
  labels and image ids, and runs the method on the result.
  """

  def objective(params, batch_stats, key, batch, gather=lambda x: x):
    embeddings, updates = model.apply(
      {"params": params["embed"], "batch_stats": batch_stats},
      batch["image"],
      train=True,
      mutable=["batch_stats"],
    )
    loss, aux = method(
      key,
      gather(embeddings),
      gather(batch["label"]),
      params["beta"],
      gather(batch["index"]),
    )
    return loss, aux, updates.get("batch_stats", batch_stats)

  return objective


def make_train_step(model, method, tx, *, mesh=None, mining: str = "global"):
  """step(state, batch) -> (state, metrics), jitted with the state donated.

  batch: {"image": float32 [B, H, W, C], "label": int32 [B], "index": int32
  [B] dataset image ids}. metrics: scalars (loss, the method's aux, β mean,
  gradient norm).

  With a `mesh`, the state is replicated over it, the batch is split along
  its "data" axis (`parallel.shard_batch`) and the gradients come from
  `parallel.sharded_gradients` with `mining` "global" or "local"; the model
  must then synchronise BatchNorm (`make_model(..., axis_name="data")`).
  """
  objective = make_objective(model, method)
  if mesh is None:

    def gradients(params, batch_stats, key, batch):
      def loss_fn(params):
        loss, aux, stats = objective(params, batch_stats, key, batch)
        return loss, (aux, stats)

      grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
      (loss, (aux, stats)), grads = grad_fn(params)
      return loss, aux, grads, stats

  else:
    gradients = parallel.sharded_gradients(objective, mesh, mining=mining)

  @functools.partial(jax.jit, donate_argnums=0)
  def step(state, batch):
    key = jax.random.fold_in(
      jax.random.wrap_key_data(state["rng"]), state["step"]
    )
    loss, aux, grads, batch_stats = gradients(
      state["params"], state["batch_stats"], key, batch
    )
    new, grad_norm = optim_lib.apply_gradients(
      tx, state, grads, loss, batch_stats=batch_stats
    )
    metrics = {
      "loss": loss,
      "grad_norm": grad_norm,
      **beta_lib.class_beta_statistics(new["params"]["beta"]),
      **aux,
    }
    return new, metrics

  return step


def uses_devices(config: ml_collections.ConfigDict, count: int) -> bool:
  """Whether a one-process run would use all `count` devices."""
  try:
    chosen = parallel.choose_num_devices(
      config.data.batch_size,
      config.data.images_per_class,
      mining=config.parallel.mining,
      requested=config.parallel.num_devices,
      available=count,
      num_processes=1,
    )
  except ValueError:
    return False
  return chosen == count


def build(config: ml_collections.ConfigDict, image_shape) -> base.Recipe:
  """The P × K recipe of `config`, over the devices its batch splits over."""
  del image_shape  # The step takes any image shape.
  batch_size = config.data.batch_size
  images_per_class = config.data.images_per_class
  mining = config.parallel.mining
  num_devices = parallel.choose_num_devices(
    batch_size,
    images_per_class,
    mining=mining,
    requested=config.parallel.num_devices,
  )
  mesh = parallel.make_mesh(num_devices)
  model = base.make_model(config, axis_name=parallel.DATA_AXIS)

  def prepare(state, tx) -> base.Prepared:
    step = make_train_step(
      model, make_method(config), tx, mesh=mesh, mining=mining
    )
    return base.Prepared(state=parallel.replicate(state, mesh), step=step)

  return base.Recipe(
    model=model,
    batch_size=batch_size,
    images_per_class=images_per_class,
    num_devices=num_devices,
    prepare=prepare,
    place_batch=lambda batch: parallel.shard_batch(batch, mesh),
  )
