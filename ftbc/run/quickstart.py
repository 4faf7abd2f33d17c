"""``ftbc quickstart``: the whole pipeline on CIFAR-10 in minutes on a laptop CPU.

Trains the small VGG (``vgg_small``, recipe ``quick_cpu``, 4 epochs) once, converts
it with each chosen method, calibrates on training images, evaluates a fixed
1,000-image subset of the test set (``--n-test 0``: all of it) at every T and
prints the accuracy-per-T table. Each method's files
land in ``OUT/<method>/`` exactly as ``ftbc evaluate`` writes them, and the
table in ``OUT/table.csv`` / ``OUT/table.md``. Rerunning reuses the trained
ANN when its checkpoint is intact.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ftbc.errors import CheckpointError, UserError
from ftbc.snn.method import Method

DEFAULT_METHODS = "maxnorm,opi,ftbc_relu"
# CPU budget: the named budget ``cpu_quick`` of baselines/budgets.py (docs/methods.md, "Budgets"):
# FTBC 4 iterations x 2 batches where the release runs more than 4,096 images per T, SNNC's MSE
# search on 16,384 positions, RTS's maxima from 40 batches. Recorded in each result.json.
BUDGET = "cpu_quick"
CPU_FTBC_ITERATIONS = 4  # cpu_quick's FTBC iterations; --ftbc-iterations replaces them
# The default run fits about 10 minutes on 2 CPU cores: the recipe's 5 epochs cut to 4
# and 1,000 test images (the full test set and recipe are one flag away).
QUICK_EPOCHS = 4
QUICK_N_TEST = 1000


def quick_method(name: str, ftbc_iterations: int = CPU_FTBC_ITERATIONS) -> Method:
    """The registered method on CIFAR-10 cut to the quickstart's budget, as ``ftbc evaluate --budget cpu_quick``
    gives it; where the budget cuts FTBC's iterations, ``ftbc_iterations`` of them (``--set ftbc.iterations``)."""
    from baselines.budgets import budget_overrides, resolve_method

    cuts_iterations = "ftbc.iterations" in budget_overrides(BUDGET, name)
    return resolve_method(name, "cifar10", BUDGET, {"ftbc.iterations": ftbc_iterations} if cuts_iterations else None)


def quick_methods(names: list[str], ftbc_iterations: int = CPU_FTBC_ITERATIONS) -> list[Method]:
    """The quickstart's methods on CIFAR-10, cut to its budget."""
    return [quick_method(m, ftbc_iterations) for m in names]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=add_help)
    p.add_argument("--data-root", default="auto",
                   help="CIFAR-10: an ImageFolder copy, its .tar.gz or a torchvision folder; 'auto' (default) "
                        "finds the copy (docs/data.md)")
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10")
    p.add_argument("--out", default="runs/quickstart", help="output folder")
    p.add_argument("--arch", default="vgg_small", help="a model of ftbc.models")
    p.add_argument("--recipe", default="quick_cpu", help="a training recipe of ftbc/recipes or a YAML file")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"training epochs (default: {QUICK_EPOCHS} with quick_cpu, whose own 5 are cut to fit "
                        "about 10 minutes; any other recipe's own)")
    p.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated registered methods, or 'all'")
    p.add_argument("--T", default="1,2,4,8,16,32", help="time steps to report")
    p.add_argument("--ftbc-iterations", type=int, default=CPU_FTBC_ITERATIONS,
                   help="FTBC iterations where the release's budget is too large for a CPU (it uses 100)")
    p.add_argument("--n-test", type=int, default=QUICK_N_TEST,
                   help=f"evaluate on a fixed subset of this many test images (0: all 10,000)")
    p.add_argument("--seed", type=int, default=0, help="training and calibration seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bars (the progress lines stay)")
    return p


def training_epochs(args: argparse.Namespace) -> int | None:
    """The epochs to train: ``--epochs``, else the quickstart's cut for quick_cpu, else the recipe's (None)."""
    if args.epochs is not None:
        return args.epochs
    return QUICK_EPOCHS if args.recipe == "quick_cpu" else None


def check_reusable(meta: dict, folder: Path, args: argparse.Namespace, epochs: int | None) -> None:
    """Refuse to reuse an ANN trained otherwise than this run asks (another arch, seed or epochs)."""
    want = {"arch": args.arch, "seed": args.seed, **({"epochs": epochs} if epochs is not None else {})}
    differ = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k) != v}
    if differ:
        got = ", ".join(f"{k}={old}" for k, (old, _) in differ.items())
        asked = ", ".join(f"{k}={new}" for k, (_, new) in differ.items())
        raise UserError(f"{folder} holds an ANN trained with {got}, not {asked}: give another --out, "
                        f"or delete {folder} to train it again")


def ann_models(args: argparse.Namespace, acts: list[str], epochs: int | None) -> dict[str, tuple]:
    """Per activation: (model, checkpoint record) of the ANN under ``OUT/ann_<act>``, trained first
    unless an intact one trained as this run asks is there."""
    from ftbc.models.checkpoint import load_model, resolve_act_kwargs
    from ftbc.train.training import train

    models = {}
    for act in acts:
        ckpt = Path(args.out) / f"ann_{act}" / "model.safetensors"
        try:
            models[act] = load_model(ckpt, device=args.device)
            check_reusable(models[act][1], ckpt.parent, args, epochs)
            print(f"reusing {ckpt}")
        except CheckpointError:
            print(f"training {args.arch} ({act}) on CIFAR-10 -> {ckpt.parent}")
            train(dataset="cifar10", data_root=args.data_root, arch=args.arch, act=act,
                  act_kwargs=resolve_act_kwargs(act, "cifar10"), recipe=args.recipe, seed=args.seed,
                  out=ckpt.parent, device=args.device, epochs=epochs, download=args.download, progress=not args.quiet)
            models[act] = load_model(ckpt, device=args.device)
    return models


def main(args: argparse.Namespace) -> int:
    from baselines import list_methods
    from ftbc.data.eval_sets import load_eval_data
    from ftbc.data.prepare import resolve_data_root
    from ftbc.options import parse_T
    from ftbc.report.tables import write_method_table
    from ftbc.run.evaluation import run, save_evaluation
    from ftbc.train.loop import evaluate

    out = Path(args.out)
    Ts = parse_T(args.T)
    args.data_root = str(resolve_data_root("cifar10", args.data_root, download=args.download))
    names = list_methods() if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    methods = quick_methods(names, args.ftbc_iterations)
    models = ann_models(args, sorted({m.activation for m in methods}), training_epochs(args))
    calib, _, test_batches = load_eval_data("cifar10", args.data_root, download=args.download, holdout=0,
                                            n_test=args.n_test, batch_size=256)
    ann_acc = {act: evaluate(model, test_batches, args.device) for act, (model, _) in models.items()}
    frames = []
    for method in methods:
        act = method.activation
        model, meta = models[act]
        print(f"{method.name}: converting and evaluating at T = {Ts[0]}..{Ts[-1]}")
        accuracy, activity, details = run(model=model, meta=meta, method=method, Ts=Ts, calib_data=calib,
                                          test_batches=test_batches, ann_accuracy=ann_acc[act], seed=args.seed,
                                          device=args.device, progress=not args.quiet)
        save_evaluation(out / method.name, accuracy, activity, details, options=vars(args), method=method,
                        budget=BUDGET, checkpoint=meta, ann_accuracy=ann_acc[act])
        frames.append(accuracy[accuracy["t"].isin(Ts)])
    table = write_method_table(out, pd.concat(frames, ignore_index=True))
    print(f"\nSNN top-1 accuracy (%) on {test_batches.n_images:,} CIFAR-10 test images at each T "
          f"({out / 'table.csv'}):")
    print(table.round(2).to_string())
    return 0
