"""Stage train@<arch>-<pretrained>: fine-tune from pretrained weights or train from scratch."""

from __future__ import annotations

import argparse

from retinopathy.models import ARCHITECTURES
from retinopathy.params import check_known, get, load_params
from retinopathy.pipeline import train_variant
from retinopathy.training import CLASS_WEIGHTING, OPTIMIZERS, SCHEDULES, SELECT_ON, TrainConfig

# Top-level keys: training hyperparameters, then the other stages' sections.
TOP_LEVEL = ["lr", "batch_size", "epochs", "weight_decay", "momentum", "optimizer", "lr_schedule", "class_weighting",
             "select_on", "flip", "rotation", "zero_init_residual", "num_workers", "device", "seed"]
SECTIONS = ["synthetic", "data", "preprocess", "pretrain", "evaluate", "plot"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    parser.add_argument("--pretrained", required=True, choices=["true", "false"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    args = parser.parse_args()

    params = load_params(args.params)
    check_known(params, None, TOP_LEVEL + SECTIONS)
    config = TrainConfig(
        lr=get(params, "lr", float),
        batch_size=get(params, "batch_size", int),
        epochs=get(params, "epochs", int),
        weight_decay=get(params, "weight_decay", float),
        momentum=get(params, "momentum", float),
        optimizer=get(params, "optimizer", str, choices=OPTIMIZERS),
        lr_schedule=get(params, "lr_schedule", str, choices=SCHEDULES),
        class_weighting=get(params, "class_weighting", str, choices=CLASS_WEIGHTING),
        select_on=get(params, "select_on", str, choices=SELECT_ON),
        num_workers=get(params, "num_workers", int),
        seed=get(params, "seed", int),
    )
    variant = f"{args.arch}-{args.pretrained}"
    summary = train_variant(
        args.arch,
        pretrained=args.pretrained == "true",
        config=config,
        data_dir=args.data,
        pretrained_path=f"models/pretrained/{args.arch}.pt",
        model_out=f"models/{variant}.pt",
        history_out=f"metrics/train/{variant}.tsv",
        summary_out=f"metrics/train/{variant}.json",
        flip=get(params, "flip", bool),
        rotation=get(params, "rotation", float),
        zero_init_residual=get(params, "zero_init_residual", bool),
        device=get(params, "device", str),
    )
    print(f"{variant}: best epoch {summary['best_epoch']}, val acc {summary['val_acc']}, val kappa {summary['val_kappa']}")


if __name__ == "__main__":
    main()
