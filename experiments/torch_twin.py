"""The small embedding network and margin + DW step in PyTorch + PML.

The peer of `experiments.bench_train`: the same model as
`dmljax.models.SmallConvNet` inside `Embedder` (same widths, convs per
stage, pooling rule, BatchNorm, Dense + ReLU, Dense(D), L2 normalisation)
and the same method as dmljax's `margin_dw` (pytorch-metric-learning's
`DistanceWeightedMiner` + `MarginLoss` with per-class learned β), trained
with Adam for the network and SGD with momentum for β, as the config says.
Channels-last memory format, PyTorch's fastest CPU layout for this net.

Never imported by dmljax; torch and pytorch-metric-learning are optional.
"""

import numpy as np


def _small_conv_net(torch, *, channels, image_size, widths, convs_per_stage):
  """SmallConvNet's layers: conv stages with 2 × 2 pools while ≥ 4 × 4."""
  nn = torch.nn
  layers, size = [], image_size
  for stage, width in enumerate(widths):
    for _ in range(convs_per_stage):
      layers += [
        nn.Conv2d(channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width, momentum=0.1, eps=1e-5),  # torch's 0.1 = 1 − 0.9
        nn.ReLU(),
      ]
      channels = width
    if stage != len(widths) - 1 and size >= 4:
      layers.append(nn.MaxPool2d(2))
      size //= 2
  return nn.Sequential(*layers), channels


def make_twin(torch, config, *, num_classes: int, image_shape):
  """(network, miner, loss, optimisers) for `config` (a dmljax config).

  Only what the small net's margin_dw config uses is translated: model
  widths / convs_per_stage / features / embedding_dim, the DW cutoffs, the
  margin, β⁽⁰⁾, and the Adam and β learning rates (β's gradient divided by
  the batch as `beta.gradient_divisor="batch_size"` does).
  """
  from pytorch_metric_learning import losses
  from pytorch_metric_learning import miners

  nn = torch.nn
  kwargs = dict(config.model.backbone_kwargs)
  widths = tuple(kwargs.get("widths", (16, 32, 64, 128)))
  features = kwargs.get("features", 256)
  height, _, channels = image_shape
  convs, width = _small_conv_net(
    torch,
    channels=channels,
    image_size=height,
    widths=widths,
    convs_per_stage=kwargs.get("convs_per_stage", 2),
  )

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.convs = convs
      self.dense = nn.Linear(width, features)
      self.head = nn.Linear(features, config.model.embedding_dim)

    def forward(self, x):
      x = self.convs(x).mean((2, 3))
      x = torch.relu(self.dense(x))
      return nn.functional.normalize(self.head(x), dim=1)

  net = Net().to(memory_format=torch.channels_last)
  miner = miners.DistanceWeightedMiner(
    cutoff=config.sampler.cutoff,
    nonzero_loss_cutoff=config.sampler.nonzero_loss_cutoff,
  )
  loss = losses.MarginLoss(
    margin=config.loss.margin,
    nu=config.loss.nu,
    beta=config.beta.beta0,
    learn_beta=True,
    num_classes=num_classes,
  )
  divisor = config.data.batch_size
  if config.beta.gradient_divisor != "batch_size":
    divisor = 1
  optimizers = (
    torch.optim.Adam(net.parameters(), lr=config.optim.learning_rate),
    torch.optim.SGD(
      loss.parameters(),
      lr=config.beta.learning_rate / divisor,
      momentum=config.beta.momentum,
    ),
  )
  return net, miner, loss, optimizers


def to_torch(torch, batch: dict):
  """A dmljax host batch ([B, H, W, C] images) as channels-last tensors."""
  images = torch.from_numpy(np.ascontiguousarray(batch["image"]))
  images = images.permute(0, 3, 1, 2)  # NHWC memory is channels-last NCHW.
  labels = torch.from_numpy(np.asarray(batch["label"]).astype(np.int64))
  return images, labels
