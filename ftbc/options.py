"""Parsers of option values shared by several subcommands: T lists (``1-32``, ``1,2,4``) and
``key=value`` method overrides (``--set ftbc.iterations=5``)."""

from __future__ import annotations

from typing import Any

import yaml

from ftbc.errors import UserError


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs, values parsed as YAML scalars (``ftbc.iterations=5``)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def parse_T(text: str) -> list[int]:
    """``32`` -> 1..32 is not implied: '1,2,4' or '1-32' or '32'."""
    Ts: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            Ts.extend(range(int(a), int(b) + 1))
        elif part:
            Ts.append(int(part))
    if not Ts or min(Ts) < 1 or max(Ts) > 4096:
        raise UserError(f"T must be a list of steps in 1..4096 (e.g. 1,2,4,8 or 1-32), got {text!r}")
    return sorted(set(Ts))
