"""Shared fixtures: a tiny embedded data set, rendered and processed once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from retinopathy.embedded import SyntheticSpec, write_synthetic_set
from retinopathy.preprocessing import CropSettings, build_processed_set
from retinopathy.sources import read_course

TINY = SyntheticSpec(seed=7, train_patients=20, test_patients=8, unlabeled_patients=4, min_size=64, max_size=96)


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic set in the course layout: 40 train, 16 test, 8 unlabelled images."""
    root = tmp_path_factory.mktemp("raw") / "synthetic"
    write_synthetic_set(root, TINY, workers=1)
    return root


@pytest.fixture(scope="session")
def processed_dir(raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny set after the preprocess stage, at 32 px."""
    out = tmp_path_factory.mktemp("processed") / "processed"
    build_processed_set(
        read_course(raw_dir),
        out_dir=out,
        balance_path=out.parent / "label_balance.json",
        settings=CropSettings(size=32),
        val_fraction=0.25,
        seed=0,
        workers=1,
    )
    return out
