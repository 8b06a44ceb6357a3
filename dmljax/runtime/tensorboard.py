"""An optional TensorBoard view of a run (`pip install -e .[tensorboard]`).

With tensorboardX installed (it needs no TensorFlow), a run also writes
event files to `<workdir>/tensorboard/`:

- every metrics.jsonl record as scalars `<kind>/<metric>` (train, eval,
  final; "@" written "_at_": eval/recall_at_1), so that
  `tensorboard --logdir runs` compares runs;
- at the end, retrieval.png as an image, the config's hyper-parameters
  with the final metrics (the HParams tab), and a projector export of up
  to 1,000 test embeddings with their class names and thumbnails.

metrics.jsonl stays the source of truth: a resumed run writes its events
again from its checkpoint's step (`purge_step`), and without tensorboardX
every function here does nothing.
"""

import importlib.util
from typing import Any

import numpy as np

MAX_PROJECTED = 1000  # Embeddings in the projector (with thumbnails).


def available() -> bool:
  """Whether tensorboardX imports (the `tensorboard` extra)."""
  return importlib.util.find_spec("tensorboardX") is not None


class EventWriter:
  """Scalars and end-of-run summaries for TensorBoard, or nothing.

  Args:
    folder: where the event files go (a run's `<workdir>/tensorboard`,
      `dmljax.runtime.rundir.TENSORBOARD_FOLDER`).
    resume_step: the step the run resumes from (later events are purged).
    enabled: False (or no tensorboardX) makes a writer that does nothing.
  """

  def __init__(self, folder: str, *, resume_step: int = 0, enabled=True):
    self.writer = None
    if not (enabled and available()):
      return
    import tensorboardX  # pylint: disable=import-outside-toplevel

    self.writer = tensorboardX.SummaryWriter(
      folder,
      purge_step=resume_step + 1 if resume_step else None,
      flush_secs=30,
    )

  def scalars(self, step: int, kind: str, values: dict[str, float]) -> None:
    if self.writer is None:
      return
    for name, value in values.items():
      self.writer.add_scalar(f"{kind}/{tag(name)}", value, step)

  def finish(
    self,
    step: int,
    *,
    hparams: dict[str, Any],
    final: dict[str, float],
    retrieval_png: str | None = None,
    embeddings: np.ndarray | None = None,
    names: list[str] | None = None,
    thumbnails: np.ndarray | None = None,
  ) -> None:
    """The end-of-run summaries, then closes the files.

    Args:
      step: the last step.
      hparams: flat {name: number | string} of the config.
      final: the final metrics.
      retrieval_png: the retrieval figure, shown as an image.
      embeddings: float32 [n, D] test embeddings for the projector.
      names: the n class names (projector metadata).
      thumbnails: float [n, H, W, C] images in [0, 1] (projector sprites).
    """
    if self.writer is None:
      return
    if retrieval_png is not None:
      from PIL import Image  # pylint: disable=import-outside-toplevel

      image = np.asarray(Image.open(retrieval_png).convert("RGB"))
      self.writer.add_image("retrieval", image, step, dataformats="HWC")
    self.writer.add_hparams(
      hparams,
      {f"hparam/{tag(k)}": v for k, v in final.items()},
      name="hparams",  # Its own file: the same name would share ours.
    )
    if embeddings is not None:
      label_img = None
      if thumbnails is not None:  # [n, C, H, W], 3 channels for sprites.
        label_img = np.moveaxis(thumbnails, -1, 1)
        if label_img.shape[1] == 1:
          label_img = np.repeat(label_img, 3, axis=1)
      self.writer.add_embedding(
        embeddings, metadata=names, label_img=label_img, global_step=step
      )
    self.writer.close()
    self.writer = None


def tag(name: str) -> str:
  """A metric's name as a TensorBoard tag ("@" is not allowed there).

  >>> tag("recall@1")
  'recall_at_1'
  """
  return name.replace("@", "_at_")


def flat_hparams(config_dict: dict[str, Any]) -> dict[str, Any]:
  """{"optim.learning_rate": 0.003, ...}: numbers, strings, bools only.

  >>> flat_hparams({"a": {"b": 1, "c": (1, 2)}, "d": "x"})
  {'a.b': 1, 'a.c': '(1, 2)', 'd': 'x'}
  """
  out = {}
  for key, value in config_dict.items():
    if isinstance(value, dict):
      for inner, leaf in flat_hparams(value).items():
        out[f"{key}.{inner}"] = leaf
    elif isinstance(value, bool | int | float | str):
      out[key] = value
    else:
      out[key] = str(value)
  return out


def projector_sample(labels, *, seed: int = 0) -> np.ndarray:
  """Up to MAX_PROJECTED rows, drawn without replacement, sorted."""
  labels = np.asarray(labels)
  count = min(MAX_PROJECTED, labels.size)
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(labels.size, size=count, replace=False))
