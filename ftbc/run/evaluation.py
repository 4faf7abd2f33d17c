"""``ftbc evaluate``: ANN accuracy, then SNN accuracy at every time step for one method.

A T-free method (see ``Method.t_dependent``) is converted and calibrated once
for T_max and one simulation gives the accuracy at every t = 1..T_max; a
T-dependent method is converted once per requested T and reports that T.
Calibration images come from the training split (minus an optional held-out
slice); the test split is only ever evaluated.

Outputs (written atomically): ``accuracy.csv`` (long form, one row per t),
``activity.csv`` (per spiking layer and t: firing rate and synaptic operations
per image, the energy proxy SNN papers report), ``result.json`` (resolved
configuration, timings, calibration log) and ``run.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import operator
import time
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import torch
import yaml
from torch import Tensor, fx, nn

from ftbc._io import write_json, write_text
from ftbc.data.calibration_pool import TRANSFORMS, CalibrationPool
from ftbc.data.eval_sets import load_eval_data, load_test_batches
from ftbc.energy import count_macs
from ftbc.errors import UserError
from ftbc.options import parse_overrides, parse_T
from ftbc.report.naming import RUN_FILES
from ftbc.snn.conversion import convert
from ftbc.snn.method import Method
from ftbc.snn.neuron import IFNeuron
from ftbc.snn.monitors import SpikeMonitor
from ftbc.snn.simulation import BatchCallback, NoData, StepMode, accuracy_per_step

RESULT_FORMAT = 1
# the columns accuracy.csv repeats on each row, before t, T_run, accuracy
ROW_KEYS = ("dataset", "arch", "activation", "method", "seed", "ann_accuracy", "protocol", "calibration_transform")
logger = logging.getLogger(__name__)
PASS_THROUGH = (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Identity)


# -- synaptic operations -----------------------------------------------------------------

def fan_out(module: nn.Module) -> float:
    """Synapses one input event drives in ``module`` (conv: C_out k_h k_w / (s_h s_w groups))."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        sh, sw = module.stride
        return module.out_channels * kh * kw / (sh * sw * module.groups)
    if isinstance(module, nn.Linear):
        return float(module.out_features)
    raise TypeError(type(module).__name__)


def spike_fan_out(snn: fx.GraphModule) -> dict[str, float]:
    """Per spiking layer, the synapses one of its spikes drives in the weighted layers it feeds.

    Follows the graph through pooling, flatten, dropout and residual additions
    (a spike passing a non-overlapping average pool still lands in exactly one
    input of the next layer); stops at weighted layers and at other neurons.
    """
    modules = dict(snn.named_modules())
    result = {}
    for node in snn.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], IFNeuron):
            continue
        total, frontier, seen = 0.0, list(node.users), set()
        while frontier:
            n = frontier.pop()
            if n in seen:
                continue
            seen.add(n)
            m = modules.get(n.target) if n.op == "call_module" else None
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                total += fan_out(m)
            elif isinstance(m, PASS_THROUGH) or (n.op == "call_function" and n.target in (
                    operator.add, torch.add, torch.flatten)) or (n.op == "call_method" and n.target in (
                    "flatten", "view", "reshape")):
                frontier.extend(n.users)
        result[node.target] = total
    return result


# -- the evaluation loop ------------------------------------------------------------------

# A long simulation (the full test set at T = 64 on a CPU takes tens of minutes) logs how far
# it is at most this often, so that ``tail -f`` on a job's log moves.
PROGRESS_EVERY_S = 60.0

def progress_lines(T: int, n_images: int | None) -> BatchCallback:
    """An ``on_batch`` callback logging how far the simulation is, at most every :data:`PROGRESS_EVERY_S`."""
    last_line = time.perf_counter()

    def on_batch(total: int, correct: Tensor) -> None:
        nonlocal last_line
        if time.perf_counter() - last_line >= PROGRESS_EVERY_S:
            logger.info("T=%d: %d%s test images simulated, accuracy at t=%d so far %.2f %%", T, total,
                        f"/{n_images}" if n_images else "", T, 100.0 * float(correct[T - 1]) / total)
            last_line = time.perf_counter()
    return on_batch


def activity_table(snn: fx.GraphModule, monitor: SpikeMonitor, T: int, images: int) -> pd.DataFrame:
    """Per spiking layer and t = 1..T: firing rate, spikes and synaptic operations per image."""
    fan = spike_fan_out(snn)
    rows = []
    for name in monitor.layers:
        counts = monitor.counts(name, T)
        for t in range(T):
            spikes = float(counts[t]) / images
            rows.append(dict(layer=name, t=t + 1, firing_rate=spikes / monitor.sizes.get(name, 1),
                             spikes_per_image=spikes, synops_per_image=spikes * fan.get(name, 0.0)))
    return pd.DataFrame(rows)


@torch.no_grad()
def evaluate_snn(snn: fx.GraphModule, batches: Iterable[tuple[Tensor, Tensor]], T: int, *,
                 device: torch.device | str = "cpu", mode: StepMode = "auto",
                 progress: bool = False) -> tuple[Tensor, pd.DataFrame]:
    """Accuracy (%) at t = 1..T and per-layer activity from one T-step simulation."""
    images = 0

    def on_batch(total: int, correct: Tensor) -> None:
        nonlocal images
        images = total
        log(total, correct)

    log = progress_lines(T, getattr(batches, "n_images", None))
    try:
        with SpikeMonitor(snn) as monitor:
            acc = accuracy_per_step(snn, batches, T, device=device, mode=mode, progress=progress, on_batch=on_batch)
    except NoData:
        raise UserError("no test images to evaluate") from None
    return acc, activity_table(snn, monitor, T, images)


def evaluate_at(snn: fx.GraphModule, method: str, t_dependent: bool, T: int, Ts: list[int],
                test_batches: Iterable[tuple[Tensor, Tensor]], *, device: str = "cpu", mode: StepMode = "auto",
                progress: bool = False, prepared_s: float | None = None,
                ) -> tuple[list[dict[str, Any]], pd.DataFrame, float]:
    """Simulate ``snn`` (calibrated for ``T``) on the test batches: the accuracy rows it reports
    (every requested t <= T for a T-free method, only T otherwise), its activity, and the seconds taken."""
    t1 = time.perf_counter()
    acc, activity = evaluate_snn(snn, test_batches, T, device=device, mode=mode, progress=progress)
    sim_s = time.perf_counter() - t1
    steps = [T] if t_dependent else range(1, T + 1)  # a T-free run reports every t on the way
    rows = [dict(t=t, T_run=T, accuracy=float(acc[t - 1])) for t in steps]
    prepared = f"converted and calibrated in {prepared_s:.1f} s, " if prepared_s is not None else ""
    logger.info("%s T=%d: %ssimulated in %.1f s; accuracy %s", method, T, prepared, sim_s,
                ", ".join(f"t={t}: {float(acc[t - 1]):.2f} %" for t in steps if t in Ts))
    return rows, activity.assign(T_run=T), sim_s


def run(
    *,
    model: nn.Module,
    meta: dict[str, Any],
    method: Method,
    Ts: list[int],
    calib_data: Any,
    test_batches: list[tuple[Tensor, Tensor]],
    holdout: tuple[Tensor, Tensor] | None = None,
    ann_accuracy: float,
    seed: int = 0,
    device: str = "cpu",
    mode: StepMode = "auto",
    progress: bool = False,
    save_snn: str | Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Convert, calibrate and evaluate ``model`` with ``method``; returns (accuracy, activity, details).

    ``save_snn``: a folder to write each calibrated SNN to (:mod:`ftbc.snn.snn_file`).
    """
    if meta.get("act") != method.activation:
        raise UserError(f"method {method.name} needs a {method.activation!r} ANN, but the checkpoint is "
                        f"{meta.get('act')!r} ({meta.get('arch')}); train one with --act {method.activation}")
    runs = sorted(set(Ts)) if method.t_dependent else [max(Ts)]
    calib_data = calib_data.for_method(method) if isinstance(calib_data, CalibrationPool) else calib_data
    acc_rows, act_frames, details = [], [], {"runs": []}
    if isinstance(calib_data, CalibrationPool):
        details["calibration_data"] = calib_data.describe()
    transform = calib_data.transform_name if isinstance(calib_data, CalibrationPool) else "given"
    base = dict(dataset=meta.get("dataset"), arch=meta.get("arch"), activation=method.activation,
                method=method.name, seed=seed, ann_accuracy=ann_accuracy,
                protocol=protocol(method, holdout is not None), calibration_transform=transform)
    macs = None
    for T in runs:
        t0 = time.perf_counter()
        try:
            conv = convert(model, method, data=calib_data, T=T, seed=seed, device=device, holdout=holdout,
                           progress=progress)
        except ValueError as e:  # a setting out of range (ftbc.alpha=-1, ...), found where it is used
            raise UserError(f"method {method.name}: {' '.join(str(e).split())}") from None
        t1 = time.perf_counter()
        if macs is None:  # per image, from one test image through the folded ANN
            x0 = next(iter(test_batches))[0][:1].to(device)
            macs = count_macs(conv.ann, x0)
            details["macs"] = {"ann": macs.ann, "input_layer": macs.input_layer}
        if save_snn is not None:
            from ftbc.snn.snn_file import save_snn as write_snn, snn_file_name

            write_snn(Path(save_snn) / snn_file_name(T, method.t_dependent), conv.snn, ann_meta=meta,
                      method=method_record(method), T=T, row=base, calibration_data=details.get("calibration_data"),
                      macs=details["macs"], log=conv.log, test_images=getattr(test_batches, "n_images", None))
        rows, activity, sim_s = evaluate_at(conv.snn, method.name, method.t_dependent, T, Ts, test_batches,
                                            device=device, mode=mode, progress=progress, prepared_s=t1 - t0)
        acc_rows += rows
        act_frames.append(activity)
        details["runs"].append(dict(T=T, convert_calibrate_s=t1 - t0, simulate_s=sim_s, timings=conv.timings,
                                    log=conv.log))
    accuracy = pd.DataFrame([{**base, **r} for r in acc_rows])
    activity = pd.concat(act_frames, ignore_index=True).assign(method=method.name)
    return accuracy, activity, details


def protocol(method: Method, has_holdout: bool) -> str:
    """How the reported number was chosen: never on the test set."""
    st = method.stage("ftbc")
    if st is not None and st.params.get("select") == "holdout":
        return "ftbc: best iteration on a held-out training slice"
    return "last iteration, calibrated on training images" if method.stages else "no calibration"


# -- CLI --------------------------------------------------------------------------------


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Convert, calibrate and evaluate an SNN at every time step.",
                                add_help=add_help)
    p.add_argument("--checkpoint", help="model.safetensors (or its run folder) from ftbc train (required unless --snn)")
    p.add_argument("--method", help="a registered method (ftbc methods; required unless --snn)")
    p.add_argument("--T", default=None,
                   help="time steps to report: '1,2,4' or '1-32' (default 1,2,4,8,16,32; with --snn, the saved T)")
    p.add_argument("--save-snn", action="store_true",
                   help="also write each calibrated SNN to --out (snn.safetensors, or snn-T<T>.safetensors per T)")
    p.add_argument("--snn", metavar="DIR_OR_FILE",
                   help="evaluate SNNs saved by --save-snn again, without converting or calibrating")
    p.add_argument("--data-root", default="auto",
                   help="dataset folder (ImageFolder tree or torchvision CIFAR) or .tar.gz; 'auto' (default) "
                        "finds the CIFAR-10 copy (docs/data.md)")
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR into --data-root")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="calibration seed")
    p.add_argument("--calibration-transform", choices=TRANSFORMS, default="train",
                   help="calibration images with the release's training augmentation (train, default) "
                        "or the test-time transform (test)")
    p.add_argument("--test-seed", type=int, default=0,
                   help="seed of the --n-test subset (keep it fixed across a grid; default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a method setting, e.g. ftbc.iterations=5 or channelwise=true (on top of --budget)")
    p.add_argument("--budget", default=None, metavar="NAME",
                   help="a named calibration budget of baselines/budgets.py, e.g. cpu_quick (default: release, "
                        "the method's registered settings); recorded in result.json")
    p.add_argument("--holdout", type=int, default=0, help="training images held out for logging/selection")
    p.add_argument("--n-test", type=int, default=0, help="evaluate on a fixed subset of this many test images")
    p.add_argument("--batch-size", type=int, default=256, help="test images per batch")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding test images (default 0)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--mode", choices=("auto", "s", "m"), default="auto", help="execution order")
    p.add_argument("--quiet", action="store_true", help="no progress bars (the progress lines stay)")
    return p


def write_outputs(out: Path, accuracy: pd.DataFrame, activity: pd.DataFrame, result: dict[str, Any]) -> None:
    write_text(out / RUN_FILES["accuracy"], accuracy.to_csv(index=False))
    write_text(out / RUN_FILES["activity"], activity.to_csv(index=False))
    write_json(out / RUN_FILES["result"], {"format": RESULT_FORMAT, **result})


def save_evaluation(out: Path, accuracy: pd.DataFrame, activity: pd.DataFrame, details: dict[str, Any], *,
                    options: dict[str, Any], method: Method, budget: str | None, checkpoint: dict[str, Any],
                    ann_accuracy: float) -> None:
    """One evaluation folder as ``ftbc evaluate`` writes it, whichever driver ran :func:`run`: the tables,
    ``result.json`` (the method as resolved, the budget it was cut to, the plugins) and ``run.yaml``
    (the driver's options)."""
    from baselines import plugin_modules
    from baselines.budgets import RELEASE

    write_outputs(out, accuracy, activity, dict(
        config=options, method=method_record(method, budget=budget or RELEASE), checkpoint=checkpoint,
        ann_accuracy=ann_accuracy, plugins=plugin_modules(), **details))
    write_text(out / "run.yaml", yaml.safe_dump(options, sort_keys=False))


def main(args: argparse.Namespace) -> int:
    from baselines.budgets import resolve_method
    from ftbc.train.loop import evaluate
    from ftbc.models.checkpoint import load_model

    if args.snn:
        return main_saved(args)
    if not args.checkpoint or not args.method:
        raise UserError("give --checkpoint and --method (or --snn DIR to evaluate a saved SNN)")
    Ts = parse_T(args.T or "1,2,4,8,16,32")
    model, meta = load_model(args.checkpoint, device=args.device)
    try:
        method = resolve_method(args.method, meta.get("dataset"), args.budget, parse_overrides(args.overrides))
    except ValueError as e:
        raise UserError(str(e)) from None
    progress = not args.quiet
    from ftbc.data.prepare import resolve_data_root

    root = resolve_data_root(meta["dataset"], args.data_root, download=args.download)
    calib, held, test_batches = load_eval_data(meta["dataset"], root, download=args.download,
                                               holdout=args.holdout, n_test=args.n_test, batch_size=args.batch_size,
                                               test_seed=args.test_seed,
                                               calibration_transform=args.calibration_transform,
                                               num_workers=args.workers)
    ann_acc = evaluate(model, test_batches, args.device)
    accuracy, activity, details = run(model=model, meta=meta, method=method, Ts=Ts, calib_data=calib,
                                      test_batches=test_batches, holdout=held, ann_accuracy=ann_acc,
                                      seed=args.seed, device=args.device, mode=args.mode, progress=progress,
                                      save_snn=args.out if args.save_snn else None)
    save_evaluation(Path(args.out), accuracy, activity, details, options=vars(args), method=method,
                    budget=args.budget, checkpoint=meta, ann_accuracy=ann_acc)
    print(f"ANN accuracy {ann_acc:.2f} %  ({meta['arch']}, {meta['act']}, {meta['dataset']})")
    print(accuracy[["method", "t", "accuracy"]].to_string(index=False))
    return 0


def main_saved(args: argparse.Namespace) -> int:
    """``ftbc evaluate --snn``: the saved SNNs simulated on the test set; rows as when they were saved."""
    from baselines import plugin_modules
    from ftbc.data.prepare import resolve_data_root
    from ftbc.snn.snn_file import load_snn, snn_files

    ignored = [f for f in ("checkpoint", "method", "overrides", "budget", "holdout", "save_snn") if getattr(args, f)]
    if ignored:
        raise UserError(f"--snn evaluates a saved, calibrated SNN; drop --{', --'.join(f.replace('_', '-') for f in ignored)}")
    files = snn_files(args.snn)
    saved = [load_snn(f, device=args.device) for f in files]
    metas = [m for _, m in saved]
    ann, method = metas[0]["ann"], metas[0]["method"]
    t_dependent = bool(method["t_dependent"])
    Ts = parse_T(args.T) if args.T else sorted(m["T"] for m in metas)
    if t_dependent:
        missing = sorted(set(Ts) - {m["T"] for m in metas})
        if missing:
            raise UserError(f"{method['name']} depends on T and was saved for T = {sorted(m['T'] for m in metas)}, "
                            f"not {missing}")
    elif max(Ts) > metas[0]["T"]:
        raise UserError(f"this SNN was calibrated for T = {metas[0]['T']}; evaluate it at T <= {metas[0]['T']}")
    root = resolve_data_root(ann["dataset"], args.data_root, download=args.download)
    test_batches = load_test_batches(ann["dataset"], root, download=args.download, n_test=args.n_test,
                                     batch_size=args.batch_size, test_seed=args.test_seed, num_workers=args.workers)
    acc_rows, frames, runs = [], [], []
    for snn, meta in saved:
        T = meta["T"] if t_dependent else max(Ts)
        if t_dependent and T not in Ts:
            continue
        rows, activity, sim_s = evaluate_at(snn, method["name"], t_dependent, T, Ts, test_batches,
                                            device=args.device, mode=args.mode, progress=not args.quiet)
        acc_rows += [{**{k: meta["row"][k] for k in ROW_KEYS}, **r} for r in rows]
        frames.append(activity)
        runs.append(dict(T=T, simulate_s=sim_s, saved_snn=str(files[0].parent), log=meta.get("log")))
    accuracy = pd.DataFrame(acc_rows)
    activity = pd.concat(frames, ignore_index=True).assign(method=method["name"])
    out = Path(args.out)
    write_outputs(out, accuracy, activity, dict(
        config=vars(args), method=method, checkpoint=ann, ann_accuracy=metas[0]["row"]["ann_accuracy"],
        ann_accuracy_images=metas[0].get("test_images"), plugins=plugin_modules(), runs=runs,
        macs=metas[0].get("macs"), calibration_data=metas[0].get("calibration_data")))
    write_text(out / "run.yaml", yaml.safe_dump(vars(args), sort_keys=False))
    print(f"saved SNN: {method['name']} on {ann['arch']} ({ann['act']}, {ann['dataset']}); ANN accuracy "
          f"{metas[0]['row']['ann_accuracy']:.2f} % when saved")
    print(accuracy[["method", "t", "accuracy"]].to_string(index=False))
    return 0


def method_record(method: Method, budget: str | None = None) -> dict[str, Any]:
    """The resolved method as ``result.json`` keeps it; ``rank`` is its place in the registry
    (the tables' row order), ``label`` / ``family`` / ``calibration`` how the tables name it,
    ``budget`` the named budget (``baselines/budgets.py``) it was cut to, when given."""
    from baselines import list_methods

    d = {k: v for k, v in method.__dict__.items() if k not in ("stages", "dataset_overrides")}
    d["stages"] = [{"name": s.name, **dict(s.params)} for s in method.stages]
    d["t_dependent"] = method.t_dependent
    d["calibration"] = method.calibration
    d["label"] = method.label or method.name
    d["family"] = method.family or method.name
    names = list_methods()
    d["rank"] = names.index(method.name) if method.name in names else len(names)
    if budget is not None:
        d["budget"] = budget
    return d
