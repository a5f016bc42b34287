"""Stage summarize of the label-efficiency study: table (CSV, markdown) and figure of test QWK against labelled
images."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from retinopathy.label_efficiency import StudyLayout, SummarySettings, summarize_study, write_study
from retinopathy.params import check_known, get, load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="studies/label_efficiency/params.yaml", help="fractions, seeds, summary")
    parser.add_argument("--study", default="studies/label_efficiency", help="folder the study's stages write under")
    parser.add_argument("--out", default="studies/label_efficiency/results")
    args = parser.parse_args()

    params = load_params(args.params)
    check_known(params, None, ["fractions", "seeds", "summary"])
    names = [f.name for f in fields(SummarySettings)]
    check_known(params, "summary", names)
    kinds = {"bootstrap_resamples": int, "confidence": float, "bootstrap_seed": int, "dpi": int}
    settings = SummarySettings(**{name: get(params, f"summary.{name}", kinds[name]) for name in names})
    fractions, seeds = get(params, "fractions", list), get(params, "seeds", list)
    table = summarize_study(fractions, seeds, layout=StudyLayout(Path(args.study)), settings=settings)
    paths = write_study(table, args.out, seeds=seeds, settings=settings)
    columns = ["fraction", "train_images", "pretrained_qwk", "scratch_qwk", "difference", "difference_low",
               "difference_high"]
    print(table[columns].to_string(index=False))
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
