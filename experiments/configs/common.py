"""The base config: every option with its default (datasets.py: per dataset).

A config has the sections data, model, sampler, loss, beta, optim, train,
eval, ckpt, dsp and parallel. The dataset supplies its defaults (image
size, model, steps, batch, learning rate); the method (see `methods.py`)
supplies sampler and loss. Dotted overrides on the command line
(`--config.loss.margin=0.1`) are applied after both, so they always win.
"""

import ast
import difflib

import ml_collections
from ml_collections import config_dict

from experiments.configs import datasets


def parse_arg(arg: str | None, **defaults):
  """Parses "a=1,b=x,flag" into a ConfigDict over `defaults` (big_vision).

  A bare name sets a boolean default to True; values are converted to the
  type of their default. Unknown keys raise ValueError listing the known.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    name, _, value = item.partition("=")
    if name not in defaults:
      close = difflib.get_close_matches(name, list(defaults), n=1)
      hint = f" Did you mean {close[0]}?" if close else ""
      raise ValueError(
        f"Unknown config argument {name!r}; known: {sorted(defaults)}.{hint}"
      )
    default = defaults[name]
    if not value:
      if not isinstance(default, bool):
        raise ValueError(f"Config argument {name!r} needs a value: {name}=...")
      parsed[name] = True
    elif isinstance(default, bool):
      parsed[name] = value.lower() in ("1", "true", "yes")
    else:
      parsed[name] = type(default)(value)
  return parsed


def _data_section(dataset: str, d: dict) -> dict:
  """data.*: the dataset, batch, P × K, augmentation and file options."""
  return dict(
    name=dataset,
    image_size=d["image_size"],
    batch_size=d["batch_size"],
    images_per_class=5,  # The paper's m = 5.
    num_workers=d["num_workers"],
    max_shift=config_dict.placeholder(int),  # None: the dataset's default.
    flip=d["flip"],
    cache_dir="",  # "": $DMLJAX_CACHE or ~/.cache/dmljax.
    # File-backed benchmarks (sop, cars196, cub200, inshop, lfw) only:
    data_dir="",  # The unpacked official archive (--data_dir).
    data_source="files",  # "files": official layout; "tfds": prepared tfds.
    resize_size=d["resize_size"],  # R: scaled to R × R, then crop image_size.
    resize_mode=d["resize_mode"],  # "square" or "pad" (CUB: longer side R).
    standardize=d["standardize"],  # ImageNet mean / std; else [0, 1].
    cropped=False,  # CARS196 / CUB: cut to the bounding boxes first.
    check_counts=True,  # The lists must match the official counts.
    # "folder" only: how the images are cut into train and test (a CSV's
    # split column wins): "classes" (test_fraction of the classes, drawn with
    # split_seed, or the comma-separated test_classes) or "instances".
    split="classes",
    test_fraction=0.5,
    split_seed=0,  # Not config.seed: another training seed, same split.
    test_classes="",
  )


def _model_section(d: dict) -> dict:
  """model.*: the embedding network."""
  return dict(
    name=d["model"],
    embedding_dim=128,
    dtype="float32",  # "bfloat16" on accelerators (parameters stay f32).
    backbone_kwargs={},
    pretrained="",  # A torchvision/timm ResNet-50 .safetensors file.
  )


def _method_sections() -> dict:
  """sampler.*, loss.*, beta.*: the paper's (a method's config overrides)."""
  sections = {}
  sections["sampler"] = dict(
    name="distance_weighted",
    num_negatives=1,
    cutoff=0.5,
    nonzero_loss_cutoff=1.4,
    method="inverse_cdf",
    # Distance weighted: an anchor with no negative closer than
    # nonzero_loss_cutoff is masked ("mask"), or keeps its positive pair
    # with a uniformly drawn negative ("uniform", as the authors' code).
    no_usable_negative="mask",
    lower_bound=config_dict.placeholder(float),  # None: D_ap (FaceNet).
    fallback="farthest",
  )
  sections["loss"] = dict(
    name="margin",
    margin=0.2,
    nu=0.0,
    reduction="nonzero",
    npair_scale=1.0,  # N-pair logits = scale · cosine (1: eq. 9 as written).
  )
  # β as the authors' code trains it (dmljax/beta.py): a per-class vector
  # initialised at β⁽⁰⁾ = 1.2, SGD lr 0.1, momentum 0.9 on the gradient
  # divided by the global batch size; β⁽⁰⁾ itself fixed. The config
  # margin_dw_fast_beta is the other rule (undivided, β⁽⁰⁾ trained too).
  sections["beta"] = dict(
    beta0=1.2,
    per_class=True,
    per_image=False,
    trainable=("class",),
    learning_rate=0.1,
    momentum=0.9,
    gradient_divisor="batch_size",  # Or "none" (lr on the raw gradient).
  )
  return sections


def _optim_section(d: dict) -> dict:
  """optim.*: the network's optimiser and schedule."""
  optim = {
    "learning_rate": d["learning_rate"],
    "schedule": "warmup_cosine",  # Or "step": × decay_factor at decay_at.
    "warmup_steps": 50,
    "final_lr_fraction": 0.01,  # warmup_cosine: the last lr / the peak.
    "decay_at": (0.6, 0.7, 0.8, 0.9),  # step: fractions of num_steps.
    "decay_factor": 0.5,
    "epsilon": 1e-8,  # Adam's ε.
    "weight_decay": 0.0,
    "weight_decay_mode": "decoupled",  # AdamW, or "l2" (MXNet's Adam).
    "gradient_divisor": "none",  # Or "batch_size" (Trainer.step(B)).
    # Learning-rate factor of a pretrained backbone's conv kernels (only
    # with model.pretrained; the authors' 0.01).
    "pretrained_conv_lr_multiplier": 1.0,
  }
  optim.update(d["optim"])
  return optim


def _eval_section(d: dict) -> dict:
  """eval.*: evaluation on the held-out classes."""
  return dict(
    batch_size=500,
    ks=d["ks"],
    block_size=1024,
    kmeans_iters=50,
    # k-means NMI / F1 at the end only; the evaluations during training
    # report Recall@k and MAP@R, which cost a fraction of the clustering.
    clustering_during_training=False,
    max_classes=0,  # 0: every test class.
    num_folds=10,  # LFW verification: 10 folds of 600 pairs.
  )


def _dsp_section(d: dict) -> dict:
  """dsp.*: DE-DSP's sampler network (sampler.name = "dsp")."""
  # DE-DSP (`dmljax.dsp`, sampler.name = "dsp"): each step draws a pool of
  # P classes × M images; K mini-batches of m tuples are chosen by the
  # sampler network (Algorithm 1). Paper: batch 120, mini-batch 30; here
  # K·m·3 = 120 triplet images per embedding step, as the other methods.
  return dict(
    pool_classes=d["dsp_pool_classes"],
    pool_images_per_class=10,
    num_minibatches=2,
    tuples_per_minibatch=d["dsp_tuples_per_minibatch"],
    baseline="mean",  # The paper's; or "leave_one_out", "none".
    entropy_weight=0.0,  # Not in the paper.
    learning_rate=1e-3,
    features=64,
    downsample=2,
    pretrain_steps=0,  # Policy-only steps before step 1 (Algorithm 1).
    # BatchNorm when scoring tuples for REINFORCE: "inference" (running
    # averages: a tuple's score is its own) or "train" (batch statistics of
    # the mini-batch: biased, the old behaviour). dmljax/dsp/objective.py.
    reward_mode="inference",
  )


def _shrink_for_smoke(c: ml_collections.ConfigDict, d: dict) -> None:
  """The smoke variant of `c`, in place: big_vision's "runlocal".

  4 steps of a tiny net through the whole pipeline (evaluations,
  checkpoints, figures), under a minute on a CPU; imports, compiling and
  the end-of-run figures take most of it, not the steps.
  """
  c.data.batch_size = 20
  c.model.backbone_kwargs = {"widths": (8, 16), "features": 32}
  c.model.embedding_dim = 16
  c.train.num_steps = 4
  c.train.log_every = 1
  c.train.eval_every = 2
  c.optim.warmup_steps = 1
  c.eval.max_classes = 20
  c.eval.kmeans_iters = 5
  c.ckpt.every = 2
  c.dsp.pool_classes = 4
  c.dsp.pool_images_per_class = 5
  c.dsp.tuples_per_minibatch = 4
  c.dsp.features = 8
  if d["resize_size"]:  # A benchmark: tiny images, the small CPU net.
    c.model.name = "small"
    c.data.image_size = 32
    c.data.resize_size = 36
    c.data.num_workers = 0
    c.data.check_counts = False
    c.eval.ks = d["ks"][:2]
    c.eval.batch_size = 16


def base_config(
  dataset: str, *, smoke: bool = False
) -> ml_collections.ConfigDict:
  """All options with defaults for `dataset`; `smoke`: a tiny, short run."""
  if dataset not in datasets.DATASETS:
    raise ValueError(
      f"Unknown dataset {dataset!r}; choose one of {sorted(datasets.DATASETS)}."
    )
  d = {**datasets.OPTIONAL, **datasets.DATASETS[dataset]}
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = _data_section(dataset, d)
  c.model = _model_section(d)
  method = _method_sections()
  c.sampler, c.loss, c.beta = method["sampler"], method["loss"], method["beta"]
  c.optim = _optim_section(d)
  c.train = dict(
    num_steps=d["num_steps"], log_every=10, eval_every=d["eval_every"]
  )
  c.eval = _eval_section(d)
  c.ckpt = dict(every=250, max_to_keep=2)
  c.dsp = _dsp_section(d)
  c.parallel = dict(
    num_devices=0,  # 0: all devices the batch splits over (dmljax.parallel).
    mining="global",  # "global": sample on the whole batch; "local": shard.
  )
  if smoke:
    _shrink_for_smoke(c, d)
  return c


def apply_overrides(config, overrides: list[str]) -> None:
  """Sets each "dotted.key=value" in `config` (a ConfigDict), in place.

  Values are Python literals where they parse (`4`, `0.5`, `None`,
  `("a",)`), strings otherwise; the ConfigDict checks their types.

  Raises:
    ValueError: an item without "=", or a key the config does not have.
  """
  for item in overrides:
    name, sep, text = item.partition("=")
    if not sep or not name:
      raise ValueError(f"An override is dotted.key=value, got {item!r}.")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *sections, field = name.split(".")
    node = config
    for section in sections:
      if isinstance(node, ml_collections.ConfigDict):
        node = node.get(section)
    if not isinstance(node, ml_collections.ConfigDict) or field not in node:
      raise ValueError(
        f"Unknown config key {name!r}; the sections are "
        f"{sorted(config.keys())} (see experiments/configs/common.py)."
      )
    node[field] = value


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming every bad value and unknown key of `config`.

  `dmljax.runtime.config_checks.check_config` with this file's base config
  of the same dataset as the list of known keys ("did you mean" for the others).
  """
  from dmljax.runtime import config_checks  # pylint: disable=import-outside-toplevel

  config_checks.check_config(config, schema=base_config(config.data.name))
