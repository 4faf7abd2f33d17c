"""Tests of ftbc.models: the registry, the architectures and the activations.

ImageNet-sized networks are built and run on the meta device (shapes only, no
arithmetic), so the whole file stays fast on two CPU cores.
"""

from __future__ import annotations

import operator

import pytest
import timm
import torch
import torch.fx
from torch import nn

from ftbc.models import ACTIVATIONS, ClipReLU, QCFS, create_model, get_act_layer, is_activation, list_models
from ftbc.models.resnet import BasicBlock

# Per model, counted from docs/methods.md section 7 by hand: activation sites,
# Conv2d layers (shortcut projections included), BatchNorm or not, conv biases
# (default: exactly when there is no BN), AvgPool2d layers (AdaptiveAvgPool2d
# not counted), input size.
ARCH = {
    "vgg_small": dict(sites=6, convs=6, bn=True, avgpools=3, size=32),
    "vgg16_snnc": dict(sites=13, convs=13, bn=True, avgpools=5, size=32),
    "vgg16_qcfs": dict(sites=15, convs=13, bn=True, avgpools=5, size=32),
    "vgg16_rts": dict(sites=15, convs=13, bn=False, avgpools=4, size=32),
    "vgg16_imagenet": dict(sites=15, convs=13, bn=True, avgpools=5, size=224),
    "vgg16_rts_imagenet": dict(sites=15, convs=13, bn=False, avgpools=5, size=224),
    "resnet20_qcfs": dict(sites=1 + 18, convs=1 + 18 + 2, bn=True, avgpools=0, size=32),
    "resnet20_rts": dict(sites=3 + 16, convs=3 + 16 + 3, bn=False, bias=False, avgpools=1, size=32),
    "resnet20_snnc": dict(sites=1 + 18, convs=1 + 18 + 2, bn=True, avgpools=0, size=32),
    "resnet20_snnc_icml": dict(sites=3 + 16 + 1, convs=3 + 16 + 3, bn=True, avgpools=0, size=32),
    "resnet18_cifar": dict(sites=1 + 16, convs=1 + 16 + 3, bn=True, avgpools=0, size=32),
    "resnet34_snnc": dict(sites=3 + 32, convs=3 + 32 + 3, bn=True, avgpools=1, size=224),
    "resnet34_qcfs": dict(sites=1 + 32, convs=1 + 32 + 3, bn=True, avgpools=0, size=224),
}
MODELS = list_models()
ACT_SETTINGS = {"relu": {}, "qcfs": dict(L=3, init_lambda=5.0), "clip": dict(y_th=2.0)}
ACT_CLASS = {"relu": nn.ReLU, "qcfs": QCFS, "clip": ClipReLU}


def _device(name: str) -> str:
    """ImageNet nets live on the meta device: their shapes are checked, not their values."""
    return "meta" if ARCH[name]["size"] == 224 else "cpu"


def _build(name: str, act: str = "qcfs", via_timm: bool = False, num_classes: int = 10) -> nn.Module:
    with torch.device(_device(name)):
        if via_timm:
            return timm.create_model(name, num_classes=num_classes, act_layer=act, **ACT_SETTINGS[act])
        return create_model(name, num_classes=num_classes, act_layer=act, **ACT_SETTINGS[act])


def _input(name: str, batch: int = 2) -> torch.Tensor:
    size = ARCH[name]["size"]
    return torch.randn(batch, 3, size, size, device=_device(name))


class LeafTracer(torch.fx.Tracer):
    """Keeps the activations as call_module nodes, as the SNN converter needs."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (QCFS, ClipReLU)) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    return torch.fx.GraphModule(model, LeafTracer().trace(model))


# --- registry ---------------------------------------------------------------------------------

def test_list_models_names_exactly_the_suite_models():
    assert MODELS == sorted(ARCH)
    assert list_models("resnet20_*") == ["resnet20_qcfs", "resnet20_rts", "resnet20_snnc", "resnet20_snnc_icml"]


def test_unknown_or_foreign_model_name_is_rejected_with_the_valid_names():
    for name in ("resnet21", "resnet18"):  # resnet18 is timm's, not ours
        with pytest.raises(ValueError, match="resnet20_qcfs"):
            create_model(name)


def test_bad_activation_arguments_are_rejected():
    with pytest.raises(ValueError, match="relu, qcfs, clip"):
        create_model("vgg_small", act_layer="gelu")
    with pytest.raises(ValueError, match="y_th"):
        create_model("vgg_small", act_layer="qcfs", y_th=1.0)
    with pytest.raises(ValueError, match="L"):
        create_model("vgg_small", act_layer="relu", L=4)


def test_registering_a_timm_name_is_an_error():
    from ftbc.models._factory import register_model

    def resnet18(pretrained=False, **kwargs):  # timm's own name
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="timm model"):
        register_model(resnet18)
    assert "resnet18" not in list_models()


def test_pretrained_weights_are_refused():
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model("vgg_small", pretrained=True)


@pytest.mark.parametrize("name", MODELS)
def test_timm_create_model_equals_our_factory(name):
    torch.manual_seed(0)
    ours = _build(name)
    torch.manual_seed(0)
    theirs = _build(name, via_timm=True)
    assert type(ours) is type(theirs)
    assert str(ours) == str(theirs)
    sd_ours, sd_theirs = ours.state_dict(), theirs.state_dict()
    assert list(sd_ours) == list(sd_theirs)
    for key, value in sd_ours.items():
        assert value.shape == sd_theirs[key].shape, key
        if value.device.type != "meta":
            assert torch.equal(value, sd_theirs[key]), key
    assert ours.pretrained_cfg == theirs.pretrained_cfg
    assert ours.pretrained_cfg["input_size"] == (3, ARCH[name]["size"], ARCH[name]["size"])


@pytest.mark.parametrize("name", MODELS)
def test_timm_default_num_classes_follows_the_dataset(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert model.fc.out_features == (10 if ARCH[name]["size"] == 32 else 1000)


# --- architecture -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_output_shape(name):
    model = _build(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(_input(name))
    assert out.shape == (2, 7)
    if out.device.type != "meta":
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("name", MODELS)
def test_activation_injected_at_every_site(name, act):
    model = _build(name, act=act)
    sites = [m for _, m in model.named_modules(remove_duplicate=False) if is_activation(m)]
    assert len(sites) == ARCH[name]["sites"]
    assert len({id(m) for m in sites}) == len(sites), "an activation instance is shared between sites"
    assert all(type(m) is ACT_CLASS[act] for m in sites)
    if act == "qcfs":
        assert all(m.L == 3 and (m.lam.is_meta or m.lam.item() == 5.0) for m in sites)
        assert len({id(m.lam) for m in sites}) == len(sites)
    if act == "clip":
        assert all(m.y_th == 2.0 for m in sites)


@pytest.mark.parametrize("name", MODELS)
def test_layers_match_the_lineage(name):
    spec = ARCH[name]
    model = _build(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == spec["convs"]
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == spec["bn"]
    # a conv followed by BN has no bias; without BN every conv has one, except where the lineage says not
    has_bias = spec.get("bias", not spec["bn"])
    assert all((c.bias is not None) == has_bias for c in convs)
    assert sum(type(m) is nn.AvgPool2d for m in model.modules()) == spec["avgpools"]
    assert isinstance(model.fc, nn.Linear)
    assert sum(isinstance(m, nn.Flatten) for m in model.modules()) == 1


def test_lineage_details():
    rts = _build("vgg16_rts")
    assert [c.kernel_size for c in rts.modules() if isinstance(c, nn.Conv2d)].count((1, 1)) == 3
    assert rts.pre_logits[0].in_features == 2048 and rts.pre_logits[0].out_features == 4096
    assert _build("vgg16_snnc").fc.in_features == 512
    assert _build("vgg16_imagenet").pre_logits[0].in_features == 25088
    stem = _build("resnet34_snnc").stem
    assert [m.out_channels for m in stem if isinstance(m, nn.Conv2d)] == [32, 32, 64]
    assert stem[0].stride == (2, 2)
    assert (stem[-1].kernel_size, stem[-1].stride, stem[-1].padding) == (3, 2, 1)
    qcfs34 = _build("resnet34_qcfs")
    assert qcfs34.stem[0].stride == (1, 1) and not any(isinstance(m, nn.AvgPool2d) for m in qcfs34.stem)
    assert [s[-1].conv2.out_channels for s in _build("resnet20_snnc").stages] == [64, 128, 256]
    assert [len(s) for s in _build("resnet20_rts").stages] == [2, 2, 2, 2]
    icml = _build("resnet20_snnc_icml")
    assert [len(s) for s in icml.stages] == [2, 2, 2, 2]
    assert [m.out_channels for m in icml.stem if isinstance(m, nn.Conv2d)] == [64, 64, 64]
    assert icml.fc.in_features == 512 and icml.fc.bias is not None
    # the release's stem subsamples with its third conv; its head pool is a conv + ReLU (a spiking site)
    assert [m.stride for m in icml.stem if isinstance(m, nn.Conv2d)] == [(1, 1), (1, 1), (2, 2)]
    assert not any(isinstance(m, nn.AvgPool2d) for m in icml.stem) and type(icml.pool_act) is type(icml.stem[2])
    assert not any(isinstance(m, nn.Dropout) for m in icml.modules())


# RTS release network (docs/methods.md section 7), counted by hand: stem 3*64*9 + 2*64*64*9 = 75,456;
# stages 147,456 + 524,288 + 2,097,152 + 8,388,608 (3x3 convs and 1x1 projections, no biases);
# head 2048 * classes. 11,253,440 for 10 classes, 11,437,760 for 100.
RTS_PARAMS = {10: 11_253_440, 100: 11_437_760}


@pytest.mark.parametrize("classes", sorted(RTS_PARAMS))
def test_resnet20_rts_is_the_release_network(classes):
    torch.manual_seed(0)
    model = create_model("resnet20_rts", num_classes=classes, act_layer="clip", y_th=1.0)
    modules = list(model.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules)
    assert all(m.bias is None for m in modules if isinstance(m, (nn.Conv2d, nn.Linear)))
    # stem: conv-act-drop, conv-act-drop, conv-act, AvgPool(2); no BN anywhere
    assert [type(m) for m in model.stem] == [nn.Conv2d, ClipReLU, nn.Dropout] * 2 + [nn.Conv2d, ClipReLU, nn.AvgPool2d]
    assert [m.out_channels for m in model.stem if isinstance(m, nn.Conv2d)] == [64, 64, 64]
    assert model.stem[-1].kernel_size == 2 and model.stem[-1].stride == 2
    # Dropout(0.2) modules: two in the stem, one per block between act1 and conv2
    drops = [m for m in modules if isinstance(m, nn.Dropout)]
    assert len(drops) == 2 + 8 and all(type(m) is nn.Dropout and m.p == 0.2 for m in drops)
    assert all(type(b.drop) is nn.Dropout for s in model.stages for b in s)
    assert [b.conv2.out_channels for s in model.stages for b in s] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert type(model.fc) is nn.Linear and model.fc.in_features == 2048 and model.fc.out_features == classes
    assert model.fc.bias is None
    assert sum(p.numel() for p in model.parameters()) == RTS_PARAMS[classes]
    # eval: Dropout is the identity, and the head sees the flattened 512 x 2 x 2 map, not an average of it
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model(x)
    assert feats.shape == (2, 512, 2, 2)
    assert out.shape == (2, classes) and torch.isfinite(out).all()
    assert torch.equal(out, model.fc(feats.flatten(1)))


def test_resnet20_qcfs_has_about_027M_parameters():
    n = sum(p.numel() for p in create_model("resnet20_qcfs").parameters())
    assert 0.26e6 < n < 0.28e6


@pytest.mark.parametrize("name", MODELS)
def test_no_max_pooling(name):
    model = _build(name)
    assert not any("MaxPool" in type(m).__name__ for m in model.modules())
    functions = {str(n.target) for n in _trace(model).graph.nodes if n.op == "call_function"}
    assert not any("max_pool" in f for f in functions)


@pytest.mark.parametrize("name", MODELS)
def test_fx_trace_keeps_activations_as_leaves(name):
    model = _build(name).eval()
    gm = _trace(model)
    leaves = [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), QCFS)]
    assert len(leaves) == ARCH[name]["sites"]
    x = _input(name, batch=1)
    with torch.no_grad():
        out, ref = gm(x), model(x)
    assert out.shape == ref.shape
    if x.device.type != "meta":
        assert torch.equal(out, ref)


@pytest.mark.parametrize("name", [n for n in MODELS if n.startswith("resnet")])
def test_shortcut_is_added_before_the_second_activation(name):
    model = _build(name)
    gm = _trace(model)
    act2 = [n for n in gm.graph.nodes if n.op == "call_module" and n.target.endswith(".act2")]
    assert len(act2) == sum(isinstance(m, BasicBlock) for m in model.modules()) > 0
    for node in act2:
        (arg,) = node.args
        assert arg.op == "call_function" and arg.target in (operator.add, torch.add), node.target
        assert any(a.op == "call_module" and a.target.endswith(".bn2") for a in arg.args)


# --- activations ------------------------------------------------------------------------------

def test_get_act_layer_returns_a_factory_of_fresh_modules():
    for name in ACTIVATIONS:
        factory = get_act_layer(name, **ACT_SETTINGS[name])
        a, b = factory(), factory()
        assert a is not b and type(a) is ACT_CLASS[name]
    with pytest.raises(ValueError, match="relu, qcfs, clip"):
        get_act_layer("swish")
    assert not is_activation(nn.GELU()) and is_activation(QCFS())


def _qcfs_formula(z: torch.Tensor, lam: float, L: int) -> torch.Tensor:
    return lam * torch.clamp(torch.floor(z * L / lam + 0.5) / L, 0, 1)


def test_qcfs_forward_on_hand_picked_values():
    act = QCFS(L=4, init_lambda=2.0)  # levels 0, 0.5, 1, 1.5, 2; steps at 0.25, 0.75, 1.25, 1.75
    z = torch.tensor([-1.0, 0.0, 0.2, 0.26, 0.5, 0.74, 0.76, 1.0, 1.3, 1.9, 2.0, 3.5])
    expected = torch.tensor([0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.0])
    assert torch.equal(act(z), expected)
    assert act.L == 4 and act.lam.shape == () and act.lam.requires_grad


def test_qcfs_forward_matches_the_formula():
    torch.manual_seed(0)
    z = torch.randn(4, 8, 5, 5, dtype=torch.float64) * 3
    act = QCFS(L=8, init_lambda=2.5).double()
    assert torch.allclose(act(z), _qcfs_formula(z, 2.5, 8))


def test_qcfs_gradients_match_the_straight_through_expressions():
    torch.manual_seed(0)
    lam, L = 2.0, 4
    act = QCFS(L=L, init_lambda=lam).double()
    z = (torch.rand(1000, dtype=torch.float64) * 4 - 1).requires_grad_()  # z in (-1, 3)
    g = torch.randn(1000, dtype=torch.float64)
    act(z).backward(g)
    zd = z.detach()
    inside = (zd > 0) & (zd < lam)
    assert inside.any() and (~inside).any()
    # d a / d z: 1 inside the clip range (floor passed straight through), 0 outside
    assert torch.equal(z.grad, torch.where(inside, g, torch.zeros_like(g)))
    # d a / d lam: q - z / lam inside (q the quantised level), 1 above, 0 below
    q = torch.clamp(torch.floor(zd * L / lam + 0.5) / L, 0, 1)
    dlam = torch.where(inside, q - zd / lam, (zd >= lam).double())
    assert torch.allclose(act.lam.grad, (g * dlam).sum())


def _qcfs_autograd_graph(z: torch.Tensor, lam: torch.Tensor, L: int) -> torch.Tensor:
    """QCFS as a chain of autograd nodes: clamp, a straight-through floor, * lam / L."""
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    x = torch.clamp(z * (L / lam), 0.0, float(L)) + 0.5
    return (x + (torch.floor(x) - x).detach()) * (lam / L)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("L, lam", [(4, 2.0), (4, 1.37), (8, 3.1)])
def test_fused_qcfs_equals_the_autograd_graph(dtype, L, lam):
    torch.manual_seed(0)
    z = (torch.randn(32, 8, 6, 6) * 3).to(dtype)
    z.view(-1)[:3] = torch.tensor([0.0, lam, 2 * lam]).to(dtype)  # the clip's end points
    g = torch.randn(32, 8, 6, 6)
    fused, graph = QCFS(L=L, init_lambda=lam), QCFS(L=L, init_lambda=lam)
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    out1, out2 = fused(z1), _qcfs_autograd_graph(z2, graph.lam, L)
    assert out1.dtype == out2.dtype and torch.equal(out1, out2)  # the same values, bit for bit
    out1.backward(g.to(out1.dtype))
    out2.backward(g.to(out2.dtype))
    assert z1.grad.dtype == dtype
    # d/dz: the graph multiplies by lam / L and L / lam, the fused backward passes g: one rounding apart
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused.lam.grad, graph.lam.grad, rtol=1e-5, atol=1e-4)
    with torch.no_grad():  # the no-grad path gives the same values
        assert torch.equal(fused(z), out1.detach())


def test_clip_relu_value_and_gradient():
    act = ClipReLU(y_th=1.5)
    z = torch.tensor([-2.0, -0.1, 0.1, 0.7, 1.4, 1.6, 5.0], requires_grad=True)
    out = act(z)
    assert torch.equal(out, torch.tensor([0.0, 0.0, 0.1, 0.7, 1.4, 1.5, 1.5]))
    out.sum().backward()
    assert torch.equal(z.grad, torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]))
    assert act.y_th == 1.5
