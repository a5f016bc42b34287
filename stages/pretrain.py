"""Stage pretrain@<arch>: the start points of both variants of <arch>: a backbone pretrained by self-supervision on the
images (default) or taken from ImageNet, and the from-scratch variant's (no weights, the training set's statistics)."""

from __future__ import annotations

import argparse

from retinopathy.models import ARCHITECTURES
from retinopathy.params import load_params, load_settings
from retinopathy.pretraining import pretrain_backbone
from retinopathy.settings import PretrainSettings, TrainConfig

# The top-level keys this stage reads (as its dvc.yaml entry declares).
TOP_LEVEL = ["seed", "zero_init_residual", "num_workers", "device", "precision"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--out", default="models/start", help="folder of the start points <arch>-true and <arch>-false")
    args = parser.parse_args()

    params = load_params(args.params)
    pre = load_settings(PretrainSettings, params)
    run = load_settings(TrainConfig, params, keys=TOP_LEVEL)
    pretrain_backbone(
        args.arch,
        source=pre.source,
        method=pre.method,
        data_dir=args.data,
        out=f"{args.out}/{args.arch}-true",
        scratch_out=f"{args.out}/{args.arch}-false",
        optimizer=pre.optimizer,
        epochs=pre.epochs,
        lr=pre.lr,
        batch_size=pre.batch_size,
        weight_decay=pre.weight_decay,
        momentum=pre.momentum,
        seed=run.seed,
        zero_init_residual=run.zero_init_residual,
        num_workers=run.num_workers,
        device=run.device,
        precision=run.precision,
    )


if __name__ == "__main__":
    main()
