"""One Optax optimiser over the parameter dict, one transform per subtree.

Parameters live in a plain dict whose top-level keys name the subtrees:
{"embed": network, "beta": margin-loss β} (DE-DSP's sampler network has its
own optimiser and state). Each subtree gets its own transform (network
Adam, β SGD with its own learning rate), combined with `optax.partition` as
in big_vision.
"""

from collections.abc import Mapping
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from dmljax import beta as beta_lib


def partitioned_optimizer(
  transforms: Mapping[str, optax.GradientTransformation],
) -> optax.GradientTransformation:
  """Applies transforms[name] to params[name] for each top-level key.

  Args:
    transforms: subtree name → Optax transform.

  Returns:
    An Optax transform over a dict with (a subset of) those keys; a key with
    no transform raises a ValueError naming it at `init`.
  """
  transforms = dict(transforms)

  def labels(params):
    missing = sorted(set(params) - set(transforms))
    if missing:
      raise ValueError(
        f"No optimiser for parameter subtrees {missing}; transforms are "
        f"given for {sorted(transforms)}."
      )
    return {name: name for name in params}

  return optax.partition(transforms, labels)


WEIGHT_DECAY_MODES = ("decoupled", "l2")


def network_optimizer(
  *,
  learning_rate: float | optax.Schedule = 1e-4,
  weight_decay: float = 0.0,
  weight_decay_mode: str = "decoupled",
  epsilon: float = 1e-8,
  gradient_divisor: float = 1.0,
) -> optax.GradientTransformation:
  """Adam for the network, with weight decay the AdamW or the MXNet way.

  g ← g / gradient_divisor; then "decoupled": AdamW (w ← w − lr·(Adam(g) +
  wd·w)); "l2": g ← g + wd·w before Adam, as MXNet's Adam does (`grad =
  rescale_grad·grad + wd·weight`), which with the authors'
  `Trainer.step(batch_size)` means gradient_divisor = B.

  Args:
    learning_rate: Adam's learning rate or schedule.
    weight_decay: wd; 0 for plain Adam.
    weight_decay_mode: "decoupled" or "l2".
    epsilon: Adam's ε (optax 1e-8; the authors' 1e-7).
    gradient_divisor: every gradient is divided by it first (1: as is).
  """
  if weight_decay_mode not in WEIGHT_DECAY_MODES:
    raise ValueError(
      f"Unknown weight_decay_mode {weight_decay_mode!r}; choose one of "
      f"{WEIGHT_DECAY_MODES}."
    )
  if not gradient_divisor > 0:
    raise ValueError(f"gradient_divisor must be > 0, got {gradient_divisor}.")
  parts = []
  if gradient_divisor != 1:
    parts.append(optax.scale(1.0 / gradient_divisor))
  if weight_decay and weight_decay_mode == "decoupled":
    parts.append(
      optax.adamw(learning_rate, eps=epsilon, weight_decay=weight_decay)
    )
  else:
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.adam(learning_rate, eps=epsilon))
  return parts[0] if len(parts) == 1 else optax.chain(*parts)


def is_backbone_conv_kernel(path: tuple, _=None) -> bool:
  """True for a convolution kernel of the backbone (not BN, not the head).

  The authors give pretrained convolutions 0.01 × the learning rate
  (`lr_mult` of every parameter whose name contains "conv").
  """
  names = [str(getattr(entry, "key", "")) for entry in path]
  return (
    "backbone" in names
    and any("conv" in name for name in names)
    and names[-1] == "kernel"
  )


def with_conv_lr_multiplier(
  network: optax.GradientTransformation, multiplier: float
) -> optax.GradientTransformation:
  """`network`, its updates of backbone conv kernels scaled by `multiplier`.

  Adam is elementwise, so two copies over disjoint leaves equal one over
  all; scaling the final update is the MXNet `lr_mult` (weight decay
  included, as there).
  """
  if multiplier == 1:
    return network

  def labels(tree):
    return jax.tree_util.tree_map_with_path(
      lambda path, _: "conv" if is_backbone_conv_kernel(path) else "rest",
      tree,
    )

  return optax.partition(
    {"conv": optax.chain(network, optax.scale(multiplier)), "rest": network},
    labels,
  )


def embedding_optimizer(
  *,
  learning_rate: float | optax.Schedule = 1e-4,
  weight_decay: float = 0.0,
  weight_decay_mode: str = "decoupled",
  epsilon: float = 1e-8,
  gradient_divisor: float = 1.0,
  conv_lr_multiplier: float = 1.0,
  beta_learning_rate: float | optax.Schedule = 0.1,
  beta_momentum: float = 0.9,
  beta_trainable: Sequence[str] = beta_lib.AUTHORS_TRAINABLE,
  beta_gradient_divisor: float = 1.0,
) -> optax.GradientTransformation:
  """Adam(W) for the network and SGD for β, the paper's training setup.

  Wu et al. train with Adam; the authors' code gives β its own SGD (lr 0.1,
  momentum 0.9, per-class β only, gradients divided by the batch size).
  Use for params {"embed": ..., "beta": ...}.

  Args:
    learning_rate, weight_decay, weight_decay_mode, epsilon,
      gradient_divisor: the network's Adam (`network_optimizer`).
    conv_lr_multiplier: learning-rate factor of the backbone's conv kernels
      (the authors' 0.01 for a pretrained backbone; 1: none).
    beta_learning_rate: β's learning rate or schedule.
    beta_momentum: β's SGD momentum.
    beta_trainable: which β parts learn (see `dmljax.beta.beta_optimizer`).
    beta_gradient_divisor: β's gradients are divided by it (the authors':
      the global batch size).
  """
  network = network_optimizer(
    learning_rate=learning_rate,
    weight_decay=weight_decay,
    weight_decay_mode=weight_decay_mode,
    epsilon=epsilon,
    gradient_divisor=gradient_divisor,
  )
  return partitioned_optimizer(
    {
      "embed": with_conv_lr_multiplier(network, conv_lr_multiplier),
      "beta": beta_lib.beta_optimizer(
        learning_rate=beta_learning_rate,
        momentum=beta_momentum,
        trainable=beta_trainable,
        gradient_divisor=beta_gradient_divisor,
      ),
    }
  )


def apply_gradients(
  tx: optax.GradientTransformation,
  state: dict,
  grads,
  loss: jax.Array,
  **changes,
) -> tuple[dict, jax.Array]:
  """One guarded Optax update of a train state: every recipe's step ends here.

  Args:
    tx: the optimiser of state["params"] (state["opt"] is its state).
    state: a train-state dict with "params", "opt", "step", "nonfinite_step".
    grads: ∂loss/∂params.
    loss: the step's scalar loss.
    **changes: other entries of the new state (e.g. batch_stats).

  Returns:
    (the new state, or `state` with the bad step recorded when the loss or
    gradients are not finite (`skip_nonfinite`); the gradients' global norm).
  """
  updates, opt = tx.update(grads, state["opt"], state["params"])
  new = dict(
    state,
    params=optax.apply_updates(state["params"], updates),
    opt=opt,
    step=state["step"] + 1,
    **changes,
  )
  return skip_nonfinite(new, state, loss, grads), optax.tree.norm(grads)


def skip_nonfinite(new: dict, state: dict, loss: jax.Array, grads) -> dict:
  """`new` if the loss and gradients are finite, else the old `state`.

  Both are train-state dicts with "step" and "nonfinite_step" (−1 until the
  first non-finite step). A non-finite step keeps the last good state, so
  no checkpoint ever holds NaN, and records its step number (the first one
  only) for the loop to report.
  """
  finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
  kept = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
  first_bad = (state["nonfinite_step"] < 0) & ~finite
  kept["nonfinite_step"] = jnp.where(
    first_bad, state["step"] + 1, state["nonfinite_step"]
  )
  return kept
