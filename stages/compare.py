"""Stage compare: pretrained minus scratch and ResNet50 minus ResNet18 on the same test patients, with intervals and
verdicts."""

from __future__ import annotations

import argparse
from dataclasses import fields

from retinopathy.comparison import CompareSettings, compare, headline
from retinopathy.params import check_known, get, load_params
from retinopathy.plotting import forest
from retinopathy.results import load_runs
from retinopathy.utils import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_params(args.params)
    names = [f.name for f in fields(CompareSettings)]
    check_known(params, "compare", names)
    kinds = {"bootstrap_resamples": int, "bootstrap_seed": int, "confidence": float}
    settings = CompareSettings(**{name: get(params, f"compare.{name}", kinds[name]) for name in names})
    seeds = get(params, "seeds", list)
    result = compare(load_runs(seeds), settings)
    write_json("metrics/compare.json", result)
    write_json("metrics/summary.json", headline(result["variants"]))
    rows = [{"label": f"{c['metric']}: {c['first']} - {c['second']}", **c} for c in result["comparisons"]]
    forest(rows, "metrics/forest.png",
           title=f"Paired differences on the test patients ({len(seeds)} seed(s) per variant)",
           dpi=get(params, "plot.dpi", int))
    for c in result["comparisons"]:
        print(f"{c['metric']:>13}  {c['first']} - {c['second']}: {c['difference']:+.4f} "
              f"[{c['low']:+.4f}, {c['high']:+.4f}]  {c['verdict']}")


if __name__ == "__main__":
    main()
