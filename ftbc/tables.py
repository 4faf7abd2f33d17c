"""``ftbc tables``: gather ``ftbc evaluate`` outputs into the long table and paper-style tables.

Everything is derived with pandas from one long table, ``accuracy.csv`` (one
row per dataset, arch, activation, method, seed and T), and one spike table,
``spikes.csv`` (per layer and T: firing rate and synaptic operations per
image). The paper-style tables put mean +- std over seeds beside the published
figure (``results/published/published_results.csv``) and the difference; a
cell with no published figure says so instead of borrowing one.

A T-free method is simulated once to T_max, so its accuracy at T is the
accuracy at step t = T of that run; a T-dependent method has one run per T.
Spikes at T count every step up to T, as the papers count them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd
import yaml

from ftbc._io import write_text
from ftbc.errors import UserError

# seed: the calibration seed; ann_seed: the seed the ANN was trained with (a grid may vary both)
KEYS = ["dataset", "arch", "activation", "method", "ann_seed", "seed"]
# The suite's lineage-exact model names -> how the published tables name them (first match wins).
PUBLISHED_ARCH: dict[str, list[str]] = {
    "vgg16_snnc": ["vgg16"], "vgg16_qcfs": ["vgg16"], "vgg16_rts": ["vgg16_rts", "vgg16"],
    "resnet20_qcfs": ["resnet20_qcfs"], "resnet20_rts": ["resnet20_rts", "resnet18_alt"],
    "resnet20_snnc": ["resnet20_snnc"], "resnet18_cifar": ["resnet18"],
    "vgg16_imagenet": ["vgg16"], "vgg16_rts_imagenet": ["vgg16"],
    "resnet34_snnc": ["resnet34"], "resnet34_qcfs": ["resnet34"],
}
RESULT_FORMATS = (1,)


# -- collecting ------------------------------------------------------------------------

def read_result(run_dir: Path) -> dict[str, Any]:
    """``result.json`` of one ``ftbc evaluate`` output folder, format-checked."""
    path = run_dir / "result.json"
    try:
        res = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: run ftbc evaluate first") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if res.get("format") not in RESULT_FORMATS:
        raise UserError(f"{path} has result format {res.get('format')!r}; this version reads {RESULT_FORMATS} "
                        "(rerun ftbc evaluate to regenerate it)")
    return res


def _run_dir(path: str | Path) -> Path:
    path = Path(path)
    return path.parent if path.name == "result.json" else path


def _each_run(run_dirs: Iterable[str | Path], table: str) -> Iterator[tuple[Path, dict, dict, pd.DataFrame]]:
    """(folder, result.json, its checkpoint record, ``table`` read) for each evaluate output folder."""
    for d in map(_run_dir, run_dirs):
        res = read_result(d)
        yield d, res, res.get("checkpoint", {}), pd.read_csv(d / table)


def collect_accuracy(run_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """The long table: one row per (dataset, arch, activation, method, seed, T)."""
    frames = []
    for d, res, ckpt, acc in _each_run(run_dirs, "accuracy.csv"):
        timing = pd.DataFrame([dict(T_run=r["T"], calibrate_s=r["convert_calibrate_s"], simulate_s=r["simulate_s"])
                               for r in res["runs"]])
        acc = acc.merge(timing, on="T_run", how="left").rename(columns={"t": "T"})
        acc["ann_seed"] = ckpt.get("seed")
        acc["recipe"] = (ckpt.get("recipe") or {}).get("name")
        acc["ann_commit"] = ckpt.get("git_commit")
        acc["n_test"] = res.get("config", {}).get("n_test") or None
        if "calibration_transform" not in acc:  # results written before the setting existed: test transform
            acc["calibration_transform"] = "test"
        acc["run_dir"] = str(d)
        frames.append(acc)
    if not frames:
        raise UserError("no evaluation results given")
    df = pd.concat(frames, ignore_index=True)
    cols = KEYS + ["T", "accuracy", "ann_accuracy", "protocol", "calibration_transform", "T_run", "calibrate_s",
                   "simulate_s", "recipe", "ann_commit", "n_test", "run_dir"]
    return df[cols].sort_values(KEYS + ["T"], kind="stable").reset_index(drop=True)


def collect_spikes(run_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """Per layer and T: mean firing rate and spikes / synaptic operations per image up to T."""
    frames = []
    for _, res, ckpt, act in _each_run(run_dirs, "activity.csv"):
        t_dependent = bool(res.get("method", {}).get("t_dependent"))
        base = dict(dataset=ckpt.get("dataset"), arch=ckpt.get("arch"), activation=ckpt.get("act"),
                    method=res["method"]["name"], ann_seed=ckpt.get("seed"), seed=res.get("config", {}).get("seed", 0))
        for (T_run, layer), g in act.groupby(["T_run", "layer"], sort=False):
            g = g.sort_values("t")
            cum = g[["spikes_per_image", "synops_per_image"]].cumsum()
            rate = g["firing_rate"].expanding().mean()
            Ts = [int(T_run)] if t_dependent else g["t"].astype(int).tolist()
            for T in Ts:
                i = T - 1
                frames.append(dict(base, T=T, layer=layer, firing_rate=float(rate.iloc[i]),
                                   spikes_per_image=float(cum["spikes_per_image"].iloc[i]),
                                   synops_per_image=float(cum["synops_per_image"].iloc[i])))
    return pd.DataFrame(frames)


def spikes_per_image(spikes: pd.DataFrame) -> pd.DataFrame:
    """All layers summed: spikes and synaptic operations per image at each T, per run."""
    if spikes.empty:
        return pd.DataFrame(columns=KEYS + ["T", "spikes_per_image", "synops_per_image"])
    return spikes.groupby(KEYS + ["T"], as_index=False, dropna=False)[["spikes_per_image", "synops_per_image"]].sum()


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


# -- paper-style tables ------------------------------------------------------------------

def summarize(acc: pd.DataFrame, published: pd.DataFrame, spikes: pd.DataFrame, Ts: list[int]) -> pd.DataFrame:
    """Mean and std over every run (ANN seeds x calibration seeds) per (dataset, arch, method, T),
    with the published figure and spikes; ``runs`` counts them."""
    acc = acc[acc["T"].isin(Ts)]
    g = acc.groupby(["dataset", "arch", "activation", "method", "T"])
    s = g.agg(mean=("accuracy", "mean"), std=("accuracy", "std"), runs=("accuracy", "size"),
              ann=("ann_accuracy", "mean"), ann_std=("ann_accuracy", "std"), protocol=("protocol", "first"),
              calibrate_s=("calibrate_s", "mean")).reset_index()
    s = s.merge(match_published(acc, published), on=["dataset", "arch", "method", "T"], how="left")
    s["diff"] = s["mean"] - s["published"]
    # conversion gaps (ANN - SNN): what a method loses, comparable across ANNs of different accuracy
    s["gap"] = s["ann"] - s["mean"]
    s["published_gap"] = s["published_ann"] - s["published"]
    s["gap_diff"] = s["gap"] - s["published_gap"]
    sp = spikes_per_image(spikes).groupby(["dataset", "arch", "method", "T"], as_index=False)["synops_per_image"]
    return s.merge(sp.mean(), on=["dataset", "arch", "method", "T"], how="left")


def _cell(mean: float, std: float, pub: float, latex: bool) -> str:
    pm = r"$\pm$" if latex else "±"
    text = f"{mean:.2f}" + (f" {pm} {std:.2f}" if pd.notna(std) else "")
    if pd.notna(pub):
        d = mean - pub
        sign = ("$-$" if latex else "−") if d < 0 else "+"
        text += f" / {pub:.2f} ({sign}{abs(d):.2f})"
    return text


def paper_table(summary: pd.DataFrame, dataset: str, *, latex: bool = False) -> pd.DataFrame:
    """Rows: (arch, method) with the ANN accuracy; columns: T; cells 'ours ± std / published (diff)'."""
    s = summary[summary["dataset"] == dataset]
    Ts = sorted(s["T"].unique())
    rows = []
    for (arch, method), g in s.groupby(["arch", "method"], sort=True):
        g = g.set_index("T")
        ann = _cell(g["ann"].iloc[0], g["ann_std"].iloc[0], g["published_ann"].dropna().iloc[0]
                    if g["published_ann"].notna().any() else float("nan"), latex)
        row = {"arch": arch, "method": method, "ANN": ann}
        for T in Ts:
            row[f"T={T}"] = _cell(g.at[T, "mean"], g.at[T, "std"], g.at[T, "published"], latex) if T in g.index else "–"
        tmax = max(g.index)
        synops = g.at[tmax, "synops_per_image"]
        row[f"SynOps/img at T={tmax} (M)"] = f"{synops / 1e6:.1f}" if pd.notna(synops) else "–"
        row["calibration"] = g["protocol"].iloc[0]
        rows.append(row)
    return pd.DataFrame(rows).set_index(["arch", "method"])


def gap_table(summary: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Rows: (arch, method); per T: our accuracy, the published one, our conversion gap
    (ANN - SNN), the published gap and the difference of the two gaps; and the mean
    calibration wall time per run (seconds)."""
    s = summary[summary["dataset"] == dataset]
    fmt = lambda v: f"{v:.2f}" if pd.notna(v) else "–"  # noqa: E731
    rows = []
    for (arch, method), g in s.groupby(["arch", "method"], sort=True):
        for r in g.sort_values("T").itertuples():
            rows.append({"arch": arch, "method": method, "T": int(r.T), "ours": fmt(r.mean),
                         "published": fmt(r.published), "ANN": fmt(r.ann), "published ANN": fmt(r.published_ann),
                         "gap": fmt(r.gap), "published gap": fmt(r.published_gap),
                         "gap - published gap": fmt(r.gap_diff), "calibration s": f"{r.calibrate_s:.0f}"})
    return pd.DataFrame(rows).set_index(["arch", "method"])


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (no tabulate needed)."""
    t = table.reset_index()
    lines = ["| " + " | ".join(map(str, t.columns)) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in t.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame, caption: str) -> str:
    """A booktabs table ready to paste (needs \\usepackage{booktabs})."""
    t = table.reset_index()
    esc = lambda s: str(s).replace("_", r"\_").replace("%", r"\%")  # noqa: E731
    head = " & ".join(esc(c) for c in t.columns)
    body = "\n".join(" & ".join(esc(v) if "$" not in str(v) else str(v).replace("_", r"\_") for v in r) + r" \\"
                     for r in t.itertuples(index=False))
    caption = esc(caption).replace("±", r"$\pm$")
    return "\n".join([r"\begin{table}[t]", r"\centering", r"\small", f"\\caption{{{caption}}}",
                      r"\begin{tabular}{" + "l" * 3 + "r" * (len(t.columns) - 4) + "l}", r"\toprule", head + r" \\",
                      r"\midrule", body, r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])


# -- CLI ------------------------------------------------------------------------------

def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Aggregate ftbc evaluate outputs into tables and figures.",
                                add_help=add_help)
    p.add_argument("runs", nargs="+", help="ftbc evaluate output folders (or their result.json)")
    p.add_argument("--published", default="results/published/published_results.csv",
                   help="published figures (CSV: source,dataset,arch,method,ann_acc,T,acc,note)")
    p.add_argument("--T", default="1,2,4,8,16,32", help="time steps shown in the paper-style tables")
    p.add_argument("--out", required=True, help="output folder (accuracy.csv, spikes.csv, paper tables)")
    p.add_argument("--figures", help="folder for the PNG figures (default OUT/figures)")
    return p


def main(args: argparse.Namespace) -> int:
    from ftbc.evaluation import parse_T
    from ftbc.plots import plot_accuracy_vs_T, plot_iterations

    out = Path(args.out)
    figures = Path(args.figures) if args.figures else out / "figures"
    Ts = parse_T(args.T)
    acc = collect_accuracy(args.runs)
    spikes = collect_spikes(args.runs)
    published = load_published(args.published)
    summary = summarize(acc, published, spikes, Ts)
    write_text(out / "accuracy.csv", acc.to_csv(index=False))
    write_text(out / "spikes.csv", spikes.to_csv(index=False))
    write_text(out / "summary.csv", summary.to_csv(index=False))
    for dataset in sorted(summary["dataset"].unique()):
        caption = (f"SNN top-1 accuracy (%) on {dataset} at each T: ours (mean ± std over seeds) / published "
                   "(difference); SynOps in millions per image.")
        write_text(out / f"{dataset}.md", f"{caption}\n\n" + to_markdown(paper_table(summary, dataset)))
        write_text(out / f"{dataset}.tex", to_latex(paper_table(summary, dataset, latex=True), caption))
        write_text(out / f"{dataset}_gaps.md",
                   "Conversion gap (ANN - SNN, points) against the published gap at each T; calibration "
                   "wall time per run.\n\n" + to_markdown(gap_table(summary, dataset)))
        plot_accuracy_vs_T(acc, published, dataset, figures)
    plot_iterations([_run_dir(r) for r in args.runs], figures / "ftbc_iterations.png")
    write_text(out / "run.yaml", yaml.safe_dump({**vars(args), "runs": len(args.runs)}, sort_keys=False))
    print(f"{len(acc)} rows from {len(args.runs)} runs -> {out}")
    return 0
