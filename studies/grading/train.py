"""Stage train@<seed> of the grading study: one network trained as the project's train stage trains it, without the
refit."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from retinopathy.distributed import torchrun_command, under_torchrun
from retinopathy.grading_study import StudyAxes, StudyLayout, train_config, train_network
from retinopathy.models import ARCHITECTURES
from retinopathy.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    parser.add_argument("--pretrained", required=True, choices=["true", "false"])
    parser.add_argument("--seed", required=True, type=int,
                        help="training seed: initial head/weights, shuffling, augmentation")
    parser.add_argument("--params", default="params.yaml", help="the project's params (training settings)")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--start", default="models/start",
                        help="folder of the main pipeline's start points <arch>-<pretrained>")
    parser.add_argument("--study", default="studies/grading", help="folder the study's stages write under")
    args = parser.parse_args()

    params = load_params(args.params)
    nproc = train_config(params, args.seed).nproc
    if nproc > 1 and not under_torchrun():
        # As the project's train stage: become torchrun, which reruns this command as nproc processes.
        command = torchrun_command(nproc, Path(__file__).resolve(), sys.argv[1:])
        os.execv(command[0], command)
    axes = StudyAxes(arch=args.arch, pretrained=args.pretrained == "true", seeds=(args.seed,))
    summary = train_network(params, axes, args.seed, data_dir=args.data, start_dir=args.start,
                            layout=StudyLayout(Path(args.study)))
    if os.environ.get("RANK", "0") == "0":
        print(f"{axes.network(args.seed)}: best epoch {summary['best_epoch']}, val kappa {summary['val_kappa']} "
              "(no refit)")


if __name__ == "__main__":
    main()
