"""The paper's Table 1 grid (sampler × loss) on one dataset, over seeds.

  python -m experiments.ablation --dataset=glyphs --seeds=3
  python -m experiments.ablation --dataset=digits \\
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
BETA = ("beta_min", "beta_median", "beta_max")  # Margin-loss runs only.


def markdown_table(results: dict[str, list[dict[str, float]]]) -> str:
  """Rows = methods, columns = mean ± std of each metric over seeds."""
  with_beta = any(BETA[0] in r for runs in results.values() for r in runs)
  header = [*METRICS, "learned β: median [min, max]"] if with_beta else METRICS
  lines = [
    "| method | " + " | ".join(header) + " |",
    "|---" * (len(header) + 1) + "|",
  ]
  ranked = sorted(
    results, key=lambda m: -np.mean([r["recall@1"] for r in results[m]])
  )
  for method in ranked:
    cells = []
    for metric in METRICS:
      values = np.array([r[metric] for r in results[method]])
      cells.append(f"{100 * values.mean():.1f} ± {100 * values.std():.1f}")
    if with_beta:  # Each statistic averaged over seeds.
      runs = [r for r in results[method] if BETA[0] in r]
      low, mid, high = (np.mean([r[k] for r in runs]) for k in BETA)
      cells.append(f"{mid:.3f} [{low:.3f}, {high:.3f}]" if runs else "")
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def run_config(method: str, seed: int):
  """The config of one run: the method's, with the flags' changes."""
  arg = f"method={method},dataset={_DATASET.value},seed={seed}"
  config = methods.get_config(arg + (",smoke" if _SMOKE.value else ""))
  if _NUM_STEPS.value:
    config.train.num_steps = _NUM_STEPS.value
  common.apply_overrides(config, _SET.value)
  return config


def main(argv):
  del argv
  # pylint: disable=import-outside-toplevel
  from dmljax.runtime import cpu_devices
  from dmljax.runtime import recipes
  from dmljax.runtime import rundir
  from dmljax.runtime import train

  logging.set_verbosity(logging.WARNING)
  workdir = _WORKDIR.value or os.path.join("runs", "ablation", _DATASET.value)
  runs = [(m, s) for m in _METHODS.value for s in range(_SEEDS.value)]
  configs = {run: run_config(*run) for run in runs}
  # Before JAX starts, as the drivers: one CPU device per core if every
  # run's batch splits over them (DE-DSP's never does).
  cpu_devices.configure(
    lambda count: all(recipes.uses_devices(c, count) for c in configs.values())
  )
  results = {}
  for method, seed in runs:
    config = configs[method, seed]
    print(f"\n== {method}, seed {seed} ==", flush=True)
    run_dir = os.path.join(workdir, method, f"seed{seed}")
    final = dict(train.train_and_evaluate(config, run_dir))
    with open(os.path.join(run_dir, rundir.SUMMARY_FILE)) as f:
      final.update(json.load(f).get("beta", {}))
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
