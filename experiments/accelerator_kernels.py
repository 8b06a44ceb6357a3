"""The kernel sections of experiments.bench_accelerator: DW + margin, eval.

Same contract as experiments/accelerator_training.py: rows appended to
`ctx.out["rows"]` as they finish, `ctx.save()` after each, the budget
checked before each cell.

Data are synthetic and made on the device: unit embeddings in 128-D,
shuffled labels, for the loss K = 5 per class (bench_core's batches); for
evaluation one random centre per class plus noise (bench_eval's model), N
points of C classes with SOP's ratio (60,502 test images of 11,316 classes).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

import dmljax
from dmljax import methods
from dmljax import metrics

DIM = 128
SOP = (60502, 11316)
KS = (1, 10, 100, 1000)


def _timed(fn, budget, seconds: float, max_calls: int = 50) -> dict:
  """First call (compile + run), then the median of the following calls.

  Repeats for about `seconds` (at least once) while the budget has room for
  another call like the first; "ms" is None when there was none.
  """
  start = time.perf_counter()
  result = jax.block_until_ready(fn())
  first = time.perf_counter() - start
  times = []
  deadline = time.perf_counter() + max(min(seconds, budget.left()), 0)
  while len(times) < max_calls and budget.left() > 1.5 * first:
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
    if time.perf_counter() > deadline:
      break
  return {
    "first_call_s": first,
    "ms": 1e3 * float(np.median(times)) if times else None,
    "calls": len(times),
    "_result": result,
  }


def loss_batch(batch_size: int, k: int = 5, seed: int = 0):
  """Unit-norm [B, 128] embeddings and shuffled labels, K per class."""
  key_x, key_y = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(key_x, (batch_size, DIM))
  x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
  classes = jnp.repeat(jnp.arange(-(-batch_size // k)), k)[:batch_size]
  return x, jax.random.permutation(key_y, classes).astype(jnp.int32)


def dw_margin(ctx) -> None:
  """DW sampling + margin loss, fwd and fwd + bwd, dense vs gathered."""
  sizes = (20,) if ctx.smoke else (120, 2048, 8192)
  last = 0.0  # The next size costs more than the last cell: 1.5x of it.
  for batch_size in sizes:
    x, labels = loss_batch(batch_size)
    beta = dmljax.init_beta(num_classes=-(-batch_size // 5))
    outputs = {}
    for gradient in methods.DISTANCE_GRADIENTS:
      if ctx.budget.expired(need=1.5 * last):
        return
      start = time.perf_counter()
      method = methods.make_method(distance_gradient=gradient)

      def loss_fn(key, e, y, b, method=method):
        return method(key, e, y, b)[0]

      fwd = jax.jit(loss_fn)
      fwd_bwd = jax.jit(jax.value_and_grad(loss_fn, argnums=(1, 3)))
      args = (jax.random.key(1), x, labels, beta)
      seconds = ctx.cell_seconds / 5
      both = _timed(lambda f=fwd_bwd, a=args: f(*a), ctx.budget, seconds)
      outputs[gradient] = jax.device_get(both.pop("_result"))
      row = dict(B=batch_size, distance_gradient=gradient)
      row.update({f"fwd_bwd_{k}": v for k, v in both.items()})
      if not ctx.smoke:  # The forward alone: one compile more per cell.
        forward = _timed(lambda f=fwd, a=args: f(*a), ctx.budget, seconds)
        forward.pop("_result")
        row.update({f"fwd_{k}": v for k, v in forward.items()})
      ctx.out.setdefault("rows", []).append(row)
      ctx.save()
      last = time.perf_counter() - start
    if len(outputs) == 2:
      (loss_d, grads_d), (loss_g, grads_g) = outputs.values()
      scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads_d))
      diff = max(
        float(np.abs(a - b).max())
        for a, b in zip(
          jax.tree.leaves(grads_d), jax.tree.leaves(grads_g), strict=True
        )
      )
      dense, gathered = (r["fwd_bwd_ms"] for r in ctx.out["rows"][-2:])
      ctx.out.setdefault("comparisons", []).append(
        dict(
          B=batch_size,
          fwd_bwd_speedup=dense / gathered if dense and gathered else None,
          loss_abs_difference=abs(float(loss_d) - float(loss_g)),
          max_gradient_difference_relative=diff / max(scale, 1e-30),
        )
      )
      ctx.save()


def clustered_points(num_points: int, num_classes: int, seed: int = 0):
  """[N, 128] unit rows around one random centre per class; [N] labels."""
  keys = jax.random.split(jax.random.key(seed), 3)
  centres = jax.random.normal(keys[0], (num_classes, DIM))
  centres = centres / jnp.linalg.norm(centres, axis=1, keepdims=True)
  labels = jax.random.permutation(keys[1], jnp.arange(num_points) % num_classes)
  x = centres[labels] + 0.12 * jax.random.normal(keys[2], (num_points, DIM))
  x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
  return jax.block_until_ready(x), labels.astype(jnp.int32)


def _recall_row(ctx, x, labels, block_size, seconds, name) -> dict:
  ks = tuple(k for k in KS if k < x.shape[0])
  timing = _timed(
    lambda: metrics.recall_at_k(x, labels, ks, block_size=block_size),
    ctx.budget,
    seconds,
    max_calls=2,
  )
  recalls = timing.pop("_result")
  row = dict(data=name, N=int(x.shape[0]), metric="recall", tile=block_size)
  row.update(timing)
  row.update({f"recall@{k}": float(v) for k, v in recalls.items()})
  ctx.out.setdefault("rows", []).append(row)
  ctx.save()
  return row


def _kmeans_row(ctx, x, labels, num_classes, name, *, init, num_iters):
  start = time.perf_counter()
  result = metrics.kmeans(
    jax.random.key(0), x, num_classes, num_iters=num_iters, init=init
  )
  score = float(metrics.nmi(result.cluster_ids, labels))
  seconds = time.perf_counter() - start
  iterations = int(result.num_iters)
  row = dict(
    data=name,
    N=int(x.shape[0]),
    metric="kmeans_nmi",
    clusters=num_classes,
    init=init,
    iterations=iterations,
    seconds_with_compile=seconds,
    nmi=score,
  )
  ctx.out.setdefault("rows", []).append(row)
  ctx.save()


def evaluation(ctx) -> None:
  """Recall@{1, 10, 100, 1000} and k-means NMI: SOP scale and 1,000,000."""
  num_points, num_classes = (600, 112) if ctx.smoke else SOP
  tiles = (128,) if ctx.smoke else (1024, 2048, 4096, 8192)
  if jax.default_backend() == "cpu" and not ctx.smoke:
    tiles = (1024,)
  x, labels = clustered_points(num_points, num_classes)
  name = "sop_shape"
  timed, last = [], 0.0
  for tile in tiles:
    if ctx.budget.expired(need=1.5 * last):
      break
    start = time.perf_counter()
    timed.append(_recall_row(ctx, x, labels, tile, ctx.cell_seconds, name))
    last = time.perf_counter() - start
  if not timed:
    return
  best = min(timed, key=lambda row: row["ms"] or row["first_call_s"] * 1e3)
  ctx.out["chosen_tile"] = best["tile"]
  if ctx.budget.expired():
    return
  _kmeans_row(ctx, x, labels, num_classes, name, init="kmeans++", num_iters=20)
  if ctx.smoke or jax.default_backend() == "cpu":
    ctx.out["million"] = "skipped: accelerators only (not at --smoke or CPU)"
    return
  # Recall costs N² · D: the SOP-shape time × (10⁶ / N)², plus a compile.
  run_s = (best["ms"] or 1e3 * best["first_call_s"]) / 1e3
  need = run_s * (1e6 / num_points) ** 2 + best["first_call_s"]
  ctx.out["million_recall_estimate_s"] = need
  if ctx.budget.expired(need=need):
    ctx.out["million"] = f"skipped: needs ~{need:.0f} s, less is left"
    return
  del x, labels
  million = 1_000_000
  classes = round(million * SOP[1] / SOP[0])
  x, labels = clustered_points(million, classes, seed=1)
  _recall_row(ctx, x, labels, best["tile"], 0.0, "million")
  if ctx.budget.expired():
    return
  _kmeans_row(ctx, x, labels, classes, "million", init="random", num_iters=3)
