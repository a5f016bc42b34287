"""Stage preprocess: read the chosen data set, split it by patient, crop and resize every image, and record each
image's gradability (the params' ``quality`` thresholds)."""

from __future__ import annotations

import argparse
from pathlib import Path

from retinopathy.params import load_params, load_settings
from retinopathy.preprocessing import CropSettings, build_processed_set
from retinopathy.quality import QualityGate
from retinopathy.settings import DataSettings, PreprocessSettings, QualityThresholds, TrainConfig
from retinopathy.sources import read_source, unlisted_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/processed")
    parser.add_argument("--balance", default="metrics/label_balance.json")
    parser.add_argument("--report", default="metrics/preprocess_report.json")
    parser.add_argument("--label-fraction", type=float, default=None,
                        help="overrides data.label_fraction (the label-efficiency study sets it per point)")
    args = parser.parse_args()

    params = load_params(args.params)
    given = {} if args.label_fraction is None else {"label_fraction": args.label_fraction}
    data = load_settings(DataSettings, params, **given)
    pre = load_settings(PreprocessSettings, params)
    thresholds = load_settings(QualityThresholds, params)
    seed = load_settings(TrainConfig, params, keys=["seed"]).seed
    root = Path(data.root)
    tables = read_source(data.source, root)
    build_processed_set(
        tables,
        out_dir=args.out,
        balance_path=args.balance,
        settings=CropSettings(size=pre.size, fov_threshold=pre.fov_threshold, graham=pre.graham,
                              graham_sigma=pre.graham_sigma),
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=seed,
        workers=pre.workers,
        on_bad_image=pre.on_bad_image,
        on_split_leak=data.on_split_leak,
        unlisted=unlisted_images(data.source, root, tables),
        report_path=args.report,
        label_fraction=data.label_fraction,
        gate=QualityGate(thresholds),
        on_ungradable=pre.on_ungradable,
        # What trained models record of their data: `retinopathy predict` warns about one of the embedded set.
        data_source={"source": data.source, "label_fraction": data.label_fraction},
    )


if __name__ == "__main__":
    main()
