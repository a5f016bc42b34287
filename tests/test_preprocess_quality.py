"""The preprocess stage's gradability record: every image judged on the frame its crop decoded, the report's
``quality`` section, ``preprocess.on_ungradable`` keep and skip; and models that say what they were trained on, with
`retinopathy predict` warning about one trained on the embedded synthetic set."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter

from retinopathy.cli import main
from retinopathy.fundus import FieldOfView
from retinopathy.inference import model_metadata, training_data_warning
from retinopathy.models import resnet18
from retinopathy.params import ParamsError, load_settings
from retinopathy.preprocessing import CropSettings, build_processed_set, decode_photograph, process_image
from retinopathy.quality import QualityGate, QualityThresholds, assess
from retinopathy.settings import PreprocessSettings, TrainConfig
from retinopathy.sources import read_course
from retinopathy.train_stage import train_variant

SETTINGS = CropSettings(size=32)
SYNTHETIC = {"source": "synthetic", "label_fraction": 1.0}


def _degraded_tables(raw_dir: Path, folder: Path) -> dict[str, pd.DataFrame]:
    """The tiny set's tables with two training images replaced by a heavily blurred and a washed-out copy."""
    tables = read_course(raw_dir)
    train = tables["train"].copy()
    folder.mkdir(parents=True, exist_ok=True)
    for row, (kind, make) in enumerate([("blurred", lambda im: im.filter(ImageFilter.GaussianBlur(3))),
                                        ("washed_out", lambda im: ImageEnhance.Brightness(im).enhance(3.0))]):
        with Image.open(train.loc[row, "path"]) as photo:
            copy = folder / f"{kind}.png"
            make(photo.convert("RGB")).save(copy)
        train.loc[row, "path"] = str(copy)
    return {**tables, "train": train}


def _build(tables: dict[str, pd.DataFrame], out: Path, **kwargs: Any) -> tuple[dict[str, int], dict[str, Any]]:
    """The processed set of ``tables`` in ``out/processed`` with the default gate; the split sizes and the report."""
    counts = build_processed_set(tables, out_dir=out / "processed", balance_path=out / "balance.json",
                                 settings=SETTINGS, val_fraction=0.25, seed=0, workers=1,
                                 report_path=out / "report.json", gate=QualityGate(), **kwargs)
    return counts, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def degraded(raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The degraded tables, and the names of the two degraded images (blurred, washed out)."""
    tables = _degraded_tables(raw_dir, tmp_path_factory.mktemp("degraded"))
    return tables, [str(name) for name in tables["train"]["image"][:2]]


@pytest.fixture(scope="module")
def kept(degraded: tuple[dict[str, pd.DataFrame], list[str]], tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[Path, dict[str, int], dict[str, Any]]:
    """The degraded set processed with ``on_ungradable: keep``, recording the embedded set as its source."""
    out = tmp_path_factory.mktemp("kept")
    counts, report = _build(degraded[0], out, data_source=SYNTHETIC)
    return out, counts, report


def test_the_report_counts_and_lists_ungradable_images_and_keep_keeps_them(
    kept: tuple[Path, dict[str, int], dict[str, Any]], degraded: tuple[dict[str, pd.DataFrame], list[str]]
) -> None:
    out, counts, report = kept
    quality = report["quality"]
    assert quality["assessed"] and quality["on_ungradable"] == "keep" and quality["left_out"] == 0
    assert quality["thresholds"] == asdict(QualityThresholds())
    listed = {item["image"]: item for item in quality["ungradable_images"]}
    blurred, washed_out = degraded[1]
    assert listed[blurred]["split"] in ("train", "val") and "out of focus" in listed[blurred]["reasons"][0]
    assert "overexposed" in listed[washed_out]["reasons"][0]
    # Per split, gradable and ungradable add up to every image processed; per reason kind, the images listed.
    assert sum(quality["gradable"].values()) + sum(quality["ungradable"].values()) == report["images_processed"] == 64
    assert quality["ungradable_count"] == len(listed) == sum(quality["ungradable"].values())
    assert quality["reasons"]["out of focus"] >= 1 and quality["reasons"]["overexposed"] >= 1
    assert sum(quality["reasons"].values()) >= len(listed)
    # Kept: every image is in its split's table, PNG and all.
    tables = pd.concat([pd.read_csv(out / "processed" / f"{split}.csv") for split in counts])
    assert {blurred, washed_out} <= set(tables["image"]) and len(tables) == sum(counts.values()) == 64
    assert json.loads((out / "processed" / "stats.json").read_text())["data_source"] == SYNTHETIC


def test_skip_leaves_the_ungradable_images_out_of_every_split_and_says_so(
    degraded: tuple[dict[str, pd.DataFrame], list[str]], kept: tuple[Path, dict[str, int], dict[str, Any]],
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    counts, report = _build(degraded[0], tmp_path, on_ungradable="skip")
    quality = report["quality"]
    listed = {(item["split"], item["image"]) for item in quality["ungradable_images"]}
    assert set(degraded[1]) <= {image for _, image in listed}
    assert quality["on_ungradable"] == "skip" and quality["left_out"] == len(listed) == quality["ungradable_count"]
    assert sum(counts.values()) == 64 - len(listed) and report["splits"] == counts
    for split in counts:
        names = set(pd.read_csv(tmp_path / "processed" / f"{split}.csv")["image"])
        assert not {image for where, image in listed if where == split} & names
        assert len(list((tmp_path / "processed" / split).rglob("*.png"))) == len(names) == counts[split]
    # The training statistics are those of the kept images only.
    stats = json.loads((tmp_path / "processed" / "stats.json").read_text())
    assert stats["mean"] != json.loads((kept[0] / "processed" / "stats.json").read_text())["mean"]
    line = capsys.readouterr().out
    assert f"{len(listed)} ungradable image(s) left out (preprocess.on_ungradable: skip; listed under quality" in line


def test_a_bad_on_ungradable_is_refused_naming_its_key(raw_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"'preprocess.on_ungradable' is 'drop'; choose one of \['keep', 'skip'\]"):
        load_settings(PreprocessSettings, {"preprocess": {**vars(PreprocessSettings()), "on_ungradable": "drop"}})
    with pytest.raises(ValueError, match=r"preprocess.on_ungradable must be one of \['keep', 'skip'\], got 'drop'"):
        _build(read_course(raw_dir), tmp_path, on_ungradable="drop")
    with pytest.raises(ValueError, match="on_ungradable: skip needs a gradability gate"):
        build_processed_set(read_course(raw_dir), out_dir=tmp_path / "processed", balance_path=tmp_path / "b.json",
                            settings=SETTINGS, val_fraction=0.25, seed=0, workers=1, on_ungradable="skip")
    assert not (tmp_path / "processed").exists()


@dataclass
class _Recording:
    """A gate that notes the frames it is shown and passes them to the real one."""

    thresholds: QualityThresholds = field(default_factory=QualityThresholds)
    seen: list[tuple[tuple[int, int], FieldOfView]] = field(default_factory=list)

    def __call__(self, image: Image.Image, fov: FieldOfView) -> Any:
        self.seen.append((image.size, fov))
        return assess(image, fov=fov, thresholds=self.thresholds)


def test_the_gate_judges_the_frame_the_crop_decoded(raw_dir: Path, tmp_path: Path) -> None:
    photo = sorted(raw_dir.glob("*.jpeg"))[0]
    gate = _Recording()
    outcome = process_image(photo, tmp_path / "out.png", SETTINGS, gate)
    frame, fov = decode_photograph(photo, SETTINGS)
    assert gate.seen == [(frame.size, fov)]  # the frame and field of view the crop came from, decoded once
    assert outcome.kind is None and outcome.gradable == assess(frame, fov=fov).gradable
    assert process_image(photo, tmp_path / "plain.png", SETTINGS).gradable is None  # no gate, no verdict


@pytest.fixture(scope="module")
def synthetic_model(kept: tuple[Path, dict[str, int], dict[str, Any]]) -> Path:
    """A tiny ResNet18 trained for one epoch on the degraded set, which records the embedded set as its source."""
    out = kept[0]
    config = TrainConfig(lr=0.01, batch_size=16, epochs=1, seed=3, rotation=0.0, precision="fp32",
                         refit_classifier=False)
    train_variant("resnet18", pretrained=False, config=config, data_dir=out / "processed",
                  model_out=out / "model.pt", summary_out=out / "summary.json")
    return out / "model.pt"


def _saved_model(path: Path, data_source: dict[str, Any] | None) -> Path:
    meta = model_metadata("resnet18", mean=[0.4, 0.25, 0.15], std=[0.3, 0.2, 0.1], crop=SETTINGS,
                          data_source=data_source)
    if data_source is None:
        del meta["data_source"]  # a model file that does not record it
    torch.save({**meta, "state_dict": resnet18(num_classes=5).state_dict()}, path)
    return path


def test_a_trained_model_records_its_source_and_predict_warns_when_it_is_the_embedded_set(
    synthetic_model: Path, raw_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert torch.load(synthetic_model, weights_only=True)["data_source"] == SYNTHETIC
    photo = str(sorted(raw_dir.glob("*.jpeg"))[0])
    kaggle = _saved_model(tmp_path / "kaggle.pt", {"source": "kaggle", "label_fraction": 1.0})
    unknown = _saved_model(tmp_path / "unknown.pt", None)
    said = {}
    for name, model in (("synthetic", synthetic_model), ("kaggle", kaggle), ("unknown", unknown)):
        assert main(["predict", str(model), photo, "--out", str(tmp_path / f"{name}.csv"), "--device", "cpu"]) == 0
        said[name] = capsys.readouterr().err
    assert (f"warning: {synthetic_model} was trained on the embedded synthetic set (data.source synthetic); its grades "
            "of real photographs mean nothing") in said["synthetic"]
    assert "warning" not in said["kaggle"]
    assert f"warning: {unknown} does not say what it was trained on" in said["unknown"]
    assert training_data_warning({"data_source": {"source": "aptos"}}, "m.pt") is None
