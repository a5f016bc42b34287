"""`retinopathy evaluate` on fake copies of IDRiD and Messidor-2 as they ship: header quirks, ungradable rows, mixed
extensions, missing images and unknown grades named by file and row, and patients formed as each set allows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from retinopathy.cli import main
from retinopathy.external import ExternalSetError, read_external
from retinopathy.inference import model_metadata
from retinopathy.models import resnet18
from retinopathy.preprocessing import CropSettings
from retinopathy.synthetic import render_fundus

IDRID = Path("B. Disease Grading")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained ResNet18 saved with the metadata a trained one carries."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "resnet18-test.pt"
    meta = model_metadata("resnet18", mean=[0.4, 0.25, 0.15], std=[0.3, 0.2, 0.1], crop=CropSettings(size=32),
                          data_fingerprint={"train.csv": "0" * 64})
    torch.save({**meta, "state_dict": resnet18(num_classes=5).state_dict(), "pretrained": False}, path)
    return path


def _photo(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    render_fundus(seed % 5, np.random.default_rng(seed), size=64).save(path)


def _idrid(root: Path, train_grades: list[str], test_grades: list[str]) -> Path:
    """IDRiD's disease-grading part: its CSVs with the shipped header (a trailing space, empty extra columns and
    empty rows at the end), and one .jpg per listed image; each set numbers its images from IDRiD_001, as shipped."""
    for split, grades, csv, folder in (
        ("Training", train_grades, "a. IDRiD_Disease Grading_Training Labels.csv", "a. Training Set"),
        ("Testing", test_grades, "b. IDRiD_Disease Grading_Testing Labels.csv", "b. Testing Set"),
    ):
        seed = 0 if split == "Training" else 100
        lines = ["Image name,Retinopathy grade,Risk of macular edema ,,"]
        for i, grade in enumerate(grades):
            name = f"IDRiD_{i + 1:03d}"
            lines.append(f"{name},{grade},0,,")
            _photo(root / IDRID / "1. Original Images" / folder / f"{name}.jpg", seed + i)
        lines += [",,,,", ",,,,"]
        labels = root / IDRID / "2. Groundtruths" / csv
        labels.parent.mkdir(parents=True, exist_ok=True)
        labels.write_text("\n".join(lines) + "\n")
    return root


def _messidor(root: Path, rows: list[tuple[str, str, str]], exams: list[tuple[str, str]] | None = None) -> Path:
    """messidor_data.csv (image_id, adjudicated_dr_grade, adjudicated_dme, adjudicated_gradable) and the images,
    .png and .JPG, spread over two folders; ungradable rows have no grade."""
    lines = ["image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable"]
    for i, (image, grade, gradable) in enumerate(rows):
        lines.append(f"{image},{grade},0,{gradable}")
        _photo(root / ("Base11" if i % 2 else "Base12") / image, i)
    root.mkdir(parents=True, exist_ok=True)
    (root / "messidor_data.csv").write_text("\n".join(lines) + "\n")
    if exams is not None:
        (root / "messidor-2.csv").write_text("\n".join(f"{a};{b}" for a, b in exams) + "\n")
    return root


def test_idrid_both_sets_each_image_its_own_patient(model_file: Path, tmp_path: Path) -> None:
    root = _idrid(tmp_path / "IDRiD", ["0", "2", "4", "1"], ["3", "0"])
    out = tmp_path / "results" / "idrid.json"
    assert main(["evaluate", str(model_file), "--source", "idrid", "--root", str(root), "--out", str(out),
                 "--device", "cpu"]) == 0
    metrics = json.loads(out.read_text())
    external = metrics["external"]
    # Both sets have an IDRiD_001 and an IDRiD_002: six images, six patients, none merged.
    assert (external["images"], external["patients"]) == (6, 6)
    assert "each image is its own patient" in external["patients_formed"]
    assert metrics["n"] == 6 and sum(map(sum, metrics["confusion"])) == 6
    assert {"accuracy", "kappa", "macro_f1"} <= set(metrics["intervals"])
    ece = metrics["calibration"]["ece"]
    assert 0 <= ece["low"] <= ece["high"] <= 1 and 0 <= ece["value"] <= 1  # a percentile interval
    assert sum(row["images"] for row in metrics["calibration"]["reliability"]) == 6
    assert [row["kept"] for row in metrics["referral"]["curve"]] == [6, 5, 5, 4, 4, 3]
    predictions = pd.read_csv(out.with_suffix(".csv"))
    assert sorted(predictions["actual"]) == [0, 0, 1, 2, 3, 4]
    assert sorted(predictions["image"])[:2] == ["test/IDRiD_001", "test/IDRiD_002"]
    assert np.allclose(predictions[[f"p{g}" for g in range(5)]].sum(axis=1), 1, atol=1e-4)
    only_test = read_external("idrid", root, idrid_sets=("test",))
    assert list(only_test.frame["image"]) == ["test/IDRiD_001", "test/IDRiD_002"]


def test_a_model_trained_on_the_embedded_set_is_named_with_a_warning(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    synthetic = tmp_path / "synthetic.pt"
    torch.save({**torch.load(model_file, weights_only=True), "data_source": {"source": "synthetic"}}, synthetic)
    root = _idrid(tmp_path / "IDRiD", ["0", "2"], ["1"])
    said = []
    for model in (synthetic, model_file):
        assert main(["evaluate", str(model), "--source", "idrid", "--root", str(root), "--out",
                     str(tmp_path / f"{model.stem}.json"), "--device", "cpu"]) == 0
        said.append(capsys.readouterr().err)
    assert f"warning: {synthetic} was trained on the embedded synthetic set (data.source synthetic)" in said[0]
    # The fixture's file records no data source (its data_source is None): the softer warning.
    assert f"warning: {model_file} does not say what it was trained on" in said[1]
    assert "embedded synthetic set (data.source" not in said[1]


def test_idrid_unknown_grade_and_missing_image_are_named_with_file_and_row(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _idrid(tmp_path / "IDRiD", ["0", "5", "2"], ["x"])
    (root / IDRID / "1. Original Images" / "a. Training Set" / "IDRiD_003.jpg").unlink()
    out = tmp_path / "idrid.json"
    assert main(["evaluate", str(model_file), "--source", "idrid", "--root", str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Training Labels.csv, row 3: 'IDRiD_002' has grade '5'" in err
    assert "Testing Labels.csv, row 2: 'IDRiD_001' has grade 'x'" in err
    assert "row 4: image 'IDRiD_003' not found" in err
    assert not out.exists() and not out.with_suffix(".csv").exists()


def test_messidor2_leaves_out_ungradable_rows_and_finds_mixed_extensions(model_file: Path, tmp_path: Path) -> None:
    rows = [("20051019_38557_0100_PP.png", "0", "1"), ("20051019_38557_0200_PP.png", "2", "1"),
            ("IM000001.JPG", "1", "1"), ("IM000002.JPG", "", "0"), ("IM000003.jpg", "4", "1.0")]
    root = _messidor(tmp_path / "messidor2", rows)
    data = read_external("messidor2", root)
    assert list(data.frame["image"]) == ["20051019_38557_0100_PP.png", "20051019_38557_0200_PP.png", "IM000001.JPG",
                                         "IM000003.jpg"]
    assert data.left_out == {"ungradable (adjudicated_gradable == 0)": 1}
    assert list(data.frame["level"]) == [0, 2, 1, 4]
    assert "each image is its own patient" in data.patients
    out = tmp_path / "m2.json"
    assert main(["evaluate", str(model_file), "--source", "messidor2", "--root", str(root), "--out", str(out)]) == 0
    external = json.loads(out.read_text())["external"]
    assert external["images"] == 4 and external["left_out"] == {"ungradable (adjudicated_gradable == 0)": 1}


def test_messidor2_pairs_the_two_images_of_an_examination_into_one_patient(tmp_path: Path) -> None:
    rows = [("a_1.png", "0", "1"), ("a_2.png", "1", "1"), ("b_1.JPG", "2", "1"), ("c_1.png", "3", "1")]
    root = _messidor(tmp_path / "messidor2", rows, exams=[("a_1.png", "a_2.png"), ("b_1.JPG", "b_2.JPG")])
    data = read_external("messidor2", root)
    assert list(data.frame["patient"]) == ["a_1.png", "a_1.png", "b_1.JPG", "c_1.png"]
    assert "form one patient" in data.patients and "3 of 4 images" in data.patients


def test_messidor2_missing_image_and_unknown_grade_are_named(tmp_path: Path) -> None:
    rows = [("a.png", "0", "1"), ("b.png", "7", "1"), ("c.png", "1", "2")]
    root = _messidor(tmp_path / "messidor2", rows)
    (root / "Base12" / "a.png").unlink()
    with pytest.raises(ExternalSetError) as caught:
        read_external("messidor2", root)
    message = str(caught.value)
    assert "row 2: image 'a.png' not found" in message
    assert "row 3: 'b.png' has grade '7'" in message
    assert "row 4: 'c.png' has adjudicated_gradable '2'" in message


def test_a_set_of_unknown_grade_scale_and_outputs_inside_the_set_are_refused(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="grade scale is not known"):
        read_external("eyepacs-2", tmp_path)
    assert main(["evaluate", str(model_file), "--source", "eyepacs-2", "--root", str(tmp_path), "--out",
                 str(tmp_path / "x.json")]) == 2
    root = _idrid(tmp_path / "IDRiD", ["0"], ["1"])
    inside = root / "scores.json"
    assert main(["evaluate", str(model_file), "--source", "idrid", "--root", str(root), "--out", str(inside)]) == 2
    assert "lies inside --root" in capsys.readouterr().err and not inside.exists()


def test_messidor2_finds_images_whatever_the_case_or_extension_and_names_clashes(tmp_path: Path) -> None:
    rows = [("a.png", "0", "1"), ("b.png", "1", "1")]
    root = _messidor(tmp_path / "messidor2", rows)
    (root / "Base12" / "a.png").rename(root / "Base12" / "A.PNG")  # another case on disk
    (root / "Base11" / "b.png").rename(root / "Base11" / "b.tif")  # another extension: found by its stem
    data = read_external("messidor2", root)
    assert [Path(p).name for p in data.frame["path"]] == ["A.PNG", "b.tif"]
    render_fundus(0, np.random.default_rng(9), size=64).save(root / "Base12" / "b.png")
    assert Path(read_external("messidor2", root).frame["path"].iat[1]).name == "b.png"  # the exact name wins
    (root / "copy").mkdir()
    (root / "copy" / "b.png").write_bytes((root / "Base12" / "b.png").read_bytes())  # two files named b.png
    with pytest.raises(ExternalSetError, match=r"row 3: 'b.png' matches more than one file"):
        read_external("messidor2", root)


def test_a_name_listed_twice_is_named_with_its_rows(tmp_path: Path) -> None:
    root = _idrid(tmp_path / "IDRiD", ["0", "1"], ["2"])
    labels = root / IDRID / "2. Groundtruths" / "a. IDRiD_Disease Grading_Training Labels.csv"
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join([lines[0], lines[1], "", lines[2], lines[1]]) + "\n")  # a blank line, then a repeat
    with pytest.raises(ExternalSetError) as caught:
        read_external("idrid", root)
    assert "image 'IDRiD_001' is listed more than once, at rows 2, 5" in str(caught.value)
