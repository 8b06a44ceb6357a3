"""Train and evaluate an embedding on scikit-learn's 8×8 `digits`.

Train on digits 0–4, test on 5–9: a seconds-to-minutes sanity run.

  python -m experiments.digits --config=margin_dw
  python -m experiments.digits --config=contrastive_random:smoke
"""

from absl import flags

from experiments import _cli

flags.adopt_module_key_flags(_cli)  # --help lists --config's names.

if __name__ == "__main__":
  _cli.run(dataset="digits")
