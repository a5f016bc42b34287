"""Stage summarize of the grading study: tables over the seeds, paired differences, the choice rule on validation,
written to studies/grading/results/grading.{json,md,png} and docs/grading-results.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from retinopathy.grading_study import StudyLayout, read_axes
from retinopathy.grading_summary import current_settings, run_summary, summary_settings, write_results
from retinopathy.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="the project's params (what it grades with now)")
    parser.add_argument("--study-params", default="studies/grading/params.yaml")
    parser.add_argument("--study", default="studies/grading", help="folder the study's stages write under")
    parser.add_argument("--docs", default="docs/grading-results.md", help="the results section of docs/grading.md")
    args = parser.parse_args()

    study = load_params(args.study_params)
    axes, settings = read_axes(study), summary_settings(study)
    layout = StudyLayout(Path(args.study))
    summary = run_summary(layout, axes, settings=settings, current=current_settings(load_params(args.params)))
    paths = write_results(summary, layout.results, docs=args.docs, dpi=settings.dpi)
    for knob, choice in summary["choice"].items():
        print(f"{knob}: {choice['verdict']}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
