"""``ftbc quickstart``'s defaults and its reuse of a trained ANN (the run itself is timed in the README)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftbc.errors import UserError
from ftbc.run.quickstart import QUICK_EPOCHS, QUICK_N_TEST, check_reusable, get_args_parser, training_epochs


def test_the_default_run_is_the_one_the_readme_times():
    args = get_args_parser().parse_args([])
    assert (args.arch, args.recipe, args.methods, args.T) == ("vgg_small", "quick_cpu", "maxnorm,opi,ftbc_relu",
                                                              "1,2,4,8,16,32")
    assert (training_epochs(args), args.n_test) == (4, 1000) == (QUICK_EPOCHS, QUICK_N_TEST)


def test_epochs_follow_the_flag_then_the_recipe():
    parse = get_args_parser().parse_args
    assert training_epochs(parse(["--epochs", "5"])) == 5
    assert training_epochs(parse(["--recipe", "qcfs_cifar10"])) is None  # that recipe's own 300


def test_an_ann_trained_otherwise_is_not_reused_silently():
    args = get_args_parser().parse_args(["--epochs", "5"])
    meta = {"arch": "vgg_small", "seed": 0, "epochs": 4}
    with pytest.raises(UserError, match=r"epochs=4, not epochs=5"):
        check_reusable(meta, Path("runs/quickstart/ann_relu"), args, training_epochs(args))
    check_reusable({**meta, "epochs": 5}, Path("runs/quickstart/ann_relu"), args, 5)
    with pytest.raises(UserError, match=r"seed=1, not seed=0"):
        check_reusable({**meta, "epochs": 5, "seed": 1}, Path("x"), args, 5)
