"""Shared fixtures: a tiny embedded data set, rendered and processed once per test session."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

# Under `make test` two xdist workers share the machine's cores: one torch thread each, and in the stage processes
# they start, rather than each worker's threads competing for every core. Set before any test module imports torch.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from retinopathy.embedded import write_synthetic_set
from retinopathy.preprocessing import CropSettings, build_processed_set
from retinopathy.settings import SyntheticSpec
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


def write_png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid 1 x 1 PNG (about 70 bytes) whose IHDR claims ``width`` x ``height``, with a correct CRC: a
    decompression bomb's header."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (120, 60, 20)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    # After the 8-byte signature: IHDR's length (4), type (4, bytes 12..16), data (13, bytes 16..29),
    # CRC of type + data (29..33).
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def png_claiming() -> Callable[[Path, int, int], Path]:
    """:func:`write_png_claiming`, for tests that need a tiny file with a huge header."""
    return write_png_claiming


@pytest.fixture
def cpu_flags(monkeypatch: pytest.MonkeyPatch) -> Callable[[set[str]], None]:
    """Make this process's CPU report the given /proc/cpuinfo flags, so ``precision: auto`` resolves the same
    on every machine: ``cpu_flags({"amx_bf16"})`` is a CPU with native bf16, ``cpu_flags(set())`` one without.

    Only this process: a subprocess (a stage, torchrun's workers) reads the real CPU, so tests that start one
    set ``precision`` explicitly instead.
    """
    from retinopathy import precision

    def report(flags: set[str]) -> None:
        monkeypatch.setattr(precision, "cpu_info", lambda path="/proc/cpuinfo": ("Test CPU", set(flags)))

    return report


# Module order under `make test` (xdist, one module per worker at a time, in this order). tests/test_pipeline.py
# is the longest chain, so one worker starts it at once and builds the reproduced repository; the other takes
# about as long in other modules (roughly two minutes on 2 cores) before tests/test_pipeline_params.py needs that
# repository, then the rest follow.
FIRST = ["test_pipeline.py", "test_scaling.py", "test_decoding.py", "test_cli.py", "test_pipeline_params.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collect the modules of ``FIRST`` first, in that order; the rest keep pytest's order."""
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))
