"""How the tables and figures name, group and order the methods' rows, and which published
figure each row is compared with. Shared by :mod:`ftbc.report.tables` and :mod:`ftbc.report.plots`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ftbc.errors import UserError


# The suite's lineage-exact model names -> how the published tables name them (first match wins).
PUBLISHED_ARCH: dict[str, list[str]] = {
    "vgg16_snnc": ["vgg16"], "vgg16_qcfs": ["vgg16"], "vgg16_rts": ["vgg16_rts", "vgg16"],
    "resnet20_qcfs": ["resnet20_qcfs"], "resnet20_rts": ["resnet20_rts", "resnet18_alt"],
    "resnet20_snnc": ["resnet20_snnc"], "resnet18_cifar": ["resnet18"],
    "vgg16_imagenet": ["vgg16"], "vgg16_rts_imagenet": ["vgg16"],
    "resnet34_snnc": ["resnet34"], "resnet34_qcfs": ["resnet34"],
}


NAMING = ("label", "family", "calibration", "rank")
# The files of one ``ftbc evaluate`` output folder, by the workflow rule's output names: written by
# ftbc.run.evaluation, read by the tables and figures, the rules' outputs (ftbc.run.grid.eval_files).
RUN_FILES = {"result": "result.json", "accuracy": "accuracy.csv", "activity": "activity.csv"}
# The tables ``ftbc tables`` writes, by the tables rule's output names (iteration_log: FTBC's held-out
# accuracy after each calibration iteration, the data of the iterations figure), and that figure.
TABLE_FILES = {"accuracy": "accuracy.csv", "spikes": "spikes.csv", "summary": "summary.csv",
               "iteration_log": "iterations.csv"}
ITERATIONS_FIGURE = "ftbc_iterations.png"


def naming(method: dict[str, Any]) -> dict[str, Any]:
    """How the tables name and order a method's rows, from its ``result.json`` record
    (results written before these fields existed: by name, after the others)."""
    name = method.get("name", "?")
    stages = [s.get("name") for s in method.get("stages", [])]
    return {"label": method.get("label") or name, "family": method.get("family") or name,
            "calibration": method.get("calibration") or ("+".join(stages) if stages else "none"),
            "rank": method.get("rank", 10_000)}


def load_published(path: str | Path) -> pd.DataFrame:
    """The published figures, one row per (source, dataset, arch, method, T)."""
    df = pd.read_csv(path)
    missing = {"source", "dataset", "arch", "method", "ann_acc", "T", "acc"} - set(df.columns)
    if missing:
        raise UserError(f"{path} lacks the columns {sorted(missing)}")
    return df


def match_published(acc: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """One published (ann_acc, acc, source) per (dataset, arch, method, T) of ``acc``, via PUBLISHED_ARCH."""
    rows = []
    for (dataset, arch, method), _ in acc.groupby(["dataset", "arch", "method"]):
        for alias in PUBLISHED_ARCH.get(arch, [arch]):
            hit = published[(published.dataset == dataset) & (published.arch == alias) & (published.method == method)]
            if not hit.empty:
                hit = hit.drop_duplicates("T")
                rows += [dict(dataset=dataset, arch=arch, method=method, T=int(r.T), published=float(r.acc),
                              published_ann=float(r.ann_acc), published_source=r.source) for r in hit.itertuples()]
                break
    return pd.DataFrame(rows, columns=["dataset", "arch", "method", "T", "published", "published_ann",
                                       "published_source"])


CALIBRATION_ORDER = {"none": 0, "FTBC": 2, "FTBC quantile": 3}  # other stages (bias, potential, ...): 1


def row_order(summary: pd.DataFrame) -> list[str]:
    """Methods in the papers' order: each base family (in registry order), its rows without
    FTBC first, then FTBC on it, then the quantile solver."""
    m = summary.drop_duplicates("method").copy()
    for key, default in (("rank", 10_000), ("family", None), ("calibration", "none")):
        if key not in m:
            m[key] = m["method"] if default is None else default
    m["family_rank"] = m.groupby("family")["rank"].transform("min")
    m["kind"] = m["calibration"].map(lambda c: CALIBRATION_ORDER.get(c, 1))
    return m.sort_values(["family_rank", "kind", "rank", "method"])["method"].tolist()


def figure_name(dataset: str, arch: str) -> str:
    """File name of the accuracy-against-T figure of (dataset, arch) that ``ftbc tables`` draws
    (``report/plots.py``). Here, not there, so that building the workflow's DAG imports no matplotlib."""
    return f"{dataset}_{arch}_accuracy.png"
