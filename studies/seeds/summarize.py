"""Stage summarize of the seeds study: the study's four questions over the study's training seeds (paired
differences on the test patients, intervals over patients and seeds, verdicts, forest plot)."""

from __future__ import annotations

import argparse
from pathlib import Path

from retinopathy.comparison import compare, forest_rows, headline, verdict_lines
from retinopathy.params import check_known, get, load_params, load_settings
from retinopathy.plotting import forest
from retinopathy.report import write_seeds_summary
from retinopathy.results import load_runs
from retinopathy.settings import CompareSettings, PlotSettings
from retinopathy.utils import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="studies/seeds/params.yaml", help="the study's seeds")
    parser.add_argument("--project-params", default="params.yaml", help="compare and plot.dpi")
    parser.add_argument("--study", default="studies/seeds", help="folder the study's stages write under")
    parser.add_argument("--out", default="studies/seeds/results")
    args = parser.parse_args()

    study = load_params(args.params)
    check_known(study, None, ["seeds"])
    seeds = get(study, "seeds", list)
    params = load_params(args.project_params)
    metrics = Path(args.study) / "metrics"
    settings = load_settings(CompareSettings, params)
    runs = load_runs(seeds, eval_dir=metrics / "eval", predictions_dir=metrics / "predictions")
    result = compare(runs, settings)
    # What a one-seed run would conclude with each seed: the same comparison on that seed's runs alone.
    per_seed = {seed: compare({variant: [run for run in variant_runs if run.seed == seed]
                               for variant, variant_runs in runs.items()}, settings) for seed in seeds}
    out = Path(args.out)
    write_json(out / "compare.json", result)
    write_json(out / "summary.json", headline(result["variants"]))
    forest(forest_rows(result), out / "forest.png",
           title=f"Paired differences on the test patients ({len(seeds)} seeds per variant)",
           dpi=load_settings(PlotSettings, params, keys=["dpi"]).dpi)
    write_seeds_summary(out / "seeds.md", seeds=seeds, compared=result, eval_dir=metrics / "eval", per_seed=per_seed)
    print("\n".join(verdict_lines(result)))
    print(f"wrote {out / 'seeds.md'}")


if __name__ == "__main__":
    main()
