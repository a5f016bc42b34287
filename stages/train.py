"""Stage train@<arch>-<pretrained>-<seed>: fine-tune from pretrained weights or train from scratch, with one training
seed."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path

from retinopathy.distributed import torchrun_command, under_torchrun
from retinopathy.models import ARCHITECTURES
from retinopathy.params import load_params, load_settings
from retinopathy.settings import TrainConfig
from retinopathy.train_stage import train_variant


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
    parser.add_argument("--metrics", default="metrics/train", help="folder of the run's summary <variant>.json")
    parser.add_argument("--live", default="metrics/live", help="folder of the per-epoch dvclive logs <variant>/")
    parser.add_argument("--checkpoints", default="checkpoints",
                        help="folder of the resume snapshot (not a stage output)")
    args = parser.parse_args()

    # The top level of params.yaml but `seed` (the split's), which the training seed replaces.
    keys = [item.name for item in fields(TrainConfig) if item.name != "seed"]
    config = load_settings(TrainConfig, load_params(args.params), keys=keys, seed=args.seed)
    if config.nproc > 1 and not under_torchrun():
        # Become torchrun (same process, so Ctrl-C and kills reach it), which reruns this very
        # command as nproc processes; each of them takes the path below.
        command = torchrun_command(config.nproc, Path(__file__).resolve(), sys.argv[1:])
        os.execv(command[0], command)
    variant = f"{args.arch}-{args.pretrained}-{args.seed}"
    summary = train_variant(
        args.arch,
        pretrained=args.pretrained == "true",
        config=config,
        data_dir=args.data,
        start_path=f"{args.start}/{args.arch}-{args.pretrained}",
        model_out=f"{args.models}/{variant}.pt",
        summary_out=f"{args.metrics}/{variant}.json",
        live_dir=f"{args.live}/{variant}",
        # Outside the stage's outputs, which DVC deletes before a rerun; the run deletes it when done.
        resume_path=f"{args.checkpoints}/{variant}.pt",
    )
    if os.environ.get("RANK", "0") == "0":
        print(f"{variant}: best epoch {summary['best_epoch']}, val acc {summary['val_acc']}, "
              f"val kappa {summary['val_kappa']}")


if __name__ == "__main__":
    main()
