"""Every stage in dvc.yaml declares exactly the project code it runs, found by walking imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from dvc.repo import Repo

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "retinopathy"


def _module_file(name: str, root: Path) -> Path | None:
    """The file of project module ``name`` (``retinopathy.data`` -> <root>/src/retinopathy/data.py), else None."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    path = root.joinpath("src", *parts)
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path, root: Path) -> set[str]:
    """Names of the modules an ``import`` or ``from ... import`` anywhere in ``path`` loads."""
    src = root / "src"
    package = ".".join(path.relative_to(src).with_suffix("").parts[:-1]) if path.is_relative_to(src) else ""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against the importing module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            # `from retinopathy import data` loads the submodule retinopathy.data
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def code_dependencies(script: Path, root: Path = ROOT) -> set[Path]:
    """``script`` and every project file it loads, transitively.

    Loading ``retinopathy.x`` runs ``retinopathy/__init__.py`` first, so that file is always included.
    """
    seen: set[Path] = {script}
    todo = [script]
    while todo:
        for name in _imported_modules(todo.pop(), root):
            parts = name.split(".")
            # a dotted import also runs every parent package's __init__
            for depth in range(1, len(parts) + 1):
                found = _module_file(".".join(parts[:depth]), root)
                if found is not None and found not in seen:
                    seen.add(found)
                    todo.append(found)
    return seen


def declared_code(repo_root: Path) -> dict[str, tuple[Path, set[Path]]]:
    """For each stage of ``repo_root``'s dvc.yaml (foreach and matrix resolved by DVC itself): its
    script and the ``.py`` files it declares as deps under ``stages/`` or ``src/``."""
    out = {}
    with Repo(str(repo_root)) as repo:
        for stage in repo.index.stages:
            script = next(part for part in stage.cmd.split() if part.endswith(".py"))
            code = {Path(dep.fs_path).resolve() for dep in stage.deps if str(dep.def_path).endswith(".py")}
            out[stage.name] = ((repo_root / script).resolve(), code)
    return out


def code_mismatches(repo_root: Path) -> list[str]:
    """One line per stage whose declared code differs from what its script imports."""
    repo_root = repo_root.resolve()
    problems = []
    for name, (script, declared) in sorted(declared_code(repo_root).items()):
        needed = {p.resolve() for p in code_dependencies(script, repo_root)}
        missing = sorted(str(p.relative_to(repo_root)) for p in needed - declared)
        extra = sorted(str(p.relative_to(repo_root)) for p in declared - needed)
        if missing:
            problems.append(f"{name}: runs but does not declare {missing}")
        if extra:
            problems.append(f"{name}: declares but does not run {extra}")
    return problems


def test_every_stage_declares_exactly_the_code_it_imports() -> None:
    problems = code_mismatches(ROOT)
    assert not problems, "dvc.yaml deps out of date:\n" + "\n".join(problems)


def test_import_walk_follows_imports_transitively_and_inside_functions() -> None:
    deps = {p.relative_to(ROOT).as_posix() for p in code_dependencies(ROOT / "stages" / "evaluate.py")}
    # evaluation -> inference, data, metrics, models, utils; data -> images (decoding) and the package __init__
    assert {"stages/evaluate.py", "src/retinopathy/__init__.py", "src/retinopathy/evaluation.py",
            "src/retinopathy/inference.py", "src/retinopathy/metrics.py", "src/retinopathy/data.py"} <= deps
    assert "src/retinopathy/training.py" not in deps and "src/retinopathy/plotting.py" not in deps


@pytest.mark.parametrize("stage", ["pretrain", "evaluate", "train"])
def test_a_removed_code_dep_is_reported(tmp_path: Path, stage: str) -> None:
    import shutil

    import yaml

    for name in ("stages", "src"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / ".dvc").mkdir()  # enough for DVC to read the pipeline without a git repository
    (tmp_path / ".dvc" / "config").write_text("[core]\n    no_scm = true\n")
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    definition = pipeline["stages"][stage]
    deps = definition["do"]["deps"] if "do" in definition else definition["deps"]
    removed = "src/retinopathy/data.py"
    deps.remove(removed)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    problems = code_mismatches(tmp_path)
    assert problems and all(removed in line and "does not declare" in line for line in problems)
    reported = {line.split(":")[0] for line in problems}
    expected = {name for name in declared_code(tmp_path) if name.startswith(f"{stage}@")}
    assert reported == expected and len(expected) >= 2


def _loaded(modules: list[str], watched: list[str]) -> list[str]:
    """Which of ``watched`` a fresh interpreter holds after importing ``modules``."""
    code = f"import sys, {', '.join(modules)}; print(sorted(m for m in {tuple(watched)!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return ast.literal_eval(done.stdout)


@pytest.mark.parametrize(
    ("modules", "watched"),
    [
        # Training and evaluation: scikit-learn and matplotlib only where a refit or a figure needs them.
        (["retinopathy.evaluation", "retinopathy.train_stage", "retinopathy.pretraining"],
         ["torchvision", "sklearn", "matplotlib"]),
        # synthesize, compare, plot and report never touch a tensor: torch alone costs seconds per stage.
        (["retinopathy.embedded", "retinopathy.comparison", "retinopathy.figures", "retinopathy.report",
          "retinopathy.plotting"], ["torch", "torchvision", "sklearn"]),
    ],
    ids=["training-and-evaluation", "stages-without-tensors"],
)
def test_importing_a_stage_module_loads_none_of_the_libraries_it_does_not_use(
    modules: list[str], watched: list[str]
) -> None:
    assert _loaded(modules, watched) == []
