"""Stage train@<arch>-<pretrained>-<seed>: fine-tune from pretrained weights or train from scratch, with one training
seed."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from retinopathy.data import CLASS_WEIGHTING
from retinopathy.decoding import DECODINGS, HEADS
from retinopathy.distributed import torchrun_command, under_torchrun
from retinopathy.models import ARCHITECTURES
from retinopathy.params import ParamsError, check_known, get, load_params
from retinopathy.precision import PRECISIONS
from retinopathy.training import OPTIMIZERS, SCHEDULES, SELECT_ON, TrainConfig
from retinopathy.variants import train_variant

# Top-level keys: training hyperparameters, then the other stages' sections.
TOP_LEVEL = ["lr", "batch_size", "epochs", "weight_decay", "momentum", "optimizer", "lr_schedule", "class_weighting",
             "select_on", "flip", "rotation", "zero_init_residual", "num_workers", "device", "precision", "seed",
             "seeds", "compile", "nproc", "sync_bn", "head", "decode", "refit_classifier", "refit_c"]
SECTIONS = ["synthetic", "data", "preprocess", "pretrain", "evaluate", "compare", "plot"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    parser.add_argument("--pretrained", required=True, choices=["true", "false"])
    parser.add_argument("--seed", required=True, type=int,
                        help="training seed: initial head/weights, shuffling, augmentation")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--start", default="models/start", help="folder of the start points <arch>-<pretrained>")
    parser.add_argument("--models", default="models", help="folder the model <arch>-<pretrained>-<seed>.pt goes to")
    parser.add_argument("--metrics", default="metrics/train",
                        help="folder of the per-epoch history and the run's summary")
    parser.add_argument("--checkpoints", default="checkpoints",
                        help="folder of the resume snapshot (not a stage output)")
    args = parser.parse_args()

    params = load_params(args.params)
    check_known(params, None, TOP_LEVEL + SECTIONS)
    nproc = get(params, "nproc", int)
    if nproc < 1:
        raise ParamsError(f"params.yaml: key 'nproc' must be at least 1, got {nproc}")
    if nproc > 1 and not under_torchrun():
        # Become torchrun (same process, so Ctrl-C and kills reach it), which reruns this very
        # command as nproc processes; each of them takes the path below.
        command = torchrun_command(nproc, Path(__file__).resolve(), sys.argv[1:])
        os.execv(command[0], command)
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
        seed=args.seed,
        compile=get(params, "compile", bool),
        sync_bn=get(params, "sync_bn", bool),
        precision=get(params, "precision", str, choices=PRECISIONS),
        head=get(params, "head", str, choices=HEADS),
        decode=get(params, "decode", str, choices=DECODINGS),
    )
    refit_c = get(params, "refit_c", float)
    if not refit_c > 0:
        raise ParamsError(f"params.yaml: key 'refit_c' must be positive, got {refit_c}")
    variant = f"{args.arch}-{args.pretrained}-{args.seed}"
    summary = train_variant(
        args.arch,
        pretrained=args.pretrained == "true",
        config=config,
        data_dir=args.data,
        start_path=f"{args.start}/{args.arch}-{args.pretrained}",
        model_out=f"{args.models}/{variant}.pt",
        history_out=f"{args.metrics}/{variant}.tsv",
        summary_out=f"{args.metrics}/{variant}.json",
        flip=get(params, "flip", bool),
        rotation=get(params, "rotation", float),
        zero_init_residual=get(params, "zero_init_residual", bool),
        device=get(params, "device", str),
        # Outside the stage's outputs, which DVC deletes before a rerun; the run deletes it when done.
        resume_path=f"{args.checkpoints}/{variant}.pt",
        refit=get(params, "refit_classifier", bool),
        refit_c=refit_c,
    )
    if os.environ.get("RANK", "0") == "0":
        print(f"{variant}: best epoch {summary['best_epoch']}, val acc {summary['val_acc']}, "
              f"val kappa {summary['val_kappa']}")


if __name__ == "__main__":
    main()
