"""The `retinopathy` command: grading raw photographs the way training saw them, failures, heatmaps, ONNX."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from retinopathy.cli import main
from retinopathy.data import FundusDataset, build_transform
from retinopathy.inference import model_metadata, predict
from retinopathy.models import resnet18
from retinopathy.precision import resolve_precision
from retinopathy.preprocessing import CropSettings, process_image
from retinopathy.synthetic import render_fundus

SETTINGS = CropSettings(size=32)
MEAN, STD = [0.4, 0.25, 0.15], [0.3, 0.2, 0.1]


def _photograph(path: Path, grade: int, seed: int, eye: str = "left", size: int = 80) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    render_fundus(grade, np.random.default_rng(seed), size=size, eye=eye).save(path)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained ResNet18 saved with the metadata a trained one carries."""
    torch.manual_seed(0)
    model = resnet18(num_classes=5)
    path = tmp_path_factory.mktemp("model") / "resnet18-test.pt"
    meta = model_metadata("resnet18", mean=MEAN, std=STD, crop=SETTINGS, data_fingerprint={"train.csv": "0" * 64})
    torch.save({**meta, "state_dict": model.state_dict(), "pretrained": False}, path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four synthetic photographs: patient 1 with both eyes, patient 2 with one, and one without a patient name."""
    root = tmp_path_factory.mktemp("photos")
    return [
        _photograph(root / "1_left.jpeg", 0, 1, "left", 80),
        _photograph(root / "1_right.jpeg", 3, 2, "right", 96),
        _photograph(root / "2_left.png", 4, 3, "left", 64),
        _photograph(root / "scan.png", 2, 4, "right", 72),
    ]


def test_predict_matches_the_evaluate_path_on_processed_images(model_file: Path, photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "grades.csv"
    assert main(["predict", str(model_file), *map(str, photos), "--out", str(out), "--device", "cpu"]) == 0
    graded = pd.read_csv(out).set_index("image")
    # The evaluate stage's path: processed PNG -> FundusDataset -> inference.predict.
    processed = tmp_path / "processed"
    processed.mkdir()
    for photo in photos:
        assert process_image(photo, processed / f"{photo.stem}.png", SETTINGS).kind is None
    dataset = FundusDataset(pd.DataFrame({"image": [p.stem for p in photos]}), processed, build_transform(mean=MEAN, std=STD, train=False), labelled=False)
    model = resnet18(num_classes=5)
    model.load_state_dict(torch.load(model_file, weights_only=True)["state_dict"])
    precision, _ = resolve_precision("auto", torch.device("cpu"))
    probs, _ = predict(model, torch.utils.data.DataLoader(dataset, batch_size=2), torch.device("cpu"), precision=precision)
    ours = graded.loc[[str(p) for p in photos], [f"p{g}" for g in range(5)]].to_numpy()
    assert np.abs(ours - probs).max() < 1e-5
    assert (graded.loc[[str(p) for p in photos], "grade"].to_numpy() == probs.argmax(1)).all()
    assert np.allclose(graded["p_referable"], graded[["p2", "p3", "p4"]].sum(axis=1), atol=1e-5)


def test_patient_grade_only_when_both_eyes_were_graded(model_file: Path, photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "grades.csv"
    assert main(["predict", str(model_file), str(photos[0].parent), "--out", str(out), "--device", "cpu"]) == 0
    frame = pd.read_csv(out, dtype={"patient": str}, keep_default_na=False).set_index("image")
    rows = {Path(image).name: row for image, row in frame.iterrows()}
    assert list(frame.index) == sorted(frame.index)  # a folder is read in sorted order
    assert (rows["1_left.jpeg"]["patient"], rows["1_left.jpeg"]["eye"]) == ("1", "left")
    assert (rows["scan.png"]["patient"], rows["scan.png"]["eye"]) == ("", "")
    worse = max(rows["1_left.jpeg"]["grade"], rows["1_right.jpeg"]["grade"])
    assert rows["1_left.jpeg"]["patient_grade"] == rows["1_right.jpeg"]["patient_grade"] == str(worse)
    assert rows["2_left.png"]["patient_grade"] == "" and rows["scan.png"]["patient_grade"] == ""


def test_bad_images_are_named_and_left_out_while_the_rest_are_graded(
    model_file: Path, photos: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mixed"
    good = [_photograph(folder / "3_left.jpeg", 1, 5), _photograph(folder / "3_right.png", 2, 6, "right")]
    whole = (folder / "3_left.jpeg").read_bytes()
    (folder / "truncated.jpeg").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.jpg").write_text("not a photograph\n")
    (folder / "empty.png").write_bytes(b"")
    Image.new("RGB", (64, 64)).save(folder / "black.png")
    (tmp_path / "nothing_here").mkdir()
    bad_list = tmp_path / "list.csv"
    bad_list.write_bytes(b"\xff\xfe\x00broken,\x00\n\x81\n")
    out = tmp_path / "grades.csv"
    code = main(["predict", str(model_file), str(folder), str(tmp_path / "nothing_here"), str(bad_list), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    for name in ("truncated.jpeg", "notes.jpg", "empty.png", "black.png", "nothing_here", "list.csv"):
        assert name in err, f"{name} is not named on stderr:\n{err}"
    assert "no field of view" in err
    assert sorted(pd.read_csv(out)["image"]) == sorted(map(str, good))


def test_heatmaps_are_one_png_per_photograph_at_its_own_size(model_file: Path, photos: list[Path], tmp_path: Path) -> None:
    heat = tmp_path / "heat"
    assert main(["predict", str(model_file), *map(str, photos), "--out", str(tmp_path / "g.csv"), "--heatmaps", str(heat), "--device", "cpu"]) == 0
    assert sorted(p.name for p in heat.iterdir()) == sorted(f"{p.stem}.png" for p in photos)
    for photo in photos:
        with Image.open(photo) as original, Image.open(heat / f"{photo.stem}.png") as overlay:
            assert overlay.size == original.size


def test_onnx_export_gives_the_same_probabilities(model_file: Path, photos: list[Path], tmp_path: Path) -> None:
    import onnxruntime as ort

    from retinopathy.inference import load_model, prepare_photograph

    out = tmp_path / "model.onnx"
    assert main(["export", str(model_file), "--onnx", str(out)]) == 0
    assert out.is_file() and out.with_suffix(".json").is_file()
    model, meta = load_model(model_file, torch.device("cpu"))
    batch = torch.stack([prepare_photograph(p, meta) for p in photos])
    with torch.no_grad():
        expected = torch.softmax(model(batch), dim=1).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": batch.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-4


def test_a_file_without_metadata_or_a_missing_model_is_a_usage_error(
    photos: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "bare.pt"
    torch.save({"state_dict": resnet18(num_classes=5).state_dict()}, bare)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    for path in (bare, text):
        assert main(["predict", str(path), str(photos[0]), "--out", str(tmp_path / "g.csv")]) == 2
        err = capsys.readouterr().err
        assert "not a retinopathy model" in err and "Traceback" not in err
    assert main(["predict", str(tmp_path / "missing.pt"), str(photos[0])]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert main(["export", str(bare), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert not (tmp_path / "m.onnx").exists()
    assert main(["predict", "--no-such-flag"]) == 2


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "retinopathy predict models/" in capsys.readouterr().out
    assert main(["predict", "--help"]) == 0
    assert "examples:" in capsys.readouterr().out


def test_module_entry_point_runs(model_file: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "retinopathy", "predict", str(model_file), str(tmp_path / "nope.pt"),
                           "--out", str(tmp_path / "g.csv")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # the one input is missing: named, nothing graded
    assert "nope.pt" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "retinopathy", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "examples:" in done.stdout


def test_processed_set_records_the_crop_settings_models_copy(processed_dir: Path) -> None:
    stats = json.loads((processed_dir / "stats.json").read_text())
    assert stats["crop"] == {"size": 32, "fov_threshold": 20, "graham": False, "graham_sigma": 1 / 30}
    assert {"mean", "std", "size"} <= set(stats)
