"""The embedded external site and gradability set: their make-up, their independence from the training data, and
the gate's error rates on the set."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from retinopathy.embedded import write_synthetic_set
from retinopathy.external import read_external
from retinopathy.gradability import evaluate_gate, gate_error_rates, read_quality_set
from retinopathy.quality import QualityThresholds
from retinopathy.settings import SyntheticSpec
from retinopathy.sites import (
    DEFECTS,
    EXTERNAL_FIRST_PATIENT,
    EXTERNAL_GRADE_PROPORTIONS,
    external_table,
    quality_table,
    write_external_site,
    write_quality_set,
)

TINY = SyntheticSpec(train_patients=3, test_patients=2, unlabeled_patients=1, external_patients=4, quality_images=14,
                     min_size=48, max_size=64)


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_external_site_has_a_referral_clinics_grade_mix_and_its_own_patients() -> None:
    table = external_table(dataclasses.replace(SyntheticSpec(), external_patients=200))
    counts = np.bincount(table["level"], minlength=5)
    assert np.all(np.abs(counts - np.asarray(EXTERNAL_GRADE_PROPORTIONS) * 400) <= 1)
    patients = table["image"].str.rsplit("_", n=1).str[0].astype(int)
    assert patients.min() == EXTERNAL_FIRST_PATIENT and patients.nunique() == 200
    assert (table["level"] >= 2).mean() > 0.4  # far more referable disease than screening's 19.5%


def test_external_site_reads_as_a_kaggle_layout_with_both_eyes_one_patient(tmp_path: Path) -> None:
    write_external_site(tmp_path / "site", TINY, workers=1)
    data = read_external("kaggle", tmp_path / "site")
    assert len(data.frame) == 8 and data.frame["patient"].nunique() == 4
    assert all(Path(p).is_file() for p in data.frame["path"])


def test_the_test_sets_change_no_byte_of_the_training_data(tmp_path: Path) -> None:
    """The screening set is rendered byte for byte the same whatever the external site's and gradability set's sizes."""
    write_synthetic_set(tmp_path / "a", TINY, workers=1)
    write_synthetic_set(tmp_path / "b", dataclasses.replace(TINY, external_patients=9, quality_images=30), workers=1)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")


def _blue_over_red(folder: Path) -> float:
    ratios = []
    for path in sorted(folder.glob("*.jpeg")):
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=float)
        lit = pixels.max(axis=2) > 40
        ratios.append(pixels[lit][:, 2].mean() / pixels[lit][:, 0].mean())
    return float(np.mean(ratios))


def test_external_camera_is_cooler_and_larger_than_the_screening_camera(tmp_path: Path) -> None:
    write_synthetic_set(tmp_path / "screening", TINY, workers=1)
    write_external_site(tmp_path / "site", TINY, workers=1)
    assert _blue_over_red(tmp_path / "site" / "train") > 1.15 * _blue_over_red(tmp_path / "screening")
    heights = [Image.open(p).height for p in (tmp_path / "site" / "train").glob("*.jpeg")]
    assert min(heights) >= round(1.6 * TINY.min_size)


def test_gradability_set_is_half_gradable_and_takes_every_defect_in_turn() -> None:
    table = quality_table(dataclasses.replace(SyntheticSpec(), quality_images=24))
    assert table["gradable"].sum() == 12 and set(table.loc[table["gradable"] == 0, "defect"]) == set(DEFECTS)
    assert (table["defect"] == "none").sum() == 12


def test_gate_error_rates_count_refusals_of_each_kind() -> None:
    table = pd.DataFrame({"image": [f"q{i}" for i in range(6)], "gradable": [1, 1, 1, 0, 0, 0],
                          "defect": ["none"] * 3 + ["defocused", "defocused", "not_fundus"]})
    refused = np.array([False, True, False, True, False, True])
    rates = gate_error_rates(table, refused)
    assert rates["sensitivity"]["value"] == rates["specificity"]["value"] == pytest.approx(2 / 3, abs=1e-4)
    assert rates["sensitivity_per_defect"]["defocused"]["value"] == 0.5
    assert rates["sensitivity_per_defect"]["not_fundus"]["images"] == 1
    # Clopper-Pearson for 1 of 1: the lower bound is 0.025, not 1.
    assert rates["sensitivity_per_defect"]["not_fundus"]["low"] == pytest.approx(0.025)


def test_the_gate_refuses_the_rendered_defects_and_passes_the_gradable_photographs(tmp_path: Path) -> None:
    write_quality_set(tmp_path / "q", dataclasses.replace(TINY, quality_images=24, min_size=160, max_size=192),
                      workers=1)
    result = evaluate_gate(tmp_path / "q", thresholds=QualityThresholds(), fov_threshold=20,
                           metrics_out=tmp_path / "gate.json", verdicts_out=tmp_path / "gate.csv")
    verdicts = pd.read_csv(tmp_path / "gate.csv")
    assert len(verdicts) == 24 and result["sensitivity"]["images"] == 12
    assert result["sensitivity"]["value"] >= 0.75 and result["specificity"]["value"] >= 0.75, verdicts
    refused = verdicts[verdicts["passed"] == 0]
    assert refused["reasons"].str.len().gt(0).all()  # every refusal says why


def test_read_quality_set_names_a_bad_row_and_a_missing_image(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        read_quality_set(tmp_path)
    pd.DataFrame({"image": ["a", "b"], "gradable": [1, 2], "defect": ["none", "x"]}).to_csv(tmp_path / "labels.csv",
                                                                                           index=False)
    with pytest.raises(ValueError, match=r"rows \[3\]"):
        read_quality_set(tmp_path)
    pd.DataFrame({"image": ["a"], "gradable": [1], "defect": ["none"]}).to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(FileNotFoundError, match="a.jpeg"):
        read_quality_set(tmp_path)
