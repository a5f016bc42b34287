"""The `retinopathy` command: grading raw photographs the way training saw them, failures, heatmaps, ONNX, and
outputs that never write over what is read."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from retinopathy import grading
from retinopathy import precision as precision_module
from retinopathy.cli import main
from retinopathy.data import FundusDataset, build_transform
from retinopathy.images import MAX_PIXELS
from retinopathy.inference import grading_precision, load_model, model_metadata, predict, prepare_photograph
from retinopathy.models import resnet18
from retinopathy.preprocessing import CropSettings, process_image
from retinopathy.synthetic import render_fundus

SETTINGS = CropSettings(size=32)
MEAN, STD = [0.4, 0.25, 0.15], [0.3, 0.2, 0.1]
# What the fixture model says it was trained on: a real layout, so predict has no warning to give about it.
DATA_SOURCE = {"source": "course", "label_fraction": 1.0}


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
    meta = model_metadata("resnet18", mean=MEAN, std=STD, crop=SETTINGS, data_fingerprint={"train.csv": "0" * 64},
                          data_source=DATA_SOURCE)
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


def test_predict_matches_the_evaluate_path_on_processed_images(
    model_file: Path, photos: list[Path], tmp_path: Path, cpu_flags: Callable[[set[str]], None]
) -> None:
    # Both sides run fp32 on every machine: the evaluate side is asked for fp32, and predict follows the model,
    # which records fp32, even on a CPU with native bf16 (pretended here, so the check does not depend on the
    # machine). Under bf16 the two paths' probabilities need not agree to 1e-5.
    assert torch.load(model_file, weights_only=True)["precision"] == "fp32"
    cpu_flags({"amx_bf16", "avx512_bf16"})
    out = tmp_path / "grades.csv"
    assert main(["predict", str(model_file), *map(str, photos), "--out", str(out), "--device", "cpu"]) == 0
    graded = pd.read_csv(out).set_index("image")
    # The evaluate stage's path: processed PNG -> FundusDataset -> inference.predict.
    processed = tmp_path / "processed"
    processed.mkdir()
    for photo in photos:
        assert process_image(photo, processed / f"{photo.stem}.png", SETTINGS).kind is None
    dataset = FundusDataset(
        pd.DataFrame({"image": [p.stem for p in photos]}), processed, build_transform(mean=MEAN, std=STD, train=False),
        labelled=False,
    )
    model = resnet18(num_classes=5)
    model.load_state_dict(torch.load(model_file, weights_only=True)["state_dict"])
    probs, _ = predict(model, torch.utils.data.DataLoader(dataset, batch_size=2), torch.device("cpu"), precision="fp32")
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
    assert (rows["1_left.jpeg"]["patient"], rows["1_left.jpeg"]["eye"]) == (str(photos[0].parent / "1"), "left")
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
    code = main([
        "predict", str(model_file), str(folder), str(tmp_path / "nothing_here"), str(bad_list),
        "--out", str(out), "--device", "cpu",
    ])
    err = capsys.readouterr().err
    assert code == 1
    for name in ("truncated.jpeg", "notes.jpg", "empty.png", "black.png", "nothing_here", "list.csv"):
        assert name in err, f"{name} is not named on stderr:\n{err}"
    assert "no field of view" in err
    frame = pd.read_csv(out, keep_default_na=False).set_index("image")
    # Files that cannot be read get no row; a black frame is read, and the gate's row says why it has no grade.
    assert sorted(frame.index) == sorted([*map(str, good), str(folder / "black.png")])
    black = frame.loc[str(folder / "black.png")]
    assert not black["gradable"] and "no field of view" in black["quality_reasons"] and black["grade"] == ""
    assert frame.loc[list(map(str, good)), "gradable"].all()


def test_heatmaps_are_one_png_per_photograph_at_its_own_size(
    model_file: Path, photos: list[Path], tmp_path: Path
) -> None:
    heat = tmp_path / "heat"
    assert main([
        "predict", str(model_file), *map(str, photos),
        "--out", str(tmp_path / "g.csv"), "--heatmaps", str(heat), "--device", "cpu",
    ]) == 0
    assert sorted(p.name for p in heat.iterdir()) == sorted(f"{p.stem}.png" for p in photos)
    for photo in photos:
        with Image.open(photo) as original, Image.open(heat / f"{photo.stem}.png") as overlay:
            assert overlay.size == original.size


def test_onnx_export_gives_the_same_probabilities(model_file: Path, photos: list[Path], tmp_path: Path) -> None:
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    assert main(["export", str(model_file), "--onnx", str(out)]) == 0
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert json.loads(out.with_suffix(".json").read_text())["data_source"] == DATA_SOURCE  # carried with the metadata
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
    assert stats["crop"] == {"size": 32, "fov_threshold": 20, "graham": False, "graham_sigma": 0.0333}
    assert {"mean", "std", "size"} <= set(stats)
    assert CropSettings.from_record(stats["crop"]) == SETTINGS  # the record holds every setting that changes pixels


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root`` (relative name -> bytes, None for a folder), to show a command left it exactly as
    it was."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


@pytest.fixture
def photo_folder(photos: list[Path], tmp_path: Path) -> Path:
    """A copy of the photographs in ``<tmp_path>/photos``, for tests that check it is left as it was."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    return folder


def test_out_naming_the_input_folder_is_refused_and_every_photograph_is_kept(
    model_file: Path, photo_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _tree(photo_folder.parent)
    assert main(["predict", str(model_file), str(photo_folder), "--out", str(photo_folder), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"--out {photo_folder} is an existing directory" in err and "Traceback" not in err
    assert _tree(photo_folder.parent) == before  # every photograph byte for byte, and no temporary beside them


def test_out_naming_a_folder_of_other_files_is_refused_and_leaves_them(
    model_file: Path, photos: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim_dir"
    (victim / "sub").mkdir(parents=True)
    shutil.copy(photos[0], victim / "a.jpeg")
    (victim / "sub" / "notes.txt").write_text("keep me\n")
    before = _tree(tmp_path)
    assert main(["predict", str(model_file), str(photos[1]), "--out", str(victim), "--device", "cpu"]) == 2
    assert str(victim) in capsys.readouterr().err
    assert _tree(tmp_path) == before


# (INPUTs, options, the path the error must name); paths are relative to the test's folder, which holds
# photos/ (the photographs and list.csv naming one of them), models/model.pt, heat/ (empty) and note.txt.
COLLISIONS = {
    "out-is-an-input-file": (["photos/1_left.jpeg"], ["--out", "photos/1_left.jpeg"], "photos/1_left.jpeg"),
    "out-is-a-listed-image": (["photos/list.csv"], ["--out", "photos/1_right.jpeg"], "photos/1_right.jpeg"),
    "out-is-the-csv-list": (["photos/list.csv"], ["--out", "photos/list.csv"], "photos/list.csv"),
    "out-inside-the-input-folder": (["photos"], ["--out", "photos/grades.csv"], "photos/grades.csv"),
    "out-is-the-model": (["photos/1_left.jpeg"], ["--out", "models/model.pt"], "models/model.pt"),
    "out-inside-heatmaps": (["photos/1_left.jpeg"], ["--out", "heat/g.csv", "--heatmaps", "heat"], "heat/g.csv"),
    "heatmaps-is-the-input-folder": (["photos"], ["--heatmaps", "photos"], "photos"),
    "heatmaps-inside-the-input-folder": (["photos"], ["--heatmaps", "photos/heat"], "photos/heat"),
    "heatmaps-contains-an-input": (["photos/1_left.jpeg"], ["--heatmaps", "photos"], "photos"),
    "heatmaps-contains-the-model": (["photos/1_left.jpeg"], ["--heatmaps", "models"], "models"),
    "heatmaps-is-a-file": (["photos/1_left.jpeg"], ["--heatmaps", "note.txt"], "note.txt"),
}


@pytest.mark.parametrize("case", list(COLLISIONS))
def test_outputs_over_into_or_around_inputs_the_model_or_each_other_are_usage_errors(
    case: str, model_file: Path, photo_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (photo_folder / "list.csv").write_text("image\n1_right.jpeg\n")
    (tmp_path / "models").mkdir()
    shutil.copy(model_file, tmp_path / "models" / "model.pt")
    (tmp_path / "heat").mkdir()
    (tmp_path / "note.txt").write_text("mine\n")
    monkeypatch.chdir(tmp_path)
    inputs, options, culprit = COLLISIONS[case]
    options = options if "--out" in options else [*options, "--out", "elsewhere/g.csv"]
    before = _tree(tmp_path)
    assert main(["predict", "models/model.pt", *inputs, *options, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f" {culprit} " in err and "nothing was written" in err and "Traceback" not in err, err
    assert _tree(tmp_path) == before


def test_heatmaps_into_an_existing_folder_leave_its_other_files_alone(
    model_file: Path, photos: list[Path], tmp_path: Path
) -> None:
    heat = tmp_path / "heat"
    (heat / "earlier").mkdir(parents=True)
    (heat / "notes.txt").write_text("mine\n")
    (heat / "earlier" / "x.png").write_bytes(b"not touched")
    assert main([
        "predict", str(model_file), str(photos[0]),
        "--heatmaps", str(heat), "--out", str(tmp_path / "g.csv"), "--device", "cpu",
    ]) == 0
    assert sorted(str(p.relative_to(heat)) for p in heat.rglob("*")) == [
        "1_left.png", "earlier", "earlier/x.png", "notes.txt",
    ]
    assert (heat / "notes.txt").read_text() == "mine\n" and (heat / "earlier" / "x.png").read_bytes() == b"not touched"


EXPORT_COLLISIONS = (
    "onnx-is-an-existing-dir", "onnx-is-the-model", "sidecar-is-an-existing-dir", "sidecar-is-the-model",
)


@pytest.mark.parametrize("case", EXPORT_COLLISIONS)
def test_export_onto_a_folder_or_the_model_is_a_usage_error(
    case: str, model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / ("m.json" if case == "sidecar-is-the-model" else "model.pt")
    shutil.copy(model_file, model)
    onnx = {
        "onnx-is-an-existing-dir": tmp_path / "existing_dir", "onnx-is-the-model": model,
    }.get(case, tmp_path / "m.onnx")
    culprit = {
        "onnx-is-an-existing-dir": onnx, "onnx-is-the-model": model, "sidecar-is-an-existing-dir": tmp_path / "m.json",
        "sidecar-is-the-model": model,
    }[case]
    if case.endswith("existing-dir"):
        (culprit / "sub").mkdir(parents=True)
        (culprit / "sub" / "keep.txt").write_text("keep me\n")
    before = _tree(tmp_path)
    assert main(["export", str(model), "--onnx", str(onnx)]) == 2
    err = capsys.readouterr().err
    assert str(culprit) in err and "Traceback" not in err
    assert _tree(tmp_path) == before


def test_a_decompression_bomb_is_named_and_the_other_photographs_are_graded(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], png_claiming: Callable[[Path, int, int], Path]
) -> None:
    folder = tmp_path / "mixed"
    good = [_photograph(folder / "5_left.jpeg", 1, 7), _photograph(folder / "5_right.png", 2, 8, "right")]
    bomb = png_claiming(folder / "bomb.png", 20000, 10000)  # 69 bytes claiming 200 megapixels
    out, heat = tmp_path / "grades.csv", tmp_path / "heat"
    code = main([
        "predict", str(model_file), str(folder), "--out", str(out), "--heatmaps", str(heat), "--device", "cpu",
    ])
    err = capsys.readouterr().err
    assert code == 1
    assert f"cannot grade image {bomb} is too large to decode" in err and "Traceback" not in err, err
    assert sorted(pd.read_csv(out)["image"]) == sorted(map(str, good))
    assert sorted(p.name for p in heat.iterdir()) == ["5_left.png", "5_right.png"]


def test_an_exception_of_any_kind_while_reading_one_photograph_fails_only_that_one(
    model_file: Path, photos: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = grading.photograph_input

    def photograph_input(path: Path, meta: dict) -> tuple:
        if Path(path) == photos[1]:
            raise MemoryError("cannot allocate the frame")
        return real(path, meta)

    monkeypatch.setattr(grading, "photograph_input", photograph_input)
    out = tmp_path / "grades.csv"
    assert main(["predict", str(model_file), *map(str, photos), "--out", str(out), "--device", "cpu"]) == 1
    assert f"cannot grade {photos[1]}: MemoryError: cannot allocate the frame" in capsys.readouterr().err
    assert sorted(pd.read_csv(out)["image"]) == sorted(str(p) for p in photos if p != photos[1])


def test_a_heatmap_that_cannot_be_drawn_fails_only_its_photograph(
    model_file: Path, photos: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = grading.heatmap_overlay

    def heatmap_overlay(path: Path, cropped: object, cam: np.ndarray) -> Image.Image:
        if Path(path) == photos[0]:
            raise OSError("photograph changed on disk")
        return real(path, cropped, cam)

    monkeypatch.setattr(grading, "heatmap_overlay", heatmap_overlay)
    out, heat = tmp_path / "grades.csv", tmp_path / "heat"
    assert main([
        "predict", str(model_file), *map(str, photos),
        "--out", str(out), "--heatmaps", str(heat), "--device", "cpu",
    ]) == 1
    assert f"cannot grade {photos[0]}: heatmap not written: photograph changed on disk" in capsys.readouterr().err
    assert sorted(pd.read_csv(out)["image"]) == sorted(str(p) for p in photos[1:])
    assert sorted(p.name for p in heat.iterdir()) == sorted(f"{p.stem}.png" for p in photos[1:])


def test_a_run_that_grades_nothing_leaves_no_rows_of_an_earlier_run(
    model_file: Path, photos: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "grades.csv"
    assert main(["predict", str(model_file), str(photos[0]), "--out", str(out), "--device", "cpu"]) == 0
    assert len(pd.read_csv(out)) == 1
    (tmp_path / "broken.jpeg").write_text("not a photograph\n")
    assert main(["predict", str(model_file), str(tmp_path / "broken.jpeg"), "--out", str(out), "--device", "cpu"]) == 1
    frame = pd.read_csv(out)
    assert len(frame) == 0 and "p_referable" in frame.columns


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_a_usage_error_naming_the_device(
    model_file: Path, photos: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "g.csv"
    assert main(["predict", str(model_file), str(photos[0]), "--out", str(out), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "device 'cuda'" in err and "no CUDA device" in err and "Traceback" not in err
    assert not out.exists()


def test_photographs_in_different_folders_are_different_patients(model_file: Path, tmp_path: Path) -> None:
    alone = _photograph(tmp_path / "clinicA" / "10_left.jpeg", 4, 11)
    pair = [
        _photograph(tmp_path / "clinicB" / "10_left.jpeg", 0, 12),
        _photograph(tmp_path / "clinicB" / "10_right.jpeg", 1, 13, "right"),
    ]
    one_eye_twice = [
        _photograph(tmp_path / "clinicC" / "11_left.jpeg", 2, 14),
        _photograph(tmp_path / "clinicC" / "11_left.png", 3, 15),
    ]
    out = tmp_path / "grades.csv"
    assert main([
        "predict", str(model_file), *map(str, [alone, *pair, *one_eye_twice]), "--out", str(out), "--device", "cpu",
    ]) == 0
    frame = pd.read_csv(out, dtype={"patient": str, "patient_grade": str}, keep_default_na=False).set_index("image")
    row = {path: frame.loc[str(path)] for path in [alone, *pair, *one_eye_twice]}
    assert row[alone]["patient"] == str(tmp_path / "clinicA" / "10")
    assert row[pair[0]]["patient"] == row[pair[1]]["patient"] == str(tmp_path / "clinicB" / "10")
    assert row[alone]["patient_grade"] == ""  # one eye of its own patient, whatever clinicB's patient 10 shows
    worse = max(row[pair[0]]["grade"], row[pair[1]]["grade"])
    assert row[pair[0]]["patient_grade"] == row[pair[1]]["patient_grade"] == str(worse)
    # two photographs of one eye
    assert row[one_eye_twice[0]]["patient_grade"] == row[one_eye_twice[1]]["patient_grade"] == ""


def _direct_probabilities(model_file: Path, photos: list[Path], precision: str) -> np.ndarray:
    """Softmax of one forward pass over ``photos``, in fp32 or under bf16 autocast, without the grading code."""
    model, meta = load_model(model_file, torch.device("cpu"))
    batch = torch.stack([prepare_photograph(p, meta) for p in photos])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        return torch.softmax(model(batch).float(), dim=1).numpy()


@pytest.mark.parametrize(
    ("recorded", "native", "expected"), [("fp32", True, "fp32"), ("bf16", False, "fp32"), ("bf16", True, "bf16")],
    ids=["fp32-model-on-a-bf16-machine", "bf16-model-without-native-bf16", "bf16-model-with-native-bf16"],
)
def test_predict_grades_in_the_models_precision_where_the_machine_runs_it_natively(
    recorded: str, native: bool, expected: str, model_file: Path, photos: list[Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tmp_path / "model.pt"
    torch.save({**torch.load(model_file, weights_only=True), "precision": recorded}, model)
    monkeypatch.setattr(
        precision_module, "native_bf16", lambda device, cpu_flags=None: (native, "pretended for the test")
    )
    out = tmp_path / "grades.csv"
    assert main(["predict", str(model), *map(str, photos), "--out", str(out), "--device", "cpu"]) == 0
    graded = pd.read_csv(out).set_index("image").loc[[str(p) for p in photos], [f"p{g}" for g in range(5)]].to_numpy()
    fp32, bf16 = _direct_probabilities(model, photos, "fp32"), _direct_probabilities(model, photos, "bf16")
    assert np.abs(bf16 - fp32).max() > 1e-4  # the two are told apart by the CSV's six decimals
    assert np.abs(graded - (fp32 if expected == "fp32" else bf16)).max() < 1e-5


@pytest.mark.parametrize(("recorded", "device", "native", "expected"), [
    ("fp32", "cpu", True, "fp32"), ("bf16", "cpu", False, "fp32"), ("bf16", "cpu", True, "bf16"),
    ("fp16", "cpu", True, "fp32"),
])
def test_grading_precision_is_the_recorded_one_only_where_the_device_runs_it(
    recorded: str, device: str, native: bool, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        precision_module, "native_bf16", lambda device, cpu_flags=None: (native, "pretended for the test")
    )
    assert grading_precision({"precision": recorded}, torch.device(device))[0] == expected


def test_a_model_recording_an_unknown_precision_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"models/odd\.pt records precision 'int8'"):
        grading_precision({"precision": "int8"}, torch.device("cpu"), model_path="models/odd.pt")


def test_predict_help_states_the_pixel_limit_in_force(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--help"]) == 0
    assert f"over {MAX_PIXELS // 1_000_000} megapixels" in capsys.readouterr().out


def _gate_cases(folder: Path) -> dict[str, Path]:
    """Photographs the gradability gate refuses, next to two it passes: a person seen through a black circle (it
    has a field of view; only its colour tells), a fundus out of focus, one underexposed, one half under a lid."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from quality_gate import defocus, expose, in_black_circle, lid_shadow, skimage_photo

    folder.mkdir(parents=True, exist_ok=True)
    sharp = render_fundus(2, np.random.default_rng(11), size=256)
    cases = {
        "5_left.png": sharp,
        "5_right.png": render_fundus(1, np.random.default_rng(12), size=256, eye="right"),
        "person.png": in_black_circle(skimage_photo("astronaut.png")),
        "6_left.png": defocus(sharp, 0.02),
        "6_right.png": expose(sharp, 12.0),
        "7_left.png": lid_shadow(sharp),
        "7_right.png": render_fundus(3, np.random.default_rng(13), size=256, eye="right"),
    }
    for name, image in cases.items():
        image.save(folder / name)
    return {name: folder / name for name in cases}


def test_ungradable_photographs_get_a_row_with_reasons_and_no_grade(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = _gate_cases(tmp_path / "clinic")
    out = tmp_path / "grades.csv"
    code = main(["predict", str(model_file), str(tmp_path / "clinic"), "--out", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1  # some photographs were not graded
    frame = pd.read_csv(out, keep_default_na=False, dtype={"grade": str, "patient_grade": str}).set_index("image")
    assert sorted(frame.index) == sorted(map(str, photos.values()))
    expected = {"person.png": "not a fundus photograph", "6_left.png": "out of focus",
                "6_right.png": "underexposed", "7_left.png": "too little of the retina is usable"}
    for name, path in photos.items():
        row = frame.loc[str(path)]
        if name in expected:
            assert not row["gradable"] and expected[name] in row["quality_reasons"], (name, row["quality_reasons"])
            assert row["grade"] == "" and row["p_referable"] == "" and row["patient_grade"] == ""
            assert f"ungradable {path}: {expected[name]}" in captured.err
        else:
            assert row["gradable"] and row["quality_reasons"] == "" and row["grade"] in {"0", "1", "2", "3", "4"}
    # Patient 5 has both eyes graded; patient 6 none, so no patient grade; patient 7's right eye is graded and
    # its left one refused, so no patient grade either.
    assert frame.loc[str(photos["5_left.png"]), "patient_grade"] != ""
    assert frame.loc[str(photos["7_right.png"]), "gradable"] and frame.loc[str(photos["7_right.png"]), "grade"] != ""
    assert frame.loc[str(photos["7_right.png"]), "patient_grade"] == ""
    assert "4 ungradable" in captured.out and "graded 3 photograph(s)" in captured.out


def test_without_the_gate_a_fundus_is_graded_and_its_verdict_kept(model_file: Path, tmp_path: Path) -> None:
    photos = _gate_cases(tmp_path / "clinic")
    out = tmp_path / "grades.csv"
    code = main(["predict", str(model_file), str(photos["6_left.png"]), str(photos["person.png"]), "--out", str(out),
                 "--device", "cpu", "--no-quality-gate"])
    assert code == 0
    frame = pd.read_csv(out, keep_default_na=False, dtype={"grade": str}).set_index("image")
    for name in ("6_left.png", "person.png"):
        row = frame.loc[str(photos[name])]
        assert not row["gradable"] and row["quality_reasons"] != "" and row["grade"] in {"0", "1", "2", "3", "4"}
