"""``ftbc export``: a calibrated SNN saved by ``ftbc evaluate --save-snn``, for other simulators.

``--to spikingjelly`` writes ``snn_spikingjelly.pt``, the network with SpikingJelly
2.0 neurons (:mod:`ftbc.interop.export_spikingjelly`), as ``torch.save`` of the module:
load it with ``torch.load(path, weights_only=False)`` where ``ftbc`` and
``spikingjelly`` are installed, reset it with ``functional.reset_net`` and call it
once per time step. ``--to nir`` writes ``snn.nir`` (:mod:`ftbc.interop.export_nir`), or
says which of the network's neurons NIR cannot express. A JSON file beside
either names the SNN it came from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ftbc._io import atomic_write, sha256_file, write_json
from ftbc.errors import UserError

INPUT_SHAPES = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "imagenet": (3, 224, 224)}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Write a saved, calibrated SNN as a SpikingJelly module or a NIR graph.",
                                add_help=add_help)
    p.add_argument("snn", help="snn.safetensors / snn-T<T>.safetensors, or the folder ftbc evaluate --save-snn wrote")
    p.add_argument("--to", required=True, choices=("spikingjelly", "nir"), help="target format")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--T", type=int, help="which saved SNN, when the folder holds one per T")
    p.add_argument("--step-mode", choices=("s", "m"), default="s",
                   help="SpikingJelly step mode: 's' one call per step, 'm' T folded into the batch (needs --T)")
    p.add_argument("--node", choices=("auto", "plain", "exact"), default="auto",
                   help="SpikingJelly neuron: its IFNode where it can express the neuron (auto), always (plain), "
                        "or the exact subclass (exact)")
    return p


def pick(path: str, T: int | None) -> Path:
    """The one saved SNN file that ``path`` and ``T`` name."""
    from ftbc._io import load_checkpoint
    from ftbc.snn.snn_file import snn_files

    files = snn_files(path)
    if T is not None:
        files = [f for f in files if load_checkpoint(f, verify=False)[1].get("T") == T
                 or (f.name == "snn.safetensors" and load_checkpoint(f, verify=False)[1].get("T", 0) >= T)]
    if len(files) != 1:
        found = ", ".join(f.name for f in snn_files(path))
        raise UserError(f"{path} holds {found}; choose one with --T" if T is None else
                        f"no saved SNN for T={T} at {path} ({found})")
    return files[0]


def main(args: argparse.Namespace) -> int:
    from ftbc.snn.snn_file import load_snn

    source = pick(args.snn, args.T)
    snn, meta = load_snn(source)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"source": str(source), "source_sha256": sha256_file(source), "method": meta["method"]["name"],
              "ann": meta["ann"], "T": meta["T"], "to": args.to}
    if args.to == "spikingjelly":
        from ftbc.interop.export_spikingjelly import available, to_spikingjelly

        if not available():
            raise UserError("spikingjelly is not installed (pip install spikingjelly==2.0.0)")
        if args.step_mode == "m" and args.T is None:
            raise UserError("--step-mode m folds T into the batch: give --T")
        net = to_spikingjelly(snn, args.step_mode, args.T or meta["T"], node=args.node)
        target = out / "snn_spikingjelly.pt"
        with atomic_write(target) as tmp:
            torch.save(net, tmp)
        record.update(step_mode=args.step_mode, node=args.node,
                      load="torch.load(path, weights_only=False); spikingjelly functional.reset_net before each input")
    else:
        try:
            import nir
        except ImportError:
            raise UserError("nir is not installed (pip install nir)") from None
        from ftbc.interop.export_nir import to_nir

        dataset = meta["ann"]["dataset"]
        if dataset not in INPUT_SHAPES:
            raise UserError(f"no input shape known for dataset {dataset!r}")
        graph = to_nir(snn, INPUT_SHAPES[dataset])
        target = out / "snn.nir"
        with atomic_write(target) as tmp:
            nir.write(tmp, graph)
        record.update(input_shape=list(INPUT_SHAPES[dataset]), nodes=len(graph.nodes), edges=len(graph.edges))
    write_json(target.with_suffix(".json"), record)
    print(f"wrote {target} ({meta['method']['name']} on {meta['ann']['arch']}, T={meta['T']})")
    return 0
