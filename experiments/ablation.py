"""The paper's Table 1 grid (sampler × loss) on one dataset, over seeds.

  python -m experiments.ablation --dataset=glyphs --seeds=3
  python -m experiments.ablation --dataset=digits \
    --methods=margin_dw,contrastive_random

`--set=dotted.key=value` (repeatable) changes every run's config, e.g.
`--set=dsp.num_minibatches=4 --set=dsp.tuples_per_minibatch=30`; values
are read as Python literals (`None`, `0.5`, `(1, 2)`), else as strings.

Each (method, seed) is an ordinary training run in
`<workdir>/<method>/seed<N>` (so an interrupted ablation resumes where it
stopped); the table of held-out Recall@k / NMI / F1 (mean ± std over seeds)
is written as markdown and JSON to `<workdir>/ablation.{md,json}`.
"""

import json
import os

import numpy as np
from absl import app
from absl import flags
from absl import logging

from experiments.configs import common
from experiments.configs import methods

_DATASET = flags.DEFINE_enum("dataset", "glyphs", ["glyphs", "digits"], "Data.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per method (0..N-1).")
_METHODS = flags.DEFINE_list(
  "methods",
  list(methods.WU_GRID),
  "Configs to run, comma separated (default: Wu et al.'s Table 1 grid; "
  "DE-DSP's: " + ",".join(methods.DSP_GRID + methods.DSP_NPAIR_GRID) + ").",
)
_NUM_STEPS = flags.DEFINE_integer("num_steps", 0, "Override steps (0: keep).")
_SMOKE = flags.DEFINE_bool("smoke", False, "Seconds-long runs (CI).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Default runs/ablation/<data>.")
_SET = flags.DEFINE_multi_string(
  "set", [], "dotted.key=value applied to every run's config (repeatable)."
)
METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "f1")


def markdown_table(results: dict[str, list[dict[str, float]]]) -> str:
  """Rows = methods, columns = mean ± std of each metric over seeds."""
  lines = [
    "| method | " + " | ".join(METRICS) + " |",
    "|---" * (len(METRICS) + 1) + "|",
  ]
  ranked = sorted(
    results, key=lambda m: -np.mean([r["recall@1"] for r in results[m]])
  )
  for method in ranked:
    cells = []
    for metric in METRICS:
      values = np.array([r[metric] for r in results[method]])
      cells.append(f"{100 * values.mean():.1f} ± {100 * values.std():.1f}")
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  from dmljax import train  # pylint: disable=import-outside-toplevel

  logging.set_verbosity(logging.WARNING)
  workdir = _WORKDIR.value or os.path.join("runs", "ablation", _DATASET.value)
  results = {}
  for method in _METHODS.value:
    for seed in range(_SEEDS.value):
      arg = f"method={method},dataset={_DATASET.value},seed={seed}"
      config = methods.get_config(arg + (",smoke" if _SMOKE.value else ""))
      if _NUM_STEPS.value:
        config.train.num_steps = _NUM_STEPS.value
      common.apply_overrides(config, _SET.value)
      print(f"\n== {method}, seed {seed} ==", flush=True)
      final = train.train_and_evaluate(
        config, os.path.join(workdir, method, f"seed{seed}")
      )
      results.setdefault(method, []).append(final)
  table = markdown_table(results)
  with open(os.path.join(workdir, "ablation.md"), "w") as f:
    f.write(f"Held-out metrics on {_DATASET.value}, ")
    f.write(f"mean ± std over {_SEEDS.value} seeds (%)")
    changes = (
      [f"train.num_steps={_NUM_STEPS.value}"] if _NUM_STEPS.value else []
    )
    changes += _SET.value
    f.write(f"; config changes: {', '.join(changes)}" if changes else "")
    f.write(f".\n\n{table}\n")
  with open(os.path.join(workdir, "ablation.json"), "w") as f:
    json.dump(results, f, indent=2)
  print("\n" + table)


if __name__ == "__main__":
  app.run(main)
