"""Helpers for tests that run DVC in a temporary repository: run a command there, read which stages ran."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def run(args: list[str], cwd: Path) -> str:
    """Run ``args`` in ``cwd`` with this interpreter's folder first on PATH; its output, or AssertionError with it."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def stages_run(output: str) -> set[str]:
    """The stages a `dvc repro` output says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", output))
