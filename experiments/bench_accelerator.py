"""Everything dmljax measures on a GPU or TPU, in one run of ~8 minutes.

  python -m experiments.bench_accelerator          # on the accelerator
  python -m experiments.bench_accelerator --smoke  # every section, toy sizes

Writes results/accelerator_<device>.{json,md} (`--out_dir`; `_smoke` added
to the name at --smoke), rewritten after every measured row, so a run
killed half-way keeps what it measured. Sections, in order:

  resnet50_synthetic      the paper's ResNet-50 (224 px, 128-d head, DW +
                          margin) train step on an on-device batch: float32
                          and bfloat16 × batch 80 and 128; images/s, the
                          allocator's peak and XLA's planned bytes (paper:
                          0.55 s per batch of 120 on a P100, ≈ 220 images/s)
  resnet50_host_pipeline  the float32 batch-80 step fed by the real host
                          pipeline (synthetic 500 × 375 JPEGs on local disk,
                          decode + the paper's augmentation in grain, one
                          worker per core but one): is the device starved?
  dw_margin               DW sampling + margin loss fwd and fwd + bwd at
                          B = 120, 2,048, 8,192, dense vs gathered backward
  evaluation              Recall@{1, 10, 100, 1000} per tile size and
                          k-means NMI at SOP's shape (60,502 × 128); then
                          1,000,000 × 128 with the fastest tile
                          (accelerators only)
  glyphs_step             the main job's step (margin_dw on glyphs)
  dsp_step                one DE-DSP step (Algorithm 1, dsp_triplet)
  multi_device            1, 2, 4, ... N devices (weak scaling: the batch
                          per device fixed), global vs local mining

Each section runs in its own thread with its own time budget: it checks the
budget before each cell and stops early (status "timeout", rows kept); if
it overruns its budget by the grace period (a compile that hangs), the run
records "timeout" and goes on without it. Statuses: "ok", "timeout",
"error: ...". --total_budget_s caps the sections' budgets (default 420 s:
with start-up and the last section's grace, under 8 minutes).
"""

import dataclasses
import json
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable

import jax
import numpy as np
from absl import app
from absl import flags

from experiments import _machine
from experiments import accelerator_kernels as kernels
from experiments import accelerator_training as training

# name -> (function, budget in seconds on an accelerator).
SECTIONS: dict[str, tuple[Callable, float]] = {
  "resnet50_synthetic": (training.resnet50_synthetic, 180.0),
  "resnet50_host_pipeline": (training.resnet50_host_pipeline, 60.0),
  "dw_margin": (kernels.dw_margin, 45.0),
  "evaluation": (kernels.evaluation, 100.0),
  "glyphs_step": (training.glyphs_step, 20.0),
  "dsp_step": (training.dsp_step, 40.0),
  "multi_device": (training.multi_device, 60.0),
}
SCHEMA = "dmljax.bench_accelerator/1"
# At --smoke a section's budget is only a guard against hangs (single cells,
# slow CPU compiles): this many seconds, and the run's cap ten times more.
SMOKE_BUDGET_S = 240.0

_SMOKE = flags.DEFINE_bool("smoke", False, "Toy sizes: every section, CPU.")
_OUT_DIR = flags.DEFINE_string("out_dir", "results", "Where the files go.")
_SECTIONS = flags.DEFINE_list("sections", list(SECTIONS), "Sections to run.")
_TOTAL = flags.DEFINE_float("total_budget_s", 420.0, "Cap on the whole run.")
_SCALE = flags.DEFINE_float("budget_scale", 1.0, "Multiplies every budget.")
_CELL = flags.DEFINE_float(
  "cell_seconds", 5.0, "Timed seconds per cell (0.3 at --smoke)."
)
_WORKERS = flags.DEFINE_integer(
  "workers", 0, "Grain workers of the host pipeline; 0: cores − 1."
)
_NUM_JPEGS = flags.DEFINE_integer("num_jpegs", 1000, "JPEGs to write.")
_MULTI_DATASET = flags.DEFINE_enum(
  "multi_device_dataset",
  "glyphs",
  ["glyphs", "sop"],
  "Config of multi_device: glyphs (small net, fast compiles) or sop "
  "(ResNet-50, 224 px).",
)
_CACHE = flags.DEFINE_string(
  "compilation_cache_dir",
  "",
  "Persistent XLA compilation cache (a rerun skips compiles); '' off.",
)


@dataclasses.dataclass
class Budget:
  """A section's time: `left()`, `expired()` (also once cancelled)."""

  seconds: float
  start: float = dataclasses.field(default_factory=time.perf_counter)
  cancelled: threading.Event = dataclasses.field(
    default_factory=threading.Event
  )
  ran_out: bool = False

  def left(self) -> float:
    if self.cancelled.is_set():
      return 0.0
    return self.seconds - (time.perf_counter() - self.start)

  def expired(self, need: float = 0.0) -> bool:
    """True once out of time, or with less left than `need` seconds."""
    if self.left() <= need:
      self.ran_out = True
    return self.ran_out


@dataclasses.dataclass
class Context:
  """What a section gets (experiments/accelerator_*.py)."""

  smoke: bool
  budget: Budget
  out: dict  # This section's record: rows appended as they finish.
  save: Callable[[], None]  # Rewrites the JSON and markdown.
  shared: dict  # Across sections (the compiled ResNet-50 step).
  options: dict
  cell_seconds: float


def device_slug() -> str:
  kind = jax.devices()[0].device_kind
  return re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_") or "unknown"


def machine_info() -> dict:
  device = jax.devices()[0]
  client = getattr(device, "client", None)
  return _machine.machine_info(
    device_kind=device.device_kind,
    platform_version=getattr(client, "platform_version", None),
    device_count=jax.device_count(),
    local_device_count=jax.local_device_count(),
    process_count=jax.process_count(),
    device_memory_bytes=training.device_memory()["bytes_limit"],
    cores=training.available_cores(),
  )


def _jsonable(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray | jax.Array):
    return np.asarray(value).tolist()
  return str(value)


class Writer:
  """Rewrites <out_dir>/accelerator_<device>.{json,md} (thread-safe)."""

  def __init__(self, out_dir: str, name: str):
    os.makedirs(out_dir, exist_ok=True)
    self.json_path = os.path.join(out_dir, name + ".json")
    self.md_path = os.path.join(out_dir, name + ".md")
    self.lock = threading.Lock()

  def __call__(self, report: dict) -> None:
    with self.lock:
      text = json.dumps(report, indent=2, default=_jsonable)
      markdown = render_markdown(report)
      for path, content in ((self.json_path, text), (self.md_path, markdown)):
        with open(path + ".tmp", "w") as f:
          f.write(content + "\n")
        os.replace(path + ".tmp", path)


COLUMNS = {
  "resnet50_synthetic": "model image_size dtype batch_size ms_per_step "
  "images_per_s compile_s peak_bytes_in_use xla_planned_bytes error",
  "resnet50_host_pipeline": "batch_size workers cores jpeg "
  "pipeline_images_per_s synthetic_images_per_s fed_images_per_s "
  "host_wait_fraction starved",
  "dw_margin": "B distance_gradient fwd_ms fwd_bwd_ms fwd_bwd_first_call_s",
  "evaluation": "data N metric tile clusters init iterations first_call_s ms "
  "seconds_with_compile recall@1 recall@10 recall@100 recall@1000 nmi",
  "glyphs_step": "model batch_size ms_per_step images_per_s compile_s error",
  "dsp_step": "pool minibatches ms_per_step pool_images_per_s first_step_s",
  "multi_device": "model devices mining batch_size ms_per_step images_per_s "
  "error",
}


def _cell(name: str, value) -> str:
  if value is None:
    return ""
  if name.endswith("bytes") or name == "peak_bytes_in_use":
    return f"{value / 2**20:.0f} MiB"
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def _table(rows: list, columns: list) -> list[str]:
  columns = [c for c in columns if any(c in row for row in rows)]
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for row in rows:
    lines.append(
      "| " + " | ".join(_cell(c, row.get(c)) for c in columns) + " |"
    )
  return lines


def render_markdown(report: dict) -> str:
  machine = report["machine"]
  lines = [
    f"# dmljax on {machine['device_kind']} × {machine['device_count']}",
    "",
    f"{machine['backend']}, jax {machine['jax']}, {machine['cores']} cores, "
    f"{'smoke sizes' if report['smoke'] else 'full sizes'}; "
    f"`{report['command']}`; {report.get('wall_s', 0):.0f} s.",
  ]
  for name, section in report["sections"].items():
    lines += ["", f"## {name}: {section.get('status')}"]
    if "seconds" in section:
      lines.append(
        f"{section['seconds']:.1f} s of a {section['budget_s']:.0f} s budget."
      )
    for key in ("skipped", "million", "chosen_tile", "note"):
      if key in section:
        lines.append(f"{key}: {section[key]}")
    if section.get("rows"):
      lines += [""] + _table(section["rows"], COLUMNS[name].split())
    if section.get("comparisons"):
      lines += ["", "dense / gathered fwd_bwd, and their differences:", ""]
      lines += _table(section["comparisons"], list(section["comparisons"][0]))
  return "\n".join(lines)


def run_section(name, fn, budget_s, report, writer, shared) -> bool:
  """Runs one section in a thread; False if it is still running (hung)."""
  out = {"status": "running", "budget_s": budget_s}
  report["sections"][name] = out
  budget = Budget(budget_s)
  smoke = _SMOKE.value
  ctx = Context(
    smoke=smoke,
    budget=budget,
    out=out,
    save=lambda: writer(report),
    shared=shared,
    options=dict(
      workers=_WORKERS.value,
      num_jpegs=_NUM_JPEGS.value,
      multi_device_dataset=_MULTI_DATASET.value,
    ),
    cell_seconds=0.3 if smoke and not _CELL.present else _CELL.value,
  )
  result = {}

  def target():
    try:
      fn(ctx)
      result["status"] = "timeout" if budget.ran_out else "ok"
    except Exception as error:  # Recorded; the next section still runs.
      result["status"] = f"error: {type(error).__name__}: {error}"[:500]
      result["traceback"] = traceback.format_exc()[-3000:]

  start = time.perf_counter()
  thread = threading.Thread(target=target, name=name, daemon=True)
  thread.start()
  thread.join(budget_s + min(30.0, 0.25 * budget_s))
  out["seconds"] = time.perf_counter() - start
  if thread.is_alive():  # Detach its record: later writes do not see it.
    budget.cancelled.set()
    report["sections"][name] = dict(
      out,
      rows=list(out.get("rows", [])),
      status="timeout",
      note="hard limit passed while a cell ran (still running; later "
      "sections shared the device with it)",
    )
    return False
  out.update(result)
  return True


def main(argv):
  del argv
  if unknown := set(_SECTIONS.value) - set(SECTIONS):
    raise app.UsageError(f"Unknown --sections {sorted(unknown)}.")
  if _CACHE.value:
    jax.config.update("jax_compilation_cache_dir", _CACHE.value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  start = time.perf_counter()
  name = f"accelerator_{device_slug()}" + ("_smoke" if _SMOKE.value else "")
  writer = Writer(_OUT_DIR.value, name)
  report = dict(
    schema=SCHEMA,
    smoke=_SMOKE.value,
    command="python -m experiments.bench_accelerator " + " ".join(sys.argv[1:]),
    started=time.strftime("%Y-%m-%d %H:%M:%S %z"),
    machine=machine_info(),
    sections={s: {"status": "pending"} for s in _SECTIONS.value},
  )
  writer(report)
  shared, hung = {}, []
  total = _TOTAL.value
  if _SMOKE.value and not _TOTAL.present:
    total = 10 * SMOKE_BUDGET_S
  for section in _SECTIONS.value:
    fn, budget = SECTIONS[section]
    if _SMOKE.value:
      budget = SMOKE_BUDGET_S
    left = total - (time.perf_counter() - start) - 5.0
    budget = min(budget * _SCALE.value, left)
    if budget <= 0:
      report["sections"][section] = dict(
        status="timeout", note="no time left in --total_budget_s"
      )
      continue
    print(f"[{time.perf_counter() - start:6.1f} s] {section}", flush=True)
    if not run_section(section, fn, budget, report, writer, shared):
      hung.append(section)
    if hung:
      report["sections"][section].setdefault("overlapping", list(hung))
    report["wall_s"] = time.perf_counter() - start
    writer(report)
  shared.clear()
  print(render_markdown(report))
  print(f"\nJSON: {writer.json_path}\nMarkdown: {writer.md_path}", flush=True)
  if hung:  # A hung section's thread would keep the process alive.
    os._exit(0)


if __name__ == "__main__":
  app.run(main)
