"""Stage grade@<seed> of the grading study: the seed's network as trained and refitted at each C, graded every way
(retinopathy.ablation), and its argmax arms without and with the two-eye blend at each C, per image."""

from __future__ import annotations

import argparse
from pathlib import Path

from retinopathy.ablation import grade_network, grade_settings, write_grading
from retinopathy.grading_study import StudyAxes, StudyLayout, read_arms
from retinopathy.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--pretrained", required=True, choices=["true", "false"])
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--params", default="params.yaml", help="the project's params (refit weighting, evaluation)")
    parser.add_argument("--study-params", default="studies/grading/params.yaml", help="refit, blend_c")
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--study", default="studies/grading", help="folder the study's stages write under")
    args = parser.parse_args()

    # The network comes from the command line (the stage's name); only refit and blend_c from the study's params.
    refits, blend_cs = read_arms(load_params(args.study_params))
    axes = StudyAxes(arch=args.arch, pretrained=args.pretrained == "true", seeds=(args.seed,), refits=refits,
                     blend_cs=blend_cs)
    layout, name = StudyLayout(Path(args.study)), axes.network(args.seed)
    record, predictions = grade_network(layout.model(name), args.data, axes,
                                        settings=grade_settings(load_params(args.params)))
    write_grading(layout, name, record, predictions)
    for arm in record["arms"]:
        scores = arm.get("error") or f"val QWK {arm['val']['kappa']:.3f}, test QWK {arm['test']['kappa']:.3f}"
        print(f"{name} refit {arm['refit']}, blend {arm['blend']}: {scores}")


if __name__ == "__main__":
    main()
