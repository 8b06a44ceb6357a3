"""Benchmarks evaluation at SOP scale: Recall@k and k-means NMI vs peers.

Data: SOP's test-set shape (60,502 images of 11,316 classes, 2 to 12
images per class; Song et al. 2016), as unit vectors in 128-D scattered
around one random centre per class (synthetic: the real images cannot be
downloaded here; the cost does not depend on the values).

Recall@k (leave-one-out, Wu et al. Sec. 5) for k in --ks with
  * dmljax `metrics.recall_at_k` (first-hit ranks in b × b tiles),
  * faiss-cpu `IndexFlatL2.search(x, max_k + 1)`, self dropped,
  * scikit-learn `NearestNeighbors(algorithm="brute").kneighbors()`,
  * pytorch-metric-learning `AccuracyCalculator(k=max_k)` (precision_at_1
    only: it reports no Recall@k for k > 1),
plus dmljax `map_at_r` (one call). k-means + NMI on --kmeans_points points
(--kmeans_clusters classes of equal size) with K = the number of classes:
dmljax (random and k-means++ seeding, at most --kmeans_iters Lloyd steps; it
stops at a fixed point), then faiss `Kmeans` (random seeding) and
scikit-learn `KMeans` (k-means++, n_init=1, tol=0) for as many iterations as
the dmljax run before them took; and with --sop_kmeans_iters > 0, dmljax and
faiss at K = 11,316 on all SOP-sized points.

Each implementation runs in its own process (spawned), so its peak memory
is its own: the JSON gives the peak resident memory (VmHWM, reset before
the timed calls) above the resident memory at that point (imports, data and
dmljax's compiled code included), and for dmljax also XLA's compiled
temporary buffers and the tile size b² × 4 bytes that bounds them. Times are
the median of --repeats calls (dmljax after one compiling call, reported
apart); a peer stops repeating after --budget_s seconds. Peers are optional
and skipped with a printed line when they do not import. The timed
functions are in experiments/eval_implementations.py.

Usage:
  python -m experiments.bench_eval                      # the full run
  python -m experiments.bench_eval --num_points=6000 --num_classes=1100 \
    --kmeans_points=3000 --sop_kmeans_iters=0 --repeats=1   # a quick one
"""

import importlib
import json
import multiprocessing
import os
import time

import numpy as np
from absl import app
from absl import flags

from experiments import _machine
from experiments import eval_implementations as impls

_N = flags.DEFINE_integer("num_points", 60502, "N test points (SOP: 60,502).")
_C = flags.DEFINE_integer("num_classes", 11316, "Classes (SOP: 11,316).")
_DIM = flags.DEFINE_integer("dim", 128, "Embedding dimension D.")
_NOISE = flags.DEFINE_float("noise", 0.12, "Per-coordinate noise std.")
_KS = flags.DEFINE_list("ks", ["1", "10", "100", "1000"], "Recall@k values.")
_BLOCK = flags.DEFINE_integer("block_size", 1024, "dmljax tile / block b.")
_KM_N = flags.DEFINE_integer("kmeans_points", 20000, "Points for k-means.")
_KM_C = flags.DEFINE_integer("kmeans_clusters", 1000, "Classes = clusters.")
_KM_NOISE = flags.DEFINE_float(
  "kmeans_noise", 0.2, "Noise of the k-means data (overlapping classes)."
)
_KM_ITERS = flags.DEFINE_integer("kmeans_iters", 25, "Lloyd iterations.")
_SOP_ITERS = flags.DEFINE_integer(
  "sop_kmeans_iters", 5, "Iterations at K = num_classes on all points; 0: off."
)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per cell.")
_BUDGET = flags.DEFINE_float("budget_s", 100.0, "Stop repeating after this.")
_PEERS = flags.DEFINE_list("peers", ["faiss", "sklearn", "pml"], "Peers.")
_SEED = flags.DEFINE_integer("seed", 0, "Data seed.")
_OUT = flags.DEFINE_string("out", "bench_results/bench_eval.json", "JSON.")


def class_sizes(num_points: int, num_classes: int, rng) -> np.ndarray:
  """Sizes in [2, 12] summing to num_points (SOP's test range)."""
  if not 2 * num_classes <= num_points <= 12 * num_classes:
    raise ValueError("Need 2 ≤ num_points / num_classes ≤ 12, as in SOP.")
  mean_extra = (num_points - 2 * num_classes) / num_classes
  sizes = 2 + rng.binomial(10, mean_extra / 10, num_classes)
  while (gap := num_points - sizes.sum()) != 0:
    room = sizes < 12 if gap > 0 else sizes > 2
    chosen = rng.choice(np.flatnonzero(room), min(abs(gap), room.sum()), False)
    sizes[chosen] += np.sign(gap)
  return sizes


def make_data(num_points, num_classes, dim, noise, seed, sop_sizes=True):
  """[N, D] float32 unit vectors and [N] int32 shuffled labels.

  Class sizes follow SOP's range (`class_sizes`), or with sop_sizes=False
  are as equal as N and C allow.
  """
  rng = np.random.default_rng(seed)
  if sop_sizes:
    sizes = class_sizes(num_points, num_classes, rng)
  else:
    sizes = num_points // num_classes + (
      np.arange(num_classes) < num_points % num_classes
    )
  labels = rng.permutation(np.repeat(np.arange(num_classes), sizes))
  centres = rng.standard_normal((num_classes, dim))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  x = centres[labels] + noise * rng.standard_normal((num_points, dim))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  return x.astype(np.float32), labels.astype(np.int32)


def _memory_bytes(field: str) -> int:
  """VmRSS (resident now) or VmHWM (peak resident) from /proc/self/status."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise KeyError(field)


def _reset_peak_memory() -> None:
  """Resets VmHWM to the current RSS (Linux: clear_refs 5)."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def _timed(fn, repeats, budget_s):
  """(result, [seconds]) of up to `repeats` calls, stopping past budget_s."""
  times, start = [], time.perf_counter()
  for _ in range(repeats):
    t0 = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - t0)
    if time.perf_counter() - start > budget_s:
      break
  return result, times


def _child(queue, name, data_args, kwargs, repeats, warmup, budget):
  """Runs impls.IMPLS[name] in a fresh process and reports time and memory."""
  try:
    x, labels = make_data(*data_args)
    fn = impls.IMPLS[name]
    for module in (
      "dmljax.metrics",
      *impls.PRELOAD.get(name.rsplit("_", 1)[1], ()),
    ):
      importlib.import_module(module)
    kwargs = dict(kwargs)
    if name.startswith("kmeans"):
      kwargs["num_clusters"] = len(np.unique(labels))
    first = None
    if warmup:  # Compiles; its memory (LLVM) is not the kernel's.
      t0 = time.perf_counter()
      fn(x, labels, **kwargs)
      first = time.perf_counter() - t0
    _reset_peak_memory()
    baseline = _memory_bytes("VmRSS")
    (values, extra), times = _timed(
      lambda: fn(x, labels, **kwargs), repeats, budget
    )
    peak = _memory_bytes("VmHWM")
    if "iterations" in values:  # Lloyd steps + the final assignment.
      values["s_per_iteration"] = float(np.median(times)) / (
        values["iterations"] + 1
      )
    if name in impls.DESCRIBE:
      extra |= impls.DESCRIBE[name](x, labels, **kwargs)
    queue.put(
      dict(
        values=values,
        extra=extra,
        times_s=times,
        median_s=float(np.median(times)),
        first_call_s=first,
        peak_rss_above_baseline_bytes=peak - baseline,
      )
    )
  except ImportError as e:
    queue.put({"skipped": f"{type(e).__name__}: {e}"})
  except Exception as e:  # Report the failing implementation and go on.
    queue.put({"error": f"{type(e).__name__}: {e}"})


def run_cell(name, data, kwargs, *, warmup=False, repeats=None):
  """One implementation on one data set (make_data's arguments), spawned."""
  context = multiprocessing.get_context("spawn")
  queue = context.Queue()
  repeats = _REPEATS.value if repeats is None else repeats
  args = (queue, name, data, kwargs, repeats, warmup, _BUDGET.value)
  process = context.Process(target=_child, args=args)
  process.start()
  result = queue.get()
  process.join()
  return dict(impl=name, num_points=data[0], kwargs=kwargs) | result


def format_values(values: dict) -> str:
  return " ".join(
    f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
    for k, v in values.items()
    if k != "inertia"
  )


def print_row(cell: str, row: dict, reference: dict | None) -> None:
  name = row["impl"].rsplit("_", 1)[1]
  if "init" in row["kwargs"]:
    name += f" ({row['kwargs']['init']})"
  if "median_s" not in row:
    print(f"{cell:24} {name:18} {row.get('skipped') or row.get('error')}")
    return
  ratio = ""
  if reference and "median_s" in reference and row is not reference:
    ratio = f"{row['median_s'] / reference['median_s']:6.2f}x"
  memory = row["peak_rss_above_baseline_bytes"] / 2**20
  print(
    f"{cell:24} {name:18} {row['median_s']:9.2f} {ratio:>8} "
    f"{len(row['times_s']):>3} {memory:9.0f}  {format_values(row['values'])}",
    flush=True,
  )


def _print_header(info: dict) -> None:
  """The machine line, what the columns mean, and the column titles."""
  print(
    f"jax {info['jax']} ({info['backend']}), {info['cpu_count']} CPUs, "
    f"1-min load {info['load_average_1min']:.2f}. Times: median seconds of "
    "the timed calls (n); x = time / dmljax time (> 1: dmljax is faster);\n"
    "peak MB = peak resident memory above the process baseline.\n"
  )
  print(
    f"{'cell':24} {'impl':18} {'median s':>9} {'x':>8} {'n':>3} "
    f"{'peak MB':>9}  values"
  )


def _recall_rows(sop: tuple, ks: list[int], peers: set[str]) -> list[dict]:
  """Recall@k on the SOP-sized data: dmljax first, then each peer."""
  rows = [
    run_cell(
      "recall_dmljax", sop, dict(ks=ks, block_size=_BLOCK.value), warmup=True
    )
  ]
  for peer in ("faiss", "sklearn", "pml"):
    if peer in peers:
      rows.append(run_cell(f"recall_{peer}", sop, dict(ks=ks)))
  return rows


def _same_iterations(row: dict) -> dict:
  """The peer runs as many Lloyd steps as dmljax (which may stop early)."""
  done = row.get("values", {}).get("iterations", _KM_ITERS.value)
  return dict(num_iters=max(done, 1))


def _kmeans_rows(km_data: tuple, peers: set[str]) -> list[dict]:
  """k-means + NMI: dmljax random seeding, faiss, dmljax k-means++, sklearn.

  Each peer runs as many Lloyd steps as the dmljax run before it.
  """
  iters = dict(num_iters=_KM_ITERS.value)
  rows = [
    run_cell("kmeans_dmljax", km_data, iters | dict(init="random"), warmup=True)
  ]
  if "faiss" in peers:
    rows.append(run_cell("kmeans_faiss", km_data, _same_iterations(rows[0])))
  rows.append(
    run_cell(
      "kmeans_dmljax", km_data, iters | dict(init="kmeans++"), warmup=True
    )
  )
  if "sklearn" in peers:
    rows.append(run_cell("kmeans_sklearn", km_data, _same_iterations(rows[-1])))
  return rows


def _sop_kmeans_rows(sop: tuple, peers: set[str]) -> list[dict]:
  """k-means at K = num_classes on all points: dmljax, then faiss (1 call)."""
  iters = dict(num_iters=_SOP_ITERS.value)
  rows = [
    run_cell(
      "kmeans_dmljax",
      sop,
      iters | dict(init="random"),
      warmup=True,
      repeats=1,
    )
  ]
  if "faiss" in peers:
    rows.append(
      run_cell("kmeans_faiss", sop, _same_iterations(rows[0]), repeats=1)
    )
  return rows


def _write_json(info: dict, cells: list[dict]) -> None:
  """--out: the machine, the flags that shape the run, and every cell."""
  names = "num_points num_classes dim noise ks block_size kmeans_points"
  names += " kmeans_clusters kmeans_noise kmeans_iters sop_kmeans_iters"
  names += " repeats budget_s peers seed"
  config = {k: flags.FLAGS[k].value for k in names.split()}
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(dict(machine=info, config=config, cells=cells), f, indent=2)
  print(f"\nWrote {_OUT.value}")


def main(argv):
  del argv
  ks = [int(k) for k in _KS.value]
  peers = set(_PEERS.value)
  if unknown := peers - {"faiss", "sklearn", "pml"}:
    raise app.UsageError(f"Unknown --peers {sorted(unknown)}.")
  info = _machine.machine_info()
  _print_header(info)
  sop = (_N.value, _C.value, _DIM.value, _NOISE.value, _SEED.value)
  cells = []

  def cell(title, rows):
    cells.append(dict(cell=title, rows=rows))
    for row in rows:
      print_row(title, row, rows[0])

  cell(f"recall@k N={_N.value}", _recall_rows(sop, ks, peers))
  cell(
    f"map@r N={_N.value}",
    [
      run_cell(
        "map_at_r_dmljax",
        sop,
        dict(ks=ks, block_size=_BLOCK.value),
        repeats=1,
      )
    ],
  )
  km_data = (_KM_N.value, _KM_C.value, _DIM.value, _KM_NOISE.value, _SEED.value)
  km_data += (False,)
  cell(f"kmeans N={_KM_N.value} K={_KM_C.value}", _kmeans_rows(km_data, peers))
  if _SOP_ITERS.value > 0:
    cell(f"kmeans N={_N.value} K={_C.value}", _sop_kmeans_rows(sop, peers))
  _write_json(info, cells)


if __name__ == "__main__":
  app.run(main)
