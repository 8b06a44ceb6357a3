"""Benchmarks dmljax's core methods (sampler x loss), optionally vs PML.

Times `jax.jit(loss_fn)` (fwd) and `jax.jit(jax.value_and_grad(loss_fn))`
(fwd_bwd: gradients w.r.t. the embeddings and beta) of `make_method` for each
batch size, sampler and loss, on unit-norm random float32 embeddings with K
images per class (labels shuffled; when K does not divide B the last class is
smaller: 2048 = 409 x 5 + 3, which the samplers mask). After compilation and
warm-up, the median and IQR of --min_repeats to --repeats calls (about
--budget_s seconds) are reported.

Each tuple-loss cell runs once per --distance_gradients value: "dense"
(the gradient through the [B, B] distance matrix, make_method's default) and
"gathered" (through the tuples' embedding rows, `losses.tuple_distances`).
For each pair of cells the table after the timings gives dense / gathered
fwd_bwd time and the evidence that both compute the same thing: the
difference of the losses and the largest gradient difference relative to
the largest gradient (embeddings and beta), same key and batch.

If `torch` and `pytorch_metric_learning` (PML) import and --peer=auto, the
same embeddings go through PML's DistanceWeightedMiner + MarginLoss (learned
beta) and TripletMarginMiner(semihard) + TripletMarginLoss, and the speed-up
PML time / dmljax time is printed. Both use their default CPU thread pools
(all cores). The peer is optional, never a dependency of dmljax.

Run it on an otherwise idle machine: with few cores, one other busy process
slows torch's thread pool 10-40x (and dmljax less), which skews the ratios.

Usage:
  python -m experiments.bench_core --sizes=80,120 --peer=off
"""

import json
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

import dmljax
from dmljax import methods
from experiments import _machine

_SIZES = flags.DEFINE_list("sizes", ["80", "120", "512", "2048"], "Sizes B.")
_DIM = flags.DEFINE_integer("dim", 128, "Embedding dimension D.")
_K = flags.DEFINE_integer("images_per_class", 5, "Images per class K.")
_REPEATS = flags.DEFINE_integer("repeats", 200, "Max timed calls per cell.")
_MIN_REPEATS = flags.DEFINE_integer("min_repeats", 3, "Min timed calls.")
_BUDGET = flags.DEFINE_float("budget_s", 1.0, "Aimed timed seconds per cell.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of embeddings and labels.")
_OUT = flags.DEFINE_string("out", "bench_results/bench_core.json", "JSON path.")
_PEER = flags.DEFINE_enum(
  "peer", "auto", ["auto", "off"], "auto: time PML too."
)
# Benchmark sampler name -> (dmljax sampler name, sampler_kwargs).
# "distance_weighted" uses make_method's default draw method.
SAMPLERS = {
  "random": ("random", {}),
  "hard": ("hard", {}),
  "semihard": ("semihard", {}),
  "distance_weighted": ("distance_weighted", {}),
  "dw_categorical": ("distance_weighted", {"method": "categorical"}),
}
LOSSES = ["margin", "triplet_l2", "triplet_l2sq", "contrastive"]
_SAMPLERS = flags.DEFINE_list("samplers", list(SAMPLERS), "Keys of SAMPLERS.")
_LOSSES = flags.DEFINE_list("losses", LOSSES, f"Losses, of {LOSSES}.")
_GRADIENTS = flags.DEFINE_list(
  "distance_gradients",
  list(methods.DISTANCE_GRADIENTS),
  f"make_method's distance_gradient values, of {methods.DISTANCE_GRADIENTS}.",
)
# PML peer name -> the dmljax (sampler, loss) cells it is compared with.
PEER_PAIRS = {
  "pml_dw_margin": [
    ("distance_weighted", "margin"),
    ("dw_categorical", "margin"),
  ],
  "pml_semihard_triplet": [("semihard", "triplet_l2")],
}
TARGET = {"peer": "pml_dw_margin", "sizes": (120, 2048), "speedup": 10.0}


def time_fn(fn: Callable[[], object]) -> dict:
  """Times fn() (ms) after two warm-up calls, the first also timed."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  fn()  # Second warm-up: estimates the steady-state time per call.
  est = max(time.perf_counter() - t0, 1e-9)
  n = int(np.clip(_BUDGET.value / est, _MIN_REPEATS.value, _REPEATS.value))
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  q0, q25, q50, q75 = np.percentile(np.array(times) * 1e3, [0, 25, 50, 75])
  return dict(
    median_ms=q50, iqr_ms=q75 - q25, min_ms=q0, repeats=n, first_call_s=first
  )


def make_batch(b: int, d: int, k: int, seed: int):
  """Unit-norm float32 embeddings [b, d] and shuffled int32 labels [b]."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((b, d)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  classes = np.repeat(np.arange(-(-b // k)), k)[:b]  # Last class may be short.
  labels = rng.permutation(classes).astype(np.int32)
  return x, labels


def bench_dmljax(x, labels, sampler: str, loss: str, gradient: str) -> dict:
  """Times forward and forward+backward of one dmljax method.

  Also returns the loss and gradients of one fwd_bwd call (host arrays,
  under "_values", for `compare_gradients`; not written to the JSON).
  """
  name, kwargs = SAMPLERS[sampler]
  method = methods.make_method(
    sampler=name,
    loss=loss,
    images_per_class=_K.value,
    sampler_kwargs=kwargs,
    distance_gradient=gradient,
  )

  def loss_fn(key, embeddings, labels, beta):
    return method(key, embeddings, labels, beta)[0]

  fwd = jax.jit(loss_fn)
  fwd_bwd = jax.jit(jax.value_and_grad(loss_fn, argnums=(1, 3)))
  key = jax.random.key(_SEED.value)
  args = (key, jnp.asarray(x), jnp.asarray(labels), dmljax.init_beta())
  return {
    "fwd": time_fn(lambda: jax.block_until_ready(fwd(*args))),
    "fwd_bwd": time_fn(lambda: jax.block_until_ready(fwd_bwd(*args))),
    "_values": jax.device_get(fwd_bwd(*args)),
  }


def compare_gradients(dense: dict, gathered: dict) -> dict:
  """Speed-up of "gathered" over "dense" and how far their outputs differ."""
  (loss_d, grads_d), (loss_g, grads_g) = dense["_values"], gathered["_values"]
  leaves_d, leaves_g = jax.tree.leaves(grads_d), jax.tree.leaves(grads_g)
  scale = max(float(np.max(np.abs(g))) for g in leaves_d)
  diff = max(
    float(np.max(np.abs(a - b)))
    for a, b in zip(leaves_d, leaves_g, strict=True)
  )
  m = "median_ms"
  return dict(
    dense_ms=dense["fwd_bwd"][m],
    gathered_ms=gathered["fwd_bwd"][m],
    speedup=dense["fwd_bwd"][m] / gathered["fwd_bwd"][m],
    loss_dense=float(loss_d),
    loss_abs_difference=abs(float(loss_d) - float(loss_g)),
    max_gradient_difference_relative=diff / max(scale, 1e-30),
  )


def load_peer():
  """Returns (torch, pml) or None, printing why when unavailable."""
  if _PEER.value == "off":
    print("Peer: disabled (--peer=off).")
    return None
  try:
    import pytorch_metric_learning as pml
    import torch
  except ImportError as e:
    print(f"Peer: skipped, torch/pytorch_metric_learning do not import ({e}).")
    return None
  return torch, pml


def bench_peer(torch, x, labels) -> dict:
  """Times PML's miner + loss pairs on the same embeddings."""
  from pytorch_metric_learning import losses
  from pytorch_metric_learning import miners

  pairs = {
    "pml_dw_margin": (
      miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4),
      losses.MarginLoss(margin=0.2, nu=0, beta=1.2, learn_beta=True),
    ),
    "pml_semihard_triplet": (
      miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard"),
      losses.TripletMarginLoss(margin=0.2),
    ),
  }
  emb = torch.from_numpy(x.copy()).requires_grad_(True)
  lab = torch.from_numpy(labels.astype(np.int64))
  results = {}
  for name, (miner, loss_mod) in pairs.items():

    def step(backward, miner=miner, loss_mod=loss_mod):
      emb.grad = None
      loss_mod.zero_grad(set_to_none=True)
      with torch.set_grad_enabled(backward):
        loss = loss_mod(emb, lab, miner(emb, lab))
      if backward:
        loss.backward()

    try:
      results[name] = {
        k: time_fn(lambda b=b: step(b))
        for k, b in (("fwd", False), ("fwd_bwd", True))
      }
    except Exception as e:  # Report the failing peer and keep going.
      results[name] = {"error": f"{type(e).__name__}: {e}"}
  return results


def machine_info(peer) -> dict:
  info = _machine.machine_info()
  if peer:
    torch, pml = peer
    info.update(
      torch=torch.__version__,
      pml=pml.__version__,
      torch_num_threads=torch.get_num_threads(),
    )
  return info


def fmt_row(b: int, impl: str, name: str, row: dict) -> str:
  """One table line: times as median ± IQR (ms), or the error."""
  if "error" in row:
    return f"{b:>5} {impl:7} {name:32} ERROR {row['error'][:300]}"
  cells = [
    f"{row[k]['median_ms']:9.3f} ±{row[k]['iqr_ms']:7.3f}"
    for k in ("fwd", "fwd_bwd")
  ]
  return f"{b:>5} {impl:7} {name:32} {cells[0]:>18} {cells[1]:>18}"


def compare(theirs: dict, ours: dict) -> dict:
  """PML / dmljax ratios of two timings (of medians and of minima)."""
  m, lo = "median_ms", "min_ms"
  return dict(
    peer_ms=theirs[m],
    dmljax_ms=ours[m],
    speedup=theirs[m] / ours[m],
    speedup_of_min=theirs[lo] / ours[lo],
  )


def bench_size(requested: int, peer) -> tuple[list, list]:
  """Benchmarks every dmljax cell and peer pair at one batch size."""
  b = requested
  load = os.getloadavg()[0]  # Other processes skew timings on a small box.
  print(
    f"# B={b}: {-(-b // _K.value)} classes of K={_K.value} (the last may be "
    f"short); 1-min load average before: {load:.2f}",
    flush=True,
  )
  x, labels = make_batch(b, _DIM.value, _K.value, _SEED.value)
  base, rows, speedups, cells = dict(B=b, B_requested=requested), [], [], {}
  for sampler in _SAMPLERS.value:
    for loss in _LOSSES.value:
      for gradient in _GRADIENTS.value:
        row = base | dict(
          impl="dmljax", sampler=sampler, loss=loss, distance_gradient=gradient
        )
        try:
          row.update(bench_dmljax(x, labels, sampler, loss, gradient))
        except Exception as e:  # Report the failing kernel and keep going.
          row["error"] = f"{type(e).__name__}: {e}"
        cells[sampler, loss, gradient] = row
        rows.append(row)
        tag = "" if gradient == "dense" else f" {gradient}"
        print(
          fmt_row(b, "dmljax", f"{sampler:18} {loss}{tag}", row), flush=True
        )
  for name, res in (bench_peer(peer[0], x, labels) if peer else {}).items():
    rows.append(base | dict(impl="pml", sampler=name, loss="") | res)
    print(fmt_row(b, "pml", name, res), flush=True)
    for sampler, loss in PEER_PAIRS[name]:
      cell = cells.get((sampler, loss, "dense"), {})
      if "fwd_bwd" in res and "fwd_bwd" in cell:
        ids = dict(peer=name, dmljax=f"{sampler}+{loss}")
        speedups.append(base | ids | compare(res["fwd_bwd"], cell["fwd_bwd"]))
  gradients = []
  for sampler in _SAMPLERS.value:
    for loss in _LOSSES.value:
      dense = cells.get((sampler, loss, "dense"), {})
      gathered = cells.get((sampler, loss, "gathered"), {})
      if "_values" in dense and "_values" in gathered:
        ids = dict(sampler=sampler, loss=loss)
        gradients.append(base | ids | compare_gradients(dense, gathered))
  for row in rows:
    row.pop("_values", None)
  return rows, speedups, gradients


def print_gradients(gradients: list) -> None:
  print(
    "\nDistance gradient, fwd_bwd: dense / gathered (medians), and how far "
    "their outputs differ:"
  )
  for g in gradients:
    print(
      f"  B={g['B']:<5} {g['sampler']:18} {g['loss']:13} "
      f"{g['dense_ms']:9.3f} ms / {g['gathered_ms']:9.3f} ms = "
      f"{g['speedup']:5.2f}x; |loss diff| {g['loss_abs_difference']:.1e}, "
      f"max |grad diff| / max |grad| "
      f"{g['max_gradient_difference_relative']:.1e}"
    )


def print_speedups(speedups: list) -> None:
  print("\nSpeed-ups, fwd_bwd (PML / dmljax, of medians and of minima):")
  for s in speedups:
    line = (
      f"  B={s['B']:<5} {s['peer']:21} {s['peer_ms']:10.3f} ms vs "
      f"{s['dmljax']:24} {s['dmljax_ms']:9.3f} ms: {s['speedup']:6.1f}x "
      f"(min: {s['speedup_of_min']:.1f}x)"
    )
    if s["peer"] == TARGET["peer"] and s["B_requested"] in TARGET["sizes"]:
      met = "MET" if s["speedup"] >= TARGET["speedup"] else "MISSED"
      line += f"  target >= {TARGET['speedup']:g}x: {met}"
    print(line)


def main(argv):
  del argv
  if unknown := set(_SAMPLERS.value) - set(SAMPLERS):
    raise app.UsageError(f"Unknown --samplers {sorted(unknown)}.")
  if unknown := set(_GRADIENTS.value) - set(methods.DISTANCE_GRADIENTS):
    raise app.UsageError(f"Unknown --distance_gradients {sorted(unknown)}.")
  peer = load_peer()
  info = machine_info(peer)
  threads = "XLA CPU default pool (all cores)"
  if peer:
    threads += f"; torch.get_num_threads()={info['torch_num_threads']}"
  print(
    f"jax {info['jax']} ({info['backend']}), {info['cpu_count']} CPUs, "
    f"threads: {threads}. Times: median ± IQR (ms).\n"
  )
  header = f"{'B':>5} {'impl':7} {'sampler':18} {'loss':13} "
  header += f"{'fwd ms':>18} {'fwd_bwd ms':>18}"
  print(header + "\n" + "-" * len(header))
  rows, speedups, gradients = [], [], []
  for requested in [int(s) for s in _SIZES.value]:
    r, s, g = bench_size(requested, peer)
    rows, speedups, gradients = rows + r, speedups + s, gradients + g
  if speedups:
    print_speedups(speedups)
  if gradients:
    print_gradients(gradients)
  names = "sizes dim images_per_class repeats min_repeats budget_s seed peer"
  names += " samplers losses distance_gradients"
  config = {k: flags.FLAGS[k].value for k in names.split()}
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value, "w") as f:
    out = dict(
      machine=info,
      config=config,
      results=rows,
      speedups=speedups,
      distance_gradients=gradients,
    )
    json.dump(out, f, indent=2, default=float)
  print(f"\nWrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
