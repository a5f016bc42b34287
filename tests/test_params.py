"""params.yaml access: a missing, mistyped or unknown key is named in the error."""

from __future__ import annotations

from pathlib import Path

import pytest

from retinopathy.params import ParamsError, check_known, get, load_params

ROOT = Path(__file__).resolve().parents[1]


def test_missing_nested_key_is_named_with_a_suggestion() -> None:
    with pytest.raises(ParamsError, match=r"missing key 'preprocess.szie'.*did you mean 'preprocess.size'"):
        get({"preprocess": {"size": 64}}, "preprocess.szie", int)


def test_wrong_type_names_key_and_value() -> None:
    with pytest.raises(ParamsError, match=r"'lr' must be float, got str 'fast'"):
        get({"lr": "fast"}, "lr", float)


def test_integers_are_accepted_where_floats_are_asked_for_but_booleans_are_not() -> None:
    assert get({"lr": 1}, "lr", float) == 1.0 and isinstance(get({"lr": 1}, "lr", float), float)
    with pytest.raises(ParamsError, match="'epochs' must be int"):
        get({"epochs": True}, "epochs", int)


def test_value_outside_choices_lists_them() -> None:
    with pytest.raises(ParamsError, match=r"'optimizer' is 'rmsprop'; choose one of \['sgd', 'adam'\]"):
        get({"optimizer": "rmsprop"}, "optimizer", str, choices=["sgd", "adam"])


def test_unknown_key_in_a_section_is_reported() -> None:
    with pytest.raises(ParamsError, match=r"unknown key 'pretrain.epoch' \(did you mean 'epochs'\?\)"):
        check_known({"pretrain": {"epoch": 3}}, "pretrain", ["epochs", "lr"])


def test_shipped_params_file_has_every_key_the_stages_read() -> None:
    params = load_params(ROOT / "params.yaml")
    for key, kind in [("lr", float), ("batch_size", int), ("epochs", int), ("weight_decay", float), ("momentum", float),
                      ("seed", int), ("preprocess.size", int), ("pretrain.source", str), ("data.root", str)]:
        get(params, key, kind)
