"""Named methods of the paper's grid: (sampler, loss[, fixed β]).

Run one with a driver, e.g.

  python -m experiments.glyphs --config=margin_dw
  python -m experiments.digits --config=triplet_l2_semihard:smoke

The driver turns `--config=NAME[:args]` into this file with
`method=NAME,dataset=<driver's dataset>[,args]`; args are `smoke`, `seed=N`.
Expected on glyphs: see README.md ("Results on glyphs") and results/
(raw pixels give Recall@1 ≈ 0.69).
"""

from experiments.configs import common

# name -> (sampler, loss, overrides); see Wu et al. Table 1 and Table 3.
METHODS = {
  "margin_dw": ("distance_weighted", "margin", {}),
  "margin_semihard": ("semihard", "margin", {"sampler.lower_bound": 0.5}),
  "margin_random": ("random", "margin", {}),
  "margin_dw_fixed_beta": (
    "distance_weighted",
    "margin",
    {"beta.per_class": False, "beta.trainable": ()},
  ),
  # Not the authors' β rule: lr 0.1 on the undivided gradient, β⁽⁰⁾ trained
  # too (it then receives every class's gradient). β moves hundreds of times
  # faster than in their code; dmljax's default before it followed theirs.
  "margin_dw_fast_beta": (
    "distance_weighted",
    "margin",
    {
      "beta.gradient_divisor": "none",
      "beta.trainable": ("beta0", "class", "image"),
    },
  ),
  "triplet_l2_dw": ("distance_weighted", "triplet_l2", {}),
  "triplet_l2_semihard": ("semihard", "triplet_l2", {}),
  "triplet_l2sq_dw": ("distance_weighted", "triplet_l2sq", {}),
  "triplet_l2sq_semihard": ("semihard", "triplet_l2sq", {}),
  "contrastive_random": ("random", "contrastive", {"loss.margin": 1.0}),
  "contrastive_semihard": (
    "semihard",
    "contrastive",
    {"loss.margin": 1.0, "sampler.lower_bound": 0.5},
  ),
  "contrastive_dw": ("distance_weighted", "contrastive", {"loss.margin": 1.0}),
  # DE-DSP (Duan et al. 2019; its loss decides the tuples the sampler
  # network draws: triplets or N-pair pairs) and the baselines it is
  # compared with, all
  # with the paper's eq. 2 triplet loss [D²_ap − D²_an + α]₊ (squared ℓ2;
  # --config.loss.name=triplet_l2 for the unsquared one).
  "dsp_triplet": ("dsp", "triplet_l2sq", {}),
  "dsp_npair": ("dsp", "npair", {}),
  "triplet_random": ("random", "triplet_l2sq", {}),
  "triplet_semihard": ("semihard", "triplet_l2sq", {}),
  "npair": ("random", "npair", {}),
  # Semi-hard negatives for the margin loss by FaceNet's rule (D_an > D_ap)
  # instead of the paper's fixed lower bound 0.5, which never picks a
  # negative closer than 0.5 once the learnt β has shrunk the clusters.
  "margin_semihard_facenet": ("semihard", "margin", {}),
}
# The sampler × loss grid of Wu et al. (Table 1): the ablation's default.
WU_GRID = tuple(list(METHODS)[: list(METHODS).index("contrastive_dw") + 1])
DSP_GRID = ("dsp_triplet", "triplet_random", "triplet_semihard")
# Wu et al. Table 3 on one dataset: fixed β⁽⁰⁾ (margin_dw_fixed_beta with
# --set=beta.beta0=B for B in these), learned per-class β at the authors'
# rate (margin_dw) and at the fast rule (margin_dw_fast_beta).
TABLE3_FIXED_BETAS = (0.8, 1.0, 1.2, 1.4)
DSP_NPAIR_GRID = ("dsp_npair", "npair")


def get_config(arg: str | None = None):
  """The config of one method on one dataset (see the module docstring)."""
  args = common.parse_arg(
    arg, method="margin_dw", dataset="glyphs", smoke=False, seed=0
  )
  if args.method not in METHODS:
    raise ValueError(
      f"Unknown config {args.method!r}; choose one of {sorted(METHODS)}."
    )
  sampler, loss, overrides = METHODS[args.method]
  config = common.base_config(args.dataset, smoke=args.smoke)
  config.seed = args.seed
  config.method = args.method
  config.sampler.name = sampler
  config.loss.name = loss
  for dotted, value in overrides.items():
    section, name = dotted.split(".")
    config[section][name] = value
  return config
