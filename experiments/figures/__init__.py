"""Wu et al.'s analysis figures, reproduced: `python -m experiments.figures`.

analysis.py  the numbers (q(d), gradient variance, sampled distances,
             loss curves, convergence from training logs)
plots.py     one PNG per figure from those numbers
__main__.py  the driver: --out=DIR [--runs=DIR]
"""
