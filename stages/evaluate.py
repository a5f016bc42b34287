"""Stage evaluate@<arch>-<pretrained>-<seed>: test metrics with patient-bootstrap intervals, referable-DR screening,
calibration, the referral curve and predictions, for the in-domain test set and the external site."""

from __future__ import annotations

import argparse

from retinopathy.evaluation import evaluate_variant
from retinopathy.params import load_params, load_settings
from retinopathy.settings import EvalSettings, ExternalSettings, TrainConfig

# The top-level keys this stage reads (as its dvc.yaml entry declares).
TOP_LEVEL = ["head", "class_weighting", "device", "num_workers", "precision"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", required=True, help="<arch>-<true|false>-<seed>, e.g. resnet18-true-42")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--models", default="models", help="folder holding <variant>.pt")
    parser.add_argument("--metrics", default="metrics/eval", help="folder the evaluation <variant>.json goes to")
    parser.add_argument("--predictions", default="metrics/predictions",
                        help="folder the predictions <variant>.csv go to")
    parser.add_argument("--external-predictions", default="metrics/external",
                        help="folder the external site's predictions <variant>.csv go to")
    parser.add_argument("--no-external", action="store_true",
                        help="score no external site, whatever params.yaml's external section says (the studies)")
    args = parser.parse_args()

    params = load_params(args.params)
    settings = load_settings(EvalSettings, params)
    run = load_settings(TrainConfig, params, keys=TOP_LEVEL)
    evaluate_variant(
        model_path=f"{args.models}/{args.variant}.pt",
        data_dir=args.data,
        metrics_out=f"{args.metrics}/{args.variant}.json",
        predictions_out=f"{args.predictions}/{args.variant}.csv",
        settings=settings,
        device=run.device,
        num_workers=run.num_workers,
        precision=run.precision,
        head=run.head,
        class_weighting=run.class_weighting,
        external=ExternalSettings(source="none") if args.no_external else load_settings(ExternalSettings, params),
        external_predictions_out=f"{args.external_predictions}/{args.variant}.csv",
    )


if __name__ == "__main__":
    main()
