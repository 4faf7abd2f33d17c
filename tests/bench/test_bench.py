"""What the speed benchmarks compare against is the same network: SpikingJelly, the plain
step loop and the release's FTBC pass give the suite's numbers; the memory probe sees torch."""

import copy
import json

import pytest
import torch

from _nets import tiny_resnet, tiny_vgg
from ftbc.bench import reference as _reference
from ftbc.interop import export_spikingjelly as _spikingjelly
from ftbc.bench.memory import peak_memory
from ftbc.snn.ftbc_solvers import ftbc_heuristic_update
from ftbc.snn.calibration import layerwise_pass
from ftbc.snn.conversion import convert
from ftbc.snn.graph import spiking_layers
from ftbc.snn.method import Method
from ftbc.snn.simulation import simulate

SCALAR = Method(name="bench_max", activation="relu", threshold="max", threshold_reduce="max",
                v0=0.5, threshold_batches=1, threshold_batch_size=32)
needs_sj = pytest.mark.skipif(not _spikingjelly.available(), reason="spikingjelly is not installed")


def converted(make, x, method=SCALAR, T=8):
    res = convert(make(), method, data=x, T=T)
    return res.snn, res.ann


@needs_sj
@pytest.mark.parametrize("make", [tiny_vgg, tiny_resnet])
@pytest.mark.parametrize("mode", ["s", "m"])
def test_spikingjelly_runs_the_same_network(make, mode):
    torch.manual_seed(0)
    x = torch.randn(24, 3, 16, 16)
    snn, _ = converted(make, x)
    T = 10
    ours = simulate(snn, x, T, mode=mode)
    theirs = _spikingjelly.sj_simulate(_spikingjelly.to_spikingjelly(snn, mode, T, node="plain"), x, T)
    assert ours.abs().sum() > 0
    assert torch.equal(theirs, ours)  # same order of floating-point operations: bit-equal


@needs_sj
def test_spikingjelly_refuses_what_its_if_node_cannot_express():
    x = torch.randn(16, 3, 16, 16)
    snn, _ = converted(tiny_vgg, x, SCALAR.with_overrides({"channelwise": True}))
    with pytest.raises(ValueError, match="scalar threshold"):
        _spikingjelly.to_spikingjelly(snn, "s", 4, node="plain")
    snn, _ = converted(tiny_vgg, x)
    spiking_layers(snn)[0][1].bias = torch.zeros(4, 8)
    with pytest.raises(ValueError, match="FTBC bias"):
        _spikingjelly.to_spikingjelly(snn, "m", 4, node="plain")


@pytest.mark.parametrize("make", [tiny_vgg, tiny_resnet])
def test_plain_stepwise_reference_equals_simulate(make):
    torch.manual_seed(1)
    x = torch.randn(20, 3, 16, 16, dtype=torch.float64)
    snn, _ = converted(make, x.float())
    snn = snn.double()
    for _, n in spiking_layers(snn):
        n.offset = torch.full((), 0.01, dtype=torch.float64)
        n.bias = torch.randn(3, n.threshold.numel() if n.threshold.dim() else 1, dtype=torch.float64) * 0.05
    ref = _reference.stepwise_simulate(_reference.plain_copy(snn), x, 7)
    torch.testing.assert_close(simulate(snn, x, 7, mode="s"), ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("make", [tiny_vgg, tiny_resnet])
def test_release_ftbc_pass_gives_the_layerwise_biases(make):
    torch.manual_seed(2)
    x = torch.randn(32, 3, 16, 16, dtype=torch.float64)
    snn, ann = converted(make, x.float(), SCALAR.with_overrides({"channelwise": True}))
    snn, ann = snn.double(), ann.double()
    fast, release = snn, copy.deepcopy(snn)
    T = 5
    for _ in range(2):  # biases accumulate over passes in both
        layerwise_pass(fast, ann, x, T, lambda name, n, xs, a: ftbc_heuristic_update(n, xs, a, 0.5),
                       returns_outputs=True)
        _reference.release_ftbc_pass(release, ann, x, T, 0.5)
    got = dict(spiking_layers(release))
    for name, n in spiking_layers(fast):
        assert n.bias.abs().sum() > 0
        torch.testing.assert_close(got[name].bias.double(), n.bias.double(), rtol=0, atol=1e-6)


def test_peak_memory_sees_torch_allocations():
    big, method = peak_memory(lambda: torch.ones(50_000_000).sum())  # 200 MB inside torch
    if method == "unavailable":
        pytest.skip("no /proc peak-RSS reset on this system")
    small, _ = peak_memory(lambda: torch.ones(10).sum())
    assert big > 150e6
    assert small < 50e6


def test_bench_prints_one_json_object_and_a_table(capsys, tmp_path):
    from ftbc.bench import bench
    from ftbc.report import bench_table

    args = bench.get_args_parser().parse_args(
        ["--arch", "small", "--T", "2", "--batch", "4", "--rounds", "1", "--device", "cpu",
         "--output", str(tmp_path / "run.json")])
    args.argv = ["--arch", "small"]
    assert bench.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    (tmp_path / "other.json").write_text("[1, 2]")  # not bench output: ignored
    rows = bench_table.table(bench_table.load(tmp_path)).splitlines()
    assert len(rows) == 3 and rows[2].startswith("| vgg_small | 2 | 4 | cpu fp32")
    assert set(out["median_s"]) == set(bench.CANDIDATES)
    assert all(out["median_s"][k] > 0 for k in ("floor", "snn", "stepwise", "ftbc_pass", "release_ftbc_pass"))
    assert set(out["peak_mem_bytes"]) >= {"floor", "snn", "ftbc_pass"}
    if _spikingjelly.available():
        assert out["spikingjelly"]["identical"] is True
    else:
        assert out["median_s"]["spikingjelly_single"] is None


def test_table_from_pytest_benchmark_json(tmp_path):
    from ftbc.report import bench_table

    def entry(candidate, median):
        return {"extra_info": {"candidate": candidate, "model": "m", "T": 8, "batch": 4, "device": "cpu",
                               "peak_mem_bytes": 2**20}, "stats": {"median": median}}

    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": [entry("floor", 1.0), entry("snn", 1.5), entry("stepwise", 3.0)]}))
    (row,) = bench_table.from_pytest_benchmark(path)
    assert row["median_s"] == {"floor": 1.0, "snn": 1.5, "stepwise": 3.0}
    line = bench_table.table([row]).splitlines()[2]
    assert "| 1.5 x |" in line and "| 2 x |" in line  # snn/floor, stepwise/snn


def test_heuristic_outputs_spare_the_rerun_without_changing_a_bit():
    torch.manual_seed(3)
    x = torch.randn(32, 3, 16, 16)
    snn, ann = converted(tiny_resnet, x, SCALAR.with_overrides({"channelwise": True, "shift": True}))
    reuse, rerun = snn, copy.deepcopy(snn)
    update = lambda name, n, xs, a: ftbc_heuristic_update(n, xs, a, 0.5)  # noqa: E731
    for _ in range(2):
        layerwise_pass(reuse, ann, x, 6, update, returns_outputs=True)
        layerwise_pass(rerun, ann, x, 6, update)  # returned outputs ignored: every layer reruns
    for (_, a), (_, b) in zip(spiking_layers(reuse), spiking_layers(rerun)):
        assert torch.equal(a.bias, b.bias)
    assert torch.equal(simulate(reuse, x, 6), simulate(rerun, x, 6))
