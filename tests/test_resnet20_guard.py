"""The committed ResNet-20 ANNs and their table still give the committed numbers.

Recomputes ``results/cifar10-resnet20/guard.csv`` (a fixed 256-image slice of the
test set, small T; see ``resnet20_guard.py``) and compares. Tolerance: 2 images of
the 256 (0.78 points) per number, for float summation order across thread counts
and CPUs; any change to conversion, calibration, data or weights that moves a
number by more fails.
"""

from __future__ import annotations

import pandas as pd
import pytest
from safetensors.torch import load_file

from resnet20_guard import CASES, GUARD_CSV, N_TEST, checkpoint, compute

TOLERANCE_IMAGES = 2


def test_the_guard_covers_what_it_says():
    committed = pd.read_csv(GUARD_CSV)
    assert sorted(set(map(tuple, committed[["ann", "method", "T_run"]].values.tolist()))) == sorted(
        (a, m, T) for a, m, T in CASES)
    for ann in {a for a, _, _ in CASES}:
        assert load_file(checkpoint(ann)), ann  # the committed weights are there (not an LFS pointer)


@pytest.mark.slow
def test_committed_resnet20_numbers_reproduce_on_a_test_slice(cifar10_root):
    committed = pd.read_csv(GUARD_CSV)
    now = compute(cifar10_root)
    keys = ["ann", "method", "T_run", "t"]
    merged = committed.merge(now, on=keys, suffixes=("_committed", "_now"), how="outer", indicator=True)
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"][keys]
    for col in ("ann_accuracy", "accuracy"):  # in whole images: the file's percentages are rounded
        images = ((merged[f"{col}_now"] - merged[f"{col}_committed"]).abs() * N_TEST / 100.0).round()
        bad = merged[images > TOLERANCE_IMAGES]
        assert bad.empty, f"{col} moved by more than {TOLERANCE_IMAGES} images:\n{bad.to_string()}"
