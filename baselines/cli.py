"""``ftbc methods``: the registered conversion methods, one line each."""

from __future__ import annotations

import argparse

from baselines import get_method, list_methods
from ftbc.snn.stages import stage_settings
from ftbc.errors import UserError


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, add_help=add_help)
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch filter, e.g. 'ftbc_*'")
    p.add_argument("--dataset", default=None, help="show the settings used on this dataset")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="also print each method's summary, its paper and each stage's parameters")
    return p


def main(args: argparse.Namespace) -> int:
    names = list_methods(args.pattern)
    if not names:
        raise UserError(f"no registered method matches {args.pattern!r}; registered: {', '.join(list_methods())}")
    rows, details, about = [], [], []
    for name in names:
        m = get_method(name, args.dataset)
        stages = "+".join(s.name for s in m.stages) or "-"
        rows.append((name, m.activation, m.threshold + ("/ch" if m.channelwise else ""), f"{m.v0:g}",
                     "theta/2T" if m.shift else "-", stages, "yes" if m.t_dependent else "no"))
        details.extend(f"  {name}.{s.name}: {stage_settings(s)}" for s in m.stages)
        about.append(f"  {name}: {m.summary or '-'}\n    {m.reference or 'no paper recorded'}")
    head = ("method", "activation", "threshold", "v0/theta", "shift", "stages", "depends on T")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    if args.verbose:
        print("\nwhat each computes, and its paper:")
        print("\n".join(about))
    if args.verbose and details:
        print("\nstage settings" + (f" on {args.dataset}" if args.dataset else "") + ":")
        print("\n".join(details))
    return 0
