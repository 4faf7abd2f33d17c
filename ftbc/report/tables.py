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
from ftbc.energy import E_AC_PJ, ann_energy_uj, snn_energy_uj
from ftbc.errors import UserError
from ftbc.options import parse_T
from ftbc.report.naming import (ITERATIONS_FIGURE, NAMING, RUN_FILES, TABLE_FILES, load_published, match_published,
                                naming, row_order)

# seed: the calibration seed; ann_seed: the seed the ANN was trained with (a grid may vary both)
KEYS = ["dataset", "arch", "activation", "method", "ann_seed", "seed"]
RESULT_FORMATS = (1,)


# -- collecting ------------------------------------------------------------------------

def read_result(run_dir: Path) -> dict[str, Any]:
    """``result.json`` of one ``ftbc evaluate`` output folder, format-checked."""
    path = run_dir / RUN_FILES["result"]
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
    return path.parent if path.name == RUN_FILES["result"] else path


def _each_run(run_dirs: Iterable[str | Path], table: str) -> Iterator[tuple[Path, dict, dict, pd.DataFrame]]:
    """(folder, result.json, its checkpoint record, ``table`` read) for each evaluate output folder."""
    for d in map(_run_dir, run_dirs):
        res = read_result(d)
        yield d, res, res.get("checkpoint", {}), pd.read_csv(d / table)


def collect_accuracy(run_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """The long table: one row per (dataset, arch, activation, method, seed, T)."""
    frames = []
    for d, res, ckpt, acc in _each_run(run_dirs, RUN_FILES["accuracy"]):
        timing = pd.DataFrame([dict(T_run=r["T"], calibrate_s=r["convert_calibrate_s"], simulate_s=r["simulate_s"])
                               for r in res["runs"]])
        acc = acc.merge(timing, on="T_run", how="left").rename(columns={"t": "T"})
        acc["ann_seed"] = ckpt.get("seed")
        acc["recipe"] = (ckpt.get("recipe") or {}).get("name")
        acc["ann_commit"] = ckpt.get("git_commit")
        acc["n_test"] = res.get("config", {}).get("n_test") or None
        if "calibration_transform" not in acc:  # results written before the setting existed: test transform
            acc["calibration_transform"] = "test"
        for key, value in naming(res.get("method", {})).items():
            acc[key] = value
        macs = res.get("macs") or {}
        acc["ann_macs"] = macs.get("ann", float("nan"))
        acc["input_macs"] = macs.get("input_layer", float("nan"))
        acc["run_dir"] = str(d)
        frames.append(acc)
    if not frames:
        raise UserError("no evaluation results given")
    df = pd.concat(frames, ignore_index=True)
    cols = KEYS + ["T", "accuracy", "ann_accuracy", "protocol", "calibration_transform", "T_run", "calibrate_s",
                   "simulate_s", "recipe", "ann_commit", "n_test", *NAMING, "ann_macs", "input_macs", "run_dir"]
    return df[cols].sort_values(KEYS + ["T"], kind="stable").reset_index(drop=True)


def collect_spikes(run_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """Per layer and T: mean firing rate and spikes / synaptic operations per image up to T."""
    frames = []
    for _, res, ckpt, act in _each_run(run_dirs, RUN_FILES["activity"]):
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
                synops = float(cum["synops_per_image"].iloc[i])
                frames.append(dict(base, T=T, layer=layer, firing_rate=float(rate.iloc[i]),
                                   spikes_per_image=float(cum["spikes_per_image"].iloc[i]),
                                   synops_per_image=synops, ac_energy_uj_per_image=synops * E_AC_PJ * 1e-6))
    return pd.DataFrame(frames)


def spikes_per_image(spikes: pd.DataFrame) -> pd.DataFrame:
    """All layers summed: spikes and synaptic operations per image at each T, per run."""
    if spikes.empty:
        return pd.DataFrame(columns=KEYS + ["T", "spikes_per_image", "synops_per_image"])
    return spikes.groupby(KEYS + ["T"], as_index=False, dropna=False)[["spikes_per_image", "synops_per_image"]].sum()


# -- paper-style tables ------------------------------------------------------------------

def summarize(acc: pd.DataFrame, published: pd.DataFrame, spikes: pd.DataFrame, Ts: list[int]) -> pd.DataFrame:
    """Mean and std over every run (ANN seeds x calibration seeds) per (dataset, arch, method, T),
    with the published figure and spikes; ``runs`` counts them."""
    acc = acc[acc["T"].isin(Ts)]
    g = acc.groupby(["dataset", "arch", "activation", "method", "T"])
    s = g.agg(mean=("accuracy", "mean"), std=("accuracy", "std"), runs=("accuracy", "size"),
              ann=("ann_accuracy", "mean"), ann_std=("ann_accuracy", "std"), protocol=("protocol", "first"),
              calibrate_s=("calibrate_s", "mean"),
              **{k: (k, "first") for k in (*NAMING, "ann_macs", "input_macs") if k in acc}).reset_index()
    s = s.merge(match_published(acc, published), on=["dataset", "arch", "method", "T"], how="left")
    s["diff"] = s["mean"] - s["published"]
    # conversion gaps (ANN - SNN): what a method loses, comparable across ANNs of different accuracy
    s["gap"] = s["ann"] - s["mean"]
    s["published_gap"] = s["published_ann"] - s["published"]
    s["gap_diff"] = s["gap"] - s["published_gap"]
    sp = spikes_per_image(spikes).groupby(["dataset", "arch", "method", "T"], as_index=False)["synops_per_image"]
    s = s.merge(sp.mean(), on=["dataset", "arch", "method", "T"], how="left")
    # energy per image (ftbc.energy): accumulates of the spikes, MACs of the first layer on the analog input
    for col in ("ann_macs", "input_macs"):
        if col not in s:
            s[col] = float("nan")
    s["energy_uj"] = [snn_energy_uj(sy, T, m) for sy, T, m in zip(s["synops_per_image"], s["T"], s["input_macs"])]
    s["ann_energy_uj"] = s["ann_macs"].map(ann_energy_uj)
    return s


PUBLISHED_STYLES = ("beside", "below", "none")


def _num(v: float, std: float = float("nan"), latex: bool = False) -> str:
    pm = r"$\pm$" if latex else "±"
    return f"{v:.2f}" + (f" {pm} {std:.2f}" if pd.notna(std) else "")


def _bold(text: str, latex: bool) -> str:
    return f"\\textbf{{{text}}}" if latex else f"**{text}**"


def _versus(mean: float, pub: float, latex: bool) -> str:
    d = mean - pub
    sign = ("$-$" if latex else "−") if d < 0 else "+"
    return f" / {pub:.2f} ({sign}{abs(d):.2f})"


def paper_table(summary: pd.DataFrame, dataset: str, *, latex: bool = False, published: str = "beside") -> pd.DataFrame:
    """Rows: (arch, the papers' method name) in the papers' order, with the ANN accuracy; columns: T.

    A cell is our mean ± std over runs, the best per architecture and T in bold. ``published``:
    ``'beside'`` adds ' / published (difference)' to each cell that has a published figure,
    ``'below'`` puts a 'published' row under each method that has one, ``'none'`` shows ours only.
    A cell with no published figure never borrows one.
    """
    if published not in PUBLISHED_STYLES:
        raise UserError(f"published must be one of {', '.join(PUBLISHED_STYLES)}, got {published!r}")
    s = summary[summary["dataset"] == dataset]
    Ts = sorted(s["T"].unique())
    label = dict(zip(s["method"], s["label"] if "label" in s else s["method"]))
    order = {m: i for i, m in enumerate(row_order(s))}
    best = s.groupby(["arch", "T"])["mean"].max()
    rows = []
    for (arch, method), g in sorted(s.groupby(["arch", "method"]), key=lambda kv: (kv[0][0], order[kv[0][1]])):
        g = g.set_index("T")
        pub_ann = g["published_ann"].dropna().iloc[0] if g["published_ann"].notna().any() else float("nan")
        ann = _num(g["ann"].iloc[0], g["ann_std"].iloc[0], latex)
        if published == "beside" and pd.notna(pub_ann):
            ann += _versus(g["ann"].iloc[0], pub_ann, latex)
        row = {"arch": arch, "method": label[method], "ANN": ann}
        for T in Ts:
            if T not in g.index:
                row[f"T={T}"] = "–"
                continue
            text = _num(g.at[T, "mean"], g.at[T, "std"], latex)
            if g.at[T, "mean"] >= best[(arch, T)] - 1e-9:
                text = _bold(text, latex)
            if published == "beside" and pd.notna(g.at[T, "published"]):
                text += _versus(g.at[T, "mean"], g.at[T, "published"], latex)
            row[f"T={T}"] = text
        tmax = max(g.index)
        synops = g.at[tmax, "synops_per_image"]
        row[f"SynOps/img at T={tmax} (M)"] = f"{synops / 1e6:.1f}" if pd.notna(synops) else "–"
        energy, ann_energy = g.at[tmax, "energy_uj"], g.at[tmax, "ann_energy_uj"]
        row[f"energy/img at T={tmax} (µJ; ANN)"] = (f"{energy:.2f} ({ann_energy:.2f})" if pd.notna(energy)
                                                    and pd.notna(ann_energy) else "–")
        rows.append(row)
        if published == "below" and g["published"].notna().any():
            source = g["published_source"].dropna().iloc[0]
            pub_row = {"arch": arch, "method": f"  published ({source})",
                       "ANN": f"{pub_ann:.2f}" if pd.notna(pub_ann) else "–"}
            pub_row.update({f"T={T}": f"{g.at[T, 'published']:.2f}" if T in g.index and pd.notna(g.at[T, "published"])
                            else "–" for T in Ts})
            pub_row[f"SynOps/img at T={tmax} (M)"] = "–"
            pub_row[f"energy/img at T={tmax} (µJ; ANN)"] = "–"
            rows.append(pub_row)
    return pd.DataFrame(rows).set_index(["arch", "method"])


def protocol_note(summary: pd.DataFrame, dataset: str) -> str:
    """The footnote saying how each row's number was chosen (never on the test set), and on what data."""
    s = summary[summary["dataset"] == dataset]
    label = dict(zip(s["method"], s["label"] if "label" in s else s["method"]))
    parts = []
    for protocol, g in s.drop_duplicates("method").groupby("protocol", sort=False):
        parts.append(f"{protocol}: {', '.join(label[m] for m in row_order(g))}")
    return "Calibration protocol. " + "; ".join(parts) + "."


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


def to_latex(table: pd.DataFrame, caption: str, *, label: str = "", note: str = "") -> str:
    """A booktabs table ready to paste (``\\usepackage{booktabs, graphicx}``), scaled to the column
    width, with ``\\label`` and the protocol note under it; produced by pandas' ``Styler.to_latex``."""
    esc = lambda v: str(v).replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")  # noqa: E731
    t = table.reset_index()
    t.columns = [esc(c) for c in t.columns]
    t = t.map(lambda v: v if "$" in str(v) or "\\textbf" in str(v) else esc(v))
    body = t.style.hide(axis="index").to_latex(
        hrules=True, column_format="ll" + "r" * (len(t.columns) - 2), position="t", position_float="centering",
        caption=esc(caption), label=label or None)
    body = body.replace("\\begin{tabular}", "\\resizebox{\\columnwidth}{!}{%\n\\begin{tabular}", 1)
    body = body.replace("\\end{tabular}", "\\end{tabular}}" + (f"\n\\par\\footnotesize {esc(note)}" if note else ""), 1)
    return body


def to_html(table: pd.DataFrame, caption: str, note: str = "") -> str:
    """The same table as an HTML page (the workflow report shows it)."""
    t = table.reset_index()
    t = t.map(lambda v: str(v).replace("**", "<b>", 1).replace("**", "</b>", 1) if str(v).count("**") == 2 else v)
    # A fixed element id (pandas draws a random one) keeps regenerated pages byte-identical.
    html = t.style.set_uuid("ftbc").hide(axis="index").set_caption(caption).to_html()
    return f"<html><body>{html}<p><small>{note}</small></p></body></html>\n"


# -- the drivers' method x T table (ftbc quickstart, python -m ftbc.run.reproduce) ----------------

METHOD_TABLE_FILES = {"csv": "table.csv", "markdown": "table.md"}


def _row_labels(accuracy: pd.DataFrame, activation: bool) -> pd.Series:
    act = accuracy["activation"] + ", " if activation else ""
    return accuracy["method"] + " (" + act + "ANN " + accuracy["ann_accuracy"].map("{:.2f}".format) + ")"


def method_by_T(accuracy: pd.DataFrame, *, activation: bool = False) -> pd.DataFrame:
    """Rows: each method with its ANN accuracy (and the ANN's activation), in the order they come;
    columns: t; values: SNN accuracy. The rows name the ANN because one method table may mix ANNs."""
    acc = accuracy.assign(row=_row_labels(accuracy, activation))
    order = list(dict.fromkeys(acc["row"]))
    return acc.pivot_table(index="row", columns="t", values="accuracy").reindex(order)


def write_method_table(out: Path, accuracy: pd.DataFrame, *, Ts: list[int] | None = None, activation: bool = False,
                       run_s: dict[str, float] | None = None) -> pd.DataFrame:
    """``table.csv`` (every t of the long-form ``accuracy``, full precision) and ``table.md`` (the ``Ts``
    columns, two decimals, and each method's seconds when ``run_s`` gives them); returns the full table.

    The Markdown is written without tabulate, so it reads the same whatever is installed."""
    full = method_by_T(accuracy, activation=activation)
    write_text(out / METHOD_TABLE_FILES["csv"], full.to_csv())
    shown = full if Ts is None else full.reindex(columns=[t for t in Ts if t in full.columns])
    md = shown.map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    md.columns = [f"T={t}" for t in shown.columns]
    if run_s is not None:
        method_of = dict(zip(_row_labels(accuracy, activation), accuracy["method"]))
        md["run s"] = [f"{run_s.get(method_of[row], 0.0):.1f}" for row in md.index]
    md.index.name = "method (ANN act, ANN %)" if activation else "method (ANN %)"
    write_text(out / METHOD_TABLE_FILES["markdown"], to_markdown(md))
    return full


# -- CLI ------------------------------------------------------------------------------

def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Aggregate ftbc evaluate outputs into tables and figures.",
                                add_help=add_help)
    p.add_argument("runs", nargs="+", help="ftbc evaluate output folders (or their result.json)")
    p.add_argument("--published", default="results/published/published_results.csv",
                   help="published figures (CSV: source,dataset,arch,method,ann_acc,T,acc,note)")
    p.add_argument("--T", default="1,2,4,8,16,32", help="time steps shown in the paper-style tables")
    p.add_argument("--out", required=True,
                   help="output folder (accuracy.csv, spikes.csv, iterations.csv, paper tables)")
    p.add_argument("--figures", help="folder for the PNG figures (OUT/figures when not given)")
    p.add_argument("--published-style", choices=PUBLISHED_STYLES, default="beside",
                   help="published figures in each cell (beside), in a row under each method (below), or not at all")
    return p


def main(args: argparse.Namespace) -> int:
    from ftbc.report.plots import plot_accuracy_vs_T, plot_iterations

    out = Path(args.out)
    figures = Path(args.figures) if args.figures else out / "figures"
    Ts = parse_T(args.T)
    acc = collect_accuracy(args.runs)
    spikes = collect_spikes(args.runs)
    published = load_published(args.published)
    summary = summarize(acc, published, spikes, Ts)
    write_text(out / TABLE_FILES["accuracy"], acc.to_csv(index=False))
    write_text(out / TABLE_FILES["spikes"], spikes.to_csv(index=False))
    write_text(out / TABLE_FILES["summary"], summary.to_csv(index=False))
    style = args.published_style
    for dataset in sorted(summary["dataset"].unique()):
        caption = (f"SNN top-1 accuracy (%) on {dataset} at each T: ours (mean ± std over runs; the best per "
                   "architecture and T in bold)" + {"beside": " / published (difference)",
                                                     "below": ", published figures in the row below",
                                                     "none": ""}[style] + "; SynOps in millions per image; estimated energy per "
                   "image (0.9 pJ per accumulate, 4.6 pJ per multiply-accumulate on the first layer's input; "
                   "the ANN's in parentheses).")
        note = protocol_note(summary, dataset)
        table = paper_table(summary, dataset, published=style)
        write_text(out / f"{dataset}.md", f"{caption}\n\n" + to_markdown(table) + f"\n{note}\n")
        write_text(out / f"{dataset}.tex", to_latex(paper_table(summary, dataset, latex=True, published=style),
                                                     caption, label=f"tab:{dataset}-accuracy", note=note))
        write_text(out / f"{dataset}.html", to_html(table, caption, note))
        write_text(out / f"{dataset}_gaps.md",
                   "Conversion gap (ANN - SNN, points) against the published gap at each T; calibration "
                   "wall time per run.\n\n" + to_markdown(gap_table(summary, dataset)))
        plot_accuracy_vs_T(acc, published, dataset, figures)
    iterations = plot_iterations([_run_dir(r) for r in args.runs], figures / ITERATIONS_FIGURE)
    write_text(out / TABLE_FILES["iteration_log"], iterations.to_csv(index=False))
    write_text(out / "run.yaml", yaml.safe_dump({**vars(args), "runs": len(args.runs)}, sort_keys=False))
    print(f"{len(acc)} rows from {len(args.runs)} runs -> {out}")
    return 0
