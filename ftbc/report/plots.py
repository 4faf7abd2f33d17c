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
from ftbc.report.naming import NAMING, RUN_FILES, figure_name, match_published, naming, row_order  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


# line style by what calibrates the SNN: none, a base method's own stages, FTBC, FTBC's quantile solver
LINE_STYLES = {"none": "-", "FTBC": "--", "FTBC quantile": ":"}
OTHER_CALIBRATION = "-."
MARKERS = "os^Dv"  # the methods of one panel, in row order


def plot_accuracy_vs_T(acc: pd.DataFrame, published: pd.DataFrame, dataset: str, out_dir: Path) -> list[Path]:
    """One PNG per architecture of ``dataset``, one panel per base method (family): a line per method
    (mean over runs; colour = the base, line style = the calibration), its published points as rings
    where there are any, the ANN accuracy of the panel's activation as a grey line."""
    paths = []
    acc = acc[acc["dataset"] == dataset].copy()
    for key in NAMING:  # long tables written before the naming columns existed
        if key not in acc:
            acc[key] = acc["method"].map(lambda m, key=key: naming({"name": m})[key])
    pub = match_published(acc, published)
    for arch, a in acc.groupby("arch"):
        order = row_order(a)
        families = list(dict.fromkeys(a.set_index("method").loc[order, "family"].drop_duplicates()))
        cols = min(3, len(families))
        rows = -(-len(families) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False, sharey=True)
        for k, (ax, family) in enumerate(zip(axes.flat, families)):
            color = plt.get_cmap("tab10")(k % 10)
            f = a[a["family"] == family]
            for j, method in enumerate(m for m in order if m in set(f["method"])):
                m = f[f["method"] == method]
                curve = m.groupby("T")["accuracy"].agg(["mean", "std"]).reset_index()
                style = LINE_STYLES.get(m["calibration"].iloc[0], OTHER_CALIBRATION)
                ax.plot(curve["T"], curve["mean"], color=color, ls=style, lw=1.6, label=m["label"].iloc[0],
                        marker=MARKERS[j % len(MARKERS)] if len(curve) < 12 else None, ms=3.5,
                        alpha=1.0 if style != OTHER_CALIBRATION else 0.75)
                if curve["std"].notna().any():
                    ax.fill_between(curve["T"], curve["mean"] - curve["std"], curve["mean"] + curve["std"],
                                    color=color, alpha=0.12, lw=0)
                p = pub[(pub.arch == arch) & (pub.method == method) & (pub["T"] <= a["T"].max())]  # the T measured
                if not p.empty:  # published rings only where there are published figures, no legend entry
                    ax.scatter(p["T"], p["published"], facecolors="none", edgecolors=color, s=40, zorder=3,
                               label="_nolegend_")
            ann = f["ann_accuracy"].mean()
            ax.axhline(ann, color="0.6", ls=":", lw=1)
            ax.set_title(f"{family}  (ANN {ann:.1f} %)", fontsize=9)
            ax.set_xscale("log", base=2)
            ticks = sorted(a["T"].unique())
            ax.set_xticks([t for t in ticks if t & (t - 1) == 0], [str(t) for t in ticks if t & (t - 1) == 0])
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
            if k % cols == 0:
                ax.set_ylabel("top-1 accuracy (%)")
            ax.set_xlabel("time steps T")
        for ax in list(axes.flat)[len(families):]:
            ax.set_visible(False)
        note = "rings: published; " if not pub[pub.arch == arch].empty else ""
        fig.suptitle(f"{dataset} / {arch}  ({note}solid: no calibration, dash-dot: the base's calibration, "
                     f"dashed: FTBC, dotted: FTBC quantile)", fontsize=9)
        fig.tight_layout()
        path = out_dir / figure_name(dataset, arch)
        _save(fig, path)
        paths.append(path)
    return paths


def iteration_log(run_dirs: Iterable[Path]) -> pd.DataFrame:
    """Held-out accuracy at T after each FTBC iteration, from the calibration logs of ``result.json``."""
    rows = []
    for d in run_dirs:
        res = json.loads((Path(d) / RUN_FILES["result"]).read_text())
        ckpt = res.get("checkpoint", {})
        for run in res["runs"]:
            for entry in run.get("log", []):
                if entry.get("stage") == "ftbc" and "iteration" in entry and "holdout_acc" in entry:
                    rows.append(dict(dataset=ckpt.get("dataset"), arch=ckpt.get("arch"), activation=ckpt.get("act"),
                                     method=res["method"]["name"], seed=res.get("config", {}).get("seed", 0),
                                     T=run["T"], iteration=entry["iteration"],
                                     accuracy=entry["holdout_acc"][run["T"] - 1]))
    return pd.DataFrame(rows, columns=["dataset", "arch", "activation", "method", "seed", "T", "iteration",
                                       "accuracy"])


def plot_iterations(run_dirs: Iterable[Path], path: Path) -> pd.DataFrame:
    """FTBC: held-out accuracy at T against calibration iteration, one panel per (dataset, arch, method);
    a one-pass method on the same ANN (the quantile solver) is a dotted level line in that panel,
    which is what the iterations are weighed against."""
    log = iteration_log(run_dirs)
    # a method calibrated in one iteration (the release's FTBC+QCFS) has a point, not a curve: no panel
    groups = list(log.groupby(["dataset", "arch", "method"])) if not log.empty else []
    panels = [(k, g) for k, g in groups if g["iteration"].nunique() > 1]
    one_pass = pd.concat([g for _, g in groups if g["iteration"].nunique() == 1] or [log.iloc[:0]])
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, ((dataset, arch, method), g) in zip(axes[0], panels):
        for i, (T, c) in enumerate(g.groupby("T")):
            curve = c.groupby("iteration")["accuracy"].mean()
            ax.plot(curve.index, curve.values, marker=".", color=f"C{i % 10}", label=f"T={T}")
            level = one_pass[(one_pass["dataset"] == dataset) & (one_pass["arch"] == arch) & (one_pass["T"] == T)
                             & (one_pass["activation"] == g["activation"].iloc[0])]
            for other, o in level.groupby("method"):
                ax.axhline(o["accuracy"].mean(), color=f"C{i % 10}", ls=":", lw=1.2, label=f"{other} T={T}")
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
