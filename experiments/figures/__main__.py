"""Writes Wu et al.'s analysis figures as PNGs plus the numbers as JSON.

  python -m experiments.figures --out=figures
  python -m experiments.figures --out=figures --runs=runs/ablation/glyphs

Figures 2, 3a, 3b and 4 are simulations (seconds on a CPU); Figure 6 reads
`<runs>/<method>/seed<N>/metrics.jsonl` (the layout `experiments.ablation`
writes) and is skipped, with a printed line, when --runs is not given or
holds none of the methods.
"""

import json
import os

from absl import app
from absl import flags

from experiments import figures

_OUT = flags.DEFINE_string("out", "figures", "Output directory.")
_RUNS = flags.DEFINE_string("runs", None, "Ablation directory for Fig. 6.")
_METHODS = flags.DEFINE_list(
  "methods", list(figures.FIGURE_6_METHODS), "Fig. 6 methods."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the simulations.")


def _write(name: str, numbers: dict, draw) -> None:
  """Writes `<out>/<name>.json` and the figure `draw` makes of `numbers`."""
  with open(os.path.join(_OUT.value, f"{name}.json"), "w") as f:
    json.dump(numbers, f)
  print(f"{name}: {draw(numbers, _OUT.value)}", flush=True)


def main(argv):
  """Writes each figure; JAX and matplotlib are imported only here."""
  del argv
  from experiments.figures import analysis  # pylint: disable=import-outside-toplevel
  from experiments.figures import plots  # pylint: disable=import-outside-toplevel

  os.makedirs(_OUT.value, exist_ok=True)
  seed = _SEED.value
  _write("figure2", analysis.sphere_density(seed=seed), plots.figure_2)
  _write(
    "figure3a", analysis.gradient_direction_variance(seed=seed), plots.figure_3a
  )
  _write("figure3b", analysis.sampled_distances(seed=seed), plots.figure_3b)
  _write("figure4", analysis.loss_curves(), plots.figure_4)
  if _RUNS.value is None:
    print("figure6: skipped (no --runs=DIR with <method>/seed<N>/ logs).")
    return
  numbers = analysis.convergence_curves(_RUNS.value, _METHODS.value)
  if numbers["missing"]:
    print(f"figure6: no logs under {_RUNS.value} for {numbers['missing']}.")
  if not numbers["methods"]:
    print("figure6: skipped (none of the methods has logs).")
    return
  _write("figure6", numbers, plots.figure_6)


if __name__ == "__main__":
  app.run(main)
