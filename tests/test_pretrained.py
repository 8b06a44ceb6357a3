"""Pretrained ResNet weights from a torchvision-layout .safetensors file.

The weights files are written here with random values in torchvision's
state-dict layout ([O, I, kh, kw] kernels, running BN statistics, an `fc`
classifier and `num_batches_tracked` buffers to ignore). The forward pass
is checked against a float64 NumPy ResNet written from torch's semantics
(symmetric padding, BN in eval mode); a second check against torchvision
itself runs where torchvision is installed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from dmljax.models import embedder
from dmljax.models import pretrained
from dmljax.models import resnet

_EPS = 1e-5


def torchvision_state_dict(rng, stage_sizes, widths, *, expansion=4):
  """Random tensors under torchvision's ResNet names and shapes."""
  tensors = {}

  def bn(prefix, channels):
    tensors[f"{prefix}.weight"] = rng.uniform(0.5, 1.5, channels)
    tensors[f"{prefix}.bias"] = rng.normal(0, 0.1, channels)
    tensors[f"{prefix}.running_mean"] = rng.normal(0, 0.1, channels)
    tensors[f"{prefix}.running_var"] = rng.uniform(0.5, 1.5, channels)
    tensors[f"{prefix}.num_batches_tracked"] = np.array(7, np.int64)

  def conv(name, out, inp, k):
    tensors[name] = rng.normal(0, np.sqrt(2 / (inp * k * k)), (out, inp, k, k))

  conv("conv1.weight", widths[0], 3, 7)
  bn("bn1", widths[0])
  channels = widths[0]
  for s, (size, width) in enumerate(
    zip(stage_sizes, widths[1:], strict=True), start=1
  ):
    inner = width // expansion
    for b in range(size):
      p = f"layer{s}.{b}"
      conv(f"{p}.conv1.weight", inner, channels, 1)
      bn(f"{p}.bn1", inner)
      conv(f"{p}.conv2.weight", inner, inner, 3)
      bn(f"{p}.bn2", inner)
      conv(f"{p}.conv3.weight", width, inner, 1)
      bn(f"{p}.bn3", width)
      if b == 0:
        conv(f"{p}.downsample.0.weight", width, channels, 1)
        bn(f"{p}.downsample.1", width)
      channels = width
  tensors["fc.weight"] = rng.normal(0, 0.01, (1000, channels))
  tensors["fc.bias"] = np.zeros(1000)
  return {
    k: v if v.dtype == np.int64 else v.astype(np.float32)
    for k, v in tensors.items()
  }


def _conv(x, w, stride, pad):
  """NumPy conv2d with torch semantics: x [H, W, I], w [O, I, kh, kw]."""
  x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
  out_c, _, kh, kw = w.shape
  h = (x.shape[0] - kh) // stride + 1
  wd = (x.shape[1] - kw) // stride + 1
  y = np.zeros((h, wd, out_c))
  for i in range(kh):
    for j in range(kw):
      patch = x[i : i + stride * h : stride, j : j + stride * wd : stride]
      y += patch @ w[:, :, i, j].T
  return y


def _bn(x, t, prefix):
  scale = t[f"{prefix}.weight"] / np.sqrt(t[f"{prefix}.running_var"] + _EPS)
  return (x - t[f"{prefix}.running_mean"]) * scale + t[f"{prefix}.bias"]


def numpy_resnet(t, image, stage_sizes):
  """Float64 features [F] of one image [H, W, 3], torchvision's forward."""
  t = {k: np.asarray(v, np.float64) for k, v in t.items()}
  x = np.maximum(_bn(_conv(image, t["conv1.weight"], 2, 3), t, "bn1"), 0)
  x = np.pad(x, ((1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  h, w = (x.shape[0] - 3) // 2 + 1, (x.shape[1] - 3) // 2 + 1
  x = np.max(
    [
      x[i : i + 2 * h : 2, j : j + 2 * w : 2]
      for i in range(3)
      for j in range(3)
    ],
    axis=0,
  )
  for s, size in enumerate(stage_sizes, start=1):
    for b in range(size):
      p = f"layer{s}.{b}"
      stride = 2 if s > 1 and b == 0 else 1
      y = np.maximum(
        _bn(_conv(x, t[f"{p}.conv1.weight"], 1, 0), t, f"{p}.bn1"), 0
      )
      y = np.maximum(
        _bn(_conv(y, t[f"{p}.conv2.weight"], stride, 1), t, f"{p}.bn2"), 0
      )
      y = _bn(_conv(y, t[f"{p}.conv3.weight"], 1, 0), t, f"{p}.bn3")
      if b == 0:
        x = _conv(x, t[f"{p}.downsample.0.weight"], stride, 0)
        x = _bn(x, t, f"{p}.downsample.1")
      x = np.maximum(x + y, 0)
  return x.mean(axis=(0, 1))


_SMALL = dict(stage_sizes=(2, 1, 1, 1), widths=(8, 16, 24, 32, 40))


def _small_embedder():
  return embedder.Embedder(resnet.ResNet(**_SMALL), embedding_dim=4)


def test_loaded_backbone_matches_a_numpy_torch_forward(tmp_path):
  rng = np.random.default_rng(0)
  tensors = torchvision_state_dict(rng, **_SMALL)
  path = str(tmp_path / "weights.safetensors")
  safetensors_numpy.save_file(tensors, path)
  model = _small_embedder()
  image = rng.normal(size=(1, 36, 36, 3)).astype(np.float32)
  variables = embedder.init_embedder(model, jax.random.key(0), image.shape)
  loaded = pretrained.load_pretrained_backbone(variables, path)
  np.testing.assert_array_equal(
    loaded["params"]["head"]["kernel"], variables["params"]["head"]["kernel"]
  )
  features = jax.jit(lambda v, x: model.backbone.apply(v, x, train=False))(
    {
      "params": loaded["params"]["backbone"],
      "batch_stats": loaded["batch_stats"]["backbone"],
    },
    image,
  )
  expected = numpy_resnet(
    tensors, image[0].astype(np.float64), _SMALL["stage_sizes"]
  )
  np.testing.assert_allclose(features[0], expected, rtol=1e-4, atol=1e-4)


def test_every_resnet50_tensor_has_a_home():
  rng = np.random.default_rng(1)
  tensors = torchvision_state_dict(
    rng, resnet.RESNET50_STAGE_SIZES, resnet.RESNET50_WIDTHS
  )
  assert len(tensors) == 320  # torchvision resnet50().state_dict()
  loaded = pretrained.torchvision_variables(tensors)
  model = embedder.make_embedder("resnet50")
  shapes = jax.eval_shape(
    lambda k: model.init(k, jnp.zeros((1, 64, 64, 3)), train=False),
    jax.random.key(0),
  )
  for collection in ("params", "batch_stats"):
    ours = jax.tree_util.tree_flatten_with_path(shapes[collection]["backbone"])[
      0
    ]
    names = {"/".join(k.key for k in path) for path, _ in ours}
    assert names == set(loaded[collection])
    for path, leaf in ours:
      name = "/".join(k.key for k in path)
      assert loaded[collection][name].shape == leaf.shape, name
  np.testing.assert_array_equal(
    loaded["params"]["stem_conv/kernel"],
    tensors["conv1.weight"].transpose(2, 3, 1, 0),
  )


def test_wrong_weights_are_clear_errors(tmp_path):
  rng = np.random.default_rng(2)
  model = _small_embedder()
  variables = jax.eval_shape(
    lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), train=False),
    jax.random.key(0),
  )
  wide = torchvision_state_dict(rng, (2, 1, 1, 1), (8, 16, 24, 32, 48))
  path = str(tmp_path / "wide.safetensors")
  safetensors_numpy.save_file(wide, path)
  with pytest.raises(
    ValueError, match="stage4_block1/.* has shape .*, the model expects"
  ):
    pretrained.load_pretrained_backbone(variables, path)
  short = torchvision_state_dict(rng, (1, 1, 1, 1), _SMALL["widths"])
  safetensors_numpy.save_file(short, path)
  with pytest.raises(ValueError, match="no weights for .* backbone tensors"):
    pretrained.load_pretrained_backbone(variables, path)
  safetensors_numpy.save_file(
    {"encoder.blocks.0.weight": np.zeros(3, np.float32)}, path
  )
  with pytest.raises(ValueError, match="unexpected tensors"):
    pretrained.load_pretrained_backbone(variables, path)
  (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(ValueError, match="Cannot read pretrained weights"):
    pretrained.load_pretrained_backbone(
      variables, str(tmp_path / "bad.safetensors")
    )


@pytest.mark.slow
def test_forward_matches_torchvision_on_the_same_weights(tmp_path):
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  net = torchvision.models.resnet50().eval()
  rng = np.random.default_rng(3)
  with torch.no_grad():
    for name, buffer in net.named_buffers():
      if "running" in name:
        buffer.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, buffer.shape)))
  tensors = {k: v.numpy() for k, v in net.state_dict().items()}
  path = str(tmp_path / "resnet50.safetensors")
  safetensors_numpy.save_file(tensors, path)
  model = embedder.make_embedder("resnet50")
  image = rng.normal(size=(2, 64, 64, 3)).astype(np.float32)
  shapes = jax.eval_shape(
    lambda k: model.init(k, jnp.zeros(image.shape), train=False),
    jax.random.key(0),
  )
  loaded = pretrained.load_pretrained_backbone(shapes, path)
  ours = model.backbone.apply(
    {
      "params": loaded["params"]["backbone"],
      "batch_stats": loaded["batch_stats"]["backbone"],
    },
    image,
    train=False,
  )
  net.fc = torch.nn.Identity()
  with torch.no_grad():
    theirs = net(torch.from_numpy(image.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3)
