"""Threshold rules are registered like methods and stages: a rule from outside the repository,
its settings passed through from the method, its T-dependence deciding the runs."""

import sys

import pytest
import torch

import baselines
from _nets import tiny_vgg
from ftbc.snn import thresholds
from ftbc.snn.conversion import convert
from ftbc.snn.graph import spiking_layers
from ftbc.snn.method import Method

PLUGIN = '''
import torch
from baselines import Method, register_method
from ftbc.snn.thresholds import register_threshold_rule


@register_threshold_rule("my_quantile", defaults={"q": 0.999})
def my_quantile(a, *, channelwise, q, **_):
    """theta = the q-quantile of the batch's positive activations (per layer)."""
    pos = a[a > 0].float()
    return torch.quantile(pos[:100_000], q) if pos.numel() else torch.zeros(())


register_threshold_rule("my_per_step", lambda a, *, T, **_: a.max() / T, t_dependent=True)
register_method(Method(name="my_quantile_norm", activation="relu", threshold="my_quantile",
                       threshold_reduce="max", threshold_batches=1, threshold_batch_size=64))
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "my_rules.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(baselines, "_METHODS", dict(baselines._METHODS))  # registrations end with the test
    monkeypatch.setattr(thresholds, "RULES", dict(thresholds.RULES))
    monkeypatch.setattr("ftbc.snn.method.RULES", thresholds.RULES)
    monkeypatch.delitem(sys.modules, "my_rules", raising=False)
    baselines.load_plugins("my_rules")
    yield baselines.get_method("my_quantile_norm")
    sys.modules.pop("my_rules", None)


def _first_threshold(method, x):
    snn = convert(tiny_vgg(), method, data=x, T=4).snn
    return spiking_layers(snn)[0][1].threshold


def test_a_rule_from_a_plugin_sets_thresholds_with_the_method_settings(plugin):
    torch.manual_seed(0)
    x = torch.randn(64, 3, 16, 16)
    with torch.no_grad():  # the first activation's output on the calibration batch, by hand
        a = tiny_vgg()[:3](x)
    got = _first_threshold(plugin, x)
    torch.testing.assert_close(got, torch.quantile(a[a > 0][:100_000], 0.999), rtol=1e-4, atol=1e-5)
    lower = _first_threshold(plugin.with_overrides({"threshold_settings.q": 0.5}), x)
    assert lower < got  # the method's setting reached the rule
    assert not plugin.t_dependent
    with pytest.raises(ValueError, match="has no setting.*qq.*it takes q"):
        plugin.with_overrides({"threshold_settings.qq": 0.5})


def test_a_t_dependent_rule_makes_its_method_t_dependent(plugin):
    m = Method(name="per_step", activation="relu", threshold="my_per_step")
    assert m.t_dependent
    x = torch.randn(32, 3, 16, 16)
    t4, t8 = (spiking_layers(convert(tiny_vgg(), m, data=x, T=T).snn)[0][1].threshold for T in (4, 8))
    torch.testing.assert_close(t4, 2 * t8)


def test_a_rule_name_is_registered_once(plugin):
    with pytest.raises(ValueError, match="already registered"):
        thresholds.register_threshold_rule("max", lambda a, **_: a.max())
