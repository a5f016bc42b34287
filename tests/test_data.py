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
from retinopathy.preprocessing import CropSettings, build_processed_set, open_image, process_image
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


def test_validation_split_keeps_both_eyes_together_and_is_stratified() -> None:
    rng = np.random.default_rng(1)
    names = [f"{p}_{s}" for p in range(200) for s in ("left", "right")]
    levels = rng.choice(5, size=len(names), p=[0.735, 0.07, 0.15, 0.025, 0.02])
    frame = pd.DataFrame({"image": names, "level": levels})
    kept, held = split_by_patient(frame, fraction=0.2, seed=3)
    assert len(kept) + len(held) == len(frame)
    assert not set(kept["image"].map(patient_of)) & set(held["image"].map(patient_of))
    assert 0.15 < len(held) / len(frame) < 0.25
    assert abs((held["level"] == 0).mean() - (frame["level"] == 0).mean()) < 0.06
    again, _ = split_by_patient(frame, fraction=0.2, seed=3)
    assert again["image"].tolist() == kept["image"].tolist()


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
    train = processed_dataset(processed_dir, "train", build_transform(mean=[0] * 3, std=[1] * 3, train=True, rotation=30))
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
    assert fov.cx == pytest.approx(cx, abs=2) and fov.cy == pytest.approx(cy, abs=3) and fov.radius == pytest.approx(r, abs=2)


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
