"""Stage compare: pretrained minus scratch and ResNet50 minus ResNet18 on the same test patients, with intervals and
verdicts."""

from __future__ import annotations

import argparse

from retinopathy.comparison import compare, forest_rows, headline, verdict_lines
from retinopathy.params import get, load_params, load_settings
from retinopathy.plotting import forest
from retinopathy.results import load_runs
from retinopathy.settings import CompareSettings, PlotSettings
from retinopathy.utils import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_params(args.params)
    settings = load_settings(CompareSettings, params)
    seeds = get(params, "seeds", list)
    result = compare(load_runs(seeds, external_dir="metrics/external"), settings)
    write_json("metrics/compare.json", result)
    write_json("metrics/summary.json", headline(result["variants"]))
    forest(forest_rows(result), "metrics/forest.png",
           title=f"Paired differences on the test patients ({len(seeds)} seed(s) per variant)",
           dpi=load_settings(PlotSettings, params, keys=["dpi"]).dpi)
    print("\n".join(verdict_lines(result)))


if __name__ == "__main__":
    main()
