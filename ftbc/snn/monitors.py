"""Spike statistics observed from outside the neurons, by forward hooks.

The neuron computes dynamics only; what an evaluation wants to know about its
outputs (spikes per layer and step, each layer's size) is gathered here, so
that measuring never changes what is simulated.

Counts are nonzero outputs (a spike's output is theta > 0, silence is +0.0).
In single-step mode a forward call is one step, ``module.t - 1`` after it has
advanced; in multi-step mode the output [T*N, ...] holds all T steps. Counts
accumulate as exact integers on the output's device (no host sync per step)
and are handed out as float64.

Every forward call while open is counted, except inside :func:`unobserved`: a probe
run that is not part of the simulation (layer-major chunk sizing runs one image for
one step) must not add to step 0.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ftbc.snn.neuron import IFNeuron, neurons


_UNOBSERVED = contextvars.ContextVar("ftbc_unobserved", default=False)


@contextlib.contextmanager
def unobserved() -> Iterator[None]:
    """Forward calls inside the block are not counted by any open monitor."""
    token = _UNOBSERVED.set(True)
    try:
        yield
    finally:
        _UNOBSERVED.reset(token)


class SpikeMonitor:
    """Count spikes per IF-neuron layer and step while open (``with SpikeMonitor(snn) as m:``).

    ``layers`` are the neurons in registration order (the activity table's row
    order); ``sizes`` their output values per image, from the first call seen.
    """

    def __init__(self, snn: nn.Module):
        self.layers: dict[str, IFNeuron] = dict(neurons(snn))
        self.sizes: dict[str, int] = {}
        self._counts: dict[str, Tensor] = {}
        self._hooks: list[RemovableHandle] = []

    def __enter__(self) -> "SpikeMonitor":
        self._counts.clear()
        self.sizes.clear()
        self._hooks = [n.register_forward_hook(self._hook(name)) for name, n in self.layers.items()]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _hook(self, name: str):
        def hook(module: IFNeuron, inputs: Any, out: Tensor) -> None:
            if _UNOBSERVED.get():
                return
            self.sizes.setdefault(name, out[0].numel())
            if module.step_mode == "m":
                T = module.n_steps
                self._add(name, 0, out.reshape(T, -1).count_nonzero(1))
            else:
                self._add(name, module.t - 1, out.count_nonzero().reshape(1))
        return hook

    def _add(self, name: str, t0: int, n: Tensor) -> None:
        """Add counts ``n`` [k] to steps t0..t0+k-1 of layer ``name``, growing its buffer."""
        c = self._counts.get(name)
        end = t0 + n.shape[0]
        if c is None or c.shape[0] < end:
            grown = torch.zeros(max(end, 2 * (0 if c is None else c.shape[0])), dtype=torch.long, device=n.device)
            if c is not None:
                grown[: c.shape[0]] = c
            self._counts[name] = c = grown
        c[t0:end] += n

    def counts(self, name: str, T: int) -> Tensor:
        """Spikes of layer ``name`` at steps 0..T-1, summed over images and neurons; float64 [T] on the CPU."""
        out = torch.zeros(T, dtype=torch.float64)
        c = self._counts.get(name)
        if c is not None:
            k = min(T, c.shape[0])
            out[:k] = c[:k].cpu().double()
        return out
