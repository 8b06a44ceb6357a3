"""What is averaged over what: the one place losses are reduced.

Shape letters: T tuples.

Losses return unreduced [T] terms; a method applies exactly one of these.

  * `nonzero_mean` is the paper's convention. The authors' `MarginLoss`
    divides Σ pos + Σ neg + ν Σ β by the number of non-zero terms (pos and
    neg counted separately), and PML's reducers for the margin, triplet and
    contrastive losses divide by the non-zero count too (`DivisorReducer`,
    `AvgNonZeroReducer`). Averaging over active terms keeps the gradient
    scale steady as training makes most terms zero; with a plain mean the
    step size would shrink with the fraction of active pairs.
  * `masked_mean` averages over every valid tuple, zeros included: the
    textbook risk estimate, and PML's `MeanReducer`.

The ν β penalty: the authors' code and PML's per-class β (`learn_beta=True,
num_classes=C`) put ν Σ_t β(t) in the numerator, divided by the non-zero
count: `nonzero_mean(..., extra=beta_penalty(...))`. Only PML's learned
scalar β (`num_classes=None`) adds ν·β once, undivided: pass `extra=0` and
add `nu * beta` outside to match it (tests/test_parity_pml.py checks both).
"""

import jax
import jax.numpy as jnp


def masked_mean(terms: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `terms` over the valid tuples: Σ_t m_t x_t / max(Σ_t m_t, 1).

  Args:
    terms: [T] terms.
    mask: [T] bool, the tuples that count.

  Returns:
    Scalar; 0 when nothing is valid (never NaN).

  >>> float(masked_mean(jnp.array([1.0, 3.0, 9.0]), jnp.array([1, 1, 0]) > 0))
  2.0
  """
  if terms.shape != mask.shape:
    raise ValueError(f"terms {terms.shape} and mask {mask.shape} differ.")
  total = jnp.sum(jnp.where(mask, terms, 0.0))
  return total / jnp.maximum(jnp.sum(mask), 1).astype(total.dtype)


def nonzero_mean(
  *terms: jax.Array, mask: jax.Array, extra: jax.Array | float = 0.0
) -> jax.Array:
  """(Σ_k Σ_t m_t x_k,t + extra) / max(#{(k, t): m_t, x_k,t > 0}, 1).

  The divisor of the authors' margin loss: every non-zero term of every
  argument counts once (so a tuple's positive and negative terms count
  separately). The count is a constant for differentiation.

  Args:
    *terms: one or more [T] non-negative term vectors.
    mask: [T] bool, the tuples that count.
    extra: added to the numerator, e.g. the ν β penalty.

  Returns:
    Scalar; `extra` when no term is non-zero (never NaN).

  >>> pos, neg = jnp.array([0.0, 0.3]), jnp.array([0.1, 0.0])
  >>> round(float(nonzero_mean(pos, neg, mask=jnp.array([True, True]))), 4)
  0.2
  """
  if not terms:
    raise ValueError("nonzero_mean needs at least one term vector.")
  total = jnp.asarray(extra, terms[0].dtype)
  count = jnp.zeros((), jnp.int32)
  for term in terms:
    if term.shape != mask.shape:
      raise ValueError(f"terms {term.shape} and mask {mask.shape} differ.")
    active = mask & (term > 0)
    total = total + jnp.sum(jnp.where(mask, term, 0.0))
    count = count + jnp.sum(active)
  return total / jnp.maximum(count, 1).astype(total.dtype)


REDUCTIONS = ("nonzero", "mean")


def reduce_terms(
  terms: tuple[jax.Array, ...],
  mask: jax.Array,
  *,
  reduction: str = "nonzero",
  extra: jax.Array | float | None = None,
) -> jax.Array:
  """A loss's value from its term vectors: `nonzero_mean` or `masked_mean`.

  Args:
    terms: the loss's term vectors (`dmljax.losses.LossSpec.terms`), each
      shaped like `mask`.
    mask: bool, the tuples that count.
    reduction: "nonzero" (`nonzero_mean` over all term vectors, the paper's)
      or "mean" (`masked_mean` of all terms of the valid tuples).
    extra: added to the numerator (the ν β penalty); under "mean" divided
      by the number of terms averaged.

  Returns:
    Scalar.

  >>> pos, neg = jnp.array([0.0, 0.3]), jnp.array([0.1, 0.0])
  >>> mask = jnp.array([True, True])
  >>> round(float(reduce_terms((pos, neg), mask, reduction="mean")), 4)
  0.1
  """
  if reduction not in REDUCTIONS:
    raise ValueError(
      f"Unknown reduction {reduction!r}; choose one of {REDUCTIONS}."
    )
  if reduction == "nonzero":
    return nonzero_mean(
      *terms, mask=mask, extra=0.0 if extra is None else extra
    )
  mean = masked_mean(jnp.concatenate(terms), jnp.tile(mask, len(terms)))
  if extra is None:
    return mean
  return mean + extra / jnp.maximum(len(terms) * jnp.sum(mask), 1)
