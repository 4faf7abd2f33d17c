"""Accuracy against FTBC calibration iteration, from `ftbc evaluate --holdout` result files.

Usage: python3 scripts/plot_ftbc_iterations.py RESULTS_DIR
Reads RESULTS_DIR/*/result.json, writes RESULTS_DIR/iterations.csv (one row per
run, iteration and t, held-out accuracy) and RESULTS_DIR/iterations.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def collect(root: Path) -> pd.DataFrame:
    rows = []
    for f in sorted(root.glob("*/result.json")):
        res = json.loads(f.read_text())
        for run in res["runs"]:
            for entry in run["log"]:
                if "holdout_acc" not in entry or "iteration" not in entry:
                    continue
                for t, acc in enumerate(entry["holdout_acc"], start=1):
                    rows.append(dict(run=f.parent.name, method=res["method"]["name"], solver=entry["solver"],
                                     T=run["T"], iteration=entry["iteration"], t=t, holdout_accuracy=acc,
                                     ftbc_s=run["timings"].get("ftbc_s")))
    return pd.DataFrame(rows)


def main(root: Path) -> None:
    df = collect(root)
    df.to_csv(root / "iterations.csv", index=False)
    at_T = df[df["t"] == df["T"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    nets = sorted({r.split("_")[1] for r in at_T["run"]})  # ftbc_<net>_<solver>_T<T>: one colour per net
    for run, g in at_T.groupby("run"):
        color = f"C{nets.index(run.split('_')[1]) % 10}"
        if g["iteration"].nunique() > 1:
            ax.plot(g["iteration"], g["holdout_accuracy"], color=color, label=run)
        else:  # one pass (quantile, or a one-iteration release setting): a level line
            ax.axhline(g["holdout_accuracy"].iloc[0], color=color,
                       linestyle=":" if "quantile" in run else "--", label=run)
    ax.set_xlabel("FTBC calibration iteration")
    ax.set_ylabel("held-out training accuracy at T (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / "iterations.png", dpi=120)
    print(at_T.groupby("run")["holdout_accuracy"].agg(["first", "max", "last"]).round(2).to_string())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
