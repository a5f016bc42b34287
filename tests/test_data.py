"""Label tables, patient splits, the Dataset and the field-of-view crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from retinopathy.data import FundusDataset, build_transform, patient_of, processed_dataset, split_by_patient
from retinopathy.fundus import crop_to_fov, find_fov
from retinopathy.preprocessing import CropSettings, assign_splits, build_processed_set, open_image, process_image
from retinopathy.sources import read_course


def _course_files(root: Path, names: list[str], levels: list[object]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train_img.csv").write_text("".join(f"{n}\n" for n in names))
    (root / "train_label.csv").write_text("".join(f"{v}\n" for v in levels))
    (root / "test_img.csv").write_text("90_left\n")
    (root / "test_label.csv").write_text("0\n")


def test_course_csvs_are_read_without_header_so_no_row_is_lost(tmp_path: Path) -> None:
    _course_files(tmp_path, ["10_left", "10_right", "13_left"], [0, 2, 4])
    frame = read_course(tmp_path)["train"]
    assert frame["image"].tolist() == ["10_left", "10_right", "13_left"]
    assert frame["level"].tolist() == [0, 2, 4]


@pytest.mark.parametrize("bad", ["5", "-1", "two"])
def test_label_outside_zero_to_four_names_the_row(tmp_path: Path, bad: str) -> None:
    _course_files(tmp_path, ["1_left", "1_right", "2_left"], [0, bad, 1])
    with pytest.raises(ValueError, match=r"row 2: '1_right'"):
        read_course(tmp_path)


def test_mismatched_csv_lengths_name_both_files(tmp_path: Path) -> None:
    _course_files(tmp_path, ["1_left", "1_right"], [0])
    with pytest.raises(ValueError, match="train_img.csv has 2 rows but train_label.csv has 1"):
        read_course(tmp_path)


def test_patient_id_is_shared_by_both_eyes() -> None:
    assert patient_of("10_left") == patient_of("10_right") == "10"
    assert patient_of("abc123") == "abc123"


def test_patient_id_keeps_the_folder_so_the_same_number_in_two_folders_is_two_patients() -> None:
    assert patient_of("clinicB/10_left") == patient_of("clinicB/10_right") == "clinicB/10"
    assert patient_of("clinicA/10_left") == "clinicA/10" != patient_of("clinicB/10_left")
    # An underscore in the folder is not a side: such a name is its own patient.
    assert patient_of("clinic_left/10") == "clinic_left/10" and patient_of("clinic_A/scan") == "clinic_A/scan"


def _eyes(patients: int, seed: int = 1, prefix: str = "") -> pd.DataFrame:
    """Two eyes per patient; the worse eye follows the EyePACS grade mix, the other eye is no worse."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient, worst in enumerate(rng.choice(5, size=patients, p=[0.735, 0.07, 0.15, 0.025, 0.02])):
        other = int(rng.integers(0, worst + 1))
        rows += [(f"{prefix}{patient}_left", int(worst)), (f"{prefix}{patient}_right", other)]
    return pd.DataFrame(rows, columns=["image", "level"])


def _patients(frame: pd.DataFrame) -> set[str]:
    return set(frame["image"].map(patient_of))


@pytest.mark.parametrize("patients", [40, 300])
@pytest.mark.parametrize("fraction", [0.15, 0.3, 0.4])
def test_split_holds_out_the_fraction_of_patients_to_within_half_a_patient(fraction: float, patients: int) -> None:
    """1/fraction folds would hold out 1/3 at 0.3 and 1/2 at 0.4; the count must be fraction x patients, rounded."""
    frame = _eyes(patients)
    kept, held = split_by_patient(frame, fraction=fraction, seed=3)
    assert abs(len(_patients(held)) - fraction * patients) <= 0.5
    assert len(_patients(kept)) + len(_patients(held)) == patients
    assert not _patients(kept) & _patients(held)
    assert len(held) == 2 * len(_patients(held))  # both eyes of every held-out patient, none left behind
    # Rows keep the frame's order on both sides.
    assert kept["image"].tolist() == [i for i in frame["image"] if patient_of(i) in _patients(kept)]
    assert held["image"].tolist() == [i for i in frame["image"] if patient_of(i) in _patients(held)]


@pytest.mark.parametrize("fraction", [0.15, 0.3, 0.4])
def test_split_is_stratified_by_patient_grade_and_puts_every_grade_on_both_sides(fraction: float) -> None:
    frame = _eyes(120)
    grades = frame["level"].groupby(frame["image"].map(patient_of)).max()
    kept, held = split_by_patient(frame, fraction=fraction, seed=3)
    held_grades = grades[sorted(_patients(held))]
    sizes = grades.value_counts()
    assert (sizes >= 2).all(), (
        "the generated frame must have two patients of every grade for this test to mean anything"
    )
    for grade, size in sizes.items():
        held_out = int((held_grades == grade).sum())
        assert 1 <= held_out <= size - 1, f"grade {grade}: {held_out} of {size} patients held out"
        assert abs(held_out - fraction * size) <= 1, f"grade {grade}: {held_out} of {size} patients held out"


def test_split_is_seeded_and_does_not_depend_on_row_order() -> None:
    frame = _eyes(80)
    kept, held = split_by_patient(frame, fraction=0.3, seed=3)
    again, _ = split_by_patient(frame.sample(frac=1.0, random_state=0), fraction=0.3, seed=3)
    _, other = split_by_patient(frame, fraction=0.3, seed=4)
    assert _patients(again) == _patients(kept)
    assert _patients(other) != _patients(held) and len(_patients(other)) == len(_patients(held))


def test_split_with_too_few_patients_for_every_grade_still_holds_out_the_fraction() -> None:
    """Five grades and two held-out patients: not every grade can be held out, and no grade is forced to."""
    frame = _eyes(12, seed=5)
    kept, held = split_by_patient(frame, fraction=0.15, seed=0)
    assert len(_patients(held)) == 2 and not _patients(kept) & _patients(held)


def test_split_keeps_patients_of_two_folders_apart_and_each_patients_eyes_together() -> None:
    frame = pd.concat([_eyes(30, seed=1, prefix="clinicA/"), _eyes(30, seed=2, prefix="clinicB/")], ignore_index=True)
    kept, held = split_by_patient(frame, fraction=0.3, seed=3)
    assert len(_patients(kept)) + len(_patients(held)) == 60  # clinicA/7 and clinicB/7 are two patients
    assert len(_patients(held)) == 18
    for side in (kept, held):
        assert (side["image"].map(patient_of).value_counts() == 2).all()


@pytest.mark.parametrize("fraction", [0.01, 0.99])
def test_split_that_would_leave_one_side_empty_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="rounds to"):
        split_by_patient(_eyes(20), fraction=fraction, seed=0)


@pytest.mark.parametrize(("given_test", "fractions", "key"), [
    (False, {"val_fraction": 0.15, "test_fraction": 0.01}, "data.test_fraction"),
    (True, {"val_fraction": 0.01, "test_fraction": 0.2}, "data.val_fraction"),
])
def test_split_fraction_too_small_for_the_patients_names_its_key(
    given_test: bool, fractions: dict[str, float], key: str
) -> None:
    tables = {"train": _eyes(20), **({"test": _eyes(5, prefix="t")} if given_test else {})}
    with pytest.raises(ValueError, match=rf"\({key}\).*20 patients rounds to no held-out patient"):
        assign_splits(tables, seed=0, **fractions)


def test_dataset_returns_normalised_tensors_and_labels(processed_dir: Path) -> None:
    transform = build_transform(mean=[0.5] * 3, std=[0.25] * 3, train=False)
    ds = processed_dataset(processed_dir, "test", transform)
    table = pd.read_csv(processed_dir / "test.csv")
    assert len(ds) == len(table) == 16
    image, label = ds[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label == table["level"].iloc[3]
    assert image.min() < -1.5  # black background maps to (0 - 0.5) / 0.25 = -2


def test_training_transform_augments_and_evaluation_transform_does_not(processed_dir: Path) -> None:
    train = processed_dataset(processed_dir, "train",
                              build_transform(mean=[0] * 3, std=[1] * 3, train=True, rotation=30))
    evaluation = processed_dataset(processed_dir, "train", build_transform(mean=[0] * 3, std=[1] * 3, train=False))
    torch.manual_seed(0)
    assert any(not torch.equal(train[0][0], train[0][0]) for _ in range(5))
    assert torch.equal(evaluation[0][0], evaluation[0][0])


def test_dataset_lists_every_missing_image(tmp_path: Path) -> None:
    table = pd.DataFrame({"image": ["a_left", "a_right"], "level": [0, 1]})
    with pytest.raises(FileNotFoundError, match="a_left.*a_right"):
        FundusDataset(table, tmp_path)


def test_corrupt_image_is_named_when_read(tmp_path: Path) -> None:
    (tmp_path / "x_left.png").write_bytes(b"not an image")
    ds = FundusDataset(pd.DataFrame({"image": ["x_left"], "level": [0]}), tmp_path)
    with pytest.raises(ValueError, match="x_left.png"):
        ds[0]


def _disc_image(width: int, height: int, cx: float, cy: float, r: float) -> Image.Image:
    image = Image.new("RGB", (width, height))
    ImageDraw.Draw(image).ellipse((cx - r, cy - r, cx + r, cy + r), fill=(180, 80, 30))
    return image


@pytest.mark.parametrize(
    ("width", "height", "cx", "cy", "r"),
    [(300, 200, 150, 100, 90), (400, 240, 210, 120, 140), (300, 200, 140, 90, 110)],
    ids=["inside", "cut-top-and-bottom", "cut-off-centre"],
)
def test_field_of_view_is_found_even_when_cut_off(width: int, height: int, cx: float, cy: float, r: float) -> None:
    fov = find_fov(_disc_image(width, height, cx, cy, r))
    assert (fov.cx == pytest.approx(cx, abs=2) and fov.cy == pytest.approx(cy, abs=3)
            and fov.radius == pytest.approx(r, abs=2))


def test_crop_keeps_the_circle_round_and_centred() -> None:
    out = np.asarray(crop_to_fov(_disc_image(400, 240, 210, 120, 140), 64).convert("L")) > 20
    rows, cols = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
    # Horizontally the circle spans the whole crop; vertically it is cut by the same amount top and bottom.
    assert cols[0] <= 1 and cols[-1] >= 62
    assert abs(rows[0] - (63 - rows[-1])) <= 1
    assert abs((out.sum(axis=0)[32]) - (rows[-1] - rows[0] + 1)) <= 1


def test_all_black_image_has_no_field_of_view() -> None:
    with pytest.raises(ValueError, match="no field of view"):
        find_fov(Image.new("RGB", (50, 40)))


def test_preprocess_lists_every_bad_image_and_leaves_no_output(raw_dir: Path, tmp_path: Path) -> None:
    tables = read_course(raw_dir)
    broken = tables["train"].copy()
    broken.loc[0, "path"] = str(tmp_path / "missing.jpeg")
    (tmp_path / "corrupt.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    broken.loc[1, "path"] = str(tmp_path / "corrupt.jpeg")
    out = tmp_path / "processed"
    with pytest.raises(ValueError, match=r"2 of \d+ images") as caught:
        build_processed_set(
            {**tables, "train": broken}, out_dir=out, balance_path=tmp_path / "balance.json",
            settings=CropSettings(size=16), val_fraction=0.25, seed=0, workers=1,
        )
    assert "missing.jpeg" in str(caught.value) and "corrupt.jpeg" in str(caught.value)
    assert not out.exists() and not (tmp_path / "balance.json").exists()
    assert not list(tmp_path.glob(".processed*"))


def test_processed_set_has_every_split_stats_and_balance(processed_dir: Path) -> None:
    for split in ("train", "val", "test", "unlabeled"):
        table = pd.read_csv(processed_dir / f"{split}.csv")
        assert len(table) == len(list((processed_dir / split).glob("*.png"))) > 0
    train, val = pd.read_csv(processed_dir / "train.csv"), pd.read_csv(processed_dir / "val.csv")
    assert len(train) + len(val) == 40
    assert not set(train["image"].map(patient_of)) & set(val["image"].map(patient_of))
    with Image.open(next((processed_dir / "train").glob("*.png"))) as img:
        assert img.size == (32, 32)


def _camera_jpeg(path: Path, width: int, height: int, cx: float, cy: float, r: float) -> Path:
    _disc_image(width, height, cx, cy, r).save(path, quality=90)
    return path


@pytest.mark.parametrize(
    ("width", "height", "cx", "cy", "r"),
    [(3000, 2000, 1480, 1010, 1150), (4752, 3168, 2376, 1584, 1500)],
    ids=["3000x2000-cut-top-and-bottom", "4752x3168-inside"],
)
def test_camera_sized_jpeg_is_decoded_at_reduced_scale_and_cropped_round_and_centred(
    tmp_path: Path, width: int, height: int, cx: float, cy: float, r: float
) -> None:
    src = _camera_jpeg(tmp_path / "1_left.jpeg", width, height, cx, cy, r)
    image, reduced = open_image(src, min_side=320)
    scale = width / image.width
    assert reduced and scale in (2, 4, 8)
    fov = find_fov(image)
    assert fov.cx * scale == pytest.approx(cx, rel=0.005) and fov.cy * scale == pytest.approx(cy, rel=0.005)
    assert fov.radius * scale == pytest.approx(r, rel=0.005)
    assert process_image(src, tmp_path / "out.png", CropSettings(size=256)).kind is None
    out = np.asarray(Image.open(tmp_path / "out.png").convert("L")) > 20
    rows, cols = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
    assert cols[0] <= 2 and cols[-1] >= 253  # the circle spans the crop's width
    assert abs(rows[0] - (255 - rows[-1])) <= 2  # centred vertically, cut (if at all) equally at top and bottom
    if r <= height / 2:
        assert abs((rows[-1] - rows[0]) - (cols[-1] - cols[0])) <= 2  # round, not squashed


def test_reduced_scale_decoding_gives_the_crop_of_full_decoding(tmp_path: Path) -> None:
    src = _camera_jpeg(tmp_path / "1_left.jpeg", 3000, 2000, 1500, 1000, 1150)
    for draft in (True, False):
        assert process_image(src, tmp_path / f"{draft}.png", CropSettings(size=256, draft=draft)).kind is None
    fast, full = (np.asarray(Image.open(tmp_path / f"{draft}.png"), dtype=float) for draft in (True, False))
    assert np.abs(fast - full).mean() < 1.0


def test_small_circle_in_a_large_frame_falls_back_to_full_size_decoding(tmp_path: Path) -> None:
    src = _camera_jpeg(tmp_path / "1_left.jpeg", 3000, 2000, 1500, 1000, 200)
    for draft in (True, False):
        assert process_image(src, tmp_path / f"{draft}.png", CropSettings(size=512, draft=draft)).kind is None
    assert np.array_equal(np.asarray(Image.open(tmp_path / "True.png")), np.asarray(Image.open(tmp_path / "False.png")))


@pytest.mark.parametrize("train", [True, False])
def test_transforms_match_torchvisions_bit_for_bit_under_the_same_seed(train: bool) -> None:
    from PIL import Image
    from torchvision import transforms as T

    from retinopathy.data import build_transform

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)) for _ in range(16)]
    mean, std = [0.4, 0.3, 0.2], [0.2, 0.25, 0.3]
    augment = [T.RandomHorizontalFlip(), T.RandomVerticalFlip(), T.RandomRotation(15.0)] if train else []
    reference = T.Compose([*augment, T.ToTensor(), T.Normalize(mean, std)])
    ours = build_transform(mean=mean, std=std, train=train, rotation=15.0)
    torch.manual_seed(3)
    expected = [reference(image) for image in images]
    torch.manual_seed(3)
    got = [ours(image) for image in images]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    if train:  # the augmentations did something, so the comparison could fail
        assert not all(torch.equal(a, b) for a, b in zip(expected, [ours(image) for image in images]))


@pytest.mark.parametrize("name", ["../secret", "/etc/passwd", "clinicA/../../x"])
def test_an_image_name_leaving_the_image_folder_is_refused_naming_its_row(name: str) -> None:
    from retinopathy.data import table_problems

    frame = pd.DataFrame({"image": ["10_left", name], "level": ["0", "1"]})
    problems = table_problems(frame, "trainLabels.csv", first_row=2)
    assert len(problems) == 1 and "row 3" in problems[0] and repr(name) in problems[0]
    assert table_problems(frame.iloc[:1], "trainLabels.csv", first_row=2) == []
