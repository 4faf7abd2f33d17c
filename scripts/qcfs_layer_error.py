"""Where a converted QCFS network loses accuracy at small T: per spiking layer, the SNN's
time-averaged output against the quantised ANN activation it replaces, on training images.

    python3 scripts/qcfs_layer_error.py results/cifar10-resnet20/ann/qcfs_l4 [--T 2,4,8,16] [--n 512]

Prints, per layer and T, the relative error mean|r - a| / mean(a) (r: SNN rate x theta,
a: ANN activation, both per neuron and image) and the signed mean (r - a) / mean(a), then the
accuracy of the ANN and the SNN on the same images. Training images with the test-time
transform: the test set is not used.
"""

from __future__ import annotations

import argparse

import torch

from baselines import get_method
from ftbc.snn.calibration import ann_targets
from ftbc.snn.conversion import convert
from ftbc.snn.graph import spiking_layers
from ftbc.data.splits import load_split
from ftbc.data.transforms import build_transform
from ftbc.data.prepare import resolve_data_root
from ftbc.snn.simulation import correct_per_step, simulate
from ftbc.models.checkpoint import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--T", default="2,4,8,16")
    p.add_argument("--n", type=int, default=512, help="training images (seeded draw)")
    p.add_argument("--data-root", default="auto")
    args = p.parse_args()
    model, meta = load_model(args.checkpoint)
    root = resolve_data_root(meta["dataset"], args.data_root, download=False)
    train = load_split(meta["dataset"], root, "train", transform=build_transform(meta["dataset"], train=False))
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: args.n].tolist()
    x = torch.stack([train[i][0] for i in idx])
    y = torch.tensor([train[i][1] for i in idx])
    Ts = [int(t) for t in args.T.split(",")]
    print(f"{meta['arch']} ({meta['act']}), {args.n} training images")
    cols = " ".join(f"{'T=' + str(t) + ' rel|err|':>14} {'signed':>7}" for t in Ts)
    print(f"{'layer':<18} {'theta':>6} {'mean a':>7} {cols}")
    convs = {T: convert(model, get_method("qcfs", meta["dataset"]), data=x, T=T) for T in Ts}
    ref = convs[Ts[0]]
    targets = ann_targets(ref.ann, x)
    rates, snn_acc = {}, []
    for T in Ts:  # one layer-major simulation per T; each layer's time-averaged output caught by a hook
        got: dict[str, list[torch.Tensor]] = {}

        def keep(name: str, T: int = T):
            return lambda mod, i, o: got.setdefault(name, []).append(o.reshape(T, -1, *o.shape[1:]).mean(0))

        hooks = [n.register_forward_hook(keep(name)) for name, n in spiking_layers(convs[T].snn) if name in targets]
        try:
            out = simulate(convs[T].snn, x, T, mode="m", chunk_size=128)
        finally:
            for h in hooks:
                h.remove()
        rates[T] = {name: torch.cat(v) for name, v in got.items()}
        snn_acc.append(float(correct_per_step(out, y)[-1]) * 100 / len(y))
    for name, n in spiking_layers(ref.snn):
        if name not in targets:
            continue
        a = targets[name]
        cells = [f"{float((rates[T][name] - a).abs().mean() / a.mean()):>14.3f} "
                 f"{float((rates[T][name] - a).mean() / a.mean()):>+7.3f}" for T in Ts]
        print(f"{name:<18} {float(n.threshold.mean()):>6.2f} {float(a.mean()):>7.3f} " + " ".join(cells))
    ann_acc = float((ref.ann(x).argmax(1) == y).double().mean() * 100)
    snn = ", ".join(f"T={T}: {a:.2f} %" for T, a in zip(Ts, snn_acc))
    print(f"accuracy on these images: ANN {ann_acc:.2f} %, SNN {snn}")


if __name__ == "__main__":
    main()
