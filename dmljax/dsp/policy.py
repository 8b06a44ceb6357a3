"""Softmax policies over masked candidate sets (DE-DSP eq. 4).

Shape letters: R rows (independent choices), N candidates per row.

A policy row is a vector of logits over N candidates and a boolean mask of
the valid ones; invalid candidates get probability exactly 0 (logit −inf).
Two traps are handled here once:

* A row with no valid candidate has no distribution. `jax.random.
  categorical` would silently return index 0 for it; `sample` instead
  returns `valid = False` for that row (and log-probability 0), so that the
  tuple it belongs to is masked out of the losses. `check_choices` raises
  for such rows on the host.
* The entropy −Σ p log p must skip the masked entries, where p log p would
  be 0 · −inf = NaN.
"""

import jax
import jax.numpy as jnp
import numpy as np


def masked_log_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """log p over the valid candidates of each row; −inf where masked.

  Args:
    logits: [..., N] float.
    mask: [..., N] bool, True for valid candidates.

  Returns:
    [..., N] log-probabilities; a row with no valid candidate is all −inf.
  """
  valid = has_choice(mask)[..., None]
  # Shift by the largest valid logit; empty rows get safe placeholder values
  # (and are −inf on output) so that no NaN reaches the gradients.
  top = jnp.max(jnp.where(mask, logits, -jnp.inf), axis=-1, keepdims=True)
  shifted = logits - jax.lax.stop_gradient(jnp.where(valid, top, 0.0))
  shifted = jnp.where(mask, shifted, 0.0)
  total = jnp.sum(
    jnp.where(mask, jnp.exp(shifted), 0.0), axis=-1, keepdims=True
  )
  log_total = jnp.log(jnp.where(valid, total, 1.0))
  return jnp.where(mask, shifted - log_total, -jnp.inf)


def has_choice(mask: jax.Array) -> jax.Array:
  """[...] bool: the row has at least one valid candidate."""
  return jnp.any(mask, axis=-1)


def sample(
  key: jax.Array, logits: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One draw per row from softmax(logits) restricted to `mask`.

  Args:
    key: PRNG key.
    logits: [..., N] float.
    mask: [..., N] bool.

  Returns:
    (index [...] int32, log_prob [...] float, valid [...] bool). Rows with
    no valid candidate have valid False, index 0 and log_prob 0; every
    other row's index is a valid candidate.
  """
  valid = has_choice(mask)
  log_probs = masked_log_softmax(logits, mask)
  # A fully masked row gets uniform dummy logits (no NaN), then is flagged.
  safe = jnp.where(valid[..., None], log_probs, 0.0)
  index = jax.random.categorical(key, safe, axis=-1).astype(jnp.int32)
  log_prob = jnp.take_along_axis(safe, index[..., None], axis=-1)[..., 0]
  return jnp.where(valid, index, 0), jnp.where(valid, log_prob, 0.0), valid


def log_prob_of(
  logits: jax.Array, mask: jax.Array, index: jax.Array
) -> jax.Array:
  """log p(index) per row (differentiable in logits); 0 for empty rows."""
  valid = has_choice(mask)
  log_probs = masked_log_softmax(logits, mask)
  safe = jnp.where(valid[..., None], log_probs, 0.0)
  chosen = jnp.take_along_axis(safe, index[..., None], axis=-1)[..., 0]
  return jnp.where(valid, chosen, 0.0)


def entropy(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """[...] entropy −Σ p log p over the valid candidates (0 for empty rows)."""
  log_probs = masked_log_softmax(logits, mask)
  terms = jnp.where(mask, jnp.exp(log_probs) * log_probs, 0.0)
  return -jnp.sum(terms, axis=-1)


def check_choices(mask, what: str = "candidates") -> None:
  """Host-side ValueError if some row of `mask` has no valid candidate."""
  empty = ~np.asarray(mask).any(axis=-1)
  if empty.any():
    rows = np.flatnonzero(empty.reshape(-1))[:5].tolist()
    raise ValueError(
      f"{int(empty.sum())} policy row(s) have no valid {what} (first: "
      f"{rows}); the candidate pool needs at least two images per class "
      "and at least two classes."
    )
