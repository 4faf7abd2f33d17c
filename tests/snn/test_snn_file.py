"""The calibrated SNN as a file (``ftbc evaluate --save-snn`` / ``--snn``) and as a SpikingJelly network.

For every registered method: the network rebuilt from ``snn.safetensors`` gives
bit-equal outputs to the one calibrated in memory, and so does its SpikingJelly
translation with the exact node, in both step modes. Through the CLI: a saved
SNN evaluated again gives the identical per-T accuracy table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from baselines import get_method, list_methods
from conftest import write_imagefolder
from ftbc import models
from ftbc._io import save_checkpoint
from ftbc.cli import main as ftbc_main
from ftbc.snn.conversion import convert
from ftbc.data.catalog import CIFAR_CLASSES
from ftbc.errors import CheckpointError
from ftbc.run.evaluation import method_record
from ftbc.snn.simulation import simulate
from ftbc.snn.snn_file import load_snn, save_snn, snn_file_name
from methods.test_baselines import small

sj = pytest.importorskip("spikingjelly")
from ftbc.interop.export_spikingjelly import sj_simulate, to_spikingjelly  # noqa: E402

T = 3
ANN_META = dict(dataset="cifar10", arch="resnet20_qcfs", act_kwargs={}, num_classes=10, sha256="0" * 64)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list_methods())
def test_every_method_survives_the_file_and_spikingjelly(name, images, tmp_path):
    method = small(get_method(name), threshold_batches=1)
    torch.manual_seed(0)
    ann = models.create_model("resnet20_qcfs", num_classes=10, act_layer=method.activation).eval()
    conv = convert(ann, method, data=images[:32], T=T)
    path = save_snn(tmp_path / snn_file_name(T, method.t_dependent), conv.snn,
                    ann_meta={**ANN_META, "act": method.activation}, method=method_record(method), T=T)
    snn, meta = load_snn(path)
    x = images[32:]
    ours = simulate(conv.snn, x, T, mode="s")
    assert torch.equal(simulate(snn, x, T, mode="s"), ours)
    assert meta["T"] == T and meta["method"]["name"] == name
    assert all(torch.equal(v, snn.state_dict()[k]) for k, v in conv.snn.state_dict().items())
    for mode in ("s", "m"):
        theirs = sj_simulate(to_spikingjelly(snn, mode, T, node="exact"), x, T)
        assert torch.equal(theirs, ours), f"{name}, SpikingJelly step mode {mode!r}"


def test_the_exact_node_carries_what_ifnode_cannot(images):
    """Per-channel thresholds, v0 and the FTBC bias of each step are in the node's state_dict."""
    method = small(get_method("ftbc_qcfs"))
    torch.manual_seed(0)
    ann = models.create_model("resnet20_qcfs", num_classes=10, act_layer="qcfs").eval()
    conv = convert(ann, method, data=images[:32], T=T)
    net = to_spikingjelly(conv.snn, "s", T)  # auto: the exact node wherever a bias is present
    from spikingjelly.activation_based.neuron import SimpleBaseNode

    nodes = [m for m in net.modules() if isinstance(m, SimpleBaseNode)]
    assert len(nodes) == len([1 for k in conv.snn.state_dict() if k.endswith(".threshold")])
    assert all(n.bias.shape[0] == T for n in nodes) and any(n.bias.abs().sum() > 0 for n in nodes)
    assert type(nodes[0]).__name__ == "ConvertedIFNode"


def test_a_saved_snn_is_rebuilt_only_from_what_fits(images, tmp_path):
    method = small(get_method("maxnorm"))
    torch.manual_seed(0)
    ann = models.create_model("resnet20_qcfs", num_classes=10, act_layer="relu").eval()
    conv = convert(ann, method, data=images[:32], T=T)
    path = save_snn(tmp_path / "snn.safetensors", conv.snn, ann_meta={**ANN_META, "act": "relu",
                                                                      "arch": "resnet20_snnc"},
                    method=method_record(method), T=T)
    with pytest.raises(CheckpointError, match="does not fit resnet20_snnc"):
        load_snn(path)
    ann_path = save_checkpoint(tmp_path / "ann" / "model.safetensors", ann.state_dict(), ANN_META)
    with pytest.raises(CheckpointError, match="not a saved SNN"):
        load_snn(ann_path)


def test_evaluate_saves_the_snn_and_evaluates_it_again_identically(tmp_path):
    root = tmp_path / "data"
    write_imagefolder(root, classes=list(CIFAR_CLASSES["cifar10"]), per_class=3)
    torch.manual_seed(0)
    ann = models.create_model("vgg_small", num_classes=10, act_layer="relu")
    save_checkpoint(tmp_path / "ann" / "model.safetensors", ann.state_dict(),
                    dict(dataset="cifar10", arch="vgg_small", act="relu", act_kwargs={}, num_classes=10))
    common = ["--data-root", str(root), "--quiet", "--batch-size", "8"]
    first = tmp_path / "first"
    assert ftbc_main(["evaluate", "--checkpoint", str(tmp_path / "ann"), "--method", "ftbc_relu", "--T", "2,4",
                      "--set", "ftbc.iterations=2", "--set", "ftbc.batches=1", "--set", "ftbc.batch_size=8",
                      "--set", "threshold_batches=1", "--set", "threshold_batch_size=8",
                      "--save-snn", "--out", str(first), *common]) == 0
    assert sorted(p.name for p in first.glob("snn*.safetensors")) == ["snn-T2.safetensors", "snn-T4.safetensors"]
    again = tmp_path / "again"
    assert ftbc_main(["evaluate", "--snn", str(first), "--out", str(again), *common]) == 0
    a, b = pd.read_csv(first / "accuracy.csv"), pd.read_csv(again / "accuracy.csv")
    pd.testing.assert_frame_equal(a, b)
    # spike counts per layer and step: a far finer check than the accuracy of an untrained network
    pd.testing.assert_frame_equal(pd.read_csv(first / "activity.csv"), pd.read_csv(again / "activity.csv"))
    assert json.loads((again / "result.json").read_text())["method"]["name"] == "ftbc_relu"
    # a T it was not calibrated for, and flags that would need a conversion, are refused in one line
    assert ftbc_main(["evaluate", "--snn", str(first), "--T", "8", "--out", str(tmp_path / "x"), *common]) == 2
    assert ftbc_main(["evaluate", "--snn", str(first), "--method", "qcfs", "--out", str(tmp_path / "x"),
                      *common]) == 2
    assert not Path(tmp_path / "x").exists()

    # ftbc export: the SpikingJelly module from its file computes the saved SNN; NIR names what it cannot hold
    assert ftbc_main(["export", str(first), "--to", "spikingjelly", "--out", str(tmp_path / "sj")]) == 2  # which T?
    assert ftbc_main(["export", str(first), "--to", "spikingjelly", "--T", "4", "--out", str(tmp_path / "sj")]) == 0
    net = torch.load(tmp_path / "sj" / "snn_spikingjelly.pt", weights_only=False)
    snn, _ = load_snn(first / "snn-T4.safetensors")
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(sj_simulate(net, x, 4), simulate(snn, x, 4))
    assert json.loads((tmp_path / "sj" / "snn_spikingjelly.json").read_text())["method"] == "ftbc_relu"
    assert ftbc_main(["export", str(first), "--to", "nir", "--T", "2", "--out", str(tmp_path / "nir")]) == 2
