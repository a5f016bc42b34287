"""Stage plot: confusion matrices, accuracy curves, ROC curves, reliability diagrams, referral curves and a summary
chart of the four variants over their seeds."""

from __future__ import annotations

import argparse

from retinopathy.figures import make_figures
from retinopathy.params import get, load_params, load_settings
from retinopathy.settings import PlotSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="metrics/figures")
    parser.add_argument("--plots", default="metrics/plots", help="folder of the CSVs that `dvc plots` draws")
    args = parser.parse_args()

    params = load_params(args.params)
    table = make_figures(
        seeds=get(params, "seeds", list),
        eval_dir="metrics/eval",
        predictions_dir="metrics/predictions",
        live_dir="metrics/live",
        external_dir="metrics/external",
        out_dir=args.out,
        plots_dir=args.plots,
        dpi=load_settings(PlotSettings, params).dpi,
    )
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
