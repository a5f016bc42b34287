"""data.label_fraction: a seeded, grade-stratified share of the training patients keeps its labels; the rest join
the pool."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from retinopathy.data import keep_labelled_fraction, patient_grades, patient_of
from retinopathy.params import ParamsError, get
from retinopathy.preprocessing import CropSettings, apply_label_fraction, build_processed_set
from retinopathy.sources import read_course

ROOT = Path(__file__).resolve().parents[1]


def _training_table(patients: int = 1000, seed: int = 1) -> pd.DataFrame:
    """Two eyes per patient; the worse eye follows the EyePACS grade mix, the other eye is no worse."""
    rng = np.random.default_rng(seed)
    worst = rng.choice(5, size=patients, p=[0.735, 0.07, 0.15, 0.025, 0.02])
    rows = []
    for patient, grade in zip(rng.permutation(patients), worst):
        other = int(rng.integers(0, grade + 1))
        left, right = (int(grade), other) if rng.random() < 0.5 else (other, int(grade))
        rows += [(f"{patient}_left", left), (f"{patient}_right", right)]
    return pd.DataFrame(rows, columns=["image", "level"])


def _patients(frame: pd.DataFrame) -> set[str]:
    return set(frame["image"].map(patient_of))


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.9])
def test_whole_patients_are_kept_or_set_aside_and_the_count_is_the_fraction(fraction: float) -> None:
    table = _training_table()
    kept, aside = keep_labelled_fraction(table, fraction=fraction, seed=3)
    assert not _patients(kept) & _patients(aside)
    assert set(kept["image"]) | set(aside["image"]) == set(table["image"])
    assert len(kept) + len(aside) == len(table)
    assert len(kept) == 2 * len(_patients(kept)) and len(aside) == 2 * len(_patients(aside))  # both eyes, always
    assert len(_patients(kept)) == round(fraction * 1000)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_each_grade_keeps_its_share_of_the_patients(fraction: float) -> None:
    """Each grade keeps round(t * n_g) of its n_g patients for one common rate t (half a patient of rounding
    each), so its share of the K kept patients differs from its share of all N by at most
    (1/2)(1 + p_g (G - 2)) / K <= (G - 1) / (2K), G the grades present: 0.02 for K = 100. Sampling 100
    patients without stratification would miss the grade-0 share (0.73) by 0.044 on average."""
    table = _training_table()
    kept, _ = keep_labelled_fraction(table, fraction=fraction, seed=3)
    before, after = patient_grades(table).value_counts(normalize=True), patient_grades(kept).value_counts()
    k, g = int(after.sum()), len(before)
    tolerance = (g - 1) / (2 * k)
    for grade, share in before.items():
        kept_share = after.get(grade, 0) / k
        assert abs(kept_share - share) <= tolerance, (
            f"grade {grade}: {kept_share:.3f} of the kept vs {share:.3f} of all"
        )


def test_the_same_seed_keeps_the_same_patients_and_another_seed_others() -> None:
    table = _training_table()
    first, _ = keep_labelled_fraction(table, fraction=0.25, seed=3)
    shuffled_rows = table.sample(frac=1.0, random_state=0)  # the row order does not matter
    again, _ = keep_labelled_fraction(shuffled_rows, fraction=0.25, seed=3)
    other, _ = keep_labelled_fraction(table, fraction=0.25, seed=4)
    assert _patients(first) == _patients(again)
    assert _patients(first) != _patients(other)


def test_a_smaller_fraction_keeps_a_subset_of_a_larger_ones_patients() -> None:
    table = _training_table()
    kept = [_patients(keep_labelled_fraction(table, fraction=f, seed=3)[0]) for f in (0.1, 0.25, 0.5, 0.9)]
    assert all(small < large for small, large in zip(kept, kept[1:]))


def test_full_fraction_returns_the_training_table_untouched() -> None:
    table = _training_table(patients=50)
    kept, aside = keep_labelled_fraction(table, fraction=1.0, seed=3)
    pd.testing.assert_frame_equal(kept, table)
    assert aside.empty


@pytest.mark.parametrize("bad", [0, 0.0, -0.25, 1.5, math.nan, True, "half"])
def test_a_fraction_outside_zero_to_one_is_refused_naming_the_key(bad: object) -> None:
    with pytest.raises(ValueError, match=r"data\.label_fraction must be in \(0, 1\]"):
        keep_labelled_fraction(_training_table(patients=20), fraction=bad, seed=3)  # type: ignore[arg-type]


def test_a_fraction_that_keeps_no_patient_is_refused_naming_the_key() -> None:
    with pytest.raises(ValueError,
                       match=r"data\.label_fraction 0\.004 keeps no training patient .*100 patients.*least 0\.005"):
        keep_labelled_fraction(_training_table(patients=100), fraction=0.004, seed=3)
    kept, _ = keep_labelled_fraction(_training_table(patients=100), fraction=0.005, seed=3)
    assert len(_patients(kept)) == 1


def test_a_mistyped_fraction_in_params_is_named() -> None:
    with pytest.raises(ParamsError, match=r"key 'data.label_fraction' must be float, got str 'half'"):
        get({"data": {"label_fraction": "half"}}, "data.label_fraction", float)


@pytest.mark.parametrize("held_out", ["val", "test"])
def test_set_aside_images_of_a_validation_or_test_patient_stay_out_of_the_pool(held_out: str) -> None:
    """A given split kept with on_split_leak: warn can have a patient's eyes in train and test (and a split made
    otherwise, in train and val); the pool never holds an eye of a patient the model is scored on, so that
    patient's training eye is dropped, not pooled."""
    table = _training_table(patients=40).assign(path="x")
    leaking = sorted(_patients(table))[:10]
    scored = table["image"].isin([f"{patient}_right" for patient in leaking])  # their left eyes stay in train
    other = "test" if held_out == "val" else "val"
    splits = {
        "train": table[~scored].reset_index(drop=True),
        held_out: table[scored].reset_index(drop=True),
        other: pd.DataFrame({"image": ["900_left"], "level": [0], "path": ["x"]}),
        "unlabeled": pd.DataFrame({"image": ["950_left"], "level": [-1], "path": ["x"]}),
    }
    out, report = apply_label_fraction(splits, fraction=0.3, seed=3)
    aside = set(splits["train"]["image"]) - set(out["train"]["image"])
    of_scored = {image for image in aside if patient_of(image) in leaking}
    assert of_scored, "the seed must set aside at least one leaking patient for this test to mean anything"
    assert set(out["unlabeled"]["image"]) == {"950_left"} | (aside - of_scored)
    assert set(report[f"set_aside_images_of_{held_out}_patients_dropped"]) == of_scored
    assert report[f"set_aside_images_of_{other}_patients_dropped"] == []
    assert report["images_moved_to_pool"] == len(aside - of_scored)


def _build(raw_dir: Path, out: Path, **kwargs: object) -> dict[str, int]:
    return build_processed_set(
        read_course(raw_dir), out_dir=out / "processed", balance_path=out / "label_balance.json",
        report_path=out / "report.json", settings=CropSettings(size=32), val_fraction=0.25, seed=0, workers=1, **kwargs,
    )


def _table(folder: Path, split: str) -> pd.DataFrame:
    return pd.read_csv(folder / f"{split}.csv", dtype={"image": str})


def test_set_aside_patients_join_the_pool_and_leave_validation_and_test_unchanged(
    raw_dir: Path, processed_dir: Path, tmp_path: Path
) -> None:
    counts = _build(raw_dir, tmp_path, label_fraction=0.5)
    out = tmp_path / "processed"
    full_train, train = _table(processed_dir, "train"), _table(out, "train")
    for split in ("val", "test"):
        assert (out / f"{split}.csv").read_bytes() == (processed_dir / f"{split}.csv").read_bytes()
    assert set(train["image"]) < set(full_train["image"])
    aside = set(full_train["image"]) - set(train["image"])
    pool = set(_table(out, "unlabeled")["image"])
    assert pool == set(_table(processed_dir, "unlabeled")["image"]) | aside
    assert all((out / "unlabeled" / f"{image}.png").is_file() for image in aside)
    labelled = {patient_of(image) for split in ("train", "val", "test") for image in _table(out, split)["image"]}
    assert not {patient_of(image) for image in aside} & labelled
    report = json.loads((tmp_path / "report.json").read_text())["label_fraction"]
    assert report["fraction"] == 0.5 and report["train_images"] == len(full_train)
    assert report["kept_images"] == len(train) == counts["train"] and report["images_moved_to_pool"] == len(aside)
    assert report["kept_patients"] == len(_patients(train)) == math.floor(0.5 * report["train_patients"] + 0.5)
    assert report["patients_moved_to_pool"] == report["train_patients"] - report["kept_patients"]
    assert json.loads((tmp_path / "label_balance.json").read_text())["train"]["total"] == len(train)


def test_full_fraction_writes_the_same_bytes_as_the_default_run(
    raw_dir: Path, processed_dir: Path, tmp_path: Path
) -> None:
    _build(raw_dir, tmp_path, label_fraction=1.0)
    out = tmp_path / "processed"
    files = sorted(p.relative_to(processed_dir) for p in processed_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert all((out / name).read_bytes() == (processed_dir / name).read_bytes() for name in files)
    assert (tmp_path / "label_balance.json").read_bytes() == (processed_dir.parent / "label_balance.json").read_bytes()
    report = json.loads((tmp_path / "report.json").read_text())["label_fraction"]
    assert report["kept_images"] == report["train_images"] and report["images_moved_to_pool"] == 0


def test_the_preprocess_stage_refuses_a_zero_fraction_naming_the_key(raw_dir: Path, tmp_path: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(root=str(raw_dir), label_fraction=0)
    params["preprocess"].update(size=32, workers=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stage = [sys.executable, str(ROOT / "stages" / "preprocess.py")]
    done = subprocess.run(stage, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0 and "key 'data.label_fraction' must be in (0, 1], got 0" in done.stderr
    assert not (tmp_path / "data" / "processed").exists()
