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

import numpy as np
import tqdm

from dmljax.runtime import rundir
from dmljax.runtime import tensorboard


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
    # The optional TensorBoard mirror (a no-op without tensorboardX).
    self.events = tensorboard.EventWriter(
      os.path.join(workdir, rundir.TENSORBOARD_FOLDER),
      resume_step=resume_step,
      enabled=enabled,
    )
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, rundir.METRICS_FILE)
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
    self.events.scalars(step, kind, values)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of `<workdir>/metrics.jsonl` (empty if there is none).

  Raises:
    ValueError: a line other than the last is not a JSON record.
  """
  path = os.path.join(workdir, rundir.METRICS_FILE)
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
  """training.png (loss, D_ap / D_an / β, non-zero terms) and eval.png."""
  from dmljax.runtime.plots import curves  # pylint: disable=import-outside-toplevel

  records = read_metrics(workdir)
  paths = []
  for name, draw in (
    (rundir.CURVE_FIGURES[0], curves.training_figure),
    (rundir.CURVE_FIGURES[1], curves.evaluation_figure),
  ):
    path = os.path.join(workdir, name)
    if draw(records, path):
      paths.append(path)
  return paths


class _DisplayImages:
  """A split's images as a sequence, decoded only when one is asked for."""

  def __init__(self, split):
    self.split = split

  def __len__(self) -> int:
    return len(self.split)

  def __getitem__(self, row: int):
    return self.split.display_images([row])[0]


def plot_embedding(
  workdir: str, split, embeddings, *, seed: int = 0
) -> list[str]:
  """retrieval.png (queries and their top 5, Wu et al. Fig. 5) and tsne.png.

  Args:
    workdir: where the PNGs go.
    split: the test split (`display_images(rows)`, `labels`, `class_names`).
    embeddings: float32 [N, D] embeddings of its images, in order.
    seed: picks the queries and the t-SNE sample.
  """
  # pylint: disable=import-outside-toplevel
  from dmljax.runtime.plots import retrieval
  from dmljax.runtime.plots import tsne

  names = np.asarray(split.class_names, dtype=object)
  labels = names[np.asarray(split.labels)]
  paths = [os.path.join(workdir, name) for name in rundir.EMBEDDING_FIGURES]
  retrieval.split_retrieval_figure(
    _DisplayImages(split), labels, embeddings, paths[0], seed=seed
  )
  tsne.tsne_figure(embeddings, labels, paths[1], seed=seed)
  return paths


def _finish_events(log, config, final, split, embeddings, retrieval_png):
  """TensorBoard's image, hparams and projector (if tensorboardX is here)."""
  rows = tensorboard.projector_sample(split.labels, seed=config.seed)
  names = np.asarray(split.class_names, dtype=object)
  log.events.finish(
    int(config.train.num_steps),
    hparams=tensorboard.flat_hparams(config.to_dict()),
    final=final,
    retrieval_png=retrieval_png,
    embeddings=embeddings[rows],
    names=[str(n) for n in names[np.asarray(split.labels)[rows]]],
    thumbnails=_thumbnails(split.display_images(rows)),
  )


def _thumbnails(images: np.ndarray, side: int = 32) -> np.ndarray:
  """uint8 [n, H, W, C] → float32 [n, ≤ 2·side, ≤ 2·side, C] in [0, 1]."""
  stride = max(1, images.shape[1] // side)
  return images[:, ::stride, ::stride].astype(np.float32) / 255


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
  *,
  split=None,
  embeddings: np.ndarray | None = None,
  log: MetricsLog | None = None,
) -> None:
  """Writes summary.json and the figures, and prints the summary table.

  `beta`: the learned β's statistics over classes (margin loss), kept in
  summary.json under "beta" and printed below the table. With the test
  `split` and its float32 [N, D] `embeddings`: retrieval.png and tsne.png
  (`plot_embedding`), and the end of the TensorBoard view of `log`.
  """
  summary = {"config": config.to_dict(), "final": final}
  if beta is not None:
    summary["beta"] = beta
  starts = rundir.read_starts(workdir)
  if starts:  # Every start of the run, and what each one changed.
    summary["starts"] = starts
  temporary = os.path.join(workdir, rundir.SUMMARY_FILE + ".tmp")
  with open(temporary, "w") as f:
    json.dump(summary, f, indent=2, default=str)
  os.replace(temporary, os.path.join(workdir, rundir.SUMMARY_FILE))
  plots = plot_curves(workdir)
  if split is not None and embeddings is not None:
    plots += plot_embedding(workdir, split, embeddings, seed=config.seed)
    if log is not None:
      retrieval_png = os.path.join(workdir, rundir.EMBEDDING_FIGURES[0])
      _finish_events(log, config, final, split, embeddings, retrieval_png)
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
