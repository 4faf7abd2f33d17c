"""Energy per image as the ANN-to-SNN conversion papers estimate it.

An SNN's spikes drive accumulates (AC: one addition per synaptic operation); its
first weighted layer still multiplies the analog input at every step (MAC); the ANN
multiplies and accumulates everywhere. With the 45 nm figures of Horowitz,
"Computing's energy problem (and what we can do about it)", ISSCC 2014 (32-bit
float: add 0.9 pJ, multiply 3.7 pJ, so a MAC 4.6 pJ), which the SNN papers quote:

    E_SNN(T) = E_AC * SynOps(T) + E_MAC * T * MACs(first layer)
    E_ANN    = E_MAC * MACs(ANN)

These are estimates of arithmetic only (no memory traffic), as in the papers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

E_AC_PJ = 0.9  # pJ per accumulate (45 nm, 32-bit float add)
E_MAC_PJ = 4.6  # pJ per multiply-accumulate (45 nm, 32-bit float multiply + add)


@dataclass(frozen=True)
class Macs:
    """Multiply-accumulates per image: the whole ANN, and its first weighted layer."""

    ann: float
    input_layer: float


def layer_macs(module: nn.Module, out: Tensor) -> float:
    """MACs per image of a Conv2d or Linear that produced ``out`` (batch of one)."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out[0].numel() * module.in_channels * kh * kw / module.groups
    return float(module.in_features * module.out_features)


@torch.no_grad()
def count_macs(model: nn.Module, x: Tensor) -> Macs:
    """MACs per image of ``model`` (its Conv2d and Linear layers) on one image like ``x[:1]``."""
    per_layer: list[float] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: per_layer.append(layer_macs(mod, o)))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        model(x[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return Macs(ann=sum(per_layer), input_layer=per_layer[0] if per_layer else 0.0)


def snn_energy_uj(synops: float, T: int, input_macs: float) -> float:
    """Estimated energy per image of T steps, in microjoules."""
    return (E_AC_PJ * synops + E_MAC_PJ * T * input_macs) * 1e-6


def ann_energy_uj(macs: float) -> float:
    """Estimated energy per image of the ANN, in microjoules."""
    return E_MAC_PJ * macs * 1e-6
