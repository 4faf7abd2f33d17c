"""Speed benchmarks (pytest-benchmark), kept out of the test run (``testpaths = ["tests"]``).

Run: ``python3 -m pytest benchmarks --benchmark-only`` (~10 min on 2 cores);
``-m full`` runs only the heavy configurations skipped by default. Each
benchmark's ``extra_info`` holds the configuration and the peak memory of
one call (:mod:`ftbc.bench.memory`). See BENCHMARKS.md.
"""

from __future__ import annotations

import pytest
import torch

from ftbc.bench.bench import Setup, build


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "full: heavy configuration, run only with -m full")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "full" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="heavy configuration: run with -m full")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="session")
def setups() -> dict[tuple, Setup]:
    """Converted networks, built once per (arch, batch, T, device) for the whole session."""
    return {}


@pytest.fixture
def setup(setups: dict[tuple, Setup], request: pytest.FixtureRequest) -> Setup:
    arch, batch, T, device = request.param
    key = (arch, batch, T, device)
    if key not in setups:
        setups.clear()  # keep one configuration in memory at a time
        setups[key] = build(arch, batch, T, device)
    return setups[key]
