"""Start training from weights the user already has: torchvision's ImageNet VGG-16, from a local file.

torchvision's ``vgg16_bn`` and ``vgg16`` have the layer order of the suite's
``vgg16_imagenet`` and ``vgg16_rts_imagenet`` (conv [+ BN] + ReLU, a pool
after each block, adaptive pool to 7x7, FC 25088-4096-4096-1000), so their
weights map one to one: ``features.i`` stays, ``classifier.0`` / ``.3`` become
``pre_logits.0`` / ``.3`` and ``classifier.6`` becomes ``fc``. Two
differences are handled or left to training:

- torchvision's convs before BN carry a bias, the suite's do not: the bias is
  folded into the BN running mean (``mu <- mu - b``), which gives the same
  function in eval mode and the same gradients in training mode (batch
  statistics subtract it anyway);
- torchvision max-pools, the suite average-pools (docs/methods.md section 1): the
  imported network is not the same function, so fine-tune it
  (``ftbc train --init-from FILE``) before converting.

No ResNet-34 mapping: torchvision's 7x7 stem matches neither lineage's stem.

The file must be safetensors: the suite never unpickles. To make one from the
weights torchvision downloaded, in your own environment::

    python -c "import torchvision, safetensors.torch as st; \\
      st.save_file(torchvision.models.vgg16_bn(weights='DEFAULT').state_dict(), 'vgg16_bn.safetensors')"
"""

from __future__ import annotations

import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from ftbc.errors import CheckpointError

__all__ = ["TORCHVISION_SOURCES", "torchvision_to_suite", "load_initial_weights"]

# suite architecture -> the torchvision network whose weights fit it
TORCHVISION_SOURCES = {"vgg16_imagenet": "vgg16_bn", "vgg16_rts_imagenet": "vgg16"}
_HEAD = {"classifier.0": "pre_logits.0", "classifier.3": "pre_logits.3", "classifier.6": "fc"}


def torchvision_to_suite(state: dict[str, Tensor], arch: str) -> dict[str, Tensor]:
    """Rename (and for BN nets, fold the conv biases of) a torchvision VGG-16 state dict for ``arch``."""
    if arch not in TORCHVISION_SOURCES:
        raise CheckpointError(f"no torchvision weights map onto {arch}; importable: "
                              f"{', '.join(f'{a} <- {t}' for a, t in TORCHVISION_SOURCES.items())}")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        prefix, _, name = key.rpartition(".")
        out[f"{_HEAD.get(prefix, prefix)}.{name}"] = value
    if TORCHVISION_SOURCES[arch] == "vgg16_bn":
        for key in [k for k in out if k.startswith("features.") and k.endswith(".bias")]:
            idx = int(key.split(".")[1])
            bn_mean = f"features.{idx + 1}.running_mean"
            if out[key].dim() == 1 and bn_mean in out and f"features.{idx}.weight" in out \
                    and out[f"features.{idx}.weight"].dim() == 4:
                out[bn_mean] = out[bn_mean] - out.pop(key)
    return out


def load_initial_weights(model: nn.Module, arch: str, path: str | os.PathLike) -> None:
    """Load ``path`` (safetensors: a suite state dict, or torchvision's VGG-16 weights) into ``model``, strictly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--init-from: {path} does not exist")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"--init-from: {path} is not a safetensors file ({e}); convert torchvision's .pth "
                              f"as described in ftbc/models/pretrained.py") from None
    own = model.state_dict()
    if set(state) != set(own):
        state = torchvision_to_suite(state, arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"--init-from: {path} does not fit {arch}: {str(e).splitlines()[0]}") from None
