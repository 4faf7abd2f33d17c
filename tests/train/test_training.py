"""Tests of ftbc.train.training and ftbc.train.recipes on a tiny synthetic CIFAR-10 tree (seconds on 2 cores)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from ftbc import cli
from ftbc.data.catalog import CIFAR_CLASSES, dataset_info
from ftbc.data.draws import holdout_split
from ftbc.data.loaders import make_loader
from ftbc.data.splits import load_split
from ftbc.data.transforms import build_transform
from ftbc._io import save_checkpoint, sha256_file
from ftbc.errors import CheckpointError, UserError
from ftbc.train.recipes import RecipeError, list_recipes, load_recipe
from ftbc.data.batches import TensorBatches, random_crop_flip
from ftbc.train.training import apply_overrides, train
from ftbc.train.loop import create_optimizer, create_scheduler, evaluate
from ftbc.models.checkpoint import load_model

CLASSES = CIFAR_CLASSES["cifar10"]


def _class_images(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 32x32 images: class k is a bright bar at rows 3k..3k+2 on a noisy background."""
    rng = np.random.default_rng(seed)
    n = n_per_class * len(CLASSES)
    labels = np.repeat(np.arange(len(CLASSES)), n_per_class)
    images = rng.integers(0, 100, size=(n, 32, 32, 3), dtype=np.uint8)
    for i, k in enumerate(labels):
        images[i, 3 * k:3 * k + 3, :, k % 3] = 250
    return images, labels


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A CIFAR-10 ImageFolder tree of PNGs (lossless): 20 train and 10 test images per class."""
    root = tmp_path_factory.mktemp("cifar") / "cifar10-jpeg"
    for split, n, seed in (("train", 20, 0), ("test", 10, 1)):
        images, labels = _class_images(n, seed)
        for i, (img, k) in enumerate(zip(images, labels)):
            folder = root / split / CLASSES[k]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(autouse=True)
def data_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FTBC_CACHE", str(tmp_path / "cache"))


def _recipe(**kw):
    return apply_overrides(load_recipe("quick_cpu"), **{"epochs": 1, "batch_size": 32, **kw})


def _train(data_root, out, *, act="relu", act_kwargs=None, seed=0, **kw):
    return train(dataset="cifar10", data_root=data_root, arch="vgg_small", act=act, act_kwargs=act_kwargs,
                 recipe=kw.pop("recipe", _recipe()), seed=seed, out=out, progress=False, **kw)


# ---------------------------------------------------------------- recipes


def test_every_shipped_recipe_loads():
    names = list_recipes()
    assert {"quick_cpu", "snnc_cifar", "qcfs_cifar10", "qcfs_cifar100", "rts_cifar", "imagenet"} <= set(names)
    for name in names:
        r = load_recipe(name)
        assert r["name"] == name and r["epochs"] >= 1 and r["lr"] > 0
    assert load_recipe("rts_cifar")["milestones"] == [100, 140]
    assert load_recipe("qcfs_cifar100")["lr"] == 0.05
    assert load_recipe("qcfs_cifar10")["augmentation"] == {"crop": True, "flip": True, "autoaugment": True, "cutout": 16}


def test_unknown_recipe_lists_the_names():
    with pytest.raises(UserError, match="quick_cpu"):
        load_recipe("no_such_recipe")


def test_recipe_file_is_validated(tmp_path):
    raw = yaml.safe_load(open(load_recipe("quick_cpu")["path"]))
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**raw, "weight_decay": "5e-4"}))  # YAML 1.1 reads 5e-4 as a string
    assert load_recipe(str(path))["weight_decay"] == 5e-4
    path.write_text(yaml.safe_dump({**raw, "learning_rate": 0.1}))
    with pytest.raises(RecipeError, match="unknown learning_rate"):
        load_recipe(str(path))
    path.write_text(yaml.safe_dump({**raw, "schedule": "step", "milestones": []}))
    with pytest.raises(RecipeError, match="milestones"):
        load_recipe(str(path))


def test_release_recipes_decay_every_parameter_lambda_included():
    """The releases' SGD(model.parameters(), weight_decay=wd): QCFS's lambda and BN shrink too."""
    from ftbc.models import QCFS

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), QCFS(L=4, init_lambda=8.0))
    for name in ("qcfs_cifar10", "qcfs_cifar10_cpu", "qcfs_cifar100", "snnc_cifar", "rts_cifar"):
        opt = create_optimizer(model, load_recipe(name))
        assert [g["weight_decay"] for g in opt.param_groups] == [5e-4], name
    opt = create_optimizer(model, load_recipe("quick_cpu"))  # the suite's own recipe keeps timm's rule
    decays = {p.ndim > 1: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays == {True: 5e-4, False: 0.0}
    lam = model[2].lam
    opt = create_optimizer(model, {**load_recipe("qcfs_cifar10"), "lr": 1.0})
    lam.grad = torch.zeros(())  # a zero loss gradient: only the weight decay moves lambda
    opt.step()
    assert lam.item() == pytest.approx(8.0 * (1 - 5e-4))


def test_step_milestones_count_from_epoch_zero():
    """Milestone m: epochs 0..m-1 at lr, m on at lr * gamma (torch MultiStepLR, the RTS release)."""
    model = torch.nn.Linear(2, 2)
    recipe = apply_overrides(load_recipe("rts_cifar"), lr=1.0)
    recipe["milestones"] = [2, 3]
    opt = create_optimizer(model, recipe)
    sched = create_scheduler(opt, recipe, 5)
    lrs = []
    for epoch in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step(epoch + 1)
    assert lrs == pytest.approx([1.0, 1.0, 0.1, 0.01, 0.01])


def test_cosine_starts_at_lr_and_decays():
    model = torch.nn.Linear(2, 2)
    recipe = apply_overrides(load_recipe("quick_cpu"), lr=0.1)
    opt = create_optimizer(model, recipe)
    sched = create_scheduler(opt, recipe, 4)
    lrs = []
    for epoch in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step(epoch + 1)
    assert lrs == pytest.approx([0.1 * 0.5 * (1 + np.cos(np.pi * e / 4)) for e in range(4)])


# ---------------------------------------------------------------- batching


def _window(img, dy, dx, size, *, flip):
    w = img[:, dy:dy + size, dx:dx + size]
    return w.flip(-1) if flip else w


def test_random_crop_flip_is_a_shifted_padded_window():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, padding=2, flip=True, generator=torch.Generator().manual_seed(3))
    again = random_crop_flip(x, padding=2, flip=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, again) and out.dtype == torch.uint8 and out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for i in range(len(x)):
        windows = {(dy, dx, f) for dy in range(5) for dx in range(5) for f in (0, 1)
                   if torch.equal(out[i], _window(padded[i], dy, dx, 8, flip=bool(f)))}
        assert windows, f"image {i} is not a crop of the padded input"
        flips += all(f for *_, f in windows)
    assert 10 < flips < 54  # about half flipped


def test_batched_normalisation_matches_the_data_module_transform(data_root):
    ds = load_split("cifar10", data_root, "test")
    info = dataset_info("cifar10")
    x, _ = next(iter(TensorBatches(ds.images, ds.labels, batch_size=16, mean=info.mean, std=info.std)))
    tf = build_transform("cifar10", train=False)
    expected = torch.stack([tf(ds.images[i]) for i in range(16)])
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)


def test_evaluate_counts_top1():
    class Oracle(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0].long(), 3).float()

    xs = torch.tensor([[0.0], [1.0], [2.0], [0.0]])
    loader = [(xs[:2], torch.tensor([0, 1])), (xs[2:], torch.tensor([2, 1]))]
    assert evaluate(Oracle(), loader, "cpu") == 75.0


# ---------------------------------------------------------------- training runs


def test_qcfs_run_writes_checkpoint_sidecar_and_run_yaml(data_root, tmp_path):
    out = tmp_path / "run"
    metrics = _train(data_root, out, act="qcfs", act_kwargs={"L": 4, "init_lambda": 8.0}, epochs=2)
    meta = json.loads((out / "model.json").read_text())
    assert meta["sha256"] == sha256_file(out / "model.safetensors")
    assert (meta["arch"], meta["act"], meta["dataset"], meta["num_classes"]) == ("vgg_small", "qcfs", "cifar10", 10)
    assert meta["act_kwargs"] == {"L": 4, "init_lambda": 8.0}
    assert meta["recipe"]["name"] == "quick_cpu" and meta["recipe"]["batch_size"] == 32
    assert meta["epochs"] == 2 and meta["seed"] == 0 and meta["torch_version"] == torch.__version__
    assert len(meta["metrics"]["train_loss"]) == 2 and meta["metrics"]["test_acc"] == metrics["test_acc"]
    assert meta["metrics"]["holdout_acc"] is None and meta["metrics"]["wall_time_s"] > 0
    state = load_file(str(out / "model.safetensors"))
    lams = meta["qcfs_lambdas"]
    assert len(lams) == 6 and all(f"{name}.lam" in state for name in lams)
    for name, lam in lams.items():
        assert lam == float(state[f"{name}.lam"])
    assert any(lam != 8.0 for lam in lams.values()), "lambda was not trained"
    run = yaml.safe_load((out / "run.yaml").read_text())
    assert run["arch"] == "vgg_small" and run["act_kwargs"] == {"L": 4, "init_lambda": 8.0} and run["epochs"] == 2


def test_same_seed_gives_bit_identical_weights(data_root, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        _train(data_root, tmp_path / name, seed=seed, deterministic=name == "b")
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
    a, b, c = (load_file(str(tmp_path / n / "model.safetensors")) for n in "abc")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_load_model_round_trips(data_root, tmp_path):
    out = tmp_path / "run"
    metrics = _train(data_root, out, act="clip", act_kwargs={"y_th": 1.0}, holdout=50)
    model, meta = load_model(out)
    assert not model.training and meta["clip_y_th"] and set(meta["clip_y_th"].values()) == {1.0}
    saved = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    ds = load_split("cifar10", data_root, "test", transform=build_transform("cifar10", train=False))
    assert evaluate(model, make_loader(ds, 64, shuffle=False), "cpu") == metrics["test_acc"]
    assert meta["n_train"] == 150 and meta["holdout"] == 50
    # the holdout accuracy again, by hand: the 50 training images holdout_split(200, 50, seed=0) names, unaugmented
    train_ds = load_split("cifar10", data_root, "train", transform=build_transform("cifar10", train=False))
    _, hold = holdout_split(len(train_ds), 50, seed=0)
    hold_loader = make_loader(torch.utils.data.Subset(train_ds, hold), 64, shuffle=False)
    assert metrics["holdout_acc"] == evaluate(model, hold_loader, "cpu") == meta["metrics"]["holdout_acc"]
    assert meta["pipeline"] == "batched"

    meta = json.loads((out / "model.json").read_text())
    partial = {k: v for k, v in saved.items() if k != "fc.bias"}  # strict loading: a missing key is an error
    save_checkpoint(tmp_path / "partial" / "model.safetensors", partial, meta)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(tmp_path / "partial")
    side = out / "model.json"
    side.write_text(json.dumps({**meta, "arch": "resnet20_qcfs"}))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(out / "model.safetensors")


def test_per_sample_pipeline_for_autoaugment_and_cutout_is_seeded(data_root, tmp_path):
    recipe = apply_overrides(load_recipe("qcfs_cifar10"), epochs=1, batch_size=64)
    for name in "ab":
        _train(data_root, tmp_path / name, recipe=recipe, holdout=20, act="qcfs")
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "a" / "model.json").read_text())
    assert meta["pipeline"] == "per-sample" and meta["n_train"] == 180
    # the holdout accuracy again, by hand: the 20 training images holdout_split(200, 20, seed=0) names, unaugmented
    model, _ = load_model(tmp_path / "a")
    train_ds = load_split("cifar10", data_root, "train", transform=build_transform("cifar10", train=False))
    _, hold = holdout_split(len(train_ds), 20, seed=0)
    hold_loader = make_loader(torch.utils.data.Subset(train_ds, hold), 64, shuffle=False)
    assert meta["metrics"]["holdout_acc"] == evaluate(model, hold_loader, "cpu")
    assert meta["act_kwargs"] == {"L": 4, "init_lambda": 8.0}  # defaults recorded


def test_loss_decreases_on_a_learnable_problem(data_root, tmp_path):
    metrics = _train(data_root, tmp_path / "run", recipe=_recipe(epochs=4, batch_size=16, lr=0.05))
    losses = metrics["train_loss"]
    assert losses[-1] < 0.7 * losses[0], losses
    assert metrics["test_acc"] > 30.0  # chance is 10 %


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "0"], "--epochs"),
    (["--arch", "no_net"], "unknown architecture"),
    (["--recipe", "no_recipe"], "unknown recipe"),
    (["--L", "4"], "does not apply to --act relu"),
    (["--lr", "-1"], "--lr"),
])
def test_cli_user_errors_are_one_line(data_root, tmp_path, capsys, extra, message):
    argv = ["train", "--dataset", "cifar10", "--data-root", str(data_root), "--arch", "vgg_small",
            "--out", str(tmp_path / "o"), "--quiet", *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_cli_trains_and_prints_accuracy(data_root, tmp_path, capsys):
    argv = ["train", "--data-root", str(data_root), "--arch", "vgg_small", "--act", "qcfs", "--epochs", "1",
            "--batch-size", "64", "--out", str(tmp_path / "o"), "--quiet"]
    assert cli.main(argv) == 0
    assert "test accuracy" in capsys.readouterr().out
    meta = json.loads((tmp_path / "o" / "model.json").read_text())
    assert meta["recipe"]["overrides"] == {"epochs": 1, "batch_size": 64} and meta["act_kwargs"]["L"] == 4
