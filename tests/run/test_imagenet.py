"""ImageNet end to end on a tiny synthetic ImageFolder: train, convert, calibrate, simulate (CPU, one step each).

Also the import of torchvision's VGG-16 weights (ftbc.models.pretrained).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_imagefolder
from safetensors.torch import save_file

from baselines import get_method
from ftbc import models
from ftbc.errors import CheckpointError
from ftbc.data.eval_sets import load_eval_data
from ftbc.run.evaluation import run
from ftbc.models.pretrained import load_initial_weights, torchvision_to_suite
from ftbc.train.recipes import load_recipe
from ftbc.run.reproduce import budgeted
from ftbc.train.training import apply_overrides, train
from ftbc.train.loop import evaluate
from ftbc.models.checkpoint import load_model


@pytest.fixture(scope="module")
def imagenet_tree(tmp_path_factory):
    """2 classes of random images, not 224 x 224 (250 x 230), so crop and resize have work to do; val/ as test."""
    root = tmp_path_factory.mktemp("imagenet")
    write_imagefolder(root, classes=["n01440764", "n01443537"], per_class=1, size=(250, 230), splits=("train",))
    write_imagefolder(root, classes=["n01440764", "n01443537"], per_class=1, size=(230, 250), splits=("val",),
                      seed=1)
    return root


# (arch, activation and its settings, method): both ResNet-34 lineages and VGG-16, each activation once.
CASES = [
    ("resnet34_snnc", "relu", {}, "ftbc_relu"),
    ("resnet34_qcfs", "qcfs", {"L": 8}, "ftbc_qcfs"),
    ("vgg16_imagenet", "clip", {"y_th": 3.0}, "ftbc_rts"),
]


@pytest.mark.parametrize("arch, act, act_kwargs, method_name", CASES, ids=[c[0] for c in CASES])
def test_imagenet_train_convert_calibrate_simulate(imagenet_tree, tmp_path, arch, act, act_kwargs, method_name):
    recipe = apply_overrides(load_recipe("imagenet"), epochs=1, batch_size=2)
    out = tmp_path / arch
    metrics = train(dataset="imagenet", data_root=imagenet_tree, arch=arch, act=act, act_kwargs=act_kwargs,
                    recipe=recipe, out=out, progress=False, log=lambda *a: None)
    meta = json.loads((out / "model.json").read_text())
    assert meta["pipeline"] == "per-sample" and meta["n_train"] == 2 and meta["image_size"] == 224
    assert meta["num_classes"] == 1000 and len(metrics["train_loss"]) == 1
    model, meta = load_model(out)

    calib, _, test = load_eval_data("imagenet", str(imagenet_tree), download=False, holdout=0, n_test=0,
                                    batch_size=2)
    assert next(iter(test))[0].shape == (2, 3, 224, 224)  # resize 256 / centre crop 224
    ann_acc = evaluate(model, test, "cpu")
    assert ann_acc == metrics["test_acc"]
    method, changes = budgeted(get_method(method_name, "imagenet"), n_train=2, ftbc_images=2, wc_iterations=1,
                               mse_positions=256)
    assert (changes["ftbc.iterations"], changes["ftbc.batches"], changes["ftbc.batch_size"]) == (1, 1, 2)
    T = 2
    acc, activity, details = run(model=model, meta=meta, method=method, Ts=[T], calib_data=calib,
                                 test_batches=test, ann_accuracy=ann_acc)
    assert set(acc["t"]) == ({T} if method.t_dependent else {1, T})  # a T-free method reports every t <= T
    # 2 test images (val/: one per class): an accuracy is 0, 50 or 100 %, a spike count per image a multiple of 1/2
    assert set(acc["accuracy"]) <= {0.0, 50.0, 100.0} and ann_acc in (0.0, 50.0, 100.0)
    twice = activity["spikes_per_image"] * 2
    assert ((twice - twice.round()).abs() < 1e-6).all() and twice.sum() >= 1  # whole spikes, and some at all
    timings = details["runs"][0]["timings"]
    assert any("ftbc" in k for k in timings), timings  # the calibration stage ran
    assert activity["layer"].nunique() == sum(isinstance(m, (torch.nn.ReLU, models.QCFS, models.ClipReLU))
                                              for m in model.modules()) + (method.spiking_classifier is True)


def _torchvision_vgg16_bn():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    tv = torchvision.models.vgg16_bn(weights=None)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.bias.normal_()  # torchvision initialises them to 0, which would hide a wrong fold
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.bias.normal_()
    return tv


def test_torchvision_vgg16_bn_weights_give_the_same_function(tmp_path):
    """With its max pools made average pools, torchvision's network and the imported suite network agree."""
    tv = _torchvision_vgg16_bn()
    path = tmp_path / "vgg16_bn.safetensors"
    save_file({k: v.contiguous() for k, v in tv.state_dict().items()}, str(path))
    ours = models.create_model("vgg16_imagenet", num_classes=1000)
    load_initial_weights(ours, "vgg16_imagenet", path)
    for i, m in enumerate(tv.features):
        if isinstance(m, torch.nn.MaxPool2d):
            tv.features[i] = torch.nn.AvgPool2d(2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), tv.eval()(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(CheckpointError, match="no torchvision weights map onto resnet34_qcfs"):
        torchvision_to_suite(tv.state_dict(), "resnet34_qcfs")
    (tmp_path / "model.pth").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_initial_weights(ours, "vgg16_imagenet", tmp_path / "model.pth")
