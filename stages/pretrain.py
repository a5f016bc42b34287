"""Stage pretrain@<arch>: the start points of both variants of <arch>: a backbone pretrained by self-supervision on the
images (default) or taken from ImageNet, and the from-scratch variant's (no weights, the training set's statistics)."""

from __future__ import annotations

import argparse

from retinopathy.models import ARCHITECTURES
from retinopathy.params import check_known, get, load_params
from retinopathy.precision import PRECISIONS
from retinopathy.pretraining import METHODS, SOURCES, pretrain_backbone
from retinopathy.training import OPTIMIZERS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--out", default="models/start", help="folder of the start points <arch>-true and <arch>-false")
    args = parser.parse_args()

    params = load_params(args.params)
    check_known(params, "pretrain",
                ["source", "method", "optimizer", "epochs", "lr", "batch_size", "weight_decay", "momentum"])
    pretrain_backbone(
        args.arch,
        source=get(params, "pretrain.source", str, choices=SOURCES),
        method=get(params, "pretrain.method", str, choices=METHODS),
        data_dir=args.data,
        out=f"{args.out}/{args.arch}-true",
        scratch_out=f"{args.out}/{args.arch}-false",
        optimizer=get(params, "pretrain.optimizer", str, choices=OPTIMIZERS),
        epochs=get(params, "pretrain.epochs", int),
        lr=get(params, "pretrain.lr", float),
        batch_size=get(params, "pretrain.batch_size", int),
        weight_decay=get(params, "pretrain.weight_decay", float),
        momentum=get(params, "pretrain.momentum", float),
        seed=get(params, "seed", int),
        zero_init_residual=get(params, "zero_init_residual", bool),
        num_workers=get(params, "num_workers", int),
        device=get(params, "device", str),
        precision=get(params, "precision", str, choices=PRECISIONS),
    )


if __name__ == "__main__":
    main()
