"""The calibrated SNN as a file: everything a later evaluation or export needs, nothing to recompute.

A calibration can take an hour on a CPU (release-setting FTBC); this keeps its
result. ``snn.safetensors`` holds the converted network's state: the weights
after BatchNorm folding (and after any weight calibration), and for every
:class:`~ftbc.snn.neuron.IFNeuron` its threshold, initial potential ``v0``, the
constant per-step current ``offset`` (the theta/2T shift, SNN Calibration's
bias correction) and the FTBC biases ``bias[t, c]`` of every calibrated step.
The JSON sidecar names the ANN it came from (architecture, activation, the ANN
checkpoint's sha256), the method with its resolved settings, T, and the
measurements taken when it was saved.

The network is rebuilt from the sidecar, never unpickled: the ANN
architecture is created, folded and given one neuron per activation site
(plus the spiking classifier's neuron where the method has one), then the
saved state is loaded strictly, neuron buffers taking their saved shapes.

A method whose constants do not depend on T is saved once (``snn.safetensors``,
valid for every t up to its T); a T-dependent one once per T
(``snn-T8.safetensors``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import fx

from ftbc._io import load_checkpoint, save_checkpoint
from ftbc.models.checkpoint import _build_model, state_mismatch
from ftbc.snn.graph import OUTPUT_NEURON, fold_bn, place_neurons, spiking_layers
from ftbc.errors import CheckpointError
from ftbc.snn.neuron import IFNeuron

SNN_FORMAT = "ftbc.snn.v1"
ANN_KEYS = ("dataset", "arch", "act", "act_kwargs", "num_classes", "sha256")


def snn_file_name(T: int, t_dependent: bool) -> str:
    """``snn.safetensors`` for a T-free method, ``snn-T{T}.safetensors`` for one calibrated per T."""
    return f"snn-T{T}.safetensors" if t_dependent else "snn.safetensors"


def save_snn(path: str | os.PathLike, snn: fx.GraphModule, *, ann_meta: dict[str, Any], method: dict[str, Any],
             T: int, **measured: Any) -> Path:
    """Write ``snn`` (a converted, calibrated network) and its sidecar to ``path``.

    Args:
        ann_meta: the ANN checkpoint's metadata (``model.json``).
        method: the resolved method as ``result.json`` records it.
        T: the simulation length it was calibrated for.
        measured: recorded as they are (ANN accuracy, MACs, the calibration log).
    """
    neurons = [name for name, _ in spiking_layers(snn)]
    meta = {
        "format": SNN_FORMAT,
        "T": T,
        "ann": {k: ann_meta.get(k) for k in ANN_KEYS},
        "method": method,
        "neurons": neurons,
        "spiking_classifier": OUTPUT_NEURON in neurons,
        **measured,
    }
    return save_checkpoint(path, snn.state_dict(), meta)


def snn_files(path: str | os.PathLike) -> list[Path]:
    """The saved SNNs at ``path``: the file itself, or every ``snn*.safetensors`` in a folder (by T)."""
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(path.glob("snn*.safetensors")) if path.is_dir() else []
    if not files:
        raise CheckpointError(f"no saved SNN at {path} (expected snn.safetensors or snn-T<T>.safetensors, "
                              f"written by ftbc evaluate --save-snn)")
    return sorted(files, key=lambda p: load_checkpoint(p, verify=False)[1].get("T", 0))


def load_snn(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[fx.GraphModule, dict[str, Any]]:
    """Rebuild a saved SNN (eval mode) and return it with its sidecar."""
    state, meta = load_checkpoint(path)
    if meta.get("format") != SNN_FORMAT:
        raise CheckpointError(f"{path} is not a saved SNN (format {meta.get('format')!r}, expected {SNN_FORMAT}); "
                              f"an ANN checkpoint goes to ftbc evaluate --checkpoint")
    ann = meta["ann"]
    model = _build_model(ann["arch"], ann["act"], ann["act_kwargs"], ann["num_classes"])
    gm = fold_bn(model)
    snn = place_neurons(gm, lambda name: IFNeuron(), spiking_classifier=meta["spiking_classifier"])
    # neuron buffers legitimately change shape (per channel, FTBC steps); anything else must fit
    neuron_keys = {f"{n}.{b}" for n in meta["neurons"] for b in ("threshold", "v0", "offset", "bias")}
    if any(k not in neuron_keys for k in state_mismatch_keys(state, snn.state_dict())):
        raise CheckpointError(f"saved SNN {path} does not fit {ann['arch']}: {state_mismatch(state, snn.state_dict())}")
    snn.load_state_dict(state, strict=True)
    return snn.to(device).eval(), meta


def state_mismatch_keys(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    """Keys missing, unexpected or of another shape."""
    keys = set(state) ^ set(expected)
    keys |= {k for k in set(state) & set(expected) if state[k].shape != expected[k].shape}
    return sorted(keys)
