"""ANN activations that the converter turns into IF neurons.

Every activation site of a model holds its own module instance, so the SNN
converter can find the sites by type (:func:`is_activation`) and swap each one
for an IF neuron whose threshold comes from that module:

- ``'relu'``: :class:`torch.nn.ReLU` (SNN Calibration; threshold searched later).
- ``'qcfs'``: :class:`QCFS`, the quantisation-clip-floor-shift activation of
  Bu et al., ICLR 2022 (docs/methods.md section 3); theta = ``lam``, v(0) = theta / 2.
- ``'clip'``: :class:`ClipReLU`, the clipped ReLU of RTS (Deng & Gu, ICLR 2021;
  docs/methods.md section 4); theta = the layer's maximum activation (about ``y_th``).

Models take the activation as a factory: ``get_act_layer('qcfs', L=4)`` returns
a zero-argument callable that builds a fresh module on every call.
"""

from __future__ import annotations

import functools
from typing import Callable, Union

import torch
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "ACT_KWARGS", "QCFS", "ClipReLU", "get_act_layer", "is_activation"]


def qcfs_value(z: Tensor, lam: Tensor, L: int) -> Tensor:
    """``floor(clamp(z L / lam, 0, L) + 1/2) * lam / L``, in float32.

    float32 under bf16 autocast: the levels (spacing lam / L) and lam's gradient, a sum over the whole
    tensor, would otherwise be rounded to 8 significant bits. A no-op for float32 inputs.
    """
    s = torch.clamp(_wide(z) * (L / lam), 0.0, float(L))
    return torch.floor(s.add_(0.5)).mul_(lam / L)


def _wide(x: Tensor) -> Tensor:
    """float32 for half-precision tensors, the tensor itself otherwise."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class _QCFSFunction(torch.autograd.Function):
    """QCFS with a hand-written backward: the same values and straight-through gradients as
    autograd through ``clamp -> straight-through floor -> * lam``, in a few passes over memory instead of a
    graph of six elementwise nodes (on CPU the activation cost more than the convolutions of the
    narrow ResNet-20 layers). Saves only the input, in its own dtype."""

    @staticmethod
    def forward(ctx, z: Tensor, lam: Tensor, L: int) -> Tensor:
        ctx.save_for_backward(z, lam)
        ctx.L, ctx.z_dtype = L, z.dtype
        return qcfs_value(z, lam, L)

    @staticmethod
    def backward(ctx, g: Tensor):
        z, lam = ctx.saved_tensors
        L = ctx.L
        z = _wide(z)
        s = z * (L / lam)
        inside = (s > 0) & (s < L)  # torch.clamp's gradient region (end points excluded)
        gz = g * inside
        grad_lam = None
        if ctx.needs_input_grad[1]:
            # d a / d lam = level / L - inside * z / lam  (level = floor(clamp(s) + 1/2): 0 below, L above)
            level = torch.floor(s.clamp_(0.0, float(L)).add_(0.5))
            grad_lam = (_wide(g) * level).sum() / L - (_wide(gz) * z).sum() / lam
            grad_lam = grad_lam.reshape(lam.shape).to(lam.dtype)
        return gz.to(ctx.z_dtype) if ctx.needs_input_grad[0] else None, grad_lam, None


# QCFS defaults when nothing else says: L of QCFS's CIFAR setting (the per-dataset table is
# ftbc/models/checkpoint.py QCFS_L) and the initial clipping level lambda.
QCFS_DEFAULT_L = 4
QCFS_DEFAULT_INIT_LAMBDA = 8.0


class QCFS(nn.Module):
    """Quantisation-clip-floor-shift activation (QCFS, ICLR 2022).

    ``a = lam * clamp(floor(z * L / lam + 1/2) / L, 0, 1)``, computed in the
    release's order (clamp before floor) with the constants folded:
    ``s = clamp(z * (L / lam), 0, L); a = floor(s + 1/2) * (lam / L)``.
    The values are the same and the elementwise work is smaller; a fused
    backward (:class:`_QCFSFunction`) gives both straight-through gradients:

    - d a / d z = 1 for 0 < z < lam, else 0 (straight-through floor; at the
      two end points torch.clamp passes no gradient);
    - d a / d lam = q - z / lam inside that range (q the quantised level in
      [0, 1]), 1 above it, 0 below it.

    Args:
        L: quantisation steps (4 on CIFAR; 8 ImageNet ResNet-34; 16 ImageNet VGG-16).
        init_lambda: initial clipping level; small values
            (such as 1.0) can drive lambda negative.

    Shape:
        any; ``lam`` is one trainable scalar (shape ``()``) per layer.
    """

    def __init__(self, L: int = QCFS_DEFAULT_L, init_lambda: float = QCFS_DEFAULT_INIT_LAMBDA) -> None:
        super().__init__()
        if int(L) != L or L < 1:
            raise ValueError(f"QCFS needs an integer L >= 1, got {L!r}")
        if not init_lambda > 0:
            raise ValueError(f"QCFS needs init_lambda > 0, got {init_lambda!r}")
        self.L = int(L)
        self.lam = nn.Parameter(torch.tensor(float(init_lambda)))

    def forward(self, z: Tensor) -> Tensor:
        if torch.is_grad_enabled() and (z.requires_grad or self.lam.requires_grad):
            return _QCFSFunction.apply(z, self.lam, self.L)
        return qcfs_value(z, self.lam, self.L)

    def extra_repr(self) -> str:
        if self.lam.is_meta:
            return f"L={self.L}"
        return f"L={self.L}, lam={self.lam.item():.4g}"


class ClipReLU(nn.Module):
    """Clipped ReLU of RTS: ``a = clamp(z, 0, y_th)``.

    The gradient is 1 for 0 < z < y_th and 0 outside. At the two end points
    themselves torch.clamp (scalar bounds) passes no gradient, as ReLU passes
    none at 0; they are a set of measure zero.

    Args:
        y_th: the clipping level, one value for all layers (1 on CIFAR-10,
            2 on CIFAR-100, 3 on ImageNet VGG-16).
    """

    def __init__(self, y_th: float = 1.0) -> None:
        super().__init__()
        if not y_th > 0:
            raise ValueError(f"ClipReLU needs y_th > 0, got {y_th!r}")
        self.y_th = float(y_th)

    def forward(self, z: Tensor) -> Tensor:
        return torch.clamp(z, 0.0, self.y_th)

    def extra_repr(self) -> str:
        return f"y_th={self.y_th:g}"


_ACT_CLASSES: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "qcfs": QCFS, "clip": ClipReLU}
ACTIVATIONS: tuple[str, ...] = tuple(_ACT_CLASSES)
# The settings each activation accepts; any other keyword is an error.
ACT_KWARGS: dict[str, tuple[str, ...]] = {"relu": (), "qcfs": ("L", "init_lambda"), "clip": ("y_th",)}

ActFactory = Callable[[], nn.Module]


def get_act_layer(name: Union[str, ActFactory] = "relu", **kwargs) -> ActFactory:
    """Return a factory that builds a fresh activation module per call.

    Args:
        name: ``'relu'``, ``'qcfs'`` or ``'clip'`` (case-insensitive), or a
            callable (a module class or factory) that is used as given.
        **kwargs: the activation's settings: ``L``, ``init_lambda`` for
            ``'qcfs'``; ``y_th`` for ``'clip'``; none for ``'relu'``.

    Raises:
        ValueError: an unknown name, or a setting the activation does not take.
    """
    if callable(name):
        return functools.partial(name, **kwargs) if kwargs else name
    key = str(name).lower()
    if key not in _ACT_CLASSES:
        raise ValueError(f"unknown activation {name!r}; valid names: {', '.join(ACTIVATIONS)}")
    extra = sorted(set(kwargs) - set(ACT_KWARGS[key]))
    if extra:
        allowed = ", ".join(ACT_KWARGS[key]) or "none"
        raise ValueError(f"activation {key!r} takes no setting {', '.join(extra)} (allowed: {allowed})")
    return functools.partial(_ACT_CLASSES[key], **kwargs)


def is_activation(module: nn.Module) -> bool:
    """True for the modules the converter swaps for IF neurons."""
    return isinstance(module, (nn.ReLU, QCFS, ClipReLU))
