"""The conversion methods of the FTBC paper's comparison, one module each, behind one registry.

A method is a :class:`ftbc.snn.method.Method` value registered by name
(timm-style: ``register_method`` fills a name -> method dict, ``list_methods``
filters with fnmatch, a duplicate name is an error). Importing this package
imports every method module so registration runs; a method defined outside
the package registers itself the same way, and the modules named in the
environment variable ``FTBC_PLUGINS`` are imported too, so the CLI and the
workflow see it (see ``docs/adding-a-baseline.md``).
"""

from __future__ import annotations

import fnmatch

from ftbc.errors import UserError
from ftbc.snn.method import Method, Stage

__all__ = ["Method", "Stage", "register_method", "get_method", "list_methods", "is_method"]

_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry; a name can be registered once."""
    if method.name in _METHODS:
        raise ValueError(f"conversion method {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching the fnmatch ``pattern``, in registration order."""
    return [n for n in _METHODS if fnmatch.fnmatchcase(n, pattern)]


def is_method(name: str) -> bool:
    return name in _METHODS


def get_method(name: str, dataset: str | None = None) -> Method:
    """The method called ``name``, with its settings for ``dataset`` if it has any."""
    try:
        method = _METHODS[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}; registered methods: {', '.join(_METHODS)}") from None
    return method.for_dataset(dataset) if dataset else method


def plugin_modules(spec: str | None = None) -> list[str]:
    """The module names of ``spec``, or else of ``FTBC_PLUGINS`` (comma-separated); results record them."""
    import os

    return [m.strip() for m in (spec or os.environ.get("FTBC_PLUGINS", "")).split(",") if m.strip()]


def load_plugins(spec: str | None = None) -> None:
    """Import the modules named in ``FTBC_PLUGINS`` (comma-separated) so their methods register."""
    import importlib

    for mod in plugin_modules(spec):
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise UserError(f"FTBC_PLUGINS names {mod!r}, which cannot be imported: {e}") from None


# Registration order is the order of the tables.
from baselines import maxnorm, opi, snnc, qcfs, rts, ftbc  # noqa: E402,F401

load_plugins()
