"""Train and evaluate an embedding on scikit-learn's 8×8 `digits`.

Train on digits 0–4, test on 5–9: a seconds-to-minutes sanity run.

  python -m experiments.digits --config=margin_dw
  python -m experiments.digits --config=contrastive_random:smoke
"""

from experiments import _cli

if __name__ == "__main__":
  _cli.run(dataset="digits")
