"""The margin loss boundary β as a parameter pytree (Wu et al. Sec. 4).

Shape letters: T tuples, C classes, N training images.

β(i) = β⁽⁰⁾ + β⁽class⁾_c(i) + β⁽img⁾_i. Each part is optional: `init_beta`
returns a dict with "beta0" (scalar) and, when asked, "class" [C] and "image"
[N], initialised as in the paper (β⁽⁰⁾ = 1.2, the others 0). It is trained by
its own Optax transform (`beta_optimizer`) beside the network's; parts left
out of `trainable` stay fixed, which gives the paper's fixed-β rows (Table 3)
and the "learned β⁽class⁾ around a fixed β⁽⁰⁾" row.

The authors' code (MXNet `example/gluon/embedding_learning/train.py`) keeps
one per-class vector initialised at β⁽⁰⁾ = 1.2 (`beta.initialize(
mx.init.Constant(opt.beta))`) and no separate β⁽⁰⁾, and trains it by SGD
(lr 0.1, momentum 0.9) through `trainer_beta.step(batch_size)`: Gluon's
`Trainer.step(n)` divides every gradient by n, so their β moves by
lr / B times the gradient of the (non-zero-averaged) loss. That is
`init_beta(num_classes=C)` with `beta_optimizer(trainable=("class",),
gradient_divisor=B)` — the defaults here, but for B, which only the caller
knows. With `gradient_divisor=1` and β⁽⁰⁾ trainable as well (β⁽⁰⁾ then
receives the sum of every class's gradient), β moves hundreds of times
faster: a named variant (`margin_dw_fast_beta`), not the paper's setting.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

BETA_PARTS = ("beta0", "class", "image")


def init_beta(
  *,
  beta0: float = 1.2,
  num_classes: int | None = None,
  num_images: int | None = None,
  dtype: jnp.dtype = jnp.float32,
) -> dict[str, jax.Array]:
  """β parameters: {"beta0": [], "class": [C] (optional), "image": [N]}.

  >>> sorted(init_beta(num_classes=3))
  ['beta0', 'class']
  """
  beta = {"beta0": jnp.asarray(beta0, dtype)}
  if num_classes is not None:
    if num_classes < 1:
      raise ValueError(f"num_classes must be ≥ 1, got {num_classes}.")
    beta["class"] = jnp.zeros((num_classes,), dtype)
  if num_images is not None:
    if num_images < 1:
      raise ValueError(f"num_images must be ≥ 1, got {num_images}.")
    beta["image"] = jnp.zeros((num_images,), dtype)
  return beta


def gather_beta(
  beta: dict[str, jax.Array],
  anchor_labels: jax.Array,
  anchor_image_ids: jax.Array | None = None,
) -> jax.Array:
  """β of each tuple's anchor: β⁽⁰⁾ + β⁽class⁾[label] + β⁽img⁾[image id].

  Args:
    beta: the pytree from `init_beta`.
    anchor_labels: [T] int dataset class ids (indices into "class").
    anchor_image_ids: [T] int dataset image ids (indices into "image");
      required when `beta` has an "image" part.

  Returns:
    [T] β values.

  >>> b = init_beta(num_classes=2)
  >>> gather_beta(b, jnp.array([0, 1])).tolist()
  [1.2000000476837158, 1.2000000476837158]
  """
  unknown = set(beta) - set(BETA_PARTS)
  if unknown:
    raise ValueError(f"Unknown β parts {sorted(unknown)}; known: {BETA_PARTS}.")
  values = jnp.broadcast_to(beta["beta0"], anchor_labels.shape)
  if "class" in beta:
    values = values + beta["class"][anchor_labels]
  if "image" in beta:
    if anchor_image_ids is None:
      raise ValueError(
        "β has a per-image part: pass the anchors' dataset image ids "
        "(image_ids), or build β without num_images."
      )
    values = values + beta["image"][anchor_image_ids]
  return values


def beta_penalty(
  beta_values: jax.Array, mask: jax.Array, *, nu: float = 0.0
) -> jax.Array:
  """The ν regulariser ν Σ_t β(t) over valid tuples (Wu et al. Sec. 4).

  Larger β uses the embedding space better; ν trades the number of margin
  violations on either side of β (the ν-trick of ν-SVM). The authors' code
  defaults to ν = 0 and adds this sum to the numerator of the non-zero mean.

  Args:
    beta_values: [T] β of each tuple (`gather_beta`).
    mask: [T] bool valid tuples.
    nu: ν.

  Returns:
    Scalar.

  >>> mask = jnp.array([True, False])
  >>> float(beta_penalty(jnp.array([1.0, 2.0]), mask, nu=0.5))
  0.5
  """
  return nu * jnp.sum(jnp.where(mask, beta_values, 0.0))


def class_beta_statistics(beta: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """min, median, mean and max over classes of β⁽⁰⁾ + β⁽class⁾_c.

  What the paper reports of a learned β (Table 3 caption: β⁽class⁾ between
  0.94 and 1.45 on SOP). Without a "class" part every statistic is β⁽⁰⁾.

  >>> b = {"beta0": jnp.array(1.0), "class": jnp.array([0.0, 0.5, -0.2])}
  >>> {k: round(float(v), 2) for k, v in class_beta_statistics(b).items()}
  {'beta_min': 0.8, 'beta_median': 1.0, 'beta_mean': 1.1, 'beta_max': 1.5}
  """
  values = beta["beta0"] + beta.get("class", jnp.zeros((1,), jnp.float32))
  return {
    "beta_min": jnp.min(values),
    "beta_median": jnp.median(values),
    "beta_mean": jnp.mean(values),
    "beta_max": jnp.max(values),
  }


# What the authors' code trains: the per-class vector only.
AUTHORS_TRAINABLE = ("class",)


def beta_optimizer(
  *,
  learning_rate: float | optax.Schedule = 0.1,
  momentum: float = 0.9,
  trainable: Sequence[str] = AUTHORS_TRAINABLE,
  gradient_divisor: float = 1.0,
) -> optax.GradientTransformation:
  """SGD for β (the authors' setting), with some parts frozen.

  update = −lr · v,  v ← g / gradient_divisor + momentum · v  (heavy ball).

  Args:
    learning_rate: β's own learning rate or schedule (the authors'
      `lr_beta` = 0.1).
    momentum: SGD momentum (0.9 in the authors' code).
    trainable: the parts of the β pytree that learn; others get zero
      updates. Default: "class" only, as the authors' code.
    gradient_divisor: every gradient is divided by it first. The authors'
      `trainer_beta.step(batch_size)` divides by the global batch size B;
      pass B for their rate. 1 applies the learning rate to the gradient as
      it is.

  Returns:
    An Optax transform over the β pytree.

  >>> tx = beta_optimizer(gradient_divisor=4.0)
  >>> beta = init_beta(num_classes=2)
  >>> grads = {"beta0": jnp.array(1.0), "class": jnp.array([1.0, -2.0])}
  >>> updates, _ = tx.update(grads, tx.init(beta), beta)
  >>> [round(float(u), 4) for u in updates["class"]], float(updates["beta0"])
  ([-0.025, 0.05], 0.0)
  """
  unknown = set(trainable) - set(BETA_PARTS)
  if unknown:
    raise ValueError(f"Unknown β parts {sorted(unknown)}; known: {BETA_PARTS}.")
  if not gradient_divisor > 0:
    raise ValueError(
      f"gradient_divisor must be positive (the batch size, or 1), got "
      f"{gradient_divisor}."
    )
  trainable = frozenset(trainable)
  sgd = optax.sgd(learning_rate, momentum=momentum or None)
  if gradient_divisor != 1:
    sgd = optax.chain(optax.scale(1.0 / gradient_divisor), sgd)

  def labels(tree):
    # Label leaves by the β part named anywhere on their path, so the labels
    # stay right when this transform is nested in another partition (which
    # hands it the whole parameter tree with the other subtrees masked).
    def label(path, _):
      names = {getattr(entry, "key", None) for entry in path}
      return "train" if names & trainable else "freeze"

    return jax.tree_util.tree_map_with_path(label, tree)

  return optax.partition(
    {
      "train": sgd,
      "freeze": optax.set_to_zero(),
    },
    labels,
  )
