"""Stage report: metrics/report.md, the study as a lab report (data, setup, results with intervals, verdicts,
screening)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from retinopathy.params import get, load_params
from retinopathy.report import write_report

# The params the report quotes as the study's setup (each declared for this stage in dvc.yaml).
SETUP = ["data.source", "preprocess.size", "epochs", "batch_size", "lr", "optimizer", "lr_schedule", "class_weighting",
         "select_on", "head", "decode", "refit_classifier", "refit_c", "evaluate.tta", "evaluate.patient_blend",
         "evaluate.blend_c", "precision",
         "pretrain.source", "pretrain.method", "pretrain.epochs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="metrics/report.md")
    args = parser.parse_args()

    params = load_params(args.params)
    seeds = get(params, "seeds", list)
    text = write_report(
        args.out,
        seeds=seeds,
        compared=json.loads(Path("metrics/compare.json").read_text()),
        balance=json.loads(Path("metrics/label_balance.json").read_text()),
        eval_dir="metrics/eval",
        train_dir="metrics/train",
        preprocess=json.loads(Path("metrics/preprocess_report.json").read_text()),
        setup={key: get(params, key, (object, bool)) for key in SETUP},
        gate=json.loads(Path("metrics/quality_gate.json").read_text()),
    )
    print(f"wrote {args.out} ({len(text.splitlines())} lines)")


if __name__ == "__main__":
    main()
