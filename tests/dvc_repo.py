"""Helpers for tests that run DVC in a temporary repository: run a command there, read which stages ran."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from filelock import FileLock


def run(args: list[str], cwd: Path) -> str:
    """Run ``args`` in ``cwd`` with this interpreter's folder first on PATH; its output, or AssertionError with it."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def stages_run(output: str) -> set[str]:
    """The stages a `dvc repro` output says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", output))


ROOT = Path(__file__).resolve().parents[1]
# The train/evaluate keys of the tiny repository (seeds [42]), and the stages that read every variant.
VARIANTS = ["resnet18-true-42", "resnet18-false-42", "resnet50-true-42", "resnet50-false-42"]
AGGREGATES = {"compare", "plot", "report"}
# Stages upstream of every evaluation: none may read the external site.
UPSTREAM = {"synthesize", "preprocess", "pretrain@resnet18", "pretrain@resnet50"} | {f"train@{v}" for v in VARIANTS}


def tiny_params() -> dict:
    """The project's params.yaml shrunk so that a whole `dvc repro` takes a few minutes on 2 cores."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(epochs=1, batch_size=8)
    params["synthetic"].update(train_patients=12, test_patients=5, unlabeled_patients=3, external_patients=4,
                               quality_images=12, min_size=48, max_size=64)
    params["data"]["val_fraction"] = 0.25
    params["preprocess"].update(size=32, workers=1)
    params["pretrain"].update(epochs=1, batch_size=8)
    params["evaluate"].update(bootstrap_resamples=50)
    params["compare"].update(bootstrap_resamples=50)
    return params


def tiny_repo(path: Path) -> Path:
    """A git + DVC repository at ``path`` holding the project's pipeline (dvc.yaml, stages, src) with tiny params."""
    for name in ("dvc.yaml", "stages", "src"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, path / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, path / name)
    (path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    run(["git", "init", "-q"], path)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "init"], path)
    run(["dvc", "init", "-q"], path)
    return path


def reproduced_repo(factory: pytest.TempPathFactory, name: str) -> Path:
    """A private copy of one tiny repository reproduced once per test run, with the log of that first
    `dvc repro` in ``first.log``.

    Under xdist the workers share the first repository (built by whichever needs it first, the others
    wait on a lock), so the modules that change params start from it on two workers at once.
    """
    temp = factory.getbasetemp()
    shared = temp.parent if os.environ.get("PYTEST_XDIST_WORKER") else temp
    base = shared / "reproduced"
    with FileLock(str(shared / "reproduced.lock")):
        if not (base / "first.log").is_file():
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir()
            tiny_repo(base)
            (base / "first.log").write_text(run(["dvc", "repro"], base))  # written last: marks the copy complete
    copy = factory.mktemp(name) / "repo"
    shutil.copytree(base, copy, symlinks=True)
    return copy
