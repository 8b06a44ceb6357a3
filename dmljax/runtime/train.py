"""Training and evaluation of an embedding: state, steps, loop.

Shape letters: B batch, H × W × C images, D embedding dimensions.

The train state is a plain dict pytree (big_vision style, no TrainState
class):

  {"params": {"embed": network, "beta": β}, "batch_stats": BatchNorm stats,
   "opt": Optax state, "step": int32, "rng": PRNG key data,
   "nonfinite_step": int32 (−1 while every loss so far was finite)}

How a step trains is a recipe (`dmljax.runtime.recipes`): a sampler + loss
method on P × K batches (`recipes/pk_methods.py`: one jitted step embeds the
batch, runs the method, applies one Optax update to the network (Adam) and β
(SGD); data parallel over a device mesh, the sampler seeing the global batch
or each device's slice, BatchNorm synchronised, the numbers independent of the
device count) or DE-DSP (its own recipe). A step whose loss or gradients are
not finite leaves the state unchanged and records its step number, so the last
good state is never overwritten; the loop stops with an error naming that
step.

`train_and_evaluate(config, workdir)` runs the whole job: it resumes from
the latest checkpoint in `workdir` (data iterator included, so a killed and
rerun job ends with the same numbers as an uninterrupted one), evaluates on
the held-out classes, and leaves metrics, plots and checkpoints behind.
"""

from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dmljax import beta as beta_lib
from dmljax import data as data_lib
from dmljax import losses as losses_lib
from dmljax import models as models_lib
from dmljax import optim as optim_lib
from dmljax import parallel
from dmljax.runtime import checkpoint as checkpoint_lib
from dmljax.runtime import config_checks
from dmljax.runtime import divergence
from dmljax.runtime import evaluation
from dmljax.runtime import recipes
from dmljax.runtime import reporting
from dmljax.runtime import rundir

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


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> dict[str, float]:
  """Trains, evaluates and checkpoints; resumes from `workdir` if possible.

  The recipe of `config` (`dmljax.runtime.recipes.build`) says what a step
  consumes, its devices and its step; the loop, checkpoints, evaluation
  and reporting are the same for every recipe. In a multi-host run every
  process calls this with the same config; each reads its own rows of every
  batch, and only process 0 writes metrics, plots and the summary.

  Every value of `config` is checked first
  (`dmljax.runtime.config_checks`), then the workdir is claimed
  (`dmljax.runtime.rundir`: one process at a time, and a resume may not
  contradict the run's config); nothing is loaded, compiled or written
  before both pass.

  Returns:
    The final evaluation metrics (also in `workdir/metrics.jsonl` and
    `workdir/summary.json`).
  """
  config_checks.check_config(config)
  with rundir.claim(workdir, config, primary=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir)


class _Run(NamedTuple):
  """What the loop shares with the rest of `_train_and_evaluate`."""

  start: int  # The step the run resumes from (0: a fresh start).
  log: reporting.MetricsLog
  evaluate: Callable  # (state, step) → (metrics, test embeddings).
  checkpointer: checkpoint_lib.Checkpointer


def _train_and_evaluate(config, workdir):
  """`train_and_evaluate` once the config and the workdir passed."""
  primary = jax.process_index() == 0
  train_split, test_split = data_lib.load_splits(config)
  checkpointer = checkpoint_lib.Checkpointer(
    rundir.checkpoints_folder(workdir), max_to_keep=config.ckpt.max_to_keep
  )
  recipe = recipes.build(config, train_split.image_shape)
  tx = make_optimizer(config)
  state = create_train_state(
    config,
    recipe.model,
    tx,
    input_shape=(recipe.batch_size, *train_split.image_shape),
    num_classes=train_split.num_classes,
    num_images=len(train_split),
  )
  prepared = recipe.prepare(state, tx)
  batches = _train_batches(config, train_split, recipe)
  state, start = prepared.state, 0
  if checkpointer.latest_step() is not None:
    state, data_state = checkpointer.restore(state)
    batches.set_state(data_state)
    start = int(parallel.to_host(state["step"]))
  log = reporting.MetricsLog(workdir, resume_step=start, enabled=primary)
  if prepared.before_training is not None:
    state = prepared.before_training(state, train_split, log)
  evaluate = _evaluator(config, recipe.model, test_split, checkpointer)
  run = _Run(start=start, log=log, evaluate=evaluate, checkpointer=checkpointer)
  state = _train_loop(config, recipe, prepared.step, state, batches, run)
  final, embeddings = evaluate(state, config.train.num_steps)
  log.write(config.train.num_steps, "final", final)
  checkpointer.close()
  if primary:
    reporting.finish(
      workdir,
      config,
      final,
      beta=_learned_beta(config, state),
      split=test_split,
      embeddings=embeddings,
      log=log,
    )
  return final


def _train_batches(config, split, recipe):
  """This process's iterator of the run's training batches (resumable)."""
  return iter(
    data_lib.pk_batches(
      split,
      batch_size=recipe.batch_size,
      images_per_class=recipe.images_per_class,
      seed=config.seed,
      num_steps=config.train.num_steps,
      max_shift=config.data.max_shift,
      flip=config.data.flip,
      num_workers=config.data.num_workers,
      shard_index=jax.process_index(),
      shard_count=jax.process_count(),
    )
  )


def _check_finite(state, checkpointer) -> None:
  """FloatingPointError naming the step whose update was not finite."""
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


def _evaluator(config, model, test_split, checkpointer):
  """evaluate(state, step) → (metrics, float32 [N, D] test embeddings)."""
  embed_fn = evaluation.make_embed_fn(model)
  options = evaluation.EvalOptions(
    ks=tuple(config.eval.ks),
    batch_size=config.eval.batch_size,
    block_size=config.eval.block_size,
    kmeans_iters=config.eval.kmeans_iters,
    num_folds=config.eval.num_folds,
    num_workers=config.data.num_workers,
    seed=config.seed,
  )

  def evaluate(state, step):
    final = step == config.train.num_steps
    clustering = final or config.eval.clustering_during_training
    try:
      return evaluation.evaluate_embeddings(
        embed_fn, state, test_split, options, clustering=clustering
      )
    except FloatingPointError as error:  # Finite weights, but huge ones.
      raise divergence.nonfinite_evaluation(
        step, checkpointer.latest_step()
      ) from error

  return evaluate


def _train_loop(config, recipe, step_fn, state, batches, run):
  """Steps run.start + 1 … num_steps: logs, evaluations, checkpoints."""
  num_steps, primary = config.train.num_steps, run.log.enabled
  collapse = divergence.CollapseWatch()
  progress = reporting.progress_bar(run.start, num_steps, enabled=primary)
  if primary and recipe.num_devices > 1:
    progress.write(
      f"Data parallel: {recipe.num_devices} devices, "
      f"{config.parallel.mining} mining."
    )
  for step in range(run.start + 1, num_steps + 1):
    state, metrics = step_fn(state, recipe.place_batch(next(batches)))
    last = step == num_steps
    if step % config.train.log_every == 0 or last:
      _check_finite(state, run.checkpointer)
      values = {name: float(v) for name, v in parallel.to_host(metrics).items()}
      run.log.write(step, "train", values)
      collapse.observe(
        step,
        values,
        last_checkpoint=run.checkpointer.latest_step(),
        final=last,
      )
      progress.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)
    if step % config.train.eval_every == 0 and not last:
      run.log.write(step, "eval", run.evaluate(state, step)[0])
    if step % config.ckpt.every == 0 or last:
      _check_finite(state, run.checkpointer)
      host_metrics = parallel.to_host(metrics)  # Synced by the save anyway.
      if not divergence.looks_collapsed(host_metrics):  # Keep the last good.
        run.checkpointer.save(step, state, batches.get_state())
    progress.update(1)
  progress.close()
  _check_finite(state, run.checkpointer)
  return state


def _learned_beta(config, state) -> dict[str, float] | None:
  """min / median / mean / max of the learned β, for a loss that has one."""
  if not losses_lib.loss_spec(config.loss.name).takes_beta:
    return None
  learned = parallel.to_host(state["params"]["beta"])
  statistics = beta_lib.class_beta_statistics(learned)
  return {name: float(v) for name, v in statistics.items()}
