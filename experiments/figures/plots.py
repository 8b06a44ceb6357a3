"""Matplotlib renderings of `analysis`' numbers, one PNG per figure."""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _centres(edges):
  edges = np.asarray(edges)
  return 0.5 * (edges[1:] + edges[:-1])


def _save(fig, out_dir: str, name: str) -> str:
  path = os.path.join(out_dir, name)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def figure_2(numbers: dict, out_dir: str) -> str:
  fig, ax = plt.subplots(figsize=(6, 4))
  centres = _centres(numbers["bin_edges"])
  for dim, row in numbers["dims"].items():
    (line,) = ax.plot(numbers["grid"], row["density"], label=f"n = {dim}")
    ax.plot(centres, row["histogram"], ".", ms=3, color=line.get_color())
  ax.set(xlabel="distance d", ylabel="q(d)", xlim=(0, 2))
  ax.set_title("Fig. 2: q(d) (lines) vs uniform points (dots)")
  ax.legend(fontsize=8)
  return _save(fig, out_dir, "figure2.png")


def figure_3a(numbers: dict, out_dir: str) -> str:
  fig, ax = plt.subplots(figsize=(6, 4))
  for sigma, norms in numbers["sigmas"].items():
    ax.plot(numbers["distances"], norms, label=f"σ = {sigma}")
  ax.set(xlabel="distance ‖h‖", ylabel="nuclear norm of Cov", yscale="log")
  ax.set_title(f"Fig. 3a: noisy gradient direction, n = {numbers['dim']}")
  ax.legend(fontsize=8)
  return _save(fig, out_dir, "figure3a.png")


def figure_3b(numbers: dict, out_dir: str) -> str:
  fig, ax = plt.subplots(figsize=(6, 4))
  centres = _centres(numbers["bin_edges"])
  for name, row in numbers["samplers"].items():
    style = "k:" if name == "all_negatives" else "-"
    ax.plot(centres, row["histogram"], style, label=name)
  ax.set(xlabel="anchor–negative distance", ylabel="density", xlim=(0, 2))
  ax.set_title(
    f"Fig. 3b: sampled negatives, uniform points, n = {numbers['dim']}"
  )
  ax.legend(fontsize=8)
  return _save(fig, out_dir, "figure3b.png")


def figure_4(numbers: dict, out_dir: str) -> str:
  names = list(numbers["losses"])
  fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3))
  for ax, name in zip(axes, names, strict=True):
    row = numbers["losses"][name]
    ax.plot(numbers["distances"], row["positive"], "b-", label="positive")
    ax.plot(numbers["distances"], row["negative"], "g:", label="negative")
    ax.set(title=name, xlabel="pairwise distance", xlim=(0, 2))
  axes[0].set_ylabel("loss")
  axes[0].legend(fontsize=8)
  return _save(fig, out_dir, "figure4.png")


def figure_6(numbers: dict, out_dir: str) -> str:
  fig, ax = plt.subplots(figsize=(6, 4))
  for method, row in numbers["methods"].items():
    mean, std = np.asarray(row["mean"]), np.asarray(row["std"])
    (line,) = ax.plot(row["steps"], mean, "o-", label=method)
    ax.fill_between(
      row["steps"], mean - std, mean + std, alpha=0.2, color=line.get_color()
    )
  ax.set(xlabel="training step", ylabel=numbers["metric"])
  ax.set_title("Fig. 6-style convergence (mean ± std over seeds)")
  ax.legend(fontsize=8)
  return _save(fig, out_dir, "figure6.png")
