"""Training and evaluation of an embedding: state, steps, loop.

Shape letters: B batch, H × W × C images, D embedding dimensions.

The train state is a plain dict pytree (big_vision style, no TrainState
class):

  {"params": {"embed": network, "beta": β}, "batch_stats": BatchNorm stats,
   "opt": Optax state, "step": int32, "rng": PRNG key data,
   "nonfinite_step": int32 (−1 while every loss so far was finite)}

One jitted step embeds the batch, runs the method (sampler + loss, see
`dmljax.methods`) on the embeddings and applies one Optax update to the
network (Adam) and β (SGD). A step whose loss or gradients are not finite
leaves the state unchanged and records its step number, so the last good
state is never overwritten; the loop stops with an error naming that step.

With a device mesh the step is data parallel (`dmljax.parallel`): the batch
is split over the devices, the sampler sees the global batch (or each
device's slice, `config.parallel.mining`), BatchNorm is synchronised, and
the numbers do not depend on the device count.

`train_and_evaluate(config, workdir)` runs the whole job: it resumes from
the latest checkpoint in `workdir` (data iterator included, so a killed and
rerun job ends with the same numbers as an uninterrupted one), evaluates on
the held-out classes, and leaves metrics, plots and checkpoints behind.
"""

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dmljax import beta as beta_lib
from dmljax import checkpoint as checkpoint_lib
from dmljax import config_checks
from dmljax import data as data_lib
from dmljax import divergence
from dmljax import evaluation
from dmljax import methods as methods_lib
from dmljax import models as models_lib
from dmljax import optim as optim_lib
from dmljax import parallel
from dmljax import reporting
from dmljax import rundir
from dmljax.dsp import training as dsp_training

# The options of each sampler that a config carries (others take none).
SAMPLER_OPTIONS = {
  "random": (),
  "hard": (),
  "semihard": ("lower_bound", "fallback"),
  "distance_weighted": (
    "cutoff",
    "nonzero_loss_cutoff",
    "method",
    "no_usable_negative",
  ),
}


def make_model(
  config: ml_collections.ConfigDict, *, axis_name: str | None = None
):
  """The embedding network of `config.model`.

  `axis_name` synchronises BatchNorm over that mesh axis in training
  (`parallel.DATA_AXIS` for the data-parallel step).
  """
  kwargs = dict(config.model.backbone_kwargs)
  if axis_name is not None:
    kwargs["axis_name"] = axis_name
  return models_lib.make_embedder(
    config.model.name,
    embedding_dim=config.model.embedding_dim,
    dtype=jnp.dtype(config.model.dtype),
    **kwargs,
  )


def make_method(config: ml_collections.ConfigDict) -> methods_lib.Method:
  """The (sampler, loss) of `config` as a pure function."""
  sampler = config.sampler.name
  if sampler not in SAMPLER_OPTIONS:
    raise ValueError(
      f"Unknown sampler {sampler!r}; choose one of {sorted(SAMPLER_OPTIONS)}."
    )
  options = {
    name: config.sampler[name]
    for name in SAMPLER_OPTIONS[sampler]
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


def uses_devices(config: ml_collections.ConfigDict, count: int) -> bool:
  """Whether a one-process run of `config` would use all `count` devices.

  DE-DSP runs on one device; the P × K methods on as many as the batch
  splits over (`parallel.choose_num_devices`). Needs no JAX backend, so
  `dmljax.cpu_devices.configure` can ask it before JAX starts.
  """
  if dsp_training.is_dsp(config):
    return count == 1
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


SCHEDULES = ("warmup_cosine", "step")
GRADIENT_DIVISORS = ("none", "batch_size")


def _learning_rate_schedule(config, peak: float) -> optax.Schedule:
  """config.optim.schedule with peak value `peak` (network or β)."""
  optim, num_steps = config.optim, config.train.num_steps
  if optim.schedule not in SCHEDULES:
    raise ValueError(
      f"Unknown optim.schedule {optim.schedule!r}; choose one of {SCHEDULES}."
    )
  if optim.schedule == "step":  # The authors' epochs 12, 14, 16, 18 of 20.
    boundaries = {}
    for fraction in optim.decay_at:
      step = int(round(fraction * num_steps))
      boundaries[step] = boundaries.get(step, 1.0) * optim.decay_factor
    return optax.piecewise_constant_schedule(peak, boundaries)
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=peak,
    warmup_steps=optim.warmup_steps,
    decay_steps=max(num_steps, optim.warmup_steps + 1),
    end_value=peak * optim.final_lr_fraction,
  )


def _gradient_divisor(config, name: str, value: str) -> float:
  if value not in GRADIENT_DIVISORS:
    raise ValueError(
      f"Unknown {name} {value!r}; choose one of {GRADIENT_DIVISORS} "
      "(batch_size: gradients divided by the global batch, as the authors' "
      "Trainer.step(batch_size))."
    )
  return float(config.data.batch_size) if value == "batch_size" else 1.0


def make_optimizer(config: ml_collections.ConfigDict):
  """Adam(W) for the network and SGD for β, as `config.optim` / `.beta` say.

  The network's learning rate follows `optim.schedule`; β's follows the
  same "step" schedule (the authors halve both) and is constant under
  "warmup_cosine".
  """
  optim = config.optim
  beta_learning_rate = config.beta.learning_rate
  if optim.schedule == "step":
    beta_learning_rate = _learning_rate_schedule(config, beta_learning_rate)
  conv_multiplier = (
    optim.pretrained_conv_lr_multiplier if config.model.pretrained else 1.0
  )
  return optim_lib.embedding_optimizer(
    learning_rate=_learning_rate_schedule(config, optim.learning_rate),
    weight_decay=optim.weight_decay,
    weight_decay_mode=optim.weight_decay_mode,
    epsilon=optim.epsilon,
    gradient_divisor=_gradient_divisor(
      config, "optim.gradient_divisor", optim.gradient_divisor
    ),
    conv_lr_multiplier=conv_multiplier,
    beta_learning_rate=beta_learning_rate,
    beta_momentum=config.beta.momentum,
    beta_trainable=tuple(config.beta.trainable),
    beta_gradient_divisor=_gradient_divisor(
      config, "beta.gradient_divisor", config.beta.gradient_divisor
    ),
  )


def create_train_state(
  config: ml_collections.ConfigDict,
  model,
  tx: optax.GradientTransformation,
  *,
  input_shape: tuple[int, ...],
  num_classes: int,
  num_images: int,
) -> dict[str, Any]:
  """The initial train state (see the module docstring)."""
  key = jax.random.key(config.seed)
  init_key, rng = jax.random.split(key)
  variables = models_lib.init_embedder(model, init_key, input_shape)
  if config.model.pretrained:  # ImageNet weights for the backbone.
    variables = models_lib.load_pretrained_backbone(
      variables, config.model.pretrained
    )
  beta = beta_lib.init_beta(
    beta0=config.beta.beta0,
    num_classes=num_classes if config.beta.per_class else None,
    num_images=num_images if config.beta.per_image else None,
  )
  params = {"embed": variables["params"], "beta": beta}
  return {
    "params": params,
    "batch_stats": variables.get("batch_stats", {}),
    "opt": tx.init(params),
    "step": jnp.zeros((), jnp.int32),
    "rng": jax.random.key_data(rng),
    "nonfinite_step": jnp.full((), -1, jnp.int32),
  }


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
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm = optax.tree.norm(grads)
    new = dict(
      state,
      params=params,
      batch_stats=batch_stats,
      opt=opt,
      step=state["step"] + 1,
    )
    new = optim_lib.skip_nonfinite(new, state, loss, grads)
    metrics = {
      "loss": loss,
      "grad_norm": grad_norm,
      **beta_lib.class_beta_statistics(new["params"]["beta"]),
      **aux,
    }
    return new, metrics

  return step


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> dict[str, float]:
  """Trains, evaluates and checkpoints; resumes from `workdir` if possible.

  The step runs data-parallel over `config.parallel.num_devices` devices
  (0: automatic, see `parallel.choose_num_devices`) with
  `config.parallel.mining` "global" or "local". In a multi-host run every
  process calls this with the same config; each reads its own rows of every
  batch, and only process 0 writes metrics, plots and the summary.

  Every value of `config` is checked first (`dmljax.config_checks`), then
  the workdir is claimed (`dmljax.rundir`: one process at a time, and a
  resume may not contradict the run's config); nothing is loaded, compiled
  or written before both pass.

  Returns:
    The final evaluation metrics (also in `workdir/metrics.jsonl` and
    `workdir/summary.json`).
  """
  config_checks.check_config(config)
  with rundir.claim(workdir, config, primary=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config, workdir):
  """`train_and_evaluate` once the config and the workdir passed."""
  primary = jax.process_index() == 0
  train_split, test_split = data_lib.load_splits(config)
  checkpointer = checkpoint_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"), max_to_keep=config.ckpt.max_to_keep
  )
  batch_size = config.data.batch_size
  images_per_class = config.data.images_per_class
  mining = config.parallel.mining
  dsp = dsp_training.is_dsp(config)
  if dsp:  # A pool of P × M candidates per step, on one device.
    dsp_training.check_config(config)
    classes, images_per_class = dsp_training.pool_shape(config)
    batch_size = classes * images_per_class
  num_devices = 1
  if not dsp:
    num_devices = parallel.choose_num_devices(
      batch_size,
      images_per_class,
      mining=mining,
      requested=config.parallel.num_devices,
    )
  mesh = parallel.make_mesh(num_devices)
  model = make_model(config, axis_name=None if dsp else parallel.DATA_AXIS)
  tx = make_optimizer(config)
  state = create_train_state(
    config,
    model,
    tx,
    input_shape=(batch_size, *train_split.image_shape),
    num_classes=train_split.num_classes,
    num_images=len(train_split),
  )
  if dsp:
    state, step_fn, pretrain_step = dsp_training.setup(
      config, model, tx, state, train_split.image_shape
    )
  else:
    step_fn = make_train_step(
      model, make_method(config), tx, mesh=mesh, mining=mining
    )
    state = parallel.replicate(state, mesh)
  batches = iter(
    data_lib.pk_batches(
      train_split,
      batch_size=batch_size,
      images_per_class=images_per_class,
      seed=config.seed,
      num_steps=config.train.num_steps,
      max_shift=config.data.max_shift,
      flip=config.data.flip,
      num_workers=config.data.num_workers,
      shard_index=jax.process_index(),
      shard_count=jax.process_count(),
    )
  )
  start = 0
  if checkpointer.latest_step() is not None:
    state, data_state = checkpointer.restore(state)
    batches.set_state(data_state)
    start = int(parallel.to_host(state["step"]))
  log = reporting.MetricsLog(workdir, resume_step=start, enabled=primary)
  if dsp:
    state, pretrained = dsp_training.pretrain_sampler(
      config, state, pretrain_step, train_split, enabled=primary
    )
    if pretrained is not None:
      log.write(0, "dsn_pretrain", pretrained)
  embed_fn = evaluation.make_embed_fn(model)
  num_steps = config.train.num_steps

  def check_finite(state):
    bad = int(parallel.to_host(state["nonfinite_step"]))
    if bad >= 0:
      last = checkpointer.latest_step()
      kept = "no checkpoint had been saved yet"
      if last is not None:
        kept = f"the last checkpoint (step {last}) was kept"
      raise FloatingPointError(
        f"The loss or its gradients became NaN/inf at step {bad}; the update "
        f"was skipped and {kept}. Lower the learning rate "
        "(--config.optim.learning_rate) or check the inputs."
      )

  def evaluate(step):  # → (metrics, float32 [N, D] test embeddings)
    final = step == num_steps
    clustering = final or config.eval.clustering_during_training
    try:
      return evaluation.evaluate_embeddings(
        embed_fn, state, test_split, config, clustering=clustering
      )
    except FloatingPointError as error:  # Finite weights, but huge ones.
      raise divergence.nonfinite_evaluation(
        step, checkpointer.latest_step()
      ) from error

  collapse = divergence.CollapseWatch()

  progress = reporting.progress_bar(start, num_steps, enabled=primary)
  if primary and num_devices > 1:
    progress.write(f"Data parallel: {num_devices} devices, {mining} mining.")
  for step in range(start + 1, num_steps + 1):
    batch = next(batches)
    if not dsp:
      batch = parallel.shard_batch(batch, mesh)
    state, metrics = step_fn(state, batch)
    if step % config.train.log_every == 0 or step == num_steps:
      check_finite(state)
      values = {name: float(v) for name, v in parallel.to_host(metrics).items()}
      log.write(step, "train", values)
      collapse.observe(
        step,
        values,
        last_checkpoint=checkpointer.latest_step(),
        final=step == num_steps,
      )
      progress.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)
    if step % config.train.eval_every == 0 and step != num_steps:
      log.write(step, "eval", evaluate(step)[0])
    if step % config.ckpt.every == 0 or step == num_steps:
      check_finite(state)
      host_metrics = parallel.to_host(metrics)  # Synced by the save anyway.
      if not divergence.looks_collapsed(host_metrics):  # Keep the last good.
        checkpointer.save(step, state, batches.get_state())
    progress.update(1)
  progress.close()
  check_finite(state)
  final, embeddings = evaluate(num_steps)
  log.write(num_steps, "final", final)
  checkpointer.close()
  if primary:
    beta = None
    if config.loss.name == "margin":
      learned = parallel.to_host(state["params"]["beta"])
      statistics = beta_lib.class_beta_statistics(learned)
      beta = {name: float(v) for name, v in statistics.items()}
    reporting.finish(
      workdir,
      config,
      final,
      beta=beta,
      split=test_split,
      embeddings=embeddings,
      log=log,
    )
  return final
