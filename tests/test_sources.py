"""The course, Kaggle 2015 and APTOS 2019 layouts: readers, patient splits, bad input and the preprocess stage."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image, ImageDraw

from retinopathy.data import patient_of, processed_dataset
from retinopathy.params import load_params
from retinopathy.preprocessing import CropSettings, assign_splits, build_processed_set, split_leaks
from retinopathy.sources import LAYOUTS, SourceError, read_source, unlisted_images

# A dozen images leave some grades with fewer members than folds; sklearn warns, the split is still by patient.
pytestmark = pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")

ROOT = Path(__file__).resolve().parents[1]
LAYOUT_NAMES = ["course", "kaggle", "aptos"]
# (width, height, radius / height): mixed sizes and aspect ratios; a share above 0.5 cuts the circle at top and bottom.
SHAPES = [(120, 80, 0.45), (160, 100, 0.6), (96, 96, 0.45), (200, 130, 0.58), (90, 120, 0.35), (140, 90, 0.5)] * 2
LEVELS = [0, 0, 0, 1, 2, 0, 3, 0, 4, 2, 0, 1]
CORRUPT, MISSING = 2, 5  # indices of the bad rows (different patients) when a set is made with bad input


def _names(layout: str) -> list[str]:
    if layout == "aptos":  # hex id codes, each image its own patient
        return [hashlib.md5(str(i).encode()).hexdigest()[:12] for i in range(len(SHAPES))]
    return [f"{patient}_{side}" for patient in (10, 13, 15, 16, 17, 19) for side in ("left", "right")]


def _photo(width: int, height: int, share: float) -> Image.Image:
    image = Image.new("RGB", (width, height))
    r, cx, cy = share * height, width / 2, height / 2
    ImageDraw.Draw(image).ellipse((cx - r, cy - r, cx + r, cy + r), fill=(170, 80, 30))
    return image


def make_layout(root: Path, layout: str, *, bad: bool = False) -> dict[str, str]:
    """Write a 12-image fake set in ``layout`` under ``root``; with ``bad``, one corrupt, one missing and one
    unlisted image.

    Returns:
        Names of the bad files by kind (``corrupt``, ``missing``, ``unlisted``), empty without ``bad``.
    """
    names, spec = _names(layout), LAYOUTS[layout]
    image_dir = root / spec.image_dir
    image_dir.mkdir(parents=True, exist_ok=True)
    for name, (width, height, share) in zip(names, SHAPES):
        _photo(width, height, share).save(image_dir / f"{name}{spec.suffix}")
    if layout == "course":
        for split, rows in (("train", slice(0, 8)), ("test", slice(8, 12))):
            (root / f"{split}_img.csv").write_text("".join(f"{n}\n" for n in names[rows]))
            (root / f"{split}_label.csv").write_text("".join(f"{v}\n" for v in LEVELS[rows]))
    else:
        header, csv = ("image,level", "trainLabels.csv") if layout == "kaggle" else ("id_code,diagnosis", "train.csv")
        (root / csv).write_text(header + "\n" + "".join(f"{n},{v}\n" for n, v in zip(names, LEVELS)))
    if not bad:
        return {}
    corrupt = image_dir / f"{names[CORRUPT]}{spec.suffix}"
    corrupt.write_bytes(corrupt.read_bytes()[:60])  # truncated
    (image_dir / f"{names[MISSING]}{spec.suffix}").unlink()
    unlisted = "ffffffffffff" if layout == "aptos" else "99_left"
    _photo(100, 80, 0.45).save(image_dir / f"{unlisted}{spec.suffix}")
    return {"corrupt": names[CORRUPT], "missing": names[MISSING], "unlisted": unlisted}


def _build(root: Path, layout: str, out: Path, **kwargs) -> dict[str, int]:
    tables = read_source(layout, root)
    return build_processed_set(
        tables, out_dir=out / "processed", balance_path=out / "balance.json", settings=CropSettings(size=24),
        val_fraction=0.25, test_fraction=0.25, seed=0, workers=1,
        unlisted=unlisted_images(layout, root, tables), report_path=out / "report.json", **kwargs,
    )


def test_course_reader_keeps_the_first_row_a_header_reading_csv_loses(tmp_path: Path) -> None:
    make_layout(tmp_path, "course")
    tables = read_source("course", tmp_path)
    assert [len(tables["train"]), len(tables["test"])] == [8, 4]
    assert tables["train"]["image"].iloc[0] == "10_left" and tables["train"]["level"].tolist() == LEVELS[:8]
    # The pitfall behind the widely quoted 28,099 / 7,025: one image per file becomes a column name.
    assert len(pd.read_csv(tmp_path / "train_img.csv")) == 7


@pytest.mark.parametrize("layout", ["kaggle", "aptos"])
def test_header_layouts_are_read_as_one_labelled_pool_with_every_row(tmp_path: Path, layout: str) -> None:
    make_layout(tmp_path, layout)
    tables = read_source(layout, tmp_path)
    assert list(tables) == ["train"]
    assert tables["train"]["image"].tolist() == _names(layout) and tables["train"]["level"].tolist() == LEVELS
    assert all(Path(p).is_file() for p in tables["train"]["path"])
    assert unlisted_images(layout, tmp_path, tables) == []


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_splits_keep_patients_together_and_hold_out_test_only_where_none_is_given(tmp_path: Path, layout: str) -> None:
    make_layout(tmp_path / "raw", layout)
    counts = _build(tmp_path / "raw", layout, tmp_path)
    frames = {split: pd.read_csv(tmp_path / "processed" / f"{split}.csv", dtype={"image": str})
              for split in ("train", "val", "test")}
    assert sum(counts.values()) == 12 and all(len(f) > 0 for f in frames.values())
    patients = {split: set(f["image"].map(patient_of)) for split, f in frames.items()}
    assert (not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
            and not patients["val"] & patients["test"])
    if layout == "course":  # the given test split is kept as it is
        assert frames["test"]["image"].tolist() == _names(layout)[8:]
    again = tmp_path / "again"
    _build(tmp_path / "raw", layout, again)
    assert pd.read_csv(again / "processed" / "test.csv", dtype={"image": str}).equals(frames["test"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "ok" and report["bad_image_count"] == 0 and report["images_per_second"] > 0


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_bad_images_and_unlisted_files_are_all_named_in_one_error(tmp_path: Path, layout: str) -> None:
    bad = make_layout(tmp_path / "raw", layout, bad=True)
    with pytest.raises(ValueError, match=r"2 of 12 images could not be processed and 1 image file") as caught:
        _build(tmp_path / "raw", layout, tmp_path)
    for name in bad.values():
        assert name in str(caught.value)
    assert "on_bad_image: skip" in str(caught.value)
    assert not (tmp_path / "processed").exists() and not (tmp_path / "balance.json").exists()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "stopped on bad input" and report["bad_image_count"] == 2


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_skip_leaves_bad_images_out_and_reports_them(tmp_path: Path, layout: str) -> None:
    bad = make_layout(tmp_path / "raw", layout, bad=True)
    counts = _build(tmp_path / "raw", layout, tmp_path, on_bad_image="skip")
    assert sum(counts.values()) == 10
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["bad_image_count"] == 2 and report["images_processed"] == 10
    assert {(b["image"], b["kind"]) for b in report["bad_images"]} == {
        (bad["corrupt"], "unreadable"), (bad["missing"], "missing"),
    }
    assert report["unlisted_file_count"] == 1 and Path(report["unlisted_files"][0]).stem == bad["unlisted"]
    kept = pd.concat([pd.read_csv(tmp_path / "processed" / f"{s}.csv", dtype={"image": str})
                      for s in ("train", "val", "test")])
    assert not set(kept["image"]) & {bad["corrupt"], bad["missing"]}
    assert len(list((tmp_path / "processed").glob("*/*.png"))) == 10


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_label_table_problems_are_listed_together(tmp_path: Path, layout: str) -> None:
    make_layout(tmp_path, layout)
    names = _names(layout)
    if layout == "course":
        (tmp_path / "train_img.csv").write_text("".join(f"{n}\n" for n in [*names[:7], names[0]]))
        (tmp_path / "train_label.csv").write_text("0\n7\n0\n1\n2\ntwo\n3\n0\n")
        bad_rows = ["row 2", "row 6", "rows 1, 8"]
    else:
        csv = tmp_path / ("trainLabels.csv" if layout == "kaggle" else "train.csv")
        lines = csv.read_text().splitlines()
        lines[2] = f"{names[1]},7"
        lines[6] = f"{names[5]},two"
        lines.append(f"{names[0]},0")
        csv.write_text("\n".join(lines) + "\n")
        bad_rows = ["row 3", "row 7", "rows 2, 14"]  # line numbers as an editor shows them, header on line 1
    with pytest.raises(SourceError) as caught:
        read_source(layout, tmp_path)
    message = str(caught.value)
    assert "2 problem(s)" in message
    assert "2 label(s) outside 0..4" in message and "listed more than once" in message
    for row in bad_rows:
        assert row in message


def test_course_csv_with_a_header_row_is_refused_with_a_hint(tmp_path: Path) -> None:
    make_layout(tmp_path, "course")
    (tmp_path / "train_img.csv").write_text("image\n" + (tmp_path / "train_img.csv").read_text())
    (tmp_path / "train_label.csv").write_text("level\n" + (tmp_path / "train_label.csv").read_text())
    with pytest.raises(SourceError, match="row 1 looks like a header"):
        read_source("course", tmp_path)


def test_label_csv_without_the_layouts_columns_names_them(tmp_path: Path) -> None:
    make_layout(tmp_path, "aptos")
    (tmp_path / "train.csv").write_text("image,level\nabc,0\n")
    with pytest.raises(SourceError, match=r"needs columns \['id_code', 'diagnosis'\], has \['image', 'level'\]"):
        read_source("aptos", tmp_path)


def _stage_params(tmp_path: Path, **data: object) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(data, val_fraction=0.25)
    params["preprocess"].update(size=24, workers=1)
    path = tmp_path / "tiny-params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_preprocess_stage_runs_on_a_course_copy_inside_the_project(tmp_path: Path) -> None:
    make_layout(tmp_path / "datasets" / "course", "course")
    params = _stage_params(tmp_path, source="course", root="datasets/course")
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "preprocess.py"), "--params", str(params)],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "metrics" / "preprocess_report.json").read_text())
    assert report["splits"] == {"train": 6, "val": 2, "test": 4} and report["bad_image_count"] == 0
    assert json.loads((tmp_path / "metrics" / "label_balance.json").read_text())["test"]["total"] == 4
    # Every image judged with the params' quality thresholds (kept whatever the verdict: on_ungradable keep).
    quality = report["quality"]
    assert quality["on_ungradable"] == "keep" and quality["thresholds"] == load_params(params)["quality"]
    assert sum(quality["gradable"].values()) + quality["ungradable_count"] == 12 and quality["left_out"] == 0
    stats = json.loads((tmp_path / "data" / "processed" / "stats.json").read_text())
    assert stats["data_source"] == {"source": "course", "label_fraction": 1.0}  # what trained models record


def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout + done.stderr


def test_dvc_tracks_a_data_root_outside_the_repository(tmp_path: Path) -> None:
    data = tmp_path / "mount" / "kaggle"
    make_layout(data, "kaggle")
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "stages", "src"):
        src = ROOT / name
        (shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
         if src.is_dir() else shutil.copy(src, repo / name))
    shutil.copy(_stage_params(tmp_path, source="kaggle", root=str(data)), repo / "params.yaml")
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "init", "-q"], repo)
    assert "Running stage 'preprocess'" in _run(["dvc", "repro", "preprocess"], repo)
    assert (repo / "metrics" / "preprocess_report.json").is_file()
    assert "up to date" in _run(["dvc", "status", "preprocess"], repo)
    _photo(110, 80, 0.45).save(data / "train" / "10_left.jpeg")  # the data changed on the mount
    assert "modified" in _run(["dvc", "status", "preprocess"], repo)


def _leaky_course(root: Path) -> None:
    """A course layout whose given split puts 16_left in train and 16_right in test, and whose
    unlabelled pool holds 19_right, the other eye of a test patient."""
    make_layout(root, "course")
    names = _names("course")
    train, test = names[:7], names[7:11]  # 16_right (index 7) lands in test, 19_right (index 11) in the pool
    (root / "train_img.csv").write_text("".join(f"{n}\n" for n in train))
    (root / "train_label.csv").write_text("".join(f"{v}\n" for v in LEVELS[:7]))
    (root / "test_img.csv").write_text("".join(f"{n}\n" for n in test))
    (root / "test_label.csv").write_text("".join(f"{v}\n" for v in LEVELS[7:11]))
    _photo(100, 80, 0.45).save(root / "21_left.jpeg")
    (root / "unlabeled_img.csv").write_text(f"{names[11]}\n21_left\n")


def test_leaking_course_split_is_kept_by_default_and_its_patients_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _leaky_course(tmp_path / "raw")
    _build(tmp_path / "raw", "course", tmp_path)
    leaks = json.loads((tmp_path / "report.json").read_text())["split_leaks"]
    assert leaks["policy"] == "warn" and leaks["patient_count"] == 1
    (patient,) = leaks["patients"]
    assert patient["patient"] == "16" and patient["test"] == ["16_right"]
    assert patient.get("train", []) + patient.get("val", []) == ["16_left"]
    assert "1 patient(s) have eyes on both sides" in capsys.readouterr().err
    assert pd.read_csv(tmp_path / "processed" / "test.csv")["image"].tolist() == _names("course")[7:11]
    # the pool never holds a test patient's eye, whatever the policy
    assert leaks["pool_images_of_test_patients_dropped"] == ["19_right"]
    assert leaks["pool_images_of_val_patients_dropped"] == []
    assert pd.read_csv(tmp_path / "processed" / "unlabeled.csv")["image"].tolist() == ["21_left"]


def test_leaking_split_stops_with_error_policy_naming_the_patient(tmp_path: Path) -> None:
    _leaky_course(tmp_path / "raw")
    with pytest.raises(ValueError, match=r"1 patient\(s\) have eyes on both sides") as caught:
        _build(tmp_path / "raw", "course", tmp_path, on_split_leak="error")
    assert "'16'" in str(caught.value) and "16_left" in str(caught.value) and "16_right" in str(caught.value)
    assert not (tmp_path / "processed").exists()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "stopped on split leak" and report["split_leaks"]["patients"][0]["patient"] == "16"


def test_resplit_moves_a_leaking_patient_to_test(tmp_path: Path) -> None:
    _leaky_course(tmp_path / "raw")
    _build(tmp_path / "raw", "course", tmp_path, on_split_leak="resplit")
    frames = {split: pd.read_csv(tmp_path / "processed" / f"{split}.csv") for split in ("train", "val", "test")}
    patients = {split: set(f["image"].map(patient_of)) for split, f in frames.items()}
    assert "16" in patients["test"] and "16" not in patients["train"] | patients["val"]
    assert set(frames["test"]["image"]) == set(_names("course")[7:11]) | {"16_left"}
    leaks = json.loads((tmp_path / "report.json").read_text())["split_leaks"]
    assert len(leaks["moved"]) == 1 and leaks["moved"][0].startswith("16_left (")


def test_the_pool_never_holds_an_eye_of_a_validation_patient(tmp_path: Path) -> None:
    """Train lists one eye of each of four patients and the pool their other eyes: whichever patient the
    seeded split sends to validation, its pool eye must go, or pretraining sees the patient validation scores."""
    root = tmp_path / "raw"
    make_layout(root, "course")
    train_patients, test_patients = ["10", "13", "15", "16"], ["17", "19"]
    (root / "train_img.csv").write_text("".join(f"{p}_left\n" for p in train_patients))
    (root / "train_label.csv").write_text("0\n1\n0\n2\n")
    (root / "test_img.csv").write_text("".join(f"{p}_{side}\n" for p in test_patients for side in ("left", "right")))
    (root / "test_label.csv").write_text("0\n1\n4\n2\n")
    (root / "unlabeled_img.csv").write_text("".join(f"{p}_right\n" for p in train_patients))
    _build(root, "course", tmp_path)
    frames = {split: pd.read_csv(tmp_path / "processed" / f"{split}.csv", dtype={"image": str})
              for split in ("train", "val", "unlabeled")}
    val_patients = set(frames["val"]["image"].map(patient_of))
    assert len(val_patients) == 1  # 0.25 of 4 patients
    assert set(frames["unlabeled"]["image"]) == {f"{p}_right" for p in train_patients if p not in val_patients}
    leaks = json.loads((tmp_path / "report.json").read_text())["split_leaks"]
    assert leaks["pool_images_of_val_patients_dropped"] == [f"{p}_right" for p in sorted(val_patients)]
    assert leaks["pool_images_of_test_patients_dropped"] == []


CLINICS = ("clinicA", "clinicB")


def _clinic_folders(root: Path) -> None:
    """A Kaggle-style set naming its 24 images in two clinic folders, ``clinicA/10_left`` ... ``clinicB/19_right``."""
    rows = []
    for clinic in CLINICS:
        (root / "train" / clinic).mkdir(parents=True)
        for patient, level in zip((10, 13, 15, 16, 17, 19), LEVELS[::2]):
            for side in ("left", "right"):
                _photo(120, 80, 0.45).save(root / "train" / clinic / f"{patient}_{side}.jpeg")
                rows.append(f"{clinic}/{patient}_{side},{level}")
    (root / "trainLabels.csv").write_text("image,level\n" + "\n".join(rows) + "\n")


def test_names_with_folders_keep_same_numbered_patients_of_two_folders_apart(tmp_path: Path) -> None:
    """A Kaggle-style CSV naming images in clinic folders: clinicA/10 and clinicB/10 are two patients, each
    patient's eyes stay on one side of every split, and the processed set keeps the folders."""
    root = tmp_path / "raw"
    _clinic_folders(root)
    tables = read_source("kaggle", root)
    assert tables["train"]["path"].iloc[0] == str(root / "train" / "clinicA" / "10_left.jpeg")
    assert all(Path(p).is_file() for p in tables["train"]["path"])
    assert tables["train"]["image"].map(patient_of).nunique() == 12
    splits = assign_splits(tables, val_fraction=0.25, test_fraction=0.25, seed=0)
    assert split_leaks(splits) == []
    patients = {split: set(splits[split]["image"].map(patient_of)) for split in ("train", "val", "test")}
    assert [len(patients[split]) for split in ("train", "val", "test")] == [7, 2, 3]  # 3 of 12 held out, then 2 of 9

    counts = _build(root, "kaggle", tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "ok" and report["bad_image_count"] == 0 and report["unlisted_file_count"] == 0
    assert sum(counts.values()) == 24
    processed = tmp_path / "processed"
    frames = {split: pd.read_csv(processed / f"{split}.csv", dtype={"image": str}) for split in counts}
    where = {image: split for split, frame in frames.items() for image in frame["image"]}
    assert len(where) == 24
    for clinic in CLINICS:  # both clinics' patient 10, both eyes, each in its own folder of its split
        for side in ("left", "right"):
            image = f"{clinic}/10_{side}"
            assert (processed / where[image] / clinic / f"10_{side}.png").is_file()
        assert where[f"{clinic}/10_left"] == where[f"{clinic}/10_right"]
    by_patient = {split: set(frame["image"].map(patient_of)) for split, frame in frames.items()}
    assert {"clinicA/10", "clinicB/10"} <= set().union(*by_patient.values())
    assert sum(len(found) for found in by_patient.values()) == 12  # twelve patients, none on two sides
    for split in frames:  # training and evaluation read the subfolders' images
        first = processed_dataset(processed, split, None)[0][0]
        assert first.size == (24, 24)


def test_unlisted_images_compares_paths_inside_the_image_folder_not_file_names(tmp_path: Path) -> None:
    """With names in clinic folders, a top-level file of the same name is not listed, nor is a subfolder's file
    that only a top-level name matches, and subfolders are searched for files no row names."""
    root = tmp_path / "raw"
    _clinic_folders(root)
    _photo(120, 80, 0.45).save(root / "train" / "10_left.jpeg")  # only clinicA/10_left and clinicB/10_left are listed
    _photo(120, 80, 0.45).save(root / "train" / "clinicB" / "99_left.jpeg")  # in a subfolder, listed nowhere
    (root / "train" / ".thumbnails").mkdir()
    _photo(120, 80, 0.45).save(root / "train" / ".thumbnails" / "10_left.jpeg")  # hidden folders are not data
    tables = read_source("kaggle", root)
    expected = [str(root / "train" / "10_left.jpeg"), str(root / "train" / "clinicB" / "99_left.jpeg")]
    assert unlisted_images("kaggle", root, tables) == expected

    # The other way round: the CSV names the top level, the photograph sits in a clinic folder.
    flat = tmp_path / "flat"
    make_layout(flat, "kaggle")
    (flat / "train" / "clinicB").mkdir()
    moved = flat / "train" / "clinicB" / "10_left.jpeg"
    (flat / "train" / "10_left.jpeg").rename(moved)
    assert unlisted_images("kaggle", flat, read_source("kaggle", flat)) == [str(moved)]


def test_course_layout_checks_only_image_files_in_its_subfolders(tmp_path: Path) -> None:
    make_layout(tmp_path, "course")
    (tmp_path / "extra").mkdir()
    _photo(120, 80, 0.45).save(tmp_path / "extra" / "10_left.jpeg")  # the course names 10_left at the top level only
    (tmp_path / "extra" / "notes.csv").write_text("not an image\n")
    tables = read_source("course", tmp_path)
    assert unlisted_images("course", tmp_path, tables) == [str(tmp_path / "extra" / "10_left.jpeg")]
