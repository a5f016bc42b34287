"""Stage quality_gate: the gradability gate's sensitivity and specificity on the embedded gradability set."""

from __future__ import annotations

import argparse

from retinopathy.gradability import evaluate_gate
from retinopathy.params import load_params, load_settings
from retinopathy.quality import QualityThresholds
from retinopathy.settings import PreprocessSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", default="data/quality", help="folder of the gradability set")
    parser.add_argument("--metrics", default="metrics/quality_gate.json")
    parser.add_argument("--verdicts", default="metrics/quality_gate.csv")
    args = parser.parse_args()

    params = load_params(args.params)
    thresholds = load_settings(QualityThresholds, params)
    fov_threshold = load_settings(PreprocessSettings, params).fov_threshold
    result = evaluate_gate(args.set, thresholds=thresholds, fov_threshold=fov_threshold, metrics_out=args.metrics,
                           verdicts_out=args.verdicts)
    sens, spec = result["sensitivity"], result["specificity"]
    print(f"gradability gate on {result['images']} photographs: sensitivity (ungradable refused) {sens['value']:.3f} "
          f"[{sens['low']:.3f}, {sens['high']:.3f}], specificity (gradable passed) {spec['value']:.3f} "
          f"[{spec['low']:.3f}, {spec['high']:.3f}]")


if __name__ == "__main__":
    main()
