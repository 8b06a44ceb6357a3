"""Embedding networks: small CPU nets, ResNet-50 and the slim face ResNet-50.

The networks are written in Flax linen. Training keeps its parameters and
BatchNorm statistics as plain pytrees in a dict state (`{"params": {"embed":
..., "beta": ...}, "batch_stats": ..., ...}`) and calls the pure
`model.apply(variables, x, train=..., mutable=["batch_stats"])`; linen's
functional `init`/`apply` return and take exactly those pytrees, so no
module object carries state and no wrapper is needed. NNX would put
parameters in mutable objects that we would have to `split`/`merge` at every
step, and the kernels (distances … metrics) never import Flax, so a later
move to NNX would touch only `dmljax/models/` and `dmljax/dsp/network.py`.
"""

from dmljax.models.embedder import BACKBONES
from dmljax.models.embedder import Embedder
from dmljax.models.embedder import init_embedder
from dmljax.models.embedder import l2_normalize
from dmljax.models.embedder import make_embedder
from dmljax.models.embedder import param_count
from dmljax.models.pretrained import load_pretrained_backbone
from dmljax.models.resnet import Bottleneck
from dmljax.models.resnet import ResNet
from dmljax.models.resnet import face_resnet50
from dmljax.models.resnet import resnet50
from dmljax.models.small import SmallConvNet
