"""``ftbc import-checkpoint``: every release network, restated here, maps onto the suite's and computes the same.

The ``Qcfs*``, ``Snnc*`` and ``Rts*`` classes restate, from a reading of the three
releases, the module structure of each network they train (so ``state_dict()`` has
the release's exact key names and shapes, at full width) and its forward pass in
eval mode. Each test builds one with random weights (on the meta device, then
filled: the ImageNet VGG-16 has 138 M parameters), saves its state dict as the
release saves it, runs ``ftbc import-checkpoint``, reloads the result with
``load_model`` and compares the two networks' outputs in float64, where rounding
cannot move a QCFS activation across a quantisation step. Conv biases and BN means
are multiples of 2^-10, so the importer's bias folding (``running_mean - bias``)
is exact in float32 as well.

Where the forward cannot be compared whole, the test says why and checks the parts:

- QCFS VGG-16 (ImageNet) and RTS VGG-16 (ImageNet) flatten the 7 x 7 map of a
  224 x 224 image; a full forward at 224 is too slow for a unit test, so the
  feature stack is compared at 32 x 32, the classifier on a random 25088-vector,
  and the suite's ``global_pool`` is shown to be the identity on a 7 x 7 map.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from conftest import write_imagefolder
from torch import nn

from ftbc.run import grid
from ftbc.cli import main as cli_main
from ftbc.data.catalog import CIFAR_CLASSES
from ftbc.models.checkpoint import load_model


# ---------------------------------------------------------------- QCFS (putshua/ANN_SNN_QCFS, Models/)


class QcfsIF(nn.Module):
    """Models/layer.py ``IF`` with T = 0 (the ANN): divide by the threshold, clamp to [0, 1],
    round to L levels (floor of x L + 1/2, over L), scale back. ``thresh`` has shape [1]."""

    def __init__(self, L: int) -> None:
        super().__init__()
        self.thresh = nn.Parameter(torch.tensor([8.0]))
        self.L = L

    def forward(self, x):
        y = torch.clamp(x / self.thresh, 0, 1)
        return torch.floor(y * self.L + 0.5) / self.L * self.thresh


class QcfsBlock(nn.Module):
    """Models/ResNet.py ``BasicBlock``: act(residual_function(x) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int, L: int) -> None:
        super().__init__()
        self.residual_function = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), QcfsIF(L),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = QcfsIF(L)

    def forward(self, x):
        return self.act(self.residual_function(x) + self.shortcut(x))


class QcfsResNet(nn.Module):
    """Models/ResNet.py ``ResNet4Cifar`` (resnet20: [3, 3, 3], 16-64) and ``ResNet`` (resnet18 / resnet34:
    64-512): conv1 = conv3x3 stride 1 + BN + IF, stages ``conv2_x`` ..., global average pool, ``fc``."""

    def __init__(self, blocks, widths, num_classes: int, L: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), QcfsIF(L))
        cin = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            stage = []
            for j in range(n):
                stage.append(QcfsBlock(cin, w, 2 if i > 0 and j == 0 else 1, L))
                cin = w
            setattr(self, f"conv{i + 2}_x", nn.Sequential(*stage))
        self.n_stages = len(blocks)
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        for i in range(self.n_stages):
            x = getattr(self, f"conv{i + 2}_x")(x)
        return self.fc(self.avg_pool(x).view(x.size(0), -1))


class QcfsVGG16(nn.Module):
    """Models/VGG.py ``VGG('VGG16')``: five ``layerB`` of [conv (with bias), BN, IF, Dropout] per conv and an
    AvgPool; classifier = Flatten, Linear(512 or 512 * 7 * 7 for 1000 classes, 4096), IF, Dropout,
    Linear(4096, 4096), IF, Dropout, Linear(4096, classes)."""

    def __init__(self, num_classes: int, L: int) -> None:
        super().__init__()
        cin = 3
        for b, widths in enumerate(((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))):
            layers: list[nn.Module] = []
            for w in widths:
                layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), QcfsIF(L), nn.Dropout(0.0)]
                cin = w
            setattr(self, f"layer{b + 1}", nn.Sequential(*layers, nn.AvgPool2d(2, 2)))
        flat = 512 * 7 * 7 if num_classes == 1000 else 512
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, 4096), QcfsIF(L), nn.Dropout(0.0),
                                        nn.Linear(4096, 4096), QcfsIF(L), nn.Dropout(0.0), nn.Linear(4096, num_classes))

    def features(self, x):
        for b in range(1, 6):
            x = getattr(self, f"layer{b}")(x)
        return x

    def forward(self, x):
        return self.classifier(self.features(x))


# ---------------------------------------------------------------- SNN Calibration (yhhhli/SNN_Calibration)


class SnncBlock(nn.Module):
    """The ``BasicBlock`` of models/CIFAR/models/resnet.py and models/ImageNet/models/resnet.py (with BN):
    relu2(bn2(conv2(relu1(bn1(conv1(x))))) + downsample(x) or x)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + (x if self.downsample is None else self.downsample(x)))


def _snnc_stages(module: nn.Module, blocks, widths, cin: int) -> None:
    for i, (n, w) in enumerate(zip(blocks, widths)):
        stage = []
        for j in range(n):
            stage.append(SnncBlock(cin, w, 2 if i > 0 and j == 0 else 1))
            cin = w
        setattr(module, f"layer{i + 1}", nn.Sequential(*stage))


class SnncAvgPoolConv(nn.Conv2d):
    """The ICML-2021 code's ``AvgPoolConv``: a depthwise k x k conv whose weight is reset to 1 / k^2 before
    every use, then a ReLU."""

    def __init__(self, k: int, stride: int, channels: int) -> None:
        super().__init__(channels, channels, k, stride=stride, groups=channels, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x):
        self.weight.data.fill_(1.0 / self.weight[0].numel())
        return self.relu(super().forward(x))


class SnncResNet20(nn.Module):
    """models/CIFAR/models/resnet.py ``resnet20`` (``ResNet_Cifar``, use_bn): conv1 + bn1 + relu (64),
    layer1-3 of [3, 3, 3] blocks (64-128-256), global average pool, fc(256)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        _snnc_stages(self, (3, 3, 3), (64, 128, 256), 64)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return self.fc(self.avgpool(x).view(x.size(0), -1))


class SnncResNet20Icml(nn.Module):
    """The ICML-2021 ``resnet20`` (``ResNet_Cifar_Modified``, use_bn): conv1 = three conv3x3 64 + BN + ReLU,
    the third with stride 2; layer1-4 of [2, 2, 2, 2] blocks (64-512); a 2 x 2 AvgPoolConv (stride 1) over
    the 2 x 2 map; fc(512)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        _snnc_stages(self, (2, 2, 2, 2), (64, 128, 256, 512), 64)
        self.avgpool = SnncAvgPoolConv(2, 1, 512)
        self.fc = nn.Linear(512, num_classes)

    def body(self, x):
        """Everything after the stem."""
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).view(x.size(0), -1))

    def forward(self, x):
        return self.body(self.conv1(x))


class SnncResNet34(nn.Module):
    """models/ImageNet/models/resnet.py ``resnet34_snn`` (deep stem, use_bn): conv1 = conv3x3 32 stride 2
    + BN + ReLU, conv3x3 32 + BN + ReLU, conv3x3 64; then bn1, relu, AvgPool2d(3, 2, 1), layer1-4 of
    [3, 4, 6, 3] blocks, avgpool2 (global), fc(512)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 1, 1, bias=False))
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.avgpool = nn.AvgPool2d(3, 2, 1)
        _snnc_stages(self, (3, 4, 6, 3), (64, 128, 256, 512), 64)
        self.avgpool2 = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.avgpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool2(x), 1))


VGG16_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class SnncVGG16Cifar(nn.Module):
    """models/CIFAR/models/vgg.py ``VGG('VGG16', use_bn=True)``: features = conv3x3 (with bias) + BN + ReLU per
    width and AvgPool2d(2) per 'M'; classifier = Linear(512, classes). ``icml``: the ICML-2021 code, whose
    pools are AvgPoolConv modules (a weight each) and whose features end with an AvgPool2d(1)."""

    def __init__(self, num_classes: int, icml: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in VGG16_D:
            if v == "M":
                layers.append(SnncAvgPoolConv(2, 2, cin) if icml else nn.AvgPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                cin = v
        if icml:
            layers.append(nn.AvgPool2d(1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.features(x)
        return self.classifier(out.view(out.size(0), -1))


class SnncVGG16ImageNet(nn.Module):
    """models/ImageNet/models/vgg.py ``vgg16`` / ``vgg16_bn``: features = conv3x3 (with bias) [+ BN] + ReLU and
    AvgPool2d(2); AdaptiveAvgPool2d(7); classifier = Linear(25088, 4096), ReLU, Dropout, Linear(4096, 4096),
    ReLU, Dropout, Linear(4096, classes)."""

    def __init__(self, num_classes: int, bn: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in VGG16_D:
            if v == "M":
                layers.append(nn.AvgPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), *([nn.BatchNorm2d(v)] if bn else []), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(0.5),
                                        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ---------------------------------------------------------------- RTS (Jackn0/snn_optimal_conversion_pipeline)


class RtsAct(nn.Module):
    """models/new_relu.py ``th_shift_ReLU`` as trained (no shift): with a threshold th > 0 the ``thReLU``
    x * [|x - th/2| <= th/2] + th * [x > th]; with th = 0 a plain ReLU. No parameters."""

    def __init__(self, th: float) -> None:
        super().__init__()
        self.th = th

    def forward(self, x):
        if self.th == 0:
            return torch.relu(x)
        inside = ((x - self.th / 2).abs() <= self.th / 2).to(x.dtype)
        return x * inside + (x > self.th).to(x.dtype) * self.th


class RtsBlock(nn.Module):
    """models/ResNet20.py ``BasicBlock``: act(residual(x) + identity(x)); residual = conv3x3, act, Dropout,
    conv3x3 (no BN, no biases); identity = empty or conv1x1."""

    def __init__(self, cin: int, cout: int, stride: int, th: float) -> None:
        super().__init__()
        self.residual = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), RtsAct(th), nn.Dropout(0.2),
                                      nn.Conv2d(cout, cout, 3, 1, 1, bias=False))
        self.identity = nn.Sequential()
        if stride != 1 or cin != cout:
            self.identity = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))
        self.act = RtsAct(th)

    def forward(self, x):
        return self.act(self.residual(x) + self.identity(x))


class RtsResNet20(nn.Module):
    """models/ResNet20.py ``ResNet20``: pre_process = (conv3x3 64, act, Dropout) x 2, conv3x3 64, act,
    AvgPool2d(2); layer1-4 of [2, 2, 2, 2] blocks (64-512); the 512 x 2 x 2 map flattened into
    classifier = [Linear(2048, classes, bias=False)]."""

    def __init__(self, num_classes: int, th: float) -> None:
        super().__init__()
        self.pre_process = nn.Sequential(
            nn.Conv2d(3, 64, 3, 1, 1, bias=False), RtsAct(th), nn.Dropout(0.2),
            nn.Conv2d(64, 64, 3, 1, 1, bias=False), RtsAct(th), nn.Dropout(0.2),
            nn.Conv2d(64, 64, 3, 1, 1, bias=False), RtsAct(th), nn.AvgPool2d(2))
        cin = 64
        for i, w in enumerate((64, 128, 256, 512)):
            setattr(self, f"layer{i + 1}", nn.Sequential(RtsBlock(cin, w, 1 if i == 0 else 2, th),
                                                         RtsBlock(w, w, 1, th)))
            cin = w
        self.classifier = nn.Sequential(nn.Linear(512 * 2 * 2, num_classes, bias=False))

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.pre_process(x)))))
        return self.classifier(x.view(x.size(0), -1))


class RtsVGG16(nn.Module):
    """models/VGG16.py ``VGG16``: ``convB_P`` (with bias) each followed by the activation, AvgPool2d(2)
    after blocks 1-4, fc1 (2048), fc2, fc3 with the activation between (config "C": the third conv of
    blocks 3-5 is 1x1). ``imagenet``: the FTBC repository's ImageNet VGG16 ("D": all 3x3, a fifth pool,
    fc1 from 512 x 7 x 7)."""

    def __init__(self, num_classes: int, th: float, imagenet: bool = False) -> None:
        super().__init__()
        self.imagenet = imagenet
        self.act = RtsAct(th)
        cin = 3
        for b, widths in enumerate(((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))):
            for p, w in enumerate(widths):
                k = 1 if p == 2 and not imagenet else 3
                setattr(self, f"conv{b + 1}_{p + 1}", nn.Conv2d(cin, w, k, 1, k // 2))
                cin = w
        self.fc1 = nn.Linear(512 * (7 * 7 if imagenet else 2 * 2), 4096)
        self.fc2 = nn.Linear(4096, 4096)
        self.fc3 = nn.Linear(4096, num_classes)

    def features(self, x):
        for b, n in enumerate((2, 2, 3, 3, 3)):
            for p in range(n):
                x = self.act(getattr(self, f"conv{b + 1}_{p + 1}")(x))
            if b < 4 or self.imagenet:
                x = nn.functional.avg_pool2d(x, 2)
        return x

    def head(self, v):
        return self.fc3(self.act(self.fc2(self.act(self.fc1(v)))))

    def forward(self, x):
        return self.head(self.features(x).view(x.size(0), -1))


# ---------------------------------------------------------------- helpers


def _dyadic(t: torch.Tensor) -> torch.Tensor:
    """Multiples of 2^-10: their differences are exact in float32."""
    return torch.round(t * 1024) / 1024


def build(factory, seed: int = 0) -> nn.Module:
    """A release network with random weights: built on the meta device, then every tensor filled."""
    with torch.device("meta"):
        net = factory()
    net = net.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    filled = set()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, SnncAvgPoolConv):
                m.weight.fill_(1.0 / m.weight[0].numel())
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                bound = (6.0 / m.weight[0].numel()) ** 0.5  # variance 2 / fan_in
                m.weight.uniform_(-bound, bound, generator=g)
                if m.bias is not None:
                    m.bias.copy_(_dyadic(0.1 * torch.randn(m.bias.shape, generator=g)))
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.8 + 0.4 * torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(_dyadic(0.1 * torch.randn(c, generator=g)))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.num_batches_tracked.fill_(391)
            elif isinstance(m, QcfsIF):
                m.thresh.copy_(1.0 + 2.0 * torch.rand(1, generator=g))
            else:
                continue
            filled.update(id(t) for t in m.state_dict(keep_vars=True).values())
    assert all(id(t) in filled for t in net.state_dict(keep_vars=True).values())
    return net.eval()


def run_import(tmp_path, capsys, release: str, arch: str, payload, *extra: str, name: str = "release.pth"):
    """Save ``payload`` as the release's .pth, import it; returns (suite model, meta, stdout, source path)."""
    tmp_path.mkdir(exist_ok=True)
    src = tmp_path / name
    torch.save(payload, src)
    out = tmp_path / "imported"
    status = cli_main(["import-checkpoint", "--from", release, "--arch", arch, str(src), "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    model, meta = load_model(out)
    assert meta["format"] == "ftbc.ann.v1" and meta["arch"] == arch
    assert meta["imported"]["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert f"-> {out / 'model.safetensors'}" in captured.out
    return model, meta, captured.out, src


def all_keys_used(meta: dict, release_state: dict) -> None:
    """Every release tensor was mapped (or checked as a fixed pool): nothing dropped."""
    imp = meta["imported"]
    used = {src for src, _ in imp["mapping"]} | set(imp["fixed_pools_checked"])
    assert used == set(release_state)


def same_outputs(suite: nn.Module, release: nn.Module, x: torch.Tensor) -> None:
    """Equal outputs in eval mode and float64; a constant output would prove nothing."""
    with torch.no_grad():
        want = release.double().eval()(x.double())
        got = suite.double().eval()(x.double())
    assert want.std() > 1e-3
    torch.testing.assert_close(got, want)


def image(size: int, n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------- QCFS


@pytest.mark.parametrize("arch, blocks, widths, classes, L, size", [
    ("resnet20_qcfs", (3, 3, 3), (16, 32, 64), 10, 4, 32),
    ("resnet18_cifar", (2, 2, 2, 2), (64, 128, 256, 512), 100, 4, 16),
    ("resnet34_qcfs", (3, 4, 6, 3), (64, 128, 256, 512), 1000, 8, 16),  # ImageNet net, small input
])
def test_qcfs_resnets(tmp_path, capsys, arch, blocks, widths, classes, L, size):
    release = build(lambda: QcfsResNet(blocks, widths, classes, L))
    state = release.state_dict()  # main_train.py saves model.state_dict() bare
    suite, meta, out, _ = run_import(tmp_path, capsys, "qcfs", arch, state)
    assert (meta["act"], meta["act_kwargs"]["L"]) == ("qcfs", L)
    assert meta["dataset"] == {10: "cifar10", 100: "cifar100", 1000: "imagenet"}[classes]
    assert f"L={L} assumed" in out
    all_keys_used(meta, state)
    thresholds = sorted(float(v) for k, v in state.items() if k.endswith("thresh"))
    assert sorted(meta["qcfs_lambdas"].values()) == pytest.approx(thresholds)
    same_outputs(suite, release, image(size))


def test_qcfs_vgg16_cifar(tmp_path, capsys):
    release = build(lambda: QcfsVGG16(10, 4))
    state = release.state_dict()
    suite, meta, out, _ = run_import(tmp_path, capsys, "qcfs", "vgg16_qcfs", state)
    all_keys_used(meta, state)
    assert len(meta["imported"]["folded"]) == 13 and "13 conv biases folded into BN" in out
    same_outputs(suite, release, image(32))


def test_qcfs_vgg16_imagenet_by_parts(tmp_path, capsys):
    """The release flattens the 7 x 7 map of a 224 x 224 image: features at 32 x 32, head on a vector."""
    release = build(lambda: QcfsVGG16(1000, 16))
    state = release.state_dict()
    suite, meta, _, _ = run_import(tmp_path, capsys, "qcfs", "vgg16_imagenet", state)
    assert (meta["dataset"], meta["act_kwargs"]["L"]) == ("imagenet", 16)
    all_keys_used(meta, state)
    suite, release = suite.double(), release.double()
    x, v = image(32), torch.randn(2, 512 * 7 * 7, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(suite.features(x), release.features(x))
        torch.testing.assert_close(suite.fc(suite.pre_logits(v)), release.classifier(v))
        m = torch.randn(2, 512, 7, 7, dtype=torch.float64)
        torch.testing.assert_close(suite.global_pool(m), m)  # so at 224 x 224 the two forwards are the same


def test_qcfs_older_key_names_and_explicit_L(tmp_path, capsys):
    """Older QCFS files call the threshold ``up`` (``relu.up`` in a block's last activation)."""
    release = build(lambda: QcfsResNet((3, 3, 3), (16, 32, 64), 10, 8))
    old = {}
    for k, v in release.state_dict().items():
        k = k.replace(".act.thresh", ".relu.up") if k.endswith(".act.thresh") else k
        old[k[: -len("thresh")] + "up" if k.endswith(".thresh") else k] = v
    assert any(k.endswith(".relu.up") for k in old) and not any(k.endswith("thresh") for k in old)
    suite, meta, out, _ = run_import(tmp_path, capsys, "qcfs", "resnet20_qcfs", old, "--L", "8")
    assert meta["act_kwargs"]["L"] == 8 and "assumed" not in out and "renamed" in out
    same_outputs(suite, release, image(32))


def test_settings_the_releases_write_into_file_names(tmp_path, capsys):
    """QCFS's main_train.py names its file <arch>_L[<L>].pth; the FTBC scripts name RTS files
    <arch>-<dataset>-relu<thresh>.pth, relu0 for a plain ReLU."""
    release = build(lambda: QcfsResNet((3, 3, 3), (16, 32, 64), 10, 8))
    suite, meta, out, _ = run_import(tmp_path / "q", capsys, "qcfs", "resnet20_qcfs", release.state_dict(),
                                     name="resnet20_L[8].pth")
    assert meta["act_kwargs"]["L"] == 8 and "L=8 from the file name" in out and "assumed" not in out
    same_outputs(suite, release, image(32))
    release = build(lambda: RtsResNet20(10, 0.0))
    suite, meta, out, _ = run_import(tmp_path / "r", capsys, "rts", "resnet20_rts", release.state_dict(),
                                     name="resnet20-cifar10-relu0.pth")
    assert meta["act"] == "relu" and "--act relu from the file name" in out
    same_outputs(suite, release, image(32))


# ---------------------------------------------------------------- SNN Calibration


@pytest.mark.parametrize("arch, factory, wrap, pools", [
    # main_train_cifar.py's *_best.pth: the bare state dict
    ("resnet20_snnc", lambda: SnncResNet20(10), None, 0),
    # the ImageNet checkpoints go through load_model_pytorch: 'state_dict' / 'model' / bare, 'module.' removed
    ("resnet34_snnc", lambda: SnncResNet34(1000), "state_dict", 0),
    ("vgg16_snnc", lambda: SnncVGG16Cifar(100), None, 0),
    ("vgg16_snnc", lambda: SnncVGG16Cifar(10, icml=True), "model", 5),
    # an adaptive 7 x 7 pool before the classifier: any input size works, 32 x 32 here
    ("vgg16_imagenet", lambda: SnncVGG16ImageNet(1000, bn=True), "state_dict", 0),
    ("vgg16_rts_imagenet", lambda: SnncVGG16ImageNet(1000, bn=False), None, 0),
], ids=["resnet20", "resnet34", "vgg16", "vgg16-icml", "vgg16_bn-imagenet", "vgg16-imagenet"])
def test_snnc(tmp_path, capsys, arch, factory, wrap, pools):
    release = build(factory)
    state = release.state_dict()
    payload = state
    if wrap:
        prefix = "module." if wrap == "state_dict" else ""  # saved from DistributedDataParallel
        payload = {wrap: {prefix + k: v for k, v in state.items()}, "epoch": 120, "best_acc1": torch.tensor(73.5)}
    suite, meta, _, _ = run_import(tmp_path, capsys, "snnc", arch, payload)
    assert meta["act"] == "relu" and meta["act_kwargs"] == {}
    all_keys_used(meta, state)
    assert len(meta["imported"]["fixed_pools_checked"]) == pools  # the ICML code's AvgPoolConv weights
    same_outputs(suite, release, image(32))


def test_snnc_resnet20_icml(tmp_path, capsys):
    """Stride-2 third stem conv, no stem pool; the AvgPoolConv + ReLU head is the suite's pool + activation."""
    release = build(lambda: SnncResNet20Icml(10))
    state = release.state_dict()
    suite, meta, out, _ = run_import(tmp_path, capsys, "snnc", "resnet20_snnc_icml", state)
    assert "warning" not in out and not meta["imported"]["caveat"]
    all_keys_used(meta, state)
    assert meta["imported"]["fixed_pools_checked"] == ["avgpool.weight"]
    same_outputs(suite, release, image(32))


# ---------------------------------------------------------------- RTS


@pytest.mark.parametrize("arch, factory, extra, act", [
    ("resnet20_rts", lambda: RtsResNet20(10, 1.0), (), "clip"),
    ("resnet20_rts", lambda: RtsResNet20(100, 0.0), ("--act", "relu"), "relu"),  # trained with --thresh 0
    ("vgg16_rts", lambda: RtsVGG16(100, 2.0), (), "clip"),
], ids=["resnet20", "resnet20-relu", "vgg16"])
def test_rts(tmp_path, capsys, arch, factory, extra, act):
    release = build(factory)
    state = release.state_dict()  # main_train.py saves ann.module.state_dict(): bare, no 'module.'
    suite, meta, _, _ = run_import(tmp_path, capsys, "rts", arch, state, *extra)
    assert meta["act"] == act
    if act == "clip":  # the release's --thresh: 1 on CIFAR-10, 2 on CIFAR-100
        assert meta["act_kwargs"] == {"y_th": {10: 1.0, 100: 2.0}[meta["num_classes"]]}
    all_keys_used(meta, state)
    same_outputs(suite, release, image(32))


def test_rts_vgg16_imagenet_by_parts(tmp_path, capsys):
    """FTBC's ImageNet VGG16 of RTS flattens the 7 x 7 map of a 224 x 224 image: checked in parts."""
    release = build(lambda: RtsVGG16(1000, 3.0, imagenet=True))
    state = release.state_dict()
    suite, meta, _, _ = run_import(tmp_path, capsys, "rts", "vgg16_rts_imagenet", state, "--dataset", "imagenet")
    assert meta["act_kwargs"] == {"y_th": 3.0}
    all_keys_used(meta, state)
    suite, release = suite.double(), release.double()
    x, v = image(32), torch.randn(2, 512 * 7 * 7, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(suite.features(x), release.features(x))
        torch.testing.assert_close(suite.fc(suite.pre_logits(v)), release.head(v))
        m = torch.randn(2, 512, 7, 7, dtype=torch.float64)
        torch.testing.assert_close(suite.global_pool(m), m)


# ---------------------------------------------------------------- the result in evaluate and the workflow


def test_imported_checkpoint_runs_in_evaluate_and_the_workflow(tmp_path, capsys):
    release = build(lambda: QcfsResNet((3, 3, 3), (16, 32, 64), 10, 4))
    run_import(tmp_path, capsys, "qcfs", "resnet20_qcfs", release.state_dict())
    ckpt = tmp_path / "imported" / "model.safetensors"
    config = {"workdir": str(tmp_path / "work"), "anns": [{
        "dataset": "cifar10", "arch": "resnet20_qcfs", "activations": ["qcfs"], "recipe": "qcfs_cifar10_cpu",
        "checkpoints": {"qcfs": str(ckpt)}}]}
    (ann,) = grid.anns(config)
    _, meta = load_model(grid.checkpoint_path(config, ann))
    assert (meta["dataset"], meta["arch"], meta["act"]) == (ann.dataset, ann.arch, ann.act)
    data = write_imagefolder(tmp_path / "c10", classes=list(CIFAR_CLASSES["cifar10"]), per_class=2)
    status = cli_main(["evaluate", "--checkpoint", str(tmp_path / "imported"), "--method", "qcfs", "--T", "2",
                       "--data-root", str(data), "--out", str(tmp_path / "eval"), "--quiet",
                       "--set", "threshold_batch_size=4"])
    assert status == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "eval" / "result.json").read_text())
    assert result["checkpoint"]["imported"]["release"] == "qcfs"


# ---------------------------------------------------------------- what is refused


def _fails(capsys, *argv: str) -> str:
    assert cli_main(["import-checkpoint", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ftbc import-checkpoint: error: "), err
    return err


class _WritesAFile:
    """Unpickled, it would call open(path, 'w'): proof of code run while loading."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_file_that_needs_unpickling_code_is_refused(tmp_path, capsys):
    """main_train_cifar.py's resumable file also pickles the loss and optimiser objects."""
    state = build(lambda: SnncResNet20(10)).state_dict()
    src = tmp_path / "res20_wBN_wd5e4_state_dict.pth"
    torch.save({"model": state, "epoch": 3, "loss": nn.CrossEntropyLoss(), "hook": _WritesAFile(tmp_path / "ran")},
               src)
    err = _fails(capsys, "--from", "snnc", "--arch", "resnet20_snnc", str(src), "--out", str(tmp_path / "o"))
    assert "cannot be read as a plain state dict with weights_only=True" in err
    assert not (tmp_path / "ran").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("payload, words", [
    (torch.zeros(3), "holds a Tensor, not a state dict"),
    ({"epoch": 3, "best_acc": 91.0}, "holds a dict with keys epoch, best_acc, not a state dict"),
    (b"not a checkpoint", "cannot be read as a plain state dict"),
    (None, "no such file"),
    ("folder", "a folder, not a .pth file"),
])
def test_files_that_are_not_state_dicts(tmp_path, capsys, payload, words):
    src = tmp_path / "x.pth"
    if payload == "folder":
        src.mkdir()
    elif isinstance(payload, bytes):
        src.write_bytes(payload)
    elif payload is not None:
        torch.save(payload, src)
    assert words in _fails(capsys, "--from", "qcfs", "--arch", "resnet20_qcfs", str(src), "--out", str(tmp_path / "o"))


@pytest.fixture(scope="module")
def qcfs_resnet20_state():
    return build(lambda: QcfsResNet((3, 3, 3), (16, 32, 64), 10, 4)).state_dict()


def _try(tmp_path, capsys, state, *argv: str) -> str:
    src = tmp_path / "release.pth"
    torch.save(state, src)
    return _fails(capsys, str(src), "--out", str(tmp_path / "o"), *argv)


def test_a_wrong_shape_names_the_key(tmp_path, capsys, qcfs_resnet20_state):
    state = dict(qcfs_resnet20_state)
    state["conv3_x.1.residual_function.3.weight"] = torch.zeros(32, 32, 1, 1)
    err = _try(tmp_path, capsys, state, "--from", "qcfs", "--arch", "resnet20_qcfs")
    assert "size mismatch conv3_x.1.residual_function.3.weight [32, 32, 1, 1]" in err
    assert "stages.1.1.conv2.weight [32, 32, 3, 3]" in err


def test_missing_and_unexpected_tensors_are_errors(tmp_path, capsys, qcfs_resnet20_state):
    state = dict(qcfs_resnet20_state)
    del state["conv4_x.2.act.thresh"]
    state["conv4_x.2.extra.weight"] = torch.zeros(3)
    err = _try(tmp_path, capsys, state, "--from", "qcfs", "--arch", "resnet20_qcfs")
    assert "missing conv4_x.2.act.thresh" in err and "unexpected" in err and "conv4_x.2.extra.weight" in err


def test_a_conv_bias_with_nowhere_to_go_is_an_error(tmp_path, capsys):
    state = build(lambda: RtsResNet20(10, 1.0)).state_dict()
    state["layer1.0.residual.0.bias"] = torch.zeros(64)  # the suite's RTS convs have no bias and no BN
    err = _try(tmp_path, capsys, state, "--from", "rts", "--arch", "resnet20_rts")
    assert "unexpected (no counterpart in the suite's network) layer1.0.residual.0.bias" in err


def test_a_wrong_release_for_the_arch(tmp_path, capsys, qcfs_resnet20_state):
    err = _try(tmp_path, capsys, qcfs_resnet20_state, "--from", "rts", "--arch", "resnet20_qcfs")
    assert "--arch resnet20_qcfs is not a network of the RTS" in err and "it comes from --from qcfs" in err
    err = _try(tmp_path, capsys, qcfs_resnet20_state, "--from", "qcfs", "--arch", "resnet20")
    assert "not the release's own name" in err and "resnet20_qcfs (resnet20 (ResNet4Cifar))" in err
    err = _try(tmp_path, capsys, qcfs_resnet20_state, "--from", "qcfs", "--arch", "resnet20_qcfs", "--act", "relu")
    assert "trains with qcfs activations" in err
    # a file of another release under the right --from / --arch pair for that release
    err = _try(tmp_path, capsys, qcfs_resnet20_state, "--from", "snnc", "--arch", "resnet20_snnc")
    assert "does not fit resnet20_snnc" in err and "missing conv1.weight" in err


def test_the_error_names_the_arch_the_file_fits(tmp_path, capsys, qcfs_resnet20_state):
    state = build(lambda: SnncResNet20(10)).state_dict()
    err = _try(tmp_path, capsys, state, "--from", "snnc", "--arch", "resnet20_snnc_icml")
    assert err.rstrip().endswith("(the file fits --arch resnet20_snnc)")
    err = _try(tmp_path, capsys, qcfs_resnet20_state, "--from", "qcfs", "--arch", "vgg16_qcfs")
    assert "no classifier classifier.7.weight" in err and err.rstrip().endswith("(the file fits --arch resnet20_qcfs)")


def test_classes_and_dataset_must_agree(tmp_path, capsys, qcfs_resnet20_state):
    err = _try(tmp_path, capsys, qcfs_resnet20_state, "--from", "qcfs", "--arch", "resnet20_qcfs",
               "--dataset", "cifar100")
    assert "--dataset cifar100 has 100 classes, the file's classifier 10" in err
    err = _try(tmp_path, capsys, qcfs_resnet20_state, "--from", "qcfs", "--arch", "resnet20_qcfs",
               "--num-classes", "100")
    assert "--num-classes 100, but the file's classifier has 10 outputs" in err


def test_a_non_positive_qcfs_threshold_is_refused(tmp_path, capsys, qcfs_resnet20_state):
    state = dict(qcfs_resnet20_state)
    state["conv2_x.0.act.thresh"] = torch.tensor([-0.5])
    err = _try(tmp_path, capsys, state, "--from", "qcfs", "--arch", "resnet20_qcfs")
    assert "stages.0.0.act2 is -0.5" in err
