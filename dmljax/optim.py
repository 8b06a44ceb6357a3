"""One Optax optimiser over the parameter dict, one transform per subtree.

Parameters live in a plain dict whose top-level keys name the subtrees:
{"embed": network, "beta": margin-loss β, "sampler": DE-DSP policy}. Each
subtree gets its own transform (network Adam, β SGD with its own learning
rate), combined with `optax.partition` as in big_vision.
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


def embedding_optimizer(
  *,
  learning_rate: float | optax.Schedule = 1e-4,
  weight_decay: float = 0.0,
  beta_learning_rate: float = 0.1,
  beta_momentum: float = 0.9,
  beta_trainable: Sequence[str] = beta_lib.BETA_PARTS,
) -> optax.GradientTransformation:
  """Adam(W) for the network and SGD for β, the paper's training setup.

  Wu et al. train with Adam; the authors' code gives β its own SGD (lr 0.1,
  momentum 0.9). Use for params {"embed": ..., "beta": ...}.

  Args:
    learning_rate: the network's Adam learning rate or schedule.
    weight_decay: decoupled weight decay of the network (AdamW); 0 for Adam.
    beta_learning_rate: β's learning rate.
    beta_momentum: β's SGD momentum.
    beta_trainable: which β parts learn (see `dmljax.beta.beta_optimizer`).
  """
  network = (
    optax.adamw(learning_rate, weight_decay=weight_decay)
    if weight_decay
    else optax.adam(learning_rate)
  )
  return partitioned_optimizer(
    {
      "embed": network,
      "beta": beta_lib.beta_optimizer(
        learning_rate=beta_learning_rate,
        momentum=beta_momentum,
        trainable=beta_trainable,
      ),
    }
  )


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
