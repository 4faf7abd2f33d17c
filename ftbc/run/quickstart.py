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

from ftbc._io import write_text
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


def cpu_budget(method: Method, ftbc_iterations: int = CPU_FTBC_ITERATIONS) -> Method:
    """``method`` (as registered, for its dataset) cut to the quickstart's budget; where the budget
    cuts FTBC's iterations, ``ftbc_iterations`` of them."""
    from baselines.budgets import apply_overrides, budget_overrides

    changes = budget_overrides(BUDGET, method.name)
    if "ftbc.iterations" in changes:
        changes["ftbc.iterations"] = ftbc_iterations
    return apply_overrides(method, changes)


def quick_methods(names: list[str], ftbc_iterations: int = CPU_FTBC_ITERATIONS) -> list[Method]:
    """The quickstart's methods on CIFAR-10, cut to its budget."""
    from baselines import get_method

    return [cpu_budget(get_method(m, "cifar10"), ftbc_iterations) for m in names]


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


def pivot(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Rows: method (with its ANN accuracy); columns: T."""
    acc = accuracy.copy()
    acc["row"] = acc["method"] + " (ANN " + acc["ann_accuracy"].map("{:.2f}".format) + ")"
    order = list(dict.fromkeys(acc["row"]))
    return acc.pivot_table(index="row", columns="t", values="accuracy").reindex(order)


def main(args: argparse.Namespace) -> int:
    from baselines import list_methods
    from ftbc.data.eval_sets import load_eval_data
    from ftbc.run.evaluation import method_record, run, write_outputs
    from ftbc.options import parse_T
    from ftbc.train.loop import evaluate
    from ftbc.models.checkpoint import load_model, resolve_act_kwargs
    from ftbc.train.training import train

    from ftbc.data.prepare import resolve_data_root

    out = Path(args.out)
    Ts = parse_T(args.T)
    args.data_root = str(resolve_data_root("cifar10", args.data_root, download=args.download))
    names = list_methods() if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    methods = quick_methods(names, args.ftbc_iterations)
    progress = not args.quiet
    needs = sorted({m.activation for m in methods})
    epochs = training_epochs(args)
    models = {}
    for act in needs:
        ckpt = out / f"ann_{act}" / "model.safetensors"
        try:
            models[act] = load_model(ckpt, device=args.device)
            check_reusable(models[act][1], ckpt.parent, args, epochs)
            print(f"reusing {ckpt}")
        except CheckpointError:
            print(f"training {args.arch} ({act}) on CIFAR-10 -> {ckpt.parent}")
            train(dataset="cifar10", data_root=args.data_root, arch=args.arch, act=act,
                  act_kwargs=resolve_act_kwargs(act, "cifar10"), recipe=args.recipe,
                  seed=args.seed, out=ckpt.parent, device=args.device, epochs=epochs,
                  download=args.download, progress=progress)
            models[act] = load_model(ckpt, device=args.device)
    calib, held, test_batches = load_eval_data("cifar10", args.data_root, download=args.download, holdout=0,
                                               n_test=args.n_test, batch_size=256)
    frames = []
    for method in methods:
        model, meta = models[method.activation]
        ann_acc = evaluate(model, test_batches, args.device)
        print(f"{method.name}: converting and evaluating at T = {Ts[0]}..{Ts[-1]}")
        accuracy, activity, details = run(model=model, meta=meta, method=method, Ts=Ts, calib_data=calib,
                                          test_batches=test_batches, ann_accuracy=ann_acc, seed=args.seed,
                                          device=args.device, progress=progress)
        write_outputs(out / method.name, accuracy, activity,
                      dict(config=vars(args), method=method_record(method, budget=BUDGET), checkpoint=meta,
                           ann_accuracy=ann_acc, **details))
        frames.append(accuracy[accuracy["t"].isin(Ts)])
    table = pivot(pd.concat(frames, ignore_index=True))
    write_text(out / "table.csv", table.to_csv())
    md = table.map(lambda v: f"{v:.2f}").to_markdown() if _has_tabulate() else table.round(2).to_string()
    write_text(out / "table.md", md + "\n")
    print(f"\nSNN top-1 accuracy (%) on {test_batches.n_images:,} CIFAR-10 test images at each T "
          f"({out / 'table.csv'}):")
    print(table.round(2).to_string())
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True

