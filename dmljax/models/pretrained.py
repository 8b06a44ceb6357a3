"""ImageNet-pretrained ResNet-50 weights from a torchvision/timm checkpoint.

Wu et al. (Sec. 5, Table 1 note) also pretrain on ILSVRC 2012-CLS, as is
common for these benchmarks. dmljax reads the weights from a local
`.safetensors` file the user exports once, e.g. with torch installed:

  import torchvision, safetensors.torch
  model = torchvision.models.resnet50(weights="IMAGENET1K_V1")
  safetensors.torch.save_file(model.state_dict(), "resnet50.safetensors")

(timm's `resnet50` state dict uses the same names.) Reading needs only
`safetensors` and NumPy, no torch. The mapping onto `dmljax.models.ResNet`
(the same v1.5 architecture: stride on the 3 × 3 conv, symmetric padding):

  conv1.weight [O, I, kh, kw]        → stem_conv/kernel [kh, kw, I, O]
  bn1.weight, .bias                  → stem_bn/scale, /bias (params)
  bn1.running_mean, .running_var     → stem_bn/mean, /var (batch_stats)
  layer{s}.{b}.conv{i}, .bn{i}       → stage{s}_block{b+1}/conv{i}, bn{i}
  layer{s}.0.downsample.0, .1        → stage{s}_block1/proj_conv, proj_bn

The classifier (`fc.*`) and `num_batches_tracked` are ignored; the
embedding head stays randomly initialised. Both BatchNorms use ε = 1e-5.
"""

import re
from typing import Any

import flax
import numpy as np
import safetensors
from safetensors import numpy as safetensors_numpy

_BN = {
  "weight": ("params", "scale"),
  "bias": ("params", "bias"),
  "running_mean": ("batch_stats", "mean"),
  "running_var": ("batch_stats", "var"),
}
_IGNORED = re.compile(r"^(fc\..*|.*num_batches_tracked)$")
_PREFIXES = ("module.", "model.")


def _target(name: str) -> tuple[str, str, str] | None:
  """(collection, module path, leaf) of a torchvision tensor name, or None."""
  match = re.fullmatch(r"(conv1|bn1)\.(\w+)", name)
  if match:
    module = "stem_conv" if match[1] == "conv1" else "stem_bn"
    return _leaf(module, match[2])
  match = re.fullmatch(
    r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)", name
  )
  if not match:
    return None
  stage, block, part, leaf = match.groups()
  part = {"downsample.0": "proj_conv", "downsample.1": "proj_bn"}.get(
    part, part
  )
  return _leaf(f"stage{stage}_block{int(block) + 1}/{part}", leaf)


def _leaf(module: str, leaf: str):
  if "conv" in module.rsplit("/", 1)[-1]:
    return ("params", module, "kernel") if leaf == "weight" else None
  if leaf in _BN:
    collection, ours = _BN[leaf]
    return (collection, module, ours)
  return None


def torchvision_variables(
  tensors: dict[str, np.ndarray],
) -> dict[str, dict[str, Any]]:
  """Backbone {"params", "batch_stats"} (flat "a/b/leaf" keys) from torch.

  Conv kernels are transposed from [O, I, kh, kw] to [kh, kw, I, O];
  values become float32.

  Raises:
    ValueError: a tensor name that is neither a ResNet weight nor ignored.
  """
  out: dict[str, dict[str, Any]] = {"params": {}, "batch_stats": {}}
  unknown = []
  for name, value in tensors.items():
    for prefix in _PREFIXES:
      name = name.removeprefix(prefix)
    if _IGNORED.match(name):
      continue
    target = _target(name)
    if target is None:
      unknown.append(name)
      continue
    collection, module, leaf = target
    value = np.asarray(value, np.float32)
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)
    out[collection][f"{module}/{leaf}"] = value
  if unknown:
    raise ValueError(
      f"Not a torchvision/timm ResNet state dict: unexpected tensors "
      f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}."
    )
  return out


def load_pretrained_backbone(
  variables: dict[str, Any], path: str
) -> dict[str, Any]:
  """`variables` with the backbone's weights replaced by those in `path`.

  Args:
    variables: an `Embedder`'s {"params", "batch_stats"} (from
      `init_embedder`), whose backbone is a `ResNet`.
    path: a .safetensors file of a torchvision/timm ResNet-50 state dict
      (float32 or float16 tensors).

  Returns:
    New variables: every backbone tensor from the file, the head unchanged.

  Raises:
    ValueError: the file cannot be read, or a tensor is missing or has
      another shape than the model's (naming it).
  """
  try:
    tensors = safetensors_numpy.load_file(path)
  except (OSError, ValueError, TypeError, safetensors.SafetensorError) as error:
    raise ValueError(
      f"Cannot read pretrained weights {path!r} ({error}). Give a "
      ".safetensors file of a float32 torchvision/timm ResNet-50 state dict "
      "(see dmljax/models/pretrained.py for the two-line export)."
    ) from error
  loaded = torchvision_variables(tensors)
  new = {}
  for collection in ("params", "batch_stats"):
    ours = flax.traverse_util.flatten_dict(
      flax.core.unfreeze(variables[collection]["backbone"]), sep="/"
    )
    missing = sorted(set(ours) - set(loaded[collection]))
    if missing:
      raise ValueError(
        f"{path}: no weights for {len(missing)} backbone tensors, e.g. "
        f"{missing[:5]}: is it a ResNet-50 (the face ResNet's widths differ)?"
      )
    for key, value in ours.items():
      if loaded[collection][key].shape != value.shape:
        raise ValueError(
          f"{path}: {collection} {key} has shape "
          f"{loaded[collection][key].shape}, the model expects {value.shape}."
        )
    backbone = flax.traverse_util.unflatten_dict(
      {k: loaded[collection][k] for k in ours}, sep="/"
    )
    new[collection] = {**variables[collection], "backbone": backbone}
  return {**variables, **new}
