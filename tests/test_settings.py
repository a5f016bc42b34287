"""Typed settings: one class per params.yaml section, its defaults equal to params.yaml's, errors naming the key."""

from __future__ import annotations

import importlib.util
from dataclasses import fields
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from retinopathy.params import ParamsError, load_params, load_settings
from retinopathy.preprocessing import CropSettings
from retinopathy.settings import (
    ALL,
    DATA_SOURCES,
    SECTIONS,
    PreprocessSettings,
    PretrainSettings,
    SyntheticSpec,
    TrainConfig,
)
from retinopathy.sources import LAYOUTS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.__name__)
def test_every_default_equals_the_shipped_params_file(cls: type) -> None:
    # load_settings also refuses a key of the section that the class lacks, so the two hold the same keys.
    assert load_settings(cls, load_params(ROOT / "params.yaml")) == cls()


def test_every_section_of_the_params_file_has_a_settings_class() -> None:
    params = load_params(ROOT / "params.yaml")
    assert {cls.SECTION for cls in ALL} == {None, *SECTIONS}
    assert [name for name in params if isinstance(params[name], dict)] == list(SECTIONS)


def test_the_data_sources_are_the_layouts_the_reader_knows() -> None:
    assert tuple(LAYOUTS) == DATA_SOURCES


def test_the_crop_defaults_are_the_preprocess_sections() -> None:
    crop = {item.name for item in fields(CropSettings)} & {item.name for item in fields(PreprocessSettings)}
    assert crop == {"size", "fov_threshold", "graham", "graham_sigma"}
    assert all(getattr(CropSettings(), name) == getattr(PreprocessSettings(), name) for name in crop)


@pytest.mark.parametrize(("given", "message"), [
    ({"lr": "fast"}, r"key 'lr' must be float, got str 'fast'"),
    ({"epochs": True}, r"key 'epochs' must be int, got bool True"),
    ({"optimizer": "rmsprop"}, r"key 'optimizer' is 'rmsprop'; choose one of \['sgd', 'adam', 'adamw'\]"),
    ({"refit_c": 0.0}, r"key 'refit_c' must be positive, got 0.0"),
    ({"nproc": 0}, r"key 'nproc' must be at least 1, got 0"),
])
def test_a_bad_value_is_refused_naming_its_key(given: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        TrainConfig(**given)


def test_a_bad_value_in_a_section_is_named_with_its_section() -> None:
    with pytest.raises(ParamsError, match=r"key 'pretrain.method' is 'jigsaw'"):
        load_settings(PretrainSettings, {"pretrain": {**vars(PretrainSettings()), "method": "jigsaw"}})


def test_integers_become_floats_and_a_cli_override_keeps_working() -> None:
    # `dvc exp run -S lr=0.0005` writes a float; a hand-written `lr: 1` is an int.
    config = load_settings(TrainConfig, {**vars(TrainConfig()), "lr": 1, "seeds": [42]})
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert load_settings(TrainConfig, {**vars(TrainConfig()), "lr": 0.0005}).lr == 0.0005


def test_a_missing_or_unknown_key_is_named() -> None:
    params = {**vars(TrainConfig())}
    del params["epochs"]
    with pytest.raises(ParamsError, match=r"missing key 'epochs'"):
        load_settings(TrainConfig, params)
    with pytest.raises(ParamsError, match=r"unknown key 'epoch' \(did you mean 'epochs'\?\)"):
        load_settings(TrainConfig, {**vars(TrainConfig()), "epoch": 3})


def test_reading_some_keys_leaves_the_others_unread() -> None:
    params = {**vars(TrainConfig()), "lr": "not read"}
    del params["epochs"]
    assert load_settings(TrainConfig, params, keys=["seed", "device"]).seed == 42


def _stage(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _declared_top_level(stage: str) -> set[str]:
    entry = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    return {key for key in entry.get("do", entry)["params"] if isinstance(key, str) and "." not in key
            and key not in SECTIONS}


@pytest.mark.parametrize("stage", ["pretrain", "evaluate"])
def test_a_stage_reads_exactly_the_top_level_keys_it_declares(stage: str) -> None:
    assert set(_stage(stage).TOP_LEVEL) == _declared_top_level(stage)


def test_the_train_stage_reads_every_training_key_it_declares() -> None:
    # Its seed comes from the command line (one stage per training seed), not from the top-level `seed`.
    assert {item.name for item in fields(TrainConfig)} - {"seed"} == _declared_top_level("train")


def test_the_grading_studys_train_stage_reads_exactly_the_keys_it_declares() -> None:
    from retinopathy.grading_study import TRAIN_KEYS

    entry = yaml.safe_load((ROOT / "studies" / "grading" / "dvc.yaml").read_text())["stages"]["train"]["do"]
    assert set(TRAIN_KEYS) == set(entry["params"])


def test_the_synthetic_eye_agreement_default_is_the_generators() -> None:
    from retinopathy.synthetic import EYE_AGREEMENT

    assert SyntheticSpec().eye_agreement == EYE_AGREEMENT
