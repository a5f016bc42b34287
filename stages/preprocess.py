"""Stage preprocess: read the chosen data set, split it by patient, crop and resize every image."""

from __future__ import annotations

import argparse
from pathlib import Path

from retinopathy.params import check_known, get, load_params
from retinopathy.preprocessing import BAD_IMAGE_POLICIES, LEAK_POLICIES, CropSettings, build_processed_set
from retinopathy.sources import SOURCES, read_source, unlisted_images


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
    check_known(params, "data", ["source", "root", "val_fraction", "test_fraction", "label_fraction", "on_split_leak"])
    check_known(params, "preprocess", ["size", "fov_threshold", "graham", "graham_sigma", "workers", "on_bad_image"])
    source = get(params, "data.source", str, choices=SOURCES)
    root = Path(get(params, "data.root", str))
    settings = CropSettings(
        size=get(params, "preprocess.size", int),
        fov_threshold=get(params, "preprocess.fov_threshold", int),
        graham=get(params, "preprocess.graham", bool),
        graham_sigma=get(params, "preprocess.graham_sigma", float),
    )
    tables = read_source(source, root)
    build_processed_set(
        tables,
        out_dir=args.out,
        balance_path=args.balance,
        settings=settings,
        val_fraction=get(params, "data.val_fraction", float),
        test_fraction=get(params, "data.test_fraction", float),
        seed=get(params, "seed", int),
        workers=get(params, "preprocess.workers", int),
        on_bad_image=get(params, "preprocess.on_bad_image", str, choices=BAD_IMAGE_POLICIES),
        on_split_leak=get(params, "data.on_split_leak", str, choices=LEAK_POLICIES),
        unlisted=unlisted_images(source, root, tables),
        report_path=args.report,
        label_fraction=(args.label_fraction if args.label_fraction is not None
                        else get(params, "data.label_fraction", float)),
    )


if __name__ == "__main__":
    main()
