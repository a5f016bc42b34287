"""The report's two-eye blend lines: nothing when the blend is off, each model's fit when on, the reason when not fitted."""

from __future__ import annotations

from retinopathy.report import _blend_lines


def _evaluation(seed: int, blend: dict | None) -> dict:
    grading = {"head": "classification", "tta": "none", "patient_blend": blend is not None}
    if blend is not None:
        grading["blend"] = blend
    return {"seed": seed, "grading": grading}


def test_blend_lines_are_empty_when_the_blend_is_off() -> None:
    assert _blend_lines({"resnet18-true": [_evaluation(42, None)]}) == []


def test_blend_lines_name_each_fit_and_each_failure() -> None:
    fitted = {"fitted_on": "training images' outputs", "c": 0.03, "inputs": "log p0..p4", "paired_images": 856,
              "partner_to_own_weight": 0.4567}
    failed = {"fitted": False, "reason": "the blend needs training images of every grade; grade(s) [4] have none; each eye is graded alone"}
    lines = _blend_lines({"resnet18-true": [_evaluation(42, fitted), _evaluation(43, failed)], "resnet50-false": [_evaluation(42, fitted)]})
    assert lines[0].startswith("Two-eye blend (logistic regressions on each eye's log p0..p4")
    assert lines[1] == ("- ResNet18, pretrained: seed 42: C 0.03, 856 paired images, partner's weight 0.46; "
                        "seed 43: not fitted (" + failed["reason"] + ")")
    assert lines[2].startswith("- ResNet50, from scratch: seed 42: C 0.03") and lines[-1] == ""
