"""Stage evaluate@<arch>-<pretrained>-<seed>: test metrics with patient-bootstrap intervals, referable-DR screening,
predictions."""

from __future__ import annotations

import argparse
from dataclasses import fields

from retinopathy.data import CLASS_WEIGHTING
from retinopathy.decoding import HEADS
from retinopathy.evaluation import EvalSettings, evaluate_variant
from retinopathy.params import check_known, get, load_params
from retinopathy.precision import PRECISIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", required=True, help="<arch>-<true|false>-<seed>, e.g. resnet18-true-42")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--models", default="models", help="folder holding <variant>.pt")
    parser.add_argument("--metrics", default="metrics/eval", help="folder the evaluation <variant>.json goes to")
    parser.add_argument("--predictions", default="metrics/predictions",
                        help="folder the predictions <variant>.csv go to")
    args = parser.parse_args()

    params = load_params(args.params)
    names = [f.name for f in fields(EvalSettings)]
    check_known(params, "evaluate", names)
    kinds = {"batch_size": int, "bootstrap_resamples": int, "bootstrap_seed": int, "tta": str, "patient_blend": bool}
    settings = EvalSettings(**{name: get(params, f"evaluate.{name}", kinds.get(name, float)) for name in names})
    evaluate_variant(
        model_path=f"{args.models}/{args.variant}.pt",
        data_dir=args.data,
        metrics_out=f"{args.metrics}/{args.variant}.json",
        predictions_out=f"{args.predictions}/{args.variant}.csv",
        settings=settings,
        device=get(params, "device", str),
        num_workers=get(params, "num_workers", int),
        precision=get(params, "precision", str, choices=PRECISIONS),
        head=get(params, "head", str, choices=HEADS),
        class_weighting=get(params, "class_weighting", str, choices=CLASS_WEIGHTING),
    )


if __name__ == "__main__":
    main()
