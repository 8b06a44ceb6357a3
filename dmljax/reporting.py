"""What a training run leaves behind: metrics JSONL, progress, plots, summary.

`<workdir>/metrics.jsonl` holds one JSON object per line:
{"step": int, "kind": "train" | "eval" | "final", <metric>: float, ...}. A
resumed run first drops the lines written after its checkpoint, so the file
reads as if the run had never stopped. A torn last line (a crash in the
middle of writing it) is dropped with a warning; a broken line before the
last is an error naming it.
"""

import json
import os
import sys
import weakref
from typing import Any

import tqdm

from dmljax import rundir

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


class MetricsLog:
  """Appends metrics to `<workdir>/metrics.jsonl`.

  Args:
    workdir: the run directory (created if missing).
    resume_step: the step the run resumes from; lines of later steps (and
      any "final" line) are dropped, since the resumed run writes them again.
    enabled: False makes a log that writes nothing (the processes of a
      multi-host run other than process 0).
  """

  def __init__(
    self, workdir: str, *, resume_step: int = 0, enabled: bool = True
  ):
    self.enabled = enabled
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, METRICS_FILE)
    kept = [
      record
      for record in read_metrics(workdir)
      if record["step"] <= resume_step and record["kind"] != "final"
    ]
    temporary = self.path + ".tmp"
    with open(temporary, "w") as f:
      f.writelines(json.dumps(record) + "\n" for record in kept)
    os.replace(temporary, self.path)

  def write(self, step: int, kind: str, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, "kind": kind, **values}) + "\n")
      f.flush()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of `<workdir>/metrics.jsonl` (empty if there is none).

  Raises:
    ValueError: a line other than the last is not a JSON record.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, errors="replace") as f:
    lines = [(n, line) for n, line in enumerate(f, start=1) if line.strip()]
  records = []
  for position, (number, line) in enumerate(lines):
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or "step" not in record:
        raise ValueError("not a metrics record")
    except ValueError as error:
      if position == len(lines) - 1:  # A crash in the middle of a write.
        print(
          f"warning: {path}: dropped its torn last line {number} "
          f"({line.strip()[:60]!r}), left by a run stopped while writing it.",
          file=sys.stderr,
        )
        break
      raise ValueError(
        f"{path}, line {number}, is not a metrics record ({error}): "
        f"{line.strip()[:60]!r}. Delete that line and rerun."
      ) from error
    records.append(record)
  return records


_OPEN_BARS: "weakref.WeakSet[tqdm.tqdm]" = weakref.WeakSet()


def progress_bar(start: int, total: int, *, enabled: bool = True) -> tqdm.tqdm:
  """A progress bar over training steps (steps/s, loss as postfix)."""
  bar = tqdm.tqdm(
    initial=start,
    total=total,
    unit="step",
    dynamic_ncols=True,
    file=sys.stderr,
    disable=total == start or not enabled,
  )
  _OPEN_BARS.add(bar)
  return bar


def close_progress_bars() -> None:
  """Ends the open progress bars' lines (before an error message)."""
  for bar in list(_OPEN_BARS):
    bar.close()


def plot_curves(workdir: str) -> list[str]:
  """PNG plots of the training loss and of Recall@1 / NMI vs step."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  records = read_metrics(workdir)
  train = [r for r in records if r["kind"] == "train"]
  evals = [r for r in records if r["kind"] in ("eval", "final")]
  paths = []
  if train:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train])
    ax.set(xlabel="step", ylabel="training loss", title="Loss")
    ax.grid(alpha=0.3)
    paths.append(_save(fig, workdir, "loss.png"))
  if evals:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("recall@1", "nmi", "map@r"):  # NMI: often the end only.
      points = [(r["step"], r[name]) for r in evals if name in r]
      if points:
        ax.plot(*zip(*points, strict=True), marker="o", label=name)
    ax.set(xlabel="step", ylabel="held-out metric", title="Evaluation")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(_save(fig, workdir, "eval.png"))
  return paths


def _save(fig, workdir: str, name: str) -> str:
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  path = os.path.join(workdir, name)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def summary_table(final: dict[str, float]) -> str:
  """A two-column text table of the final metrics."""
  width = max(len(name) for name in final)
  lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  ------"]
  lines += [
    f"{name.ljust(width)}  {value:.4f}" for name, value in final.items()
  ]
  return "\n".join(lines)


def finish(
  workdir: str,
  config,
  final: dict[str, float],
  beta: dict[str, float] | None = None,
) -> None:
  """Writes summary.json and the plots, and prints the summary table.

  `beta`: the learned β's statistics over classes (margin loss), kept in
  summary.json under "beta" and printed below the table.
  """
  summary = {"config": config.to_dict(), "final": final}
  if beta is not None:
    summary["beta"] = beta
  starts = rundir.read_starts(workdir)
  if starts:  # Every start of the run, and what each one changed.
    summary["starts"] = starts
  temporary = os.path.join(workdir, SUMMARY_FILE + ".tmp")
  with open(temporary, "w") as f:
    json.dump(summary, f, indent=2, default=str)
  os.replace(temporary, os.path.join(workdir, SUMMARY_FILE))
  plots = plot_curves(workdir)
  print(f"\nHeld-out classes of {config.data.name}:")
  print(summary_table(final))
  if beta is not None:
    print(
      "Learned β over classes: "
      + ", ".join(f"{k.removeprefix('beta_')} {v:.3f}" for k, v in beta.items())
    )
  print(
    f"Metrics, plots ({', '.join(os.path.basename(p) for p in plots)}) "
    f"and checkpoints are in {workdir}"
  )
