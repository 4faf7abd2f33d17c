"""Layers and initialisation shared by the VGG and ResNet families."""

from __future__ import annotations

from typing import Callable

from torch import nn

__all__ = ["conv_norm", "conv_norm_act", "init_weights"]


def conv_norm(in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, *, norm: bool = True) -> list[nn.Module]:
    """``[conv, bn]`` with a bias-free conv, or ``[conv]`` with a bias when ``norm`` is off.

    Padding is ``kernel_size // 2``, so a stride-1 conv keeps the spatial size.
    """
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=not norm)
    return [conv, nn.BatchNorm2d(out_ch)] if norm else [conv]


def conv_norm_act(
    in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, *,
    norm: bool = True, act_layer: Callable[[], nn.Module],
) -> list[nn.Module]:
    """``[conv, bn, act]`` (or ``[conv, act]`` without BN); a fresh activation instance."""
    return conv_norm(in_ch, out_ch, kernel_size, stride, norm=norm) + [act_layer()]


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, ReLU gain), zero conv biases, BN weight 1 / bias 0.

    Linear layers keep PyTorch's default initialisation; activation parameters
    (QCFS ``lam``) are left as their modules set them.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
