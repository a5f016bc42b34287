"""The report's two-eye blend lines (nothing when the blend is off, each model's fit when on, the reason when not
fitted) and its wording of paired differences and screening intervals, which follows how they were computed."""

from __future__ import annotations

from retinopathy.report import _blend_lines, _conclusions, _paired_note, _paired_table, _screening_note


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
    failed = {"fitted": False,
              "reason": "the blend needs training images of every grade; grade(s) [4] have none; "
                        "each eye is graded alone"}
    lines = _blend_lines({"resnet18-true": [_evaluation(42, fitted), _evaluation(43, failed)],
                          "resnet50-false": [_evaluation(42, fitted)]})
    assert lines[0].startswith("Two-eye blend (logistic regressions on each eye's log p0..p4")
    assert lines[1] == ("- ResNet18, pretrained: seed 42: C 0.03, 856 paired images, partner's weight 0.46; "
                        "seed 43: not fitted (" + failed["reason"] + ")")
    assert lines[2].startswith("- ResNet50, from scratch: seed 42: C 0.03") and lines[-1] == ""


# --- Paired differences and screening: the wording follows the intervals' method ---


def _comparison(metric: str, low: float, high: float, verdict: str, **extra: object) -> dict:
    return {"question": "Does pretraining help ResNet18?", "metric": metric, "first": "resnet18-true",
            "second": "resnet18-false", "difference": (low + high) / 2, "low": low, "high": high, "verdict": verdict,
            **extra}


def test_paired_note_says_what_the_intervals_cover_for_one_seed_and_for_several() -> None:
    compared = {"settings": {"resamples": 2000}}
    one = _paired_note(compared, 1)
    several = _paired_note(compared, 3)
    assert "2000 bootstrap replicates" in one and "training randomness is not in these intervals" in one
    assert "mean over 3 training seeds" in several and "Welch-Satterthwaite" in several
    assert "variance between training seeds" in several and "not in these intervals" not in several


def test_paired_table_has_a_df_column_only_where_intervals_have_degrees_of_freedom() -> None:
    with_df = _paired_table({"comparisons": [_comparison("kappa", -0.1, 0.2, "no detectable difference", df=1.37)]})
    assert with_df[0] == "| question | metric | difference (95% interval) | df | verdict |"
    assert with_df[2].endswith("| +0.050 (-0.100 to +0.200) | 1.4 | no detectable difference |")
    without = _paired_table({"comparisons": [_comparison("kappa", -0.1, 0.2, "no detectable difference")]})
    assert "df" not in without[0] and without[2].count("|") == 5


def test_conclusions_do_not_call_an_undetermined_interval_a_difference() -> None:
    undetermined = "undetermined (ResNet18, from scratch has a single training seed, so ...)"
    lines = _conclusions({"comparisons": [_comparison("kappa", 0.02, 0.3, undetermined),
                                          _comparison("accuracy", -0.1, 0.1, "no detectable difference")]})
    assert "detected" not in lines[0] and "undetermined: QWK: " + undetermined in lines[0]
    found = _conclusions({"comparisons": [_comparison("kappa", 0.02, 0.3, "ResNet18, pretrained better than ...")]})
    assert "a difference is detected in 1 of 1 metrics" in found[0]


def test_screening_note_names_the_proportion_interval_of_the_evaluation() -> None:
    method = "Clopper-Pearson on the effective number"
    point = {"test_sensitivity": {"value": 1.0, "low": 0.8, "high": 1.0, "method": method}}
    note = _screening_note({"referable": {"operating_points": {"high_sensitivity": point}}})
    assert note.startswith("Sensitivity and specificity intervals: Clopper-Pearson on the effective number")
    older = {"referable": {"operating_points": {"high_sensitivity": {"test_sensitivity": {"value": 1.0}}}}}
    assert _screening_note(older) == "Sensitivity and specificity intervals: patient bootstrap."
