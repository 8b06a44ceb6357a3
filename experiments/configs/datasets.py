"""Each dataset's defaults: image size, model, batch, steps, learning rate.

`common.base_config(dataset)` starts from these; a method config and the
command line's overrides come after.
"""

# Per-dataset defaults: CPU-sized for the embedded data, the paper's for the
# rest (224 px, ResNet-50, batch 80 for SOP, 128 otherwise). Glyphs: lr 3e-3
# gave held-out Recall@1 0.896 at 1,500 steps, 1e-3 gave 0.851 (β fixed);
# with learned β, 3e-3 gives 0.904.
# What the embedded datasets use (in-memory, grayscale, shift augmentation).
_EMBEDDED = dict(
  ks=(1, 2, 4, 8),
  flip=False,  # A mirrored glyph or digit is another symbol.
  num_workers=0,
  resize_size=0,
  resize_mode="square",
  standardize=False,
)
# What the file-backed benchmarks use (dmljax/data/images.py).
_BENCHMARK = dict(
  flip=True,
  num_workers=8,  # grain processes decoding JPEGs.
  resize_size=256,
  resize_mode="square",
  standardize=True,  # ImageNet mean / std, as pretrained weights expect.
)
# The authors' optimiser (MXNet example/gluon/embedding_learning/train.py,
# the code released with Wu et al.): Adam, lr 1e-4, ε 1e-7, weight decay
# 1e-4 added to the gradient (MXNet's Adam), gradients divided by the batch
# size (`trainer.step(batch_size)`), the conv layers of a pretrained backbone
# at 0.01 × the learning rate (`lr_mult`), and every learning rate, β's
# included, halved at epochs 12, 14, 16 and 18 of 20 (`--steps`, `--factor`;
# here as fractions of num_steps). The benchmark configs use it; the
# embedded datasets keep ours (Adam with warm-up + cosine decay, no weight
# decay: their small net from scratch trains better with a larger rate).
_AUTHORS_OPTIM = dict(
  learning_rate=1e-4,
  schedule="step",
  warmup_steps=0,
  epsilon=1e-7,
  weight_decay=1e-4,
  weight_decay_mode="l2",
  gradient_divisor="batch_size",
  pretrained_conv_lr_multiplier=0.01,
)
# Options a dataset may set besides the ones every entry names; what the
# others get.
OPTIONAL = dict(
  optim={},  # Overrides of the optim section (the benchmarks': _AUTHORS_OPTIM).
  dsp_pool_classes=24,  # DE-DSP's pool P: the paper's batch of 120 / M 5.
  dsp_tuples_per_minibatch=20,  # m: K·m·3 = 120 images per embedding step.
)
DATASETS = {
  "glyphs": dict(
    image_size=32,
    batch_size=120,
    num_steps=1500,
    learning_rate=3e-3,
    model="small",
    eval_every=150,
    **_EMBEDDED,
  ),
  "digits": dict(
    image_size=8,
    batch_size=25,
    num_steps=300,
    learning_rate=1e-3,
    model="small",
    eval_every=100,
    dsp_pool_classes=5,  # Digits has 5 training classes.
    dsp_tuples_per_minibatch=4,
    **_EMBEDDED,
  ),
  # The benchmarks (Wu et al. Sec. 5): 224 px crops of 256 × 256 images
  # (CUB: longer side 256, padded), ResNet-50 (faces: the slim one), Adam,
  # batch 80 for SOP, 128 for CARS/CUB (125 here: P × m needs a multiple of
  # m = 5), 200 for faces. Theirs: those, the
  # SOP run's 8K iterations (Table 3) and, for SOP, CARS, CUB and In-Shop,
  # the authors' optimiser above; 4,000 steps for CARS/CUB are the authors'
  # CUB script (20 epochs × 200 iterations). Ours: In-Shop's 8,000 steps,
  # LFW's 30,000 steps and its plain Adam (lr 1e-4, warm-up + cosine; the
  # released code has no face recipe).
  "sop": dict(
    image_size=224,
    batch_size=80,
    num_steps=8000,
    learning_rate=1e-4,
    optim=_AUTHORS_OPTIM,
    model="resnet50",
    eval_every=2000,
    ks=(1, 10, 100, 1000),
    **_BENCHMARK,
  ),
  "cars196": dict(
    image_size=224,
    batch_size=125,  # The paper's 128 is not P × 5; 25 classes × 5.
    num_steps=4000,
    learning_rate=1e-4,
    optim=_AUTHORS_OPTIM,
    model="resnet50",
    eval_every=1000,
    ks=(1, 2, 4, 8, 16),
    **_BENCHMARK,
  ),
  "cub200": dict(
    image_size=224,
    batch_size=125,  # The paper's 128 is not P × 5; 25 classes × 5.
    num_steps=4000,
    learning_rate=1e-4,
    optim=_AUTHORS_OPTIM,
    model="resnet50",
    eval_every=1000,
    ks=(1, 2, 4, 8, 16),
    **{**_BENCHMARK, "resize_mode": "pad"},
  ),
  "inshop": dict(
    image_size=224,
    batch_size=80,
    num_steps=8000,
    learning_rate=1e-4,
    optim=_AUTHORS_OPTIM,
    model="resnet50",
    eval_every=2000,
    ks=(1, 10, 20, 30, 40),
    **_BENCHMARK,
  ),
  "lfw": dict(
    image_size=224,
    batch_size=200,
    num_steps=30000,
    learning_rate=1e-4,
    model="face_resnet50",
    eval_every=2000,
    ks=(1,),
    **_BENCHMARK,
  ),
  # Your own images (dmljax/data/folder.py): a folder of class sub-folders or
  # a .csv/.tsv. CPU-sized: 64 px crops of 72 × 72 images, the small net.
  # For real use: --config.model.name=resnet50 --config.data.image_size=224
  # --config.data.resize_size=256 --config.model.pretrained=FILE.
  "folder": dict(
    image_size=64,
    batch_size=60,
    num_steps=1000,
    learning_rate=1e-3,
    model="small",
    eval_every=500,
    ks=(1, 2, 4, 8),
    **{**_BENCHMARK, "resize_size": 72, "num_workers": 0},
  ),
}
