"""Stage evaluate@<arch>-<pretrained>: test-set predictions, accuracy, quadratic weighted kappa, macro-F1, confusion."""

from __future__ import annotations

import argparse

from retinopathy.evaluation import evaluate_variant
from retinopathy.params import check_known, get, load_params
from retinopathy.precision import PRECISIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", required=True, help="<arch>-<true|false>, e.g. resnet18-true")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    args = parser.parse_args()

    params = load_params(args.params)
    check_known(params, "evaluate", ["batch_size"])
    evaluate_variant(
        model_path=f"models/{args.variant}.pt",
        data_dir=args.data,
        metrics_out=f"metrics/eval/{args.variant}.json",
        predictions_out=f"metrics/predictions/{args.variant}.csv",
        batch_size=get(params, "evaluate.batch_size", int),
        device=get(params, "device", str),
        num_workers=get(params, "num_workers", int),
        precision=get(params, "precision", str, choices=PRECISIONS),
    )


if __name__ == "__main__":
    main()
