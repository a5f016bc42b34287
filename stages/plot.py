"""Stage plot: confusion matrices, accuracy curves, ROC curves and a summary chart of the four variants over their
seeds."""

from __future__ import annotations

import argparse

from retinopathy.figures import make_figures
from retinopathy.params import check_known, get, load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="metrics/figures")
    parser.add_argument("--plots", default="metrics/plots", help="folder of the CSVs that `dvc plots` draws")
    args = parser.parse_args()

    params = load_params(args.params)
    check_known(params, "plot", ["dpi"])
    table = make_figures(
        seeds=get(params, "seeds", list),
        eval_dir="metrics/eval",
        predictions_dir="metrics/predictions",
        history_dir="metrics/train",
        out_dir=args.out,
        plots_dir=args.plots,
        dpi=get(params, "plot.dpi", int),
    )
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
