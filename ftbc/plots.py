"""Figures of ``ftbc tables``: accuracy against T, and FTBC's accuracy against calibration iteration.

Both read only what ``ftbc evaluate`` wrote; PNGs go through an atomic write.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ftbc._io import atomic_write  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def figure_name(dataset: str, arch: str) -> str:
    return f"{dataset}_{arch}_accuracy.png"


def plot_accuracy_vs_T(acc: pd.DataFrame, published: pd.DataFrame, dataset: str, out_dir: Path) -> list[Path]:
    """One PNG per architecture of ``dataset``: a line per method (mean over seeds), published points as rings."""
    from ftbc.tables import match_published

    paths = []
    acc = acc[acc["dataset"] == dataset]
    pub = match_published(acc, published)
    for arch, a in acc.groupby("arch"):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for i, (method, m) in enumerate(a.groupby("method")):
            color = plt.get_cmap("tab20")(i % 20)
            curve = m.groupby("T")["accuracy"].agg(["mean", "std"]).reset_index()
            ax.plot(curve["T"], curve["mean"], color=color, label=method, lw=1.5, ls=_style(method),
                    marker="o" if len(curve) < 12 else None, ms=3)
            if curve["std"].notna().any():
                ax.fill_between(curve["T"], curve["mean"] - curve["std"], curve["mean"] + curve["std"],
                                color=color, alpha=0.15, lw=0)
            p = pub[(pub.arch == arch) & (pub.method == method)]
            if not p.empty:
                ax.scatter(p["T"], p["published"], facecolors="none", edgecolors=color, s=40, zorder=3)
        ann = a["ann_accuracy"].groupby(a["activation"]).mean()
        for act, v in ann.items():
            ax.axhline(v, color="0.6", ls=":", lw=1)
            ax.annotate(f"ANN {act} {v:.1f}", (a["T"].max(), v), fontsize=7, color="0.4", ha="right", va="bottom")
        ax.set_xscale("log", base=2)
        ticks = sorted(a["T"].unique())
        ax.set_xticks([t for t in ticks if t & (t - 1) == 0], [str(t) for t in ticks if t & (t - 1) == 0])
        ax.set_xlabel("time steps T")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{dataset} / {arch}  (rings: published)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), title="solid: base, dashed: FTBC,\n"
                  "dotted: FTBC quantile", title_fontsize=6)
        path = out_dir / figure_name(dataset, arch)
        _save(fig, path)
        paths.append(path)
    return paths


def _style(method: str) -> str:
    if method.endswith("_quantile"):
        return ":"
    return "--" if method.startswith("ftbc") else "-"


def iteration_log(run_dirs: Iterable[Path]) -> pd.DataFrame:
    """Held-out accuracy at T after each FTBC iteration, from the calibration logs of ``result.json``."""
    rows = []
    for d in run_dirs:
        res = json.loads((Path(d) / "result.json").read_text())
        ckpt = res.get("checkpoint", {})
        for run in res["runs"]:
            for entry in run.get("log", []):
                if entry.get("stage") == "ftbc" and "iteration" in entry and "holdout_acc" in entry:
                    rows.append(dict(dataset=ckpt.get("dataset"), arch=ckpt.get("arch"),
                                     method=res["method"]["name"], seed=res.get("config", {}).get("seed", 0),
                                     T=run["T"], iteration=entry["iteration"],
                                     accuracy=entry["holdout_acc"][run["T"] - 1]))
    return pd.DataFrame(rows, columns=["dataset", "arch", "method", "seed", "T", "iteration", "accuracy"])


def plot_iterations(run_dirs: Iterable[Path], path: Path) -> pd.DataFrame:
    """FTBC: held-out accuracy at T against calibration iteration, one panel per (dataset, arch, method)."""
    log = iteration_log(run_dirs)
    # a method calibrated in one iteration (the release's FTBC+QCFS) has a point, not a curve: no panel
    panels = [(k, g) for k, g in log.groupby(["dataset", "arch", "method"]) if g["iteration"].nunique() > 1] \
        if not log.empty else []
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, ((dataset, arch, method), g) in zip(axes[0], panels):
        for i, (T, c) in enumerate(g.groupby("T")):
            curve = c.groupby("iteration")["accuracy"].mean()
            ax.plot(curve.index, curve.values, marker=".", color=f"C{i % 10}", label=f"T={T}")
        ax.set_title(f"{method}\n{dataset} / {arch}", fontsize=9)
        ax.set_xlabel("calibration iteration")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("held-out accuracy at T (%)")
    if not panels:
        axes[0][0].text(0.5, 0.5, "no per-iteration log:\nevaluate FTBC methods that iterate\nwith a held-out slice",
                        ha="center", va="center", transform=axes[0][0].transAxes)
        axes[0][0].set_axis_off()
    _save(fig, path)
    return log
