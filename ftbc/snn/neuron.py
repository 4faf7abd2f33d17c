"""The integrate-and-fire neuron (docs/methods.md section 1), the one every method uses.

At step t = 0..T-1 (the paper's t = 1..T), with input current x(t)::

    m(t) = v(t-1) + x(t) + offset + b[t]      # offset: SNNC/RTS shift, SNNC bias correction
    s(t) = H(m(t) - theta)                     # fires when m >= theta
    v(t) = m(t) - theta * s(t)                 # reset by subtraction
    out(t) = theta * s(t)

with v(-1) = v0. Methods differ only in the values of ``theta``, ``v0``,
``offset`` and the FTBC biases ``b`` (shape [T_b, C]; steps t >= T_b get no
bias); none subclasses the neuron.

Shapes: per-channel parameters are stored as [C] and broadcast over
[N, C, *spatial]; ``v0`` may also be per neuron ([C, *spatial], SNNC's
potential calibration). Two step modes (as in SpikingJelly): ``'s'`` takes one
step [N, ...] and keeps its membrane between calls; ``'m'`` takes all steps
with T folded into the batch, [T*N, ...], and scans over T inside. Input that
arrives in half precision (autocast on a GPU, :mod:`ftbc.bench.accel`) is integrated
in float32: the membrane is never rounded.

The neuron keeps its dynamics only. Spike counts are observed from outside by
:class:`ftbc.snn.monitors.SpikeMonitor` (forward hooks); the calibration drivers
stand in for a neuron while they run (:func:`ftbc.snn.graph.intercepted`); and
which implementation of the IF step runs is chosen per block of code
(:func:`step_backend`), not per neuron.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

import torch
from torch import Tensor, nn


def if_step(x: Tensor, v: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """One IF step: integrate ``x`` into ``v``, fire at ``>= theta``, reset by subtraction.

    Pure: reads no module state. Returns (spikes in {0, 1}, next membrane).
    """
    m = v + x
    s = (m >= theta).to(m.dtype)
    return s, m - theta * s


def if_step_(v: Tensor, x: Tensor, theta: Tensor, out: Tensor | None = None) -> Tensor:
    """:func:`if_step` updating ``v`` in place; returns the layer output theta * s.

    The simulation's hot path, bit-equal to :func:`if_step` (tested). Four
    passes over memory, each a vectorised kernel: ``torch.where`` with a random
    mask runs branchy on CPU and a fresh bool mask costs an allocation, so the
    comparison writes 0/1 straight into the float output (measured in
    BENCHMARKS.md). ``out`` (shape of ``v``) receives the output instead of a
    fresh tensor, e.g. a slice of a [T, ...] buffer.
    """
    v.add_(x)
    if out is None:
        out = torch.empty_like(v)
    torch.ge(v, theta, out=out)  # s in {0., 1.}
    out.mul_(theta)  # exactly theta or +0.0 (theta > 0)
    v.sub_(out)
    return out


# (v, x, theta, out=None) -> theta * s, advancing v in place: :func:`if_step_` or a bit-equal replacement.
StepFn = Callable[..., Tensor]

_STEP: contextvars.ContextVar[StepFn] = contextvars.ContextVar("ftbc_if_step", default=if_step_)


@contextlib.contextmanager
def step_backend(step: StepFn) -> Iterator[None]:
    """Every neuron runs ``step`` instead of :func:`if_step_` inside the block (restored on exit).

    A backend setting, not a method's: ``step`` must be bit-equal to :func:`if_step_`
    (:func:`ftbc.bench.accel.compiled_scan` swaps in a compiled kernel). A context
    variable, so a thread or task sees only the backend it chose; reading it is one
    lookup per step, as reading a neuron attribute was.
    """
    token = _STEP.set(step)
    try:
        yield
    finally:
        _STEP.reset(token)


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def exact(x: Tensor) -> Tensor:
    """``x`` in float32 if it arrives in half precision (autocast): the membrane is always kept exact."""
    return x.float() if x.dtype in _LOW_PRECISION else x


def channel_view(p: Tensor, ndim: int) -> Tensor:
    """Broadcast a [C] parameter over a [N, C, *spatial] tensor of ``ndim`` dims."""
    if p.dim() == 1 and ndim > 2:
        return p.view(-1, *([1] * (ndim - 2)))
    return p


class IFNeuron(nn.Module):
    """Integrate-and-fire neuron with soft reset, replacing one ANN activation.

    Args:
        threshold: theta, scalar or per channel [C].
        v0: initial membrane potential (scalar, [C] or [C, *spatial]).
        offset: current added at every step (scalar or [C]).
    """

    def __init__(self, threshold: Tensor | float = 1.0, v0: Tensor | float = 0.0, offset: Tensor | float = 0.0):
        super().__init__()
        self.register_buffer("threshold", torch.as_tensor(threshold, dtype=torch.float32).clone())
        self.register_buffer("v0", torch.as_tensor(v0, dtype=torch.float32).clone())
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float32).clone())
        self.register_buffer("bias", torch.zeros(0, 0))  # FTBC b[t, c], filled by calibration
        self.step_mode = "s"
        self.n_steps = 1  # T, used in multi-step mode
        self.reset()

    # -- state -----------------------------------------------------------------
    def reset(self) -> None:
        """Forget the membrane; the next step starts from v0 at t = 0."""
        self.v: Tensor | None = None
        self.t = 0

    def extra_repr(self) -> str:
        shape = "scalar" if self.threshold.dim() == 0 else f"per-channel[{self.threshold.numel()}]"
        return f"threshold={shape}, step_mode={self.step_mode!r}, ftbc_steps={self.bias.shape[0]}"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Buffers change shape with the method (scalar vs per channel, FTBC steps):
        # take the saved shape rather than failing on a mismatch.
        for name in ("threshold", "v0", "offset", "bias"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- dynamics --------------------------------------------------------------
    def current(self, x: Tensor) -> Tensor:
        """Input current before the FTBC bias: x + offset (``x`` itself when there is no offset)."""
        if self.offset.dim() or self.offset.item() != 0:  # most methods have none: skip a pass
            return x + channel_view(self.offset, x.dim())
        return x

    def drive(self, x: Tensor, t: int) -> Tensor:
        """Input current of step ``t`` including offset and FTBC bias: x + offset + b[t]."""
        d = self.current(x)
        if t < self.bias.shape[0]:
            d = d + channel_view(self.bias[t], x.dim())
        return d

    def initial_membrane(self, like: Tensor) -> Tensor:
        # empty_like keeps ``like``'s memory format (channels-last on GPU); an expanded clone would not.
        return torch.empty_like(like).copy_(channel_view(self.v0, like.dim()).expand_as(like))

    def theta(self, ndim: int) -> Tensor:
        return channel_view(self.threshold, ndim)

    def forward(self, x: Tensor) -> Tensor:
        if self.step_mode == "m":
            return self.run_steps(self.split_steps(x)).view_as(x)
        x = exact(x)
        out = _STEP.get()(self.membrane(x), self.drive(x, self.t), self.theta(x.dim()).to(x.dtype))
        self.t += 1
        return out

    def membrane(self, x: Tensor) -> Tensor:
        """Single-step mode: the membrane before step ``self.t`` (v0 shaped like ``x`` at t = 0)."""
        if self.v is None:
            self.v = self.initial_membrane(x)
        return self.v

    def split_steps(self, x: Tensor) -> Tensor:
        """Multi-step input [T*N, ...] as [T, N, ...], in float32."""
        T = self.n_steps
        if x.shape[0] % T:
            raise ValueError(f"multi-step input must be [T*N, ...] with T={T}; got batch {x.shape[0]}")
        return exact(x).view(T, x.shape[0] // T, *x.shape[1:])

    def run_steps(self, xs: Tensor) -> Tensor:
        """Run all steps of ``xs`` [T, N, ...] from v0; returns the outputs theta * s [T, N, ...]."""
        theta = self.theta(xs.dim() - 1).to(xs.dtype)
        v = self.initial_membrane(xs[0])
        out = torch.empty_like(xs)
        step = _STEP.get()
        for t in range(xs.shape[0]):
            step(v, self.drive(xs[t], t), theta, out=out[t])
        return out

    def scan(self, xs: Tensor) -> Tensor:
        """Run all steps of ``xs`` [T, N, ...] from v0; returns the spikes s in {0, 1} [T, N, ...]."""
        return (self.run_steps(xs) != 0).to(xs.dtype)


def neurons(model: nn.Module) -> list[tuple[str, IFNeuron]]:
    """The IF neurons of ``model`` in registration (= forward, for converted nets) order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, IFNeuron)]
