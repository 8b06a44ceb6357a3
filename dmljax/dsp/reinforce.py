"""REINFORCE for the deep sampler network (DE-DSP eqs. 6 and 8).

Shape letters: m sampled tuples in a mini-batch.

The sampler maximises E_{x~p(x;η)}[S(x)] with S the embedding loss of the
sampled tuple. Its gradient (eq. 8) is E[S(x) ∇η log p(x; η)], estimated on
a mini-batch of m draws as (1/m) Σ_i A_i ∇η log p(x_i; η), where
A_i = S(x_i) − b_i is the score minus a baseline (the paper's footnote: the
mini-batch mean, so that scores take both signs).

Baselines, and what the estimator's expectation is (∇J the exact gradient
of the expected score; tests/test_dsp.py checks both exactly):

* "mean": b_i = (1/m) Σ_j S(x_j), the paper's. The sample's own score is
  inside its baseline, so the expectation is (1 − 1/m) ∇J: the right
  direction, shrunk.
* "leave_one_out": b_i = (1/(m−1)) Σ_{j≠i} S(x_j). Independent of x_i, so
  the expectation is exactly ∇J.
* "none": b_i = 0, unbiased but of higher variance.
"""

import jax
import jax.numpy as jnp

BASELINES = ("mean", "leave_one_out", "none")


def advantages(
  scores: jax.Array, mask: jax.Array, baseline: str = "mean"
) -> jax.Array:
  """A_i = S_i − b_i over the valid tuples; 0 where masked.

  Args:
    scores: [m] float scores S(x_i).
    mask: [m] bool, valid tuples.
    baseline: one of `BASELINES`.

  Returns:
    [m] advantages, with no gradient (a constant for the policy).
  """
  if baseline not in BASELINES:
    raise ValueError(
      f"Unknown baseline {baseline!r}; choose one of {BASELINES}."
    )
  scores = jax.lax.stop_gradient(jnp.where(mask, scores, 0.0))
  count = jnp.sum(mask)
  if baseline == "none":
    base = jnp.zeros_like(scores)
  elif baseline == "mean":
    base = jnp.sum(scores) / jnp.maximum(count, 1)
  else:
    others = jnp.sum(scores) - scores
    base = others / jnp.maximum(count - 1, 1)
  return jnp.where(mask, scores - base, 0.0)


def reinforce_loss(
  log_probs: jax.Array, advantages: jax.Array, mask: jax.Array
) -> jax.Array:
  """The surrogate −(1/m) Σ_i A_i log p(x_i); its gradient is −eq. (8).

  Minimising it with any optimiser ascends the expected score.

  Args:
    log_probs: [m] log p(x_i; η), differentiable in η.
    advantages: [m] from `advantages` (constants).
    mask: [m] bool, valid tuples (the others count for nothing).

  Returns:
    Scalar.
  """
  terms = jnp.where(mask, jax.lax.stop_gradient(advantages) * log_probs, 0.0)
  return -jnp.sum(terms) / jnp.maximum(jnp.sum(mask), 1)
