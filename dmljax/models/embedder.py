"""Embedding networks: backbone → Dense(D) → L2 normalisation.

Shape letters: B batch, H × W image size, C channels, F backbone features,
D embedding dimensions (128 in Wu et al., Sec. 5).

`make_embedder(name)` resolves a backbone through the explicit `BACKBONES`
dict and wraps it in `Embedder`. The projection head and the normalisation
always run in float32, whatever the backbone's compute dtype, so that the
distance matrix and the samplers downstream see float32 embeddings.
"""

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmljax.models import resnet
from dmljax.models import small

BACKBONES: dict[str, Callable[..., nn.Module]] = {
  "small": small.SmallConvNet,
  "resnet50": resnet.resnet50,
  "face_resnet50": resnet.face_resnet50,
}


def l2_normalize(x: jax.Array, *, eps: float = 1e-12) -> jax.Array:
  """x / max(‖x‖, eps) along the last axis: finite value and gradient at 0.

  Args:
    x: [..., D] vectors.
    eps: lower bound on the norm; a zero vector stays zero.

  Returns:
    [..., D] vectors of norm 1 (or 0 for a zero vector), dtype of `x`.

  >>> l2_normalize(jnp.array([[3.0, 4.0], [0.0, 0.0]]))
  Array([[0.6, 0.8],
         [0. , 0. ]], dtype=float32)
  """
  squared_norm = jnp.sum(x * x, axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared_norm, eps * eps))


class Embedder(nn.Module):
  """Backbone features → Dense(embedding_dim) → optional L2 normalisation.

  Attributes:
    backbone: a module called as `backbone(x, train=train)` → [B, F].
    embedding_dim: D.
    normalize: L2-normalise the embeddings (the paper's unit sphere).

  Variables: {"params": {"backbone": ..., "head": ...}, "batch_stats":
  {"backbone": ...}}.

  >>> model = Embedder(small.SmallConvNet(widths=(8,), features=None), 4)
  >>> x = jnp.ones((2, 8, 8))
  >>> variables = init_embedder(model, jax.random.key(0), x.shape)
  >>> embeddings = model.apply(variables, x, train=False)
  >>> norms = jnp.linalg.norm(embeddings, axis=-1)
  >>> embeddings.shape, bool(jnp.allclose(norms, 1.0))
  ((2, 4), True)
  """

  backbone: nn.Module
  embedding_dim: int = 128
  normalize: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Embeddings of a batch of images.

    Args:
      x: [B, H, W, C] images, or [B, H, W] grayscale images.
      train: training mode for the backbone's BatchNorm; call `apply` with
        `mutable=["batch_stats"]` when True.

    Returns:
      [B, D] float32 embeddings, of unit norm when `normalize`.
    """
    if x.ndim == 3:
      x = x[..., None]
    if x.ndim != 4:
      raise ValueError(
        f"x must be [B, H, W, C] or [B, H, W] images, got shape {x.shape}."
      )
    features = self.backbone(x, train=train).astype(jnp.float32)
    embeddings = nn.Dense(self.embedding_dim, name="head")(features)
    return l2_normalize(embeddings) if self.normalize else embeddings


def make_embedder(
  name: str,
  *,
  embedding_dim: int = 128,
  dtype: Any = jnp.float32,
  normalize: bool = True,
  **backbone_kwargs: Any,
) -> Embedder:
  """An `Embedder` around the backbone registered as `name`.

  Args:
    name: a key of `BACKBONES` ("small", "resnet50", "face_resnet50").
    embedding_dim: D.
    dtype: the backbone's computation dtype (parameters stay float32).
    normalize: L2-normalise the embeddings.
    **backbone_kwargs: passed to the backbone's constructor (e.g.
      `widths=(16, 32)` for "small").

  Returns:
    The (uninitialised) linen module.

  Raises:
    ValueError: `name` is not a registered backbone.

  >>> make_embedder("resnet50").backbone.widths[-1]
  2048
  """
  if name not in BACKBONES:
    raise ValueError(
      f"Unknown backbone {name!r}; choose one of {sorted(BACKBONES)}."
    )
  backbone = BACKBONES[name](dtype=dtype, **backbone_kwargs)
  return Embedder(backbone, embedding_dim=embedding_dim, normalize=normalize)


def init_embedder(
  model: nn.Module, key: jax.Array, input_shape: Sequence[int]
) -> dict[str, Any]:
  """Variables of `model` for inputs of `input_shape`, initialised under jit.

  Under `jax.jit` XLA drops the forward pass that `model.init` traces (only
  the parameter initialisers feed the outputs), so this costs no more than
  drawing the parameters. On CPU the one-off program is compiled without
  LLVM optimisation: XLA:CPU spends tens of seconds optimising the unrolled
  threefry of ~100 initialisers (ResNet-50: 39 s → 15 s, the small net:
  15 s → 4 s, on 2 loaded cores), and the draws are the same integers, so
  the values match `model.init` up to float round-off. For shapes alone
  (e.g. to build shardings) use
  `jax.eval_shape(lambda k: init_embedder(model, k, shape), key)`.

  Args:
    model: a module called as `model(x, train=...)`.
    key: PRNG key.
    input_shape: [B, H, W, C] (or [B, H, W]) shape of one batch; the
      variables do not depend on B.

  Returns:
    {"params": ..., "batch_stats": ...} (no "batch_stats" for a model
    without BatchNorm), float32 parameters.

  >>> model = make_embedder("small", widths=(8,), embedding_dim=4)
  >>> variables = init_embedder(model, jax.random.key(0), (1, 8, 8, 1))
  >>> variables["params"]["head"]["kernel"].shape
  (256, 4)
  """
  dummy = jnp.zeros(tuple(input_shape), jnp.float32)
  init = jax.jit(lambda k: model.init(k, dummy, train=False))
  if isinstance(key, jax.core.Tracer) or jax.default_backend() != "cpu":
    return init(key)
  options = {"xla_backend_optimization_level": 0}
  return init.lower(key).compile(compiler_options=options)(key)


def param_count(tree: Any) -> int:
  """Number of scalars in a pytree of arrays (or of `ShapeDtypeStruct`s)."""
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))
