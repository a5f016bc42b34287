"""Stage plot: confusion matrices, accuracy curves and a summary chart comparing the four variants."""

from __future__ import annotations

import argparse

from retinopathy.figures import make_figures
from retinopathy.params import check_known, get, load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="metrics/figures")
    args = parser.parse_args()

    params = load_params(args.params)
    check_known(params, "plot", ["dpi"])
    table = make_figures(
        archs=["resnet18", "resnet50"],
        eval_dir="metrics/eval",
        history_dir="metrics/train",
        out_dir=args.out,
        dpi=get(params, "plot.dpi", int),
    )
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
