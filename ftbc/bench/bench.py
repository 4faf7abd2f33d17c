"""``ftbc bench``: the suite's SNN evaluation and FTBC pass timed against the floor and the references.

One configuration (network, T, batch, device) per call; every figure comes
from the same process and the same batch, with rounds interleaved (round r
times every candidate before round r + 1 starts) so a change in machine load
hits all of them alike. Candidates (seconds are medians over rounds):

- ``floor``: T x one forward of the converted (BN-folded) ANN on the batch;
- ``snn``, ``snn_s``, ``snn_m``: :func:`ftbc.snn.simulation.simulate` in its default
  order and in step-major / layer-major order (on CUDA through
  :func:`ftbc.bench.accel.fast_simulate`, with ``--precision`` for floor and snn alike);
- ``snn_compiled`` (with ``--compile-scan``): ``snn`` with the IF step compiled (:mod:`ftbc.bench.accel`);
- ``stepwise``: :func:`ftbc.bench.reference.stepwise_simulate`, the releases' loop;
- ``spikingjelly_single`` / ``spikingjelly_multi``: the same network run by
  SpikingJelly in its two step modes (``null`` when it is not installed);
- ``ftbc_pass``: one FTBC heuristic pass (``layerwise_pass``) over the batch;
- ``release_ftbc_pass``: the same pass the release's O(layers^2 x T) way.

Prints one JSON object: ``median_s`` (wall), ``median_cpu_s`` (process CPU
time, steadier on a shared machine), ``peak_mem_bytes`` (see
:mod:`ftbc.bench.memory`), ``ratios``, the check that SpikingJelly's outputs
equal the suite's, and the machine, load and versions.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ftbc.bench import reference as _reference
from ftbc.interop import export_spikingjelly as _spikingjelly
from ftbc.bench.memory import peak_memory
from ftbc.bench.accel import PRECISIONS, auto_chunk, compiled_scan, fast_simulate, precision, to_channels_last
from ftbc.snn.ftbc_solvers import ftbc_heuristic_update
from ftbc.snn.calibration import layerwise_pass
from ftbc.snn.simulation import default_mode, simulate

# --arch shorthands: the CIFAR networks of the issue (SNNC's VGG-16, the standard ResNet-20).
ARCHS = {"vgg16": "vgg16_snnc", "resnet20": "resnet20_qcfs", "small": "vgg_small"}
CANDIDATES = ("floor", "snn", "snn_s", "snn_m", "snn_compiled", "stepwise", "spikingjelly_single",
              "spikingjelly_multi", "ftbc_pass", "release_ftbc_pass")
FTBC_ALPHA = 0.5


@dataclass
class Setup:
    """A converted network and its batch: max-norm thresholds (scalar per layer), v0 = theta/2."""

    model: str
    ann: nn.Module
    snn: nn.Module
    x: Tensor
    T: int


def build(arch: str, batch: int, T: int, device: str = "cpu", seed: int = 0, classes: int = 10) -> Setup:
    """Random-weight CIFAR network converted by max-norm on a random batch (speed does not depend on training)."""
    from baselines import get_method
    from ftbc.snn.conversion import convert
    from ftbc.models import create_model

    name = ARCHS.get(arch, arch)
    torch.manual_seed(seed)
    ann = create_model(name, num_classes=classes, act_layer="relu").eval()
    x = torch.randn(batch, 3, 32, 32)
    method = get_method("maxnorm").with_overrides(
        {"v0": 0.5, "threshold_batches": 1, "threshold_batch_size": batch})
    res = convert(ann, method, data=x, T=T)
    return Setup(name, res.ann.to(device), res.snn.to(device), x.to(device), T)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _compiled(run: Callable[[], Tensor]) -> Callable[[], Tensor]:
    """``run`` with every neuron on the compiled IF step (:func:`ftbc.bench.accel.compiled_scan`)."""
    def compiled_run() -> Tensor:
        with compiled_scan():
            return run()
    return compiled_run


def candidates(s: Setup, *, precision_mode: str = "fp32", channels_last: bool = False,
               compile_scan: bool = False, chunk: int | None = None) -> dict[str, Callable[[], Any] | None]:
    """Name -> zero-argument callable (None where the candidate cannot run here).

    ``chunk``: images per simulation chunk of the snn candidates (default: the simulator's).
    """
    dev = s.x.device
    snn, ann, x, T = s.snn, s.ann, s.x, s.T
    if channels_last:
        snn, x = to_channels_last(copy.deepcopy(snn), x)
        ann = copy.deepcopy(ann).to(memory_format=torch.channels_last)

    @torch.no_grad()
    def floor() -> None:
        with precision(dev, precision_mode):
            for _ in range(T):
                ann(x)

    def suite(mode: str) -> Callable[[], Tensor]:
        if dev.type == "cpu" and precision_mode == "fp32":
            return lambda: simulate(snn, x, T, mode=mode, chunk_size=chunk)
        order = default_mode(dev, x.shape[0], T) if mode == "auto" else mode
        with precision(dev, precision_mode):
            size = chunk or auto_chunk(snn, x, T, order)  # sized once, outside the timed calls
        return lambda: fast_simulate(snn, x, T, mode=order, precision_mode=precision_mode, chunk_size=size)

    snn_compiled = None
    if compile_scan:
        with compiled_scan():
            snn_compiled = _compiled(suite("auto"))  # on CUDA the chunk is sized running the compiled step

    plain = _reference.plain_copy(s.snn)
    cal_fast, cal_release = copy.deepcopy(s.snn), copy.deepcopy(s.snn)
    out: dict[str, Callable[[], Any] | None] = {
        "floor": floor,
        "snn": suite("auto"),
        "snn_s": suite("s"),
        "snn_m": suite("m"),
        "snn_compiled": snn_compiled,
        "stepwise": lambda: _reference.stepwise_simulate(plain, s.x, T),
        "spikingjelly_single": None,
        "spikingjelly_multi": None,
        "ftbc_pass": lambda: layerwise_pass(cal_fast, s.ann, s.x, T,
                                            lambda name, n, xs, a: ftbc_heuristic_update(n, xs, a, FTBC_ALPHA),
                                            returns_outputs=True),
        "release_ftbc_pass": lambda: _reference.release_ftbc_pass(cal_release, s.ann, s.x, T, FTBC_ALPHA),
    }
    if _spikingjelly.available():
        for key, mode in (("spikingjelly_single", "s"), ("spikingjelly_multi", "m")):
            net = _spikingjelly.to_spikingjelly(s.snn, mode, T, node="plain")
            out[key] = lambda net=net: _spikingjelly.sj_simulate(net, s.x, T)
    return out


def spikingjelly_check(s: Setup) -> dict[str, Any]:
    """Max |SpikingJelly - suite| over the outputs of both step modes (0.0: identical)."""
    if not _spikingjelly.available():
        return {"available": False}
    ours = {m: simulate(s.snn, s.x, s.T, mode=m) for m in ("s", "m")}
    diff = {}
    for mode in ("s", "m"):
        theirs = _spikingjelly.sj_simulate(_spikingjelly.to_spikingjelly(s.snn, mode, s.T, node="plain"), s.x, s.T)
        diff[mode] = (theirs - ours[mode]).abs().max().item()
    return {"available": True, "version": _spikingjelly.version(), "max_abs_diff": diff,
            "identical": all(v == 0.0 for v in diff.values())}


def measure(fns: dict[str, Callable[[], Any] | None], device: torch.device, rounds: int,
            rounds_for: dict[str, int] | None = None, warmup: int = 0, memory: bool = True
            ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, int | None], str | None]:
    """Wall and process-CPU seconds per call of each candidate, rounds interleaved, and peak memory.

    A candidate stops after its own round count (``rounds_for``) and is warmed
    up ``warmup`` times unless it runs a single round. The first timed round
    also reads the peak memory (:func:`ftbc.bench.memory.peak_memory`), so memory
    costs no extra call. CPU time (all of torch's threads) is what a shared
    machine steals least from: wall time also counts the waits for a core.
    """
    rounds_for = rounds_for or {}
    live = {k: f for k, f in fns.items() if f is not None and rounds_for.get(k, rounds) > 0}
    for name, f in live.items():
        for _ in range(warmup if rounds_for.get(name, rounds) > 1 else 0):
            f()
    wall: dict[str, list[float]] = {k: [] for k in live}
    cpu: dict[str, list[float]] = {k: [] for k in live}
    peaks: dict[str, int | None] = {}
    method = None
    for r in range(rounds):
        for name, f in live.items():
            if r >= rounds_for.get(name, rounds):
                continue
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            if r == 0 and memory:
                peaks[name], method = peak_memory(f, device)
            else:
                f()
            _sync(device)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu, peaks, method


def ratios(med: dict[str, float | None]) -> dict[str, float | None]:
    def r(a: str, b: str | None) -> float | None:
        return med[a] / med[b] if b and med.get(a) and med.get(b) else None

    sj = [k for k in ("spikingjelly_single", "spikingjelly_multi") if med.get(k)]
    best_sj = min(sj, key=lambda k: med[k]) if sj else None
    return {
        "snn/floor": r("snn", "floor"), "snn_s/floor": r("snn_s", "floor"), "snn_m/floor": r("snn_m", "floor"),
        "snn_compiled/floor": r("snn_compiled", "floor"), "stepwise/snn": r("stepwise", "snn"), "snn/spikingjelly_best": r("snn", best_sj),
        "ftbc_pass/snn": r("ftbc_pass", "snn"), "release_ftbc_pass/ftbc_pass": r("release_ftbc_pass", "ftbc_pass"),
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build one configuration, check SpikingJelly's outputs, time and measure every candidate."""
    device = torch.device(args.device)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    s = build(args.arch, args.batch, args.T, args.device, seed=args.seed)
    load_before = os.getloadavg()
    check = spikingjelly_check(s) if not args.no_check else {"skipped": True}
    fns = candidates(s, precision_mode=args.precision, channels_last=args.channels_last,
                     compile_scan=args.compile_scan, chunk=args.chunk)
    wanted = set(args.only or CANDIDATES) - set(args.skip or ())
    fns = {k: (f if k in wanted else None) for k, f in fns.items()}
    rounds_for = {"release_ftbc_pass": args.release_rounds}
    warmup = args.warmup if args.warmup is not None else int(device.type != "cpu")
    times, cpu_times, peaks, method = measure(fns, device, args.rounds, rounds_for, warmup=warmup,
                                              memory=not args.no_memory)
    med = {k: (statistics.median(times[k]) if times.get(k) else None) for k in CANDIDATES}
    med_cpu = {k: (statistics.median(cpu_times[k]) if cpu_times.get(k) else None) for k in CANDIDATES}
    return {
        "command": "ftbc bench " + " ".join(args.argv), "date": started,
        "arch": args.arch, "model": s.model, "T": args.T, "batch": args.batch, "device": str(device),
        "precision": args.precision, "channels_last": args.channels_last, "compile_scan": args.compile_scan, "chunk": args.chunk,
        "conversion": "maxnorm (EMA of batch max, scalar thresholds), v0 = theta/2, random weights and input",
        "median_s": med, "seconds": times, "median_cpu_s": med_cpu, "cpu_seconds": cpu_times,
        "peak_mem_bytes": peaks, "memory_method": method, "warmup": warmup, "rounds": args.rounds,
        "ratios": ratios(med), "ratios_cpu": ratios(med_cpu), "spikingjelly": check, "machine": machine(),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=add_help)
    p.add_argument("--arch", default="vgg16", help=f"{', '.join(ARCHS)} or a model name from ftbc.models")
    p.add_argument("--T", type=int, default=32, help="time steps of the simulation")
    p.add_argument("--batch-size", "--batch", dest="batch", type=int, default=64, help="images per batch")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per candidate (median reported)")
    p.add_argument("--release-rounds", type=int, default=1, help="rounds of the slow release pass (0: skip it)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls per candidate before timing (default: 1 on CUDA, 0 on CPU)")
    p.add_argument("--only", nargs="*", choices=CANDIDATES, help="time only these candidates")
    p.add_argument("--skip", nargs="*", choices=CANDIDATES, help="do not time these candidates")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="floor and snn stateless layers")
    p.add_argument("--channels-last", action="store_true", help="NHWC weights and input for floor and snn")
    p.add_argument("--compile-scan", action="store_true",
                   help="also time snn_compiled: the default order with the IF step compiled by torch.compile")
    p.add_argument("--chunk", type=int, default=None,
                   help="images per simulation chunk for the snn candidates (default: the simulator's)")
    p.add_argument("--no-memory", action="store_true", help="do not read the peak memory in the first round")
    p.add_argument("--no-check", action="store_true", help="skip the SpikingJelly output check")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and input")
    p.add_argument("--out", "--output", dest="output", type=Path, help="also write the JSON object to this file")
    return p


def main(args: argparse.Namespace) -> int:
    args.argv = getattr(args, "argv", None) or sys.argv[2:]
    result = run(args)
    text = json.dumps(result, indent=1)
    if args.output:
        from ftbc._io import write_text

        write_text(args.output, text + "\n")
    print(text)
    return 0
