"""Face verification accuracy: the LFW 10-fold protocol.

Shape letters: P pairs, F folds.

LFW's "unrestricted, labelled outside data" protocol (Huang et al. 2007),
as Wu et al. (Sec. 5, Table 4) report it: the 6,000 pairs of `pairs.txt`
form 10 folds of 600 (300 matched, 300 mismatched), in file order. For each
fold f, a distance threshold is chosen on the other nine folds (the one with
the highest accuracy there), and accuracy is measured on fold f with it; the
result is the mean (and standard deviation) of the ten fold accuracies.

The threshold search is exact, not over a grid: the training distances are
sorted, every cut between two distinct values is a candidate, and a pair is
called "same" when its distance is below the threshold, the midpoint of the
chosen cut (−inf / +inf for "no pair" / "every pair"). Ties in training
accuracy go to the smallest threshold.
"""

import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp


def fold_ids(num_pairs: int, num_folds: int) -> jax.Array:
  """[P] int32 fold of each pair: F contiguous runs in file order.

  Pair p is in fold ⌊p F / P⌋, so P = 6000, F = 10 gives LFW's ten sets of
  600 (and sizes differ by at most one when F does not divide P).

  >>> fold_ids(5, 2).tolist()
  [0, 0, 0, 1, 1]
  """
  return (jnp.arange(num_pairs, dtype=jnp.int32) * num_folds) // num_pairs


def _check_inputs(distances: Any, is_same: Any, num_folds: Any):
  distances = jnp.asarray(distances)
  is_same = jnp.asarray(is_same)
  if distances.ndim != 1 or not jnp.issubdtype(distances.dtype, jnp.floating):
    raise ValueError(
      "distances must be a [P] floating vector (one distance per pair), got "
      f"shape {distances.shape} and dtype {distances.dtype}."
    )
  if is_same.shape != distances.shape or is_same.dtype != jnp.bool_:
    raise ValueError(
      f"is_same must be a [P] bool vector like distances {distances.shape}, "
      f"got shape {is_same.shape} and dtype {is_same.dtype}."
    )
  if isinstance(num_folds, bool) or not hasattr(num_folds, "__index__"):
    raise ValueError(f"num_folds must be a static int, got {num_folds!r}.")
  num_folds = operator.index(num_folds)
  if not 2 <= num_folds <= distances.shape[0]:
    raise ValueError(
      f"num_folds must be between 2 and the number of pairs "
      f"{distances.shape[0]}, got {num_folds} (LFW uses 10)."
    )
  if not isinstance(distances, jax.core.Tracer) and not bool(
    jnp.all(jnp.isfinite(distances))
  ):
    raise ValueError("distances contain NaN or infinite values.")
  return distances, is_same, num_folds


def verification_accuracy(
  distances: jax.Array, is_same: jax.Array, *, num_folds: int = 10
) -> dict[str, jax.Array]:
  """k-fold verification accuracy with thresholds chosen on the other folds.

  For fold f with training pairs T_f = {p : fold(p) ≠ f}:

    t_f = argmax_t Σ_{p ∈ T_f} [(d_p < t) = same_p] / |T_f|,
    accuracy_f = mean_{p in fold f} [(d_p < t_f) = same_p],

  and the result is mean_f accuracy_f (the LFW protocol; Wu et al. Sec. 5).

  Args:
    distances: [P] distance of each pair, e.g. ‖a_p − b_p‖ of two [P, D]
      embedding matrices.
    is_same: [P] bool, True for a matched pair (same identity).
    num_folds: F (static), 10 for LFW; fold f is the f-th contiguous run of
      pairs (`fold_ids`), as in LFW's pairs.txt.

  Returns:
    {"accuracy": mean over folds, "std": their standard deviation (ddof 0),
    "fold_accuracies": [F], "thresholds": [F]}, float32.

  >>> d = jnp.array([0.1, 0.9, 0.2, 0.8, 0.3, 1.1, 0.15, 1.0])
  >>> same = jnp.array([True, False] * 4)
  >>> float(verification_accuracy(d, same, num_folds=4)["accuracy"])
  1.0
  """
  distances, is_same, num_folds = _check_inputs(distances, is_same, num_folds)
  return _verification_accuracy(distances, is_same, num_folds=num_folds)


@functools.partial(jax.jit, static_argnames="num_folds")
def _verification_accuracy(distances, is_same, *, num_folds):
  num_pairs = distances.shape[0]
  folds = fold_ids(num_pairs, num_folds)
  order = jnp.argsort(distances)
  sorted_d, sorted_same, sorted_folds = (
    a[order] for a in (distances, is_same, folds)
  )

  def fold_result(fold):
    # A cut c ∈ [0, P] calls the pairs at sorted positions < c "same".
    train = sorted_folds != fold
    zero = jnp.zeros(1, jnp.int32)
    same_below = jnp.concatenate([zero, jnp.cumsum(train & sorted_same)])
    different_below = jnp.concatenate([zero, jnp.cumsum(train & ~sorted_same)])
    correct = same_below + (different_below[-1] - different_below)
    # previous[c]: the largest training distance below the cut.
    previous = jnp.concatenate(
      [
        jnp.full(1, -jnp.inf, distances.dtype),
        jax.lax.cummax(jnp.where(train, sorted_d, -jnp.inf)),
      ]
    )
    # One cut per training partition: just before a training distance
    # strictly above every training distance below it, or after them all.
    candidate = jnp.concatenate(
      [train & (sorted_d > previous[:-1]), jnp.ones(1, bool)]
    )
    best = jnp.argmax(jnp.where(candidate, correct, -1))
    above = sorted_d[jnp.minimum(best, num_pairs - 1)]
    threshold = jnp.where(
      best == num_pairs, jnp.inf, 0.5 * (previous[best] + above)
    )
    test = folds == fold
    right = (distances < threshold) == is_same
    accuracy = jnp.sum(test & right) / jnp.sum(test)
    return accuracy.astype(jnp.float32), threshold.astype(jnp.float32)

  accuracies, thresholds = jax.lax.map(
    fold_result, jnp.arange(num_folds, dtype=jnp.int32)
  )
  return {
    "accuracy": jnp.mean(accuracies),
    "std": jnp.std(accuracies),
    "fold_accuracies": accuracies,
    "thresholds": thresholds,
  }
