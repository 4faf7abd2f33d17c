"""The method x T table that ``ftbc quickstart`` and ``python -m ftbc.run.reproduce`` write (table.csv, table.md)."""

import pandas as pd

from ftbc.report.tables import method_by_T, write_method_table

# long form as ftbc.run.evaluation.run returns it: a T-free method (every t of one run) on a ReLU ANN,
# a T-dependent one (one row per run) on a QCFS ANN that has no T=4 run
ACCURACY = pd.DataFrame({
    "method": ["maxnorm"] * 4 + ["qcfs_x"] * 2,
    "activation": ["relu"] * 4 + ["qcfs"] * 2,
    "ann_accuracy": [91.234] * 4 + [88.5] * 2,
    "t": [1, 2, 3, 4, 1, 2],
    "accuracy": [10.0, 20.125, 30.5, 40.0, 55.556, 60.0],
})


def test_rows_keep_the_methods_order_and_name_their_ann():
    table = method_by_T(ACCURACY.iloc[::-1])
    assert list(table.index) == ["qcfs_x (ANN 88.50)", "maxnorm (ANN 91.23)"]
    assert list(table.columns) == [1, 2, 3, 4]
    assert table.loc["maxnorm (ANN 91.23)", 2] == 20.125 and pd.isna(table.loc["qcfs_x (ANN 88.50)", 4])


def test_quickstart_form_every_t_in_both_files(tmp_path):
    write_method_table(tmp_path, ACCURACY)
    assert (tmp_path / "table.csv").read_text() == (
        "row,1,2,3,4\n"
        "maxnorm (ANN 91.23),10.0,20.125,30.5,40.0\n"
        "qcfs_x (ANN 88.50),55.556,60.0,,\n")
    assert (tmp_path / "table.md").read_text() == (
        "| method (ANN %) | T=1 | T=2 | T=3 | T=4 |\n"
        "|---|---|---|---|---|\n"
        "| maxnorm (ANN 91.23) | 10.00 | 20.12 | 30.50 | 40.00 |\n"
        "| qcfs_x (ANN 88.50) | 55.56 | 60.00 |  |  |\n")


def test_reproduce_form_shown_T_activation_and_seconds(tmp_path):
    full = write_method_table(tmp_path, ACCURACY, Ts=[2, 4, 8], activation=True, run_s={"maxnorm": 12.345})
    assert list(full.columns) == [1, 2, 3, 4]  # the CSV keeps every t; the Markdown shows the asked T present
    assert (tmp_path / "table.csv").read_text().splitlines()[1] == '"maxnorm (relu, ANN 91.23)",10.0,20.125,30.5,40.0'
    assert (tmp_path / "table.md").read_text() == (
        "| method (ANN act, ANN %) | T=2 | T=4 | run s |\n"
        "|---|---|---|---|\n"
        "| maxnorm (relu, ANN 91.23) | 20.12 | 40.00 | 12.3 |\n"
        "| qcfs_x (qcfs, ANN 88.50) | 60.00 |  | 0.0 |\n")
