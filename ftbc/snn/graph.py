"""Graph surgery on a traced network (torch.fx): tracing with the activations kept as leaves,
BN folding, finding the activation sites and spiking layers, residual additions, placing
IF neurons where the activations were, and standing in for neurons while a calibration
driver runs. Shared by conversion, calibration and the saved-SNN format.
"""

from __future__ import annotations

import contextlib
import copy
import operator
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse

from ftbc.models.activations import is_activation
from ftbc.snn.neuron import IFNeuron


class _Tracer(fx.Tracer):
    """Keeps activations and neurons as leaves, so they can be swapped by name."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_activation(m) or isinstance(m, IFNeuron) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    return fx.GraphModule(model, _Tracer().trace(model), class_name=type(model).__name__)


def fold_bn(ann: nn.Module) -> fx.GraphModule:
    """A copy of ``ann`` in eval mode with every Conv/Linear -> BatchNorm pair fused."""
    ann = copy.deepcopy(ann).eval()
    gm = fuse(trace(ann), inplace=True, no_trace=True)
    return gm.eval()


def module_nodes(gm: fx.GraphModule, keep: Callable[[nn.Module], bool]) -> list[tuple[str, nn.Module]]:
    """Submodules called in the graph for which ``keep(module)`` holds, in forward order."""
    out = []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            if keep(m):
                out.append((node.target, m))
    return out


def activation_sites(gm: fx.GraphModule) -> list[tuple[str, nn.Module]]:
    return module_nodes(gm, is_activation)


def activation_outputs(ann: nn.Module, x: torch.Tensor,
                       reduce: Callable[[torch.Tensor], torch.Tensor] = torch.Tensor.detach) -> dict[str, torch.Tensor]:
    """``reduce`` of each activation module's output on ``x``, by module name, taken as each layer
    runs (a reducing ``reduce`` keeps no full-size output alive past its layer)."""
    out: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, i, o, name=name: out.__setitem__(name, reduce(o)))
               for name, m in activation_sites(ann)]
    try:
        ann(x)
    finally:
        for h in handles:
            h.remove()
    return out


def spiking_layers(snn: fx.GraphModule) -> list[tuple[str, IFNeuron]]:
    return module_nodes(snn, lambda m: isinstance(m, IFNeuron))


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


# fire(neuron, x) -> the output that stands for neuron(x).
FireFn = Callable[[IFNeuron, torch.Tensor], torch.Tensor]


class _StandIn(nn.Module):
    """Takes a neuron's place in the forward and calls ``fire(neuron, x)`` instead of it.

    The neuron stays registered (as ``neuron``), so device moves still reach it; its
    forward hooks do not run while it is replaced.
    """

    def __init__(self, neuron: IFNeuron, fire: FireFn):
        super().__init__()
        self.neuron = neuron
        self.fire = fire

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fire(self.neuron, x)


@contextlib.contextmanager
def intercepted(model: nn.Module, fires: Mapping[str, FireFn]) -> Iterator[None]:
    """Inside the block, a forward of ``model`` calls ``fires[name](neuron, x)`` where the neuron
    ``name`` would run; the neurons are put back on exit, also after an exception.

    How a calibration driver reaches into a running forward (a layer's input current
    before it fires, or one step of it) without the neuron knowing of drivers. The
    submodules are swapped on their parent modules, which is what a traced
    ``fx.GraphModule``'s generated code looks up.
    """
    originals: dict[str, nn.Module] = {}
    try:
        for name, fire in fires.items():
            neuron = model.get_submodule(name)
            if not name or not isinstance(neuron, IFNeuron):
                raise ValueError(f"{name!r} is not an IF neuron inside the model")
            originals[name] = neuron
            _set_submodule(model, name, _StandIn(neuron, fire))
        yield
    finally:
        for name, neuron in originals.items():
            _set_submodule(model, name, neuron)


# Graph calls that sum two currents: a residual block's main path and its shortcut.
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)


_ADD_METHODS = ("add", "add_")


def is_addition(node: Any) -> bool:
    """Whether ``node`` (an fx node, or any other argument) is an addition: ``a + b``, ``torch.add``, ``a.add(b)``."""
    if not isinstance(node, fx.Node):
        return False
    return ((node.op == "call_function" and node.target in _ADD_FUNCTIONS)
            or (node.op == "call_method" and node.target in _ADD_METHODS))


def fed_by_addition(gm: fx.GraphModule) -> set[str]:
    """Names of the submodules whose (first) input in the graph is an addition: the post-residual activations."""
    return {n.target for n in gm.graph.nodes if n.op == "call_module" and n.args and is_addition(n.args[0])}


OUTPUT_NEURON = "output_neuron"  # the spiking classifier's neuron (RTS), after the last layer


def place_neurons(gm: fx.GraphModule, make: Callable[[str], IFNeuron], *, spiking_classifier: bool) -> fx.GraphModule:
    """A copy of ``gm`` with the activation at each site ``name`` replaced by ``make(name)``, and with
    ``make('output')`` after the classifier when ``spiking_classifier``."""
    snn = copy.deepcopy(gm)
    for name, _ in activation_sites(snn):
        _set_submodule(snn, name, make(name))
    if spiking_classifier:
        snn.add_submodule(OUTPUT_NEURON, make("output"))
        out_node = next(n for n in snn.graph.nodes if n.op == "output")
        with snn.graph.inserting_before(out_node):
            spk = snn.graph.call_module(OUTPUT_NEURON, (out_node.args[0],))
        out_node.args = (spk,)
    snn.graph.lint()
    snn.recompile()
    return snn.eval()
