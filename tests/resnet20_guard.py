"""The guard of the committed ResNet-20 results (``results/cifar10-resnet20/``).

A few of the table's methods, with their release settings, on the committed ANNs,
evaluated on a fixed slice of the CIFAR-10 test set at small T: cheap enough for
every CI run, and exactly the code path of ``ftbc evaluate`` (same data loading,
conversion, calibration and simulation). ``guard.csv`` holds the numbers the
committed code gave on that slice; ``tests/test_resnet20_guard.py`` recomputes them.

Regenerate the file (after a change that is meant to move these numbers) with::

    python3 tests/resnet20_guard.py [DATA_ROOT]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "results" / "cifar10-resnet20"
GUARD_CSV = RESULTS / "guard.csv"
N_TEST = 256       # test images in the slice ...
TEST_SEED = 0      # ... drawn as every grid draws its subset (load_test_batches)
CALIBRATION_SEED = 0
# (ANN folder under results/cifar10-resnet20/ann, method, T). T-free methods report every t <= T.
CASES: list[tuple[str, str, int]] = [
    ("qcfs_l4", "qcfs", 8),
    ("qcfs_l4", "ftbc_qcfs_quantile", 4),
    ("relu", "snnc_light", 4),
    ("relu", "ftbc_relu_quantile", 4),
]
COLUMNS = ["ann", "method", "T_run", "t", "ann_accuracy", "accuracy"]


def checkpoint(ann: str) -> Path:
    return RESULTS / "ann" / ann / "model.safetensors"


def compute(data_root: str | Path, cases: list[tuple[str, str, int]] = CASES) -> pd.DataFrame:
    """The guard rows for ``cases``: ANN accuracy on the slice, and SNN accuracy per t."""
    from baselines import get_method
    from ftbc.data.eval_sets import load_eval_data
    from ftbc.run.evaluation import run
    from ftbc.train.loop import evaluate
    from ftbc.models.checkpoint import load_model

    calib, _, test = load_eval_data("cifar10", str(data_root), download=False, holdout=0, n_test=N_TEST,
                                    batch_size=N_TEST, test_seed=TEST_SEED, calibration_transform="train")
    frames = []
    for ann, name, T in cases:
        model, meta = load_model(checkpoint(ann))
        ann_acc = evaluate(model, test, "cpu")
        method = get_method(name, "cifar10")
        accuracy, _, _ = run(model=model, meta=meta, method=method, Ts=[T], calib_data=calib, test_batches=test,
                             ann_accuracy=ann_acc, seed=CALIBRATION_SEED)
        frames.append(accuracy.assign(ann=ann, T_run=T)[COLUMNS])
    return pd.concat(frames, ignore_index=True)


if __name__ == "__main__":
    from ftbc.data.prepare import resolve_data_root

    root = resolve_data_root("cifar10", sys.argv[1] if len(sys.argv) > 1 else "auto", download=False)
    rows = compute(root)
    rows.to_csv(GUARD_CSV, index=False, float_format="%.6f")
    print(rows.to_string(index=False))
    print(f"wrote {GUARD_CSV}")
