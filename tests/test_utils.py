"""Atomic writes that never remove what they did not write, output paths kept apart from inputs, device choice."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from retinopathy.utils import DeviceUnavailableError, OutputPathError, atomic_path, check_outputs_apart, select_device


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root`` (relative name -> bytes, None for a folder)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def test_a_file_is_replaced_only_when_the_block_succeeds(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    path.write_text("earlier\n")
    with pytest.raises(KeyError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise KeyError("crash while writing")
    assert path.read_text() == "earlier\n" and _tree(tmp_path) == {"out.csv": b"earlier\n"}
    with atomic_path(path) as tmp:
        tmp.write_text("new\n")
    assert _tree(tmp_path) == {"out.csv": b"new\n"}


def test_an_existing_directory_is_refused_before_the_block_runs_and_left_as_it_is(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "10_left.jpeg").write_bytes(b"\xff\xd8 a photograph")
    (folder / "sub" / "notes.txt").write_text("keep\n")
    before = _tree(tmp_path)
    ran = False
    with pytest.raises(IsADirectoryError, match=f"{folder} is an existing directory"):
        with atomic_path(folder) as tmp:
            ran = True
            tmp.write_text("grades")
    assert not ran and _tree(tmp_path) == before


def test_a_symbolic_link_to_a_directory_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.txt").write_text("a")
    os.symlink(tmp_path / "real", tmp_path / "link")
    before = _tree(tmp_path)
    with pytest.raises(IsADirectoryError, match="link"), atomic_path(tmp_path / "link", replace_dir=True) as tmp:
        tmp.mkdir()
    assert _tree(tmp_path) == before


def test_replace_dir_replaces_an_earlier_output_with_the_same_files(tmp_path: Path) -> None:
    out = tmp_path / "processed"
    for content in ("first", "second"):
        with atomic_path(out, replace_dir=True) as tmp:
            (tmp / "train").mkdir(parents=True)
            (tmp / "train.csv").write_text(content)
            (tmp / "train" / "1_left.png").write_text(content)
    assert _tree(tmp_path) == {"processed": None, "processed/train": None, "processed/train.csv": b"second",
                               "processed/train/1_left.png": b"second"}


def test_replace_dir_refuses_a_directory_holding_files_it_would_not_write(tmp_path: Path) -> None:
    out = tmp_path / "processed"
    (out / "train").mkdir(parents=True)
    (out / "train.csv").write_text("earlier")
    (out / "train" / "holiday.jpeg").write_bytes(b"someone else's")
    before = _tree(tmp_path)
    with pytest.raises(IsADirectoryError, match=r"holds files this run would not write \(train/holiday\.jpeg\)"):
        with atomic_path(out, replace_dir=True) as tmp:
            tmp.mkdir()
            (tmp / "train.csv").write_text("new")
    assert _tree(tmp_path) == before  # old folder whole, nothing new, no temporary left


def test_a_new_directory_is_written_where_nothing_was(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "deep" / "start", replace_dir=True) as tmp:
        tmp.mkdir()
        (tmp / "start.json").write_text("{}")
    assert _tree(tmp_path) == {"deep": None, "deep/start": None, "deep/start/start.json": b"{}"}


@pytest.mark.parametrize(("output", "other", "relation"), [
    ("photos", "photos", "is"),
    ("photos/../photos", "photos", "is"),
    ("photos/grades.csv", "photos", "lies inside"),
    (".", "photos/1_left.jpeg", "contains"),
    ("hardlink.jpeg", "photos/1_left.jpeg", "is"),
    ("symlink.jpeg", "photos/1_left.jpeg", "is"),
])
def test_outputs_that_are_inside_or_around_an_input_are_refused_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str, other: str, relation: str
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("photos").mkdir()
    Path("photos/1_left.jpeg").write_bytes(b"photo")
    os.link("photos/1_left.jpeg", "hardlink.jpeg")
    os.symlink("photos/1_left.jpeg", "symlink.jpeg")
    with pytest.raises(OutputPathError, match=re.escape(f"--out {output} {relation} input {other}:")):
        check_outputs_apart([("--out", output)], [("input", other)])


def test_outputs_apart_from_every_input_and_each_other_pass(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "1_left.jpeg").write_bytes(b"photo")
    check_outputs_apart([("--out", tmp_path / "grades.csv"), ("--heatmaps", tmp_path / "heat")],
                        [("input folder", tmp_path / "photos"), ("the model", tmp_path / "model.pt")])


def test_two_outputs_on_one_path_are_refused(tmp_path: Path) -> None:
    with pytest.raises(OutputPathError, match="--onnx .*m.json is its sidecar"):
        check_outputs_apart([("--onnx", tmp_path / "m.json"), ("its sidecar", tmp_path / "m.json")], [])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_value_error_naming_the_device() -> None:
    with pytest.raises(DeviceUnavailableError, match="device 'cuda:0' was asked for, but torch sees no CUDA device"):
        select_device("cuda:0")
    assert issubclass(DeviceUnavailableError, ValueError)


def test_a_string_that_names_no_device_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        select_device("gpu")
    assert select_device("cpu") == torch.device("cpu")
