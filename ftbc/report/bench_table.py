"""One markdown table from ``ftbc bench`` JSON: ``python3 -m ftbc.report.bench_table DIR|FILE [--cpu]``.

DIR: a folder of ``ftbc bench`` objects; FILE: the ``--benchmark-json`` of the
pytest grid in ``benchmarks/`` (wall time only).

One row per run: the configuration, the median seconds of the floor and of
the suite's SNN evaluation, and every other candidate as a multiple of the
SNN time (``x``), with the peak memory of the SNN evaluation and the load
average when the run began. ``--cpu`` uses process CPU time instead of wall
time (steadier on a shared machine). Used by ``scripts/gpu_bench.sh`` and
for BENCHMARKS.md; files in DIR that are not ``ftbc bench`` output are ignored.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = ("snn_s", "snn_m", "snn_compiled", "stepwise", "spikingjelly_single", "spikingjelly_multi",
           "ftbc_pass", "release_ftbc_pass")


def _fmt(v: float | None, unit: str = "") -> str:
    return "-" if v is None else f"{v:.3g}{unit}"


def row(r: dict[str, Any], key: str = "median_s") -> str:
    med = r[key]
    snn = med.get("snn")
    rel = [_fmt(med.get(c) / snn if med.get(c) and snn else None, " x") for c in COLUMNS]
    mem = r.get("peak_mem_bytes", {}).get("snn")
    cfg = f"{r['model']} | {r['T']} | {r['batch']} | {r['device'].split(':')[0]} {r.get('precision', 'fp32')}" + (
        " cl" if r.get("channels_last") else "") + (f" chunk {r['chunk']}" if r.get("chunk") else "")
    load = (r.get("loadavg_before") or [None])[0]
    return " | ".join(["", cfg, _fmt(med.get("floor"), " s"), _fmt(snn, " s"),
                       _fmt(snn / med["floor"] if snn and med.get("floor") else None, " x"), *rel,
                       _fmt(mem / 2**20 if mem else None, " MiB"), _fmt(load), ""]).strip()


def table(results: list[dict[str, Any]], key: str = "median_s") -> str:
    head = ["network", "T", "batch", "device", "floor", "snn", "snn/floor", *[f"{c}/snn" for c in COLUMNS],
            "snn peak mem", "load"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + [row(r, key) for r in results])


def from_pytest_benchmark(path: Path) -> list[dict[str, Any]]:
    """Records in ``ftbc bench`` form from a ``--benchmark-json`` file of ``benchmarks/``, one per configuration."""
    runs: dict[tuple, dict[str, Any]] = {}
    for b in json.loads(path.read_text())["benchmarks"]:
        info = b["extra_info"]
        key = (info["model"], info["T"], info["batch"], info["device"])
        r = runs.setdefault(key, {"model": key[0], "T": key[1], "batch": key[2], "device": key[3],
                                  "median_s": {}, "peak_mem_bytes": {}})
        r["median_s"][info["candidate"]] = b["stats"]["median"]
        r["peak_mem_bytes"][info["candidate"]] = info.get("peak_mem_bytes")
    return list(runs.values())


def load(folder: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(folder.glob("*.json")):
        try:
            r = json.loads(p.read_text())
        except (ValueError, OSError):
            continue
        if isinstance(r, dict) and "median_s" in r:
            out.append(r)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cpu = "--cpu" in argv
    argv = [a for a in argv if a != "--cpu"]
    if len(argv) != 1:
        print("usage: python3 -m ftbc.report.bench_table DIR|PYTEST_BENCHMARK.json [--cpu]", file=sys.stderr)
        return 2
    path = Path(argv[0])
    results = from_pytest_benchmark(path) if path.is_file() else load(path)
    print(table(results, "median_cpu_s" if cpu else "median_s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
