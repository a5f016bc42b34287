"""The label-efficiency study (studies/label_efficiency/): exact code deps, params that resolve, a tiny end-to-end
run."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from dvc.repo import Repo

from dvc_repo import run, stages_run, tiny_repo
from retinopathy.data import patient_of
from retinopathy.label_efficiency import StudyLayout, SummarySettings, fraction_name, summarize_study, write_study
from retinopathy.metrics import quadratic_weighted_kappa
from retinopathy.params import get, load_params
from retinopathy.statistics import IntervalSettings
from retinopathy.utils import write_csv, write_json
from test_code_deps import code_dependencies

ROOT = Path(__file__).resolve().parents[1]
STUDY = Path("studies/label_efficiency")
STUDY_FILES = ("dvc.yaml", "params.yaml", "summarize.py", ".gitignore")


def _stages(repo_root: Path, dvcfile: Path) -> list:
    """The resolved stages (foreach and matrix expanded by DVC itself) of one dvc.yaml of ``repo_root``."""
    with Repo(str(repo_root)) as repo:
        return [stage for stage in repo.index.stages if Path(stage.path).resolve() == (repo_root / dvcfile).resolve()]


def _declared_params(stage) -> dict[str, list[str]]:
    """{params file relative to the repository root: [keys]} of one stage."""
    from dvc.dependency import ParamsDependency

    out: dict[str, list[str]] = {}
    for dep in stage.deps:
        if isinstance(dep, ParamsDependency):
            out.setdefault(Path(dep.fs_path).resolve().relative_to(ROOT).as_posix(), []).extend(dep.params)
    return out


def study_code_mismatches(repo_root: Path, study: Path = STUDY) -> list[str]:
    """One line per stage of ``study``'s dvc.yaml whose declared code differs from what its script imports (as
    tests/test_code_deps.py)."""
    repo_root = repo_root.resolve()
    problems = []
    for stage in _stages(repo_root, study / "dvc.yaml"):
        script = next(part for part in stage.cmd.split() if part.endswith(".py"))
        declared = {Path(dep.fs_path).resolve() for dep in stage.deps if str(dep.def_path).endswith(".py")}
        needed = {p.resolve() for p in code_dependencies(repo_root / script, repo_root)}
        if missing := sorted(str(p.relative_to(repo_root)) for p in needed - declared):
            problems.append(f"{stage.addressing}: runs but does not declare {missing}")
        if extra := sorted(str(p.relative_to(repo_root)) for p in declared - needed):
            problems.append(f"{stage.addressing}: declares but does not run {extra}")
    return problems


def test_every_study_stage_declares_exactly_the_code_it_imports() -> None:
    problems = study_code_mismatches(ROOT)
    assert not problems, "studies/label_efficiency/dvc.yaml deps out of date:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("stage", "removed"), [("train", "src/retinopathy/data.py"), ("summarize", "src/retinopathy/statistics.py")]
)
def test_a_removed_study_code_dep_is_reported(tmp_path: Path, stage: str, removed: str) -> None:
    for name in ("stages", "src"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("params.yaml", "dvc.yaml", *(f"{STUDY}/{f}" for f in STUDY_FILES)):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".dvc").mkdir()  # enough for DVC to read the pipelines without a git repository
    (tmp_path / ".dvc" / "config").write_text("[core]\n    no_scm = true\n")
    pipeline = yaml.safe_load((ROOT / STUDY / "dvc.yaml").read_text())
    definition = pipeline["stages"][stage]
    (definition["do"]["deps"] if "do" in definition else definition["deps"]).remove(removed)
    (tmp_path / STUDY / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    problems = study_code_mismatches(tmp_path)
    assert problems and all(removed in line and "does not declare" in line for line in problems)
    assert {line.split(":")[1].split("@")[0] for line in problems} == {stage}


def test_study_resolves_one_stage_per_point_and_every_declared_param_exists() -> None:
    study = load_params(ROOT / STUDY / "params.yaml")
    fractions, seeds = get(study, "fractions", list), get(study, "seeds", list)
    stages = {stage.name: stage for stage in _stages(ROOT, STUDY / "dvc.yaml")}
    points = {f"{fraction}-{pretrained}-{seed}"
              for fraction in fractions for pretrained in ("true", "false") for seed in seeds}
    assert set(stages) == ({f"{name}@{fraction}" for name in ("preprocess", "pretrain") for fraction in fractions}
                           | {f"{name}@{point}" for name in ("train", "evaluate") for point in points} | {"summarize"})
    assert "--label-fraction 0.1 " in stages["preprocess@0.1"].cmd and "--seed 43" in stages["train@0.25-false-43"].cmd
    for name, stage in stages.items():
        assert Path(stage.wdir).resolve() == ROOT, f"{name} must run from the repository root"
        for path, keys in _declared_params(stage).items():
            for key in keys:
                node = load_params(ROOT / path)
                for part in key.split("."):
                    assert isinstance(node, dict) and part in node, f"{name} declares {path}: {key}, which is not there"
                    node = node[part]


def test_study_points_read_the_projects_params_as_the_main_stages_do() -> None:
    """Each point is the main pipeline with data.label_fraction set, so its stages declare the main stages' params
    (all but data.label_fraction, which the command line gives), and only summarize reads the study's params."""
    main = {stage.name: _declared_params(stage) for stage in _stages(ROOT, Path("dvc.yaml"))}
    study = {stage.name: _declared_params(stage) for stage in _stages(ROOT, STUDY / "dvc.yaml")}
    data_keys = [f"data.{key}" for key in load_params(ROOT / "params.yaml")["data"] if key != "label_fraction"]
    assert sorted(study["preprocess@0.1"]["params.yaml"]) == sorted(["seed", "preprocess", "quality", *data_keys])
    for name in ("pretrain", "train", "evaluate"):
        ours = next(params for stage, params in study.items() if stage.startswith(f"{name}@"))
        theirs = next(params for stage, params in main.items() if stage.startswith(f"{name}@resnet18"))
        # The studies' evaluations score no external site (--no-external), so they do not read that section.
        assert sorted(ours["params.yaml"]) == sorted(set(theirs["params.yaml"]) - {"external"}), name
    assert study["summarize"] == {(STUDY / "params.yaml").as_posix(): ["fractions", "seeds", "summary"]}


def test_summary_settings_are_the_study_params_summary_section_with_its_values_as_defaults() -> None:
    """The study's params.yaml fills every field, in order, and the defaults agree with it."""
    summary = load_params(ROOT / STUDY / "params.yaml")["summary"]
    assert isinstance(SummarySettings(), IntervalSettings)
    assert list(asdict(SummarySettings()).items()) == list(summary.items())


def _fake_point_outputs(layout: StudyLayout, fraction: float, *, seeds: list[int], images: list[str],
                        labels: np.ndarray, train_images: int, rng: np.random.Generator) -> None:
    """What the study's preprocess and evaluate stages write for one fraction: pretrained predicts the grade
    right 90% of the time, from scratch predicts grade 0 for everything (QWK 0)."""
    name = fraction_name(fraction)
    write_json(layout.preprocess(name) / "preprocess_report.json",
               {"label_fraction": {"kept_patients": train_images // 2}})
    write_json(layout.preprocess(name) / "label_balance.json",
               {"train": {"total": train_images}, "val": {"total": 30}, "test": {"total": len(images)}})
    for seed in seeds:
        for pretrained in ("true", "false"):
            predicted = (np.where(rng.random(len(labels)) < 0.9, labels, 0) if pretrained == "true"
                         else np.zeros_like(labels))
            patients = [patient_of(image) for image in images]
            frame = pd.DataFrame({"image": images, "patient": patients, "actual": labels, "predicted": predicted})
            write_csv(layout.predictions(name) / f"resnet18-{pretrained}-{seed}.csv", frame)
            kappa = round(quadratic_weighted_kappa(labels, predicted), 4)
            write_json(layout.eval(name) / f"resnet18-{pretrained}-{seed}.json", {"kappa": kappa})


def test_summary_averages_seeds_pairs_the_arms_and_draws_table_and_figure(tmp_path: Path) -> None:
    """The summarizing step alone, on made-up evaluation outputs (fast; the tiny run below covers the pipeline)."""
    rng = np.random.default_rng(0)
    images = [f"{p}_{side}" for p in range(40) for side in ("left", "right")]
    labels = rng.choice(5, size=len(images), p=[0.6, 0.1, 0.2, 0.05, 0.05])
    layout, seeds = StudyLayout(tmp_path / "study"), [42, 43]
    for fraction, count in ((0.25, 40), (1.0, 160)):
        _fake_point_outputs(layout, fraction, seeds=seeds, images=images, labels=labels, train_images=count, rng=rng)
    settings = SummarySettings(bootstrap_resamples=200)
    table = summarize_study([1.0, 0.25], seeds, layout=layout, settings=settings)
    assert table["fraction"].tolist() == [0.25, 1.0] and table["train_images"].tolist() == [40, 160]
    for _, row in table.iterrows():
        name = fraction_name(row["fraction"])
        predicted = [pd.read_csv(layout.predictions(name) / f"resnet18-true-{s}.csv")["predicted"] for s in seeds]
        per_seed = [quadratic_weighted_kappa(labels, p) for p in predicted]
        assert row["pretrained_qwk"] == pytest.approx(np.mean(per_seed), abs=1e-4)
        assert row["pretrained_seed_sd"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-4)
        assert row["pretrained_low"] <= row["pretrained_qwk"] <= row["pretrained_high"] < 1.0
        assert row["scratch_qwk"] == row["scratch_low"] == row["scratch_high"] == 0.0
        assert row["difference"] == pytest.approx(row["pretrained_qwk"] - row["scratch_qwk"], abs=1e-4)
        assert 0 < row["difference_low"] <= row["difference_high"]
        assert (row["verdict"].startswith("pretrained better than from scratch")
                and "training seeds" in row["difference_covers"])
        # Welch-Satterthwaite df lie between the smallest component's and their sum: the pretrained seeds' 1 and
        # the bootstrap's 40 test patients - 1 (the scratch seeds agree exactly and add nothing).
        assert 1 <= row["difference_df"] <= 1 + 39
    paths = write_study(table, tmp_path / "results", seeds=seeds, settings=settings)
    assert pd.read_csv(paths["csv"]).shape == table.shape and paths["png"].read_bytes()[:4] == b"\x89PNG"
    markdown = paths["md"].read_text()
    assert "| 0.25 | 20 | 40 |" in markdown and "2 training seeds (42, 43)" in markdown
    assert "covers training randomness too" in markdown and "Welch-Satterthwaite degrees of freedom" in markdown
    assert "| pretrained - scratch (95% interval) | df | verdict |" in markdown


def test_summary_refuses_fractions_evaluated_on_different_test_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [f"{p}_{side}" for p in range(10) for side in ("left", "right")]
    labels = rng.choice(5, size=len(images))
    layout = StudyLayout(tmp_path)
    _fake_point_outputs(layout, 0.5, seeds=[42], images=images, labels=labels, train_images=8, rng=rng)
    _fake_point_outputs(layout, 1.0, seeds=[42], images=images[2:], labels=labels[2:], train_images=16, rng=rng)
    with pytest.raises(ValueError, match=r"1\.0/resnet18-true-42\.csv covers other test images"):
        summarize_study([0.5, 1.0], [42], layout=layout, settings=SummarySettings(bootstrap_resamples=20))
    with pytest.raises(FileNotFoundError, match=r"0\.5/resnet18-true-7\.csv is missing"):
        summarize_study([0.5], [7], layout=layout, settings=SummarySettings(bootstrap_resamples=20))


def tiny_study_repo(path: Path, *, fractions: list[float], seeds: list[int]) -> Path:
    """A git + DVC repository holding the project's pipeline and the study, with tiny params."""
    tiny_repo(path)
    (path / STUDY).mkdir(parents=True)
    for name in STUDY_FILES:
        shutil.copy(ROOT / STUDY / name, path / STUDY / name)
    study = yaml.safe_load((ROOT / STUDY / "params.yaml").read_text())
    study.update(fractions=fractions, seeds=seeds)
    study["summary"]["bootstrap_resamples"] = 50
    (path / STUDY / "params.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def study_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny study (2 fractions x 2 pretraining settings x 1 seed), reproduced once with the command the docs
    give."""
    path = tiny_study_repo(tmp_path_factory.mktemp("study"), fractions=[0.5, 1.0], seeds=[42])
    path.joinpath("first.log").write_text(run(["dvc", "repro", "studies/label_efficiency/dvc.yaml"], path))
    return path


@pytest.mark.slow
def test_tiny_study_runs_every_point_from_the_main_data_set_and_writes_table_and_figure(study_repo: Path) -> None:
    ran = stages_run((study_repo / "first.log").read_text())
    prefix = "studies/label_efficiency/dvc.yaml:"
    points = [f"{fraction}-{pretrained}-42" for fraction in ("0.5", "1.0") for pretrained in ("true", "false")]
    expected = {f"{prefix}{name}@{fraction}" for name in ("preprocess", "pretrain") for fraction in ("0.5", "1.0")}
    expected |= {f"{prefix}{name}@{point}" for name in ("train", "evaluate") for point in points}
    # The main pipeline's synthesize stage makes the data set; none of its models are made or read.
    assert ran == expected | {f"{prefix}summarize", "synthesize"}
    assert not (study_repo / "models").exists() and not (study_repo / "data" / "processed").exists()
    results = study_repo / STUDY / "results"
    table = pd.read_csv(results / "label_efficiency.csv")
    assert table["fraction"].tolist() == [0.5, 1.0]
    assert table["train_images"].iloc[0] < table["train_images"].iloc[1]
    assert table["val_images"].nunique() == 1 and table["test_images"].tolist() == [10, 10]
    for arm in ("pretrained", "scratch"):
        assert ((table[f"{arm}_low"] <= table[f"{arm}_qwk"]) & (table[f"{arm}_qwk"] <= table[f"{arm}_high"])).all()
    assert (table["difference_low"] <= table["difference_high"]).all() and table["verdict"].str.len().gt(0).all()
    markdown = (results / "label_efficiency.md").read_text()
    assert ("| 0.5 |" in markdown and "| 1 |" in markdown and "patient" in markdown
            and "label_efficiency.png" in markdown)
    assert (results / "label_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (study_repo / STUDY / "dvc.lock").is_file()


@pytest.mark.slow
def test_second_study_repro_runs_nothing(study_repo: Path) -> None:
    assert stages_run(run(["dvc", "repro", "studies/label_efficiency/dvc.yaml"], study_repo)) == set()


@pytest.mark.slow
def test_the_main_pipelines_repro_does_not_run_the_study(study_repo: Path) -> None:
    """`dvc repro` (what `make run` calls) reproduces the root dvc.yaml only; the study runs when asked for."""
    out = run(["dvc", "repro", "--dry", "--force"], study_repo)
    assert "synthesize" in out and "label_efficiency" not in out
