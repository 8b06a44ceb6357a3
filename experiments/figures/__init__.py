"""Wu et al.'s analysis figures, reproduced: `python -m experiments.figures`.

analysis.py  the numbers (q(d), gradient variance, sampled distances,
             loss curves, convergence from training logs)
plots.py     one PNG per figure from those numbers
__main__.py  the driver: --out=DIR [--runs=DIR]

Importing the package imports neither JAX nor matplotlib (the driver's
--help stays fast).
"""

# The methods of Figure 6 (the convergence curves), from an ablation's runs.
FIGURE_6_METHODS = ("margin_dw", "triplet_l2_semihard", "contrastive_random")
