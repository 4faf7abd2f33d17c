"""SNN Calibration (Li, Deng, Dong, Gong, Gu, "A Free Lunch From ANN", ICML 2021; docs/methods.md section 2).

A ReLU ANN (BN folded), thresholds from SNNC's MSE search over
{max * (1 - 0.01 k)} against a T-level clip-floor quantiser (EMA 0.9 over 7
batches of 128), the shift theta / (2T) at every step, v(0) = 0, then:

- light pipeline (``snnc_light``): bias calibration (BC);
- advanced pipeline (``snnc_advanced``): potential calibration (PC), preceded
  by weight calibration (WC) on ImageNet, as the release does.

The release's "none" row (``snnc_none``, its README's "Calibration: None")
keeps the shift theta / (2T) and v(0) = 0 and runs no calibration stage. Its
thresholds are not the MSE search: for ``--calib none`` the release's
``main_cal_cifar.py`` / ``main_cal_imagenet.py`` turn the search off
(``mse = False if args.calib == 'none' else True``) and take the EMA (momentum
0.9, same 7 batches) of the per-batch layer maxima. The published "none" figures
come from that code, so ``snnc_none`` uses the ``max`` rule; ``--set
threshold=mse`` gives the variant the FTBC release's copy of SNNC runs (it
forces the search on for every row). Unlike ``maxnorm`` it is T-dependent
through the shift.

The three calibration stages are registered here; each visits the spiking
layers in forward order with the layers below already calibrated (the
driver in :mod:`ftbc.snn.calibration`). Everything depends on T.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from baselines import Method, Stage, register_method
from ftbc.models.papers import PAPERS
from ftbc.snn.calibration import ann_output, layerwise_pass, rate_pass, resolve_order, time_means
from ftbc.snn.ftbc_solvers import channel_mean
from ftbc.snn.stages import register_stage
from ftbc.data.calibration_pool import SNNC_LOADER, draw_batches
from ftbc.snn.graph import spiking_layers
from ftbc.snn.neuron import IFNeuron


@dataclass(frozen=True)
class SNNCConfig:
    """The release's hyperparameters."""

    threshold_batches: int = 7
    threshold_batch_size: int = 128
    calibration_images: int = 128  # BC / PC: one calibration batch
    wc_samples: int = 1024
    wc_iterations: int = 5000
    wc_batch_size: int = 32
    wc_lr: float = 1e-5


CFG = SNNCConfig()


def _one_batch(ctx, images: int) -> Tensor:
    return draw_batches(ctx.data, 1, images, ctx.seed + 2)[0].to(ctx.device)


# order: 'layer' (one layer-major pass), 'step' (the release's order: per layer a step-by-step
# run, memory independent of T) or 'auto' (layer unless a layer's T steps pass 2 GiB; on CUDA, half
# the free memory).
@register_stage("bias", t_dependent=True, defaults=dict(images=CFG.calibration_images, order="auto"))
def bias_calibration(snn: nn.Module, ctx, *, images: int, order: str) -> None:
    """BC: per channel, offset_c -= mean_{N,H,W}(r - a), r the SNN's mean rate over T steps."""

    def update(name: str, n: IFNeuron, r: Tensor, a: Tensor) -> None:
        err = channel_mean(r - a)
        n.offset = n.offset.expand_as(err).clone() - err if n.offset.dim() == 0 else n.offset - err

    used = rate_pass(snn, ctx.ann, _one_batch(ctx, images), ctx.T, update, order=order)
    ctx.log.append({"stage": "bias", "order": used})


@register_stage("potential", t_dependent=True, defaults=dict(images=CFG.calibration_images, order="auto"))
def potential_calibration(snn: nn.Module, ctx, *, images: int, order: str) -> None:
    """PC: per neuron (C x H x W, averaged over the batch), v(0) += T * (E[a] - E[r])."""

    def update(name: str, n: IFNeuron, r: Tensor, a: Tensor) -> None:
        n.v0 = n.v0 + ctx.T * (a.mean(0) - r.mean(0))

    used = rate_pass(snn, ctx.ann, _one_batch(ctx, images), ctx.T, update, order=order)
    ctx.log.append({"stage": "potential", "order": used})


# -- weight calibration ---------------------------------------------------------------

class _Stop(Exception):
    """Ends a calibration forward once the layer of interest has been seen."""


def feeding_layer(snn: torch.fx.GraphModule, neuron_name: str) -> tuple[str, nn.Module] | None:
    """The Conv2d / Linear whose output is the neuron's input current (main path of a residual add)."""
    node = next(n for n in snn.graph.nodes if n.op == "call_module" and n.target == neuron_name)
    node = node.args[0]
    while isinstance(node, torch.fx.Node):
        if node.op == "call_module" and isinstance(snn.get_submodule(node.target), (nn.Conv2d, nn.Linear)):
            return node.target, snn.get_submodule(node.target)
        if node.op == "call_function" and node.target in (operator.add, torch.add):
            node = node.args[0]
            continue
        return None
    return None


def quantise(z: Tensor, theta: Tensor, T: int) -> Tensor:
    """theta / T * floor(clamp(z T / theta, 0, T)), the floor passed straight through.

    The release's order (clamp, then floor): the gradient flows wherever 0 < z T / theta < T,
    the lowest quantisation step included (flooring first would stop it below one step).
    """
    u = torch.clamp(z * T / theta, 0, T)
    return (u + (u.floor() - u).detach()) * (theta / T)


def _capture(snn, ctx, x: Tensor, name: str, layer_name: str, order: str):
    """Mean input rate of the feeding layer, the rest of the neuron's current, and the ANN target, for images ``x``."""
    layer = snn.get_submodule(layer_name)
    if resolve_order(order, ctx.ann, x, ctx.T) == "step":
        means = time_means(snn, x, ctx.T, name, inputs_of=[layer_name])
        inp, current, a = means.inputs[layer_name], means.current, ann_output(ctx.ann, x, name)
    else:
        got = {}
        h = layer.register_forward_hook(lambda m, i, o: got.__setitem__("inp", i[0]))

        def update(n_name, n, xs, a):
            if n_name == name:
                got["xs"], got["a"] = xs, a
                raise _Stop

        try:
            layerwise_pass(snn, ctx.ann, x, ctx.T, update)
        except _Stop:
            pass
        finally:
            h.remove()
        inp = got["inp"].view(ctx.T, -1, *got["inp"].shape[1:]).mean(0)
        current, a = got["xs"].mean(0), got["a"]
    with torch.no_grad():
        rest = current - layer(inp)
    return inp, rest, a


def layer_loss(layer: nn.Module, theta: Tensor, T: int, inp: Tensor, rest: Tensor, a: Tensor) -> Tensor:
    """The release's loss: squared error summed over channels, averaged over images and positions."""
    return (quantise(layer(inp) + rest, theta, T) - a).pow(2).sum(1).mean()


@register_stage("weight", t_dependent=True, defaults=dict(
    samples=CFG.wc_samples, iterations=CFG.wc_iterations, batch_size=CFG.wc_batch_size, lr=CFG.wc_lr, chunk=128,
    order="auto"))
def weight_calibration(snn: nn.Module, ctx, *, samples: int, iterations: int, batch_size: int, lr: float,
                       chunk: int, order: str) -> None:
    """WC: per layer, minimise E||quantise(W r + b) - a||^2 over W (Adam, cosine lr, STE floor)."""
    images = torch.cat(draw_batches(ctx.data, math.ceil(samples / chunk), chunk, ctx.seed + 3))[:samples]
    g = torch.Generator().manual_seed(ctx.seed)
    for name, n in spiking_layers(snn):
        found = feeding_layer(snn, name)
        if found is None:
            continue
        layer_name, layer = found
        parts = [_capture(snn, ctx, x.to(ctx.device), name, layer_name, order) for x in images.split(chunk)]
        inp, rest, a = (torch.cat(p) for p in zip(*parts))
        theta = n.theta(a.dim())
        opt = torch.optim.Adam([layer.weight], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, iterations))
        with torch.enable_grad():
            layer.weight.requires_grad_(True)
            for _ in range(iterations):
                idx = torch.randperm(len(inp), generator=g)[:batch_size]  # distinct samples, as the release
                loss = layer_loss(layer, theta, ctx.T, inp[idx], rest[idx], a[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            layer.weight.requires_grad_(False)
        ctx.log.append({"stage": "weight", "layer": name,
                        "loss": float(layer_loss(layer, theta, ctx.T, inp, rest, a).detach())})


# -- the methods ------------------------------------------------------------------------

_COMMON = dict(
    activation="relu",
    threshold="mse",
    threshold_reduce="ema",
    threshold_batches=CFG.threshold_batches,
    threshold_batch_size=CFG.threshold_batch_size,
    v0=0.0,
    shift=True,
    calibration_augmentation=SNNC_LOADER,  # the release's loader: crop, flip, AutoAugment, Cutout 16
    reference=PAPERS["snnc"].reference,
    family="SNN Calibration",
)

# Registered first: the rows of a table go none, light, advanced.
SNNC_NONE = register_method(Method(
    name="snnc_none",
    label="SNNC (none)",
    stages=(),
    summary="ReLU ANN, max-activation thresholds (EMA of batch maxima), shift theta/2T, no calibration "
            "(SNNC's 'none' row)",
    **{**_COMMON, "threshold": "max"},  # the release turns the MSE search off for --calib none
))

SNNC_LIGHT = register_method(Method(
    name="snnc_light",
    label="SNNC light (BC)",
    stages=(Stage("bias"),),
    summary="ReLU ANN, MSE-searched thresholds, shift theta/2T, bias calibration",
    **_COMMON,
))

SNNC_ADVANCED = register_method(Method(
    name="snnc_advanced",
    label="SNNC advanced (PC)",
    stages=(Stage("potential"),),
    dataset_overrides={"imagenet": {"stages": (Stage("weight"), Stage("potential"))}},
    summary="ReLU ANN, MSE-searched thresholds, shift theta/2T, potential calibration (weight calibration first on ImageNet)",
    **_COMMON,
))
