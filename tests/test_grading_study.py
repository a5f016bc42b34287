"""The grading study (studies/grading/): exact code deps, params that resolve, the summary and its choice rule on
made-up records, and a tiny end-to-end run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from dvc_repo import run, stages_run, tiny_repo
from retinopathy.ablation import blend_arms
from retinopathy.evaluation import Split
from retinopathy.grading_study import NONE, StudyAxes, arm_name, read_axes
from retinopathy.grading_summary import (
    ARM_KEYS,
    COMPONENT_KEYS,
    SummarySettings,
    choose,
    markdown,
    summarize,
    write_results,
)
from retinopathy.params import ParamsError, load_params
from test_code_deps import code_dependencies
from test_label_efficiency_study import _declared_params, _stages

ROOT = Path(__file__).resolve().parents[1]
STUDY = Path("studies/grading")
STUDY_FILES = ("dvc.yaml", "params.yaml", "train.py", "grade.py", "summarize.py", ".gitignore")


def grading_code_mismatches(repo_root: Path) -> list[str]:
    """One line per study stage whose declared code differs from what its script imports (as
    tests/test_code_deps.py)."""
    repo_root = repo_root.resolve()
    problems = []
    for stage in _stages(repo_root, STUDY / "dvc.yaml"):
        script = next(part for part in stage.cmd.split() if part.endswith(".py"))
        declared = {Path(dep.fs_path).resolve() for dep in stage.deps if str(dep.def_path).endswith(".py")}
        needed = {p.resolve() for p in code_dependencies(repo_root / script, repo_root)}
        if missing := sorted(str(p.relative_to(repo_root)) for p in needed - declared):
            problems.append(f"{stage.addressing}: runs but does not declare {missing}")
        if extra := sorted(str(p.relative_to(repo_root)) for p in declared - needed):
            problems.append(f"{stage.addressing}: declares but does not run {extra}")
    return problems


def test_every_grading_study_stage_declares_exactly_the_code_it_imports() -> None:
    problems = grading_code_mismatches(ROOT)
    assert not problems, "studies/grading/dvc.yaml deps out of date:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("stage", "removed"),
    [("train", "src/retinopathy/train_stage.py"), ("grade", "src/retinopathy/ablation.py"),
     ("summarize", "src/retinopathy/statistics.py")],
)
def test_a_removed_grading_study_code_dep_is_reported(tmp_path: Path, stage: str, removed: str) -> None:
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
    problems = grading_code_mismatches(tmp_path)
    assert problems and all(removed in line and "does not declare" in line for line in problems)
    assert {line.split(":")[1].split("@")[0] for line in problems} == {stage}


def test_grading_study_resolves_one_train_and_grade_per_seed_and_every_declared_param_exists() -> None:
    axes = read_axes(load_params(ROOT / STUDY / "params.yaml"))
    stages = {stage.name: stage for stage in _stages(ROOT, STUDY / "dvc.yaml")}
    assert set(stages) == {f"{name}@{seed}" for name in ("train", "grade") for seed in axes.seeds} | {"summarize"}
    seed = axes.seeds[-1]
    assert f"--arch {axes.arch} --pretrained true --seed {seed}" in stages[f"train@{seed}"].cmd
    deps = {dep.def_path for dep in stages[f"train@{seed}"].deps}
    assert {f"models/start/{axes.variant}", "data/processed"} <= deps
    assert f"studies/grading/models/{axes.network(seed)}.pt" in {dep.def_path for dep in stages[f"grade@{seed}"].deps}
    for name, stage in stages.items():
        assert Path(stage.wdir).resolve() == ROOT, f"{name} must run from the repository root"
        for path, keys in _declared_params(stage).items():
            for key in keys:
                node = load_params(ROOT / path)
                for part in key.split("."):
                    assert isinstance(node, dict) and part in node, f"{name} declares {path}: {key}, which is not there"
                    node = node[part]


def test_grading_study_trains_with_the_main_train_stages_params_less_the_grading_ones() -> None:
    """The train stages read the main train stage's params but for head, decode and the refit (the study grades
    those itself); only summarize declares the seeds, so adding one leaves the other seeds' stages cached."""
    main = next(_declared_params(s) for s in _stages(ROOT, Path("dvc.yaml"))
                if s.name.startswith("train@resnet18-true"))
    study = {stage.name: _declared_params(stage) for stage in _stages(ROOT, STUDY / "dvc.yaml")}
    train = next(params for name, params in study.items() if name.startswith("train@"))
    grading_keys = {"head", "decode", "refit_classifier", "refit_c"}
    assert sorted(train) == ["params.yaml"]
    assert sorted(train["params.yaml"]) == sorted(set(main["params.yaml"]) - grading_keys)
    grade = next(params for name, params in study.items() if name.startswith("grade@"))
    assert grade[(STUDY / "params.yaml").as_posix()] == ["refit", "blend_c"]
    assert sorted(study["summarize"][(STUDY / "params.yaml").as_posix()]) == sorted(
        ["arch", "pretrained", "seeds", "refit", "blend_c", "summary"])
    assert [name for name, params in study.items()
            if "seeds" in params.get((STUDY / "params.yaml").as_posix(), [])] == ["summarize"]


@pytest.mark.parametrize(
    ("change", "message"),
    [({"refit": [1.0]}, "must include 'none'"), ({"refit": ["none", -1]}, "'refit' must be 'none' or a positive"),
     ({"blend_c": [0.03, 0.03]}, "lists a value twice"), ({"seeds": []}, "'seeds' must be distinct"),
     ({"sedes": [1]}, "unknown key 'sedes'")],
)
def test_study_params_refuse_what_the_study_cannot_compare(change: dict, message: str) -> None:
    study = {**yaml.safe_load((ROOT / STUDY / "params.yaml").read_text()), **change}
    with pytest.raises(ParamsError, match=message):
        read_axes(study)


# ---------------------------------------------------------------------------------------------------------------
# The summary on made-up records: one network per seed, graded several ways.

AXES = StudyAxes(seeds=(1, 2, 3), refits=(None, 1.0), blend_cs=(0.03,))


def _made_up_study(rng: np.random.Generator, *, good_arm: str, good_on: str = "val") -> tuple[list[dict], list[dict]]:
    """Records and grades of AXES: every arm gets 40% of the images wrong, except ``good_arm``, which gets 5%
    wrong on ``good_on`` (and 40% on the other split)."""
    images = [f"{p}_{side}" for p in range(60) for side in ("left", "right")]
    labels = {split: rng.choice(5, size=len(images), p=[0.5, 0.15, 0.2, 0.1, 0.05]) for split in ("val", "test")}
    records, predictions = [], []
    for _ in AXES.seeds:
        arms, rows, record_arms = {}, [], []
        for arm in AXES.arms:
            frames, entry = [], {"refit": arm.split("_")[0][6:], "blend": arm.split("_")[1][6:]}
            for split in ("val", "test"):
                wrong = rng.random(len(images)) < (0.05 if arm == good_arm and split == good_on else 0.4)
                predicted = np.where(wrong, (labels[split] + rng.integers(1, 5, len(images))) % 5, labels[split])
                frames.append(pd.DataFrame({"split": split, "image": images,
                                            "patient": [i.split("_")[0] for i in images],
                                            "actual": labels[split], "predicted": predicted}))
                entry[split] = {"kappa": 1.0 - wrong.mean(), "macro_f1": 0.5, "accuracy": 1.0 - wrong.mean()}
                entry[f"{split}_predicted_grades"] = np.bincount(predicted, minlength=5).tolist()
            arms[arm] = pd.concat(frames, ignore_index=True)
            record_arms.append(entry)
        for refit in AXES.refit_labels:
            for tta in ("none", "flips"):
                for decode in ("argmax", "expected"):
                    for blended in (False, True):
                        scores = {"kappa": rng.random(), "macro_f1": rng.random(), "accuracy": rng.random()}
                        rows.append({"refit": refit, "tta": tta, "decode": decode, "patient_blend": blended,
                                     "val_2fold": scores, "test": scores, "val_predicted_grades": [1, 1, 1, 1, 0],
                                     "test_predicted_grades": [1, 1, 1, 1, 1]})
        records.append({"arms": record_arms, "components": rows, "refits": [], "components_blend_c": 0.03})
        predictions.append(arms)
    return records, predictions


def test_choice_rule_needs_an_interval_above_zero_and_takes_the_highest_mean_of_those() -> None:
    assert choose({"0.1": (0.001, 0.80), "1": (0.002, 0.85), "10": (-0.01, 0.90)}) == ("1", ["0.1", "1"])
    assert choose({"1": (0.0, 0.99), "10": (None, 0.99)}) == (NONE, [])
    assert choose({}) == (NONE, [])


def test_summary_picks_the_refit_better_on_validation_and_keeps_no_blend_whose_gain_spans_zero() -> None:
    records, predictions = _made_up_study(np.random.default_rng(0), good_arm=arm_name("1", NONE))
    summary = summarize(records, predictions, axes=AXES, settings=SummarySettings(bootstrap_resamples=100),
                        current={"refit": "1", "blend": "0.03"})
    # One table row per setup: two refits x (no blend, blend C=0.03); the ablation's 2 refits x 8 setups.
    assert [(e["refit"], e["blend"]) for e in summary["arms"]] == [
        ("none", "none"), ("none", "0.03"), ("1", "none"), ("1", "0.03"),
    ]
    assert len(summary["components"]) == 16 == len({tuple(e[k] for k in COMPONENT_KEYS) for e in summary["components"]})
    assert all(e["seeds"] == 3 and e["errors"] == 0 for e in summary["arms"] + summary["components"])
    refit = next(d for d in summary["differences"]
                 if d["knob"] == "refit" and d["split"] == "val" and d["metric"] == "kappa")
    assert refit["low"] > 0 and refit["verdict"].startswith("refit C=1 better than no refit")
    assert summary["choice"]["refit"]["chosen"] == "1" and summary["choice"]["refit"]["agrees_with_params_yaml"]
    # The blend is judged on top of the refit chosen, where it is worse (40% wrong against 5%): no blend stays.
    blend = summary["choice"]["blend"]
    assert blend["on_refit"] == "1" and blend["chosen"] == NONE and blend["passing"] == []
    assert blend["val_kappa_low"]["0.03"] <= 0 and not blend["agrees_with_params_yaml"]
    text = markdown(summary, figure="grading.png")
    assert "| refit C=1 | no blend |" in text and "Chosen: **refit C=1**" in text and "Chosen: **no blend**" in text
    assert "![paired QWK differences, validation and test](grading.png)" in text


def test_a_setting_better_on_test_alone_is_not_chosen() -> None:
    records, predictions = _made_up_study(np.random.default_rng(1), good_arm=arm_name("1", NONE), good_on="test")
    summary = summarize(records, predictions, axes=AXES, settings=SummarySettings(bootstrap_resamples=100))
    test = next(d for d in summary["differences"]
                if d["knob"] == "refit" and d["split"] == "test" and d["metric"] == "kappa")
    assert test["low"] > 0
    assert summary["choice"]["refit"]["chosen"] == NONE and "no refit stays" in summary["choice"]["refit"]["verdict"]


def test_summary_reports_an_arm_that_could_not_be_graded_and_refuses_stale_records(tmp_path: Path) -> None:
    records, predictions = _made_up_study(np.random.default_rng(2), good_arm=arm_name("1", NONE))
    for record, arms in zip(records, predictions):  # the blend could not be fitted on top of the refit
        entry = next(a for a in record["arms"] if (a["refit"], a["blend"]) == ("1", "0.03"))
        record["arms"][record["arms"].index(entry)] = {"refit": "1", "blend": "0.03", "error": "grade(s) [4] have none"}
        del arms[arm_name("1", "0.03")]
    summary = summarize(records, predictions, axes=AXES, settings=SummarySettings(bootstrap_resamples=50))
    row = next(e for e in summary["arms"] if tuple(e[k] for k in ARM_KEYS) == ("1", "0.03"))
    assert row["errors"] == 3 and row["val_kappa"] is None
    assert summary["choice"]["blend"]["chosen"] == NONE
    assert any(d["difference"] is None and "not scored" in d["verdict"] for d in summary["differences"])
    paths = write_results(summary, tmp_path / "results", docs=tmp_path / "docs" / "grading-results.md")
    assert json.loads(paths["json"].read_text())["choice"]["refit"]["chosen"] == "1"
    assert "](../results/grading.png)" in paths["docs"].read_text() and paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert "grade(s) [4] have none" in paths["md"].read_text()
    summary["refits"] = [{"seed": 1, "refit": "1", "applied": False, "reason": "grade(s) [4] have no training image"}]
    assert "Refit not applied (the layer kept as trained): seed 1, refit C=1: grade(s) [4]" in markdown(summary)
    with pytest.raises(ValueError, match="has no arm refit-none_blend-0.1"):
        summarize(records, predictions, axes=StudyAxes(seeds=AXES.seeds, blend_cs=(0.03, 0.1)))


def test_blend_arms_grade_validation_directly_and_say_why_a_blend_cannot_be_fitted() -> None:
    rng = np.random.default_rng(0)

    def split(n: int, grades: int = 5) -> Split:
        labels = rng.integers(0, grades, 2 * n)
        logits = np.eye(5)[labels] * 3 + rng.normal(0, 1, (2 * n, 5))
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return Split([f"{p}_{side}" for p in range(n) for side in ("left", "right")], probs, labels)

    outputs = {"train": split(60), "val": split(20), "test": split(15)}
    arms = blend_arms("1", outputs, [0.03], None)
    assert [(entry["refit"], entry["blend"]) for entry, _ in arms] == [("1", NONE), ("1", "0.03")]
    entry, frame = arms[0]
    assert frame["split"].value_counts().to_dict() == {"val": 40, "test": 30}
    val = frame[frame["split"] == "val"]
    assert np.array_equal(val["predicted"], outputs["val"].outputs.argmax(1))  # argmax: nothing fitted on validation
    assert entry["val"]["accuracy"] == pytest.approx(float((val["predicted"] == val["actual"]).mean()), abs=1e-4)
    missing_four = {**outputs, "train": split(60, grades=4)}
    entry, frame = blend_arms("none", missing_four, [0.03], None)[1]
    assert frame is None and "[4]" in entry["error"]


# ---------------------------------------------------------------------------------------------------------------
# The tiny end-to-end run.


def tiny_grading_repo(path: Path, *, seeds: list[int]) -> Path:
    """A git + DVC repository holding the project's pipeline and the study, with tiny params; enough training
    patients that every grade is in the training set, so the refit and the blend are fitted."""
    tiny_repo(path)
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["synthetic"]["train_patients"] = 60
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (path / STUDY).mkdir(parents=True)
    for name in STUDY_FILES:
        shutil.copy(ROOT / STUDY / name, path / STUDY / name)
    study = yaml.safe_load((ROOT / STUDY / "params.yaml").read_text())
    study.update(seeds=seeds, blend_c=[0.03])
    study["summary"]["bootstrap_resamples"] = 50
    (path / STUDY / "params.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def grading_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny study (2 seeds, no refit and C = 1, no blend and C = 0.03), reproduced once with the documented
    command."""
    path = tiny_grading_repo(tmp_path_factory.mktemp("grading"), seeds=[42, 43])
    path.joinpath("first.log").write_text(run(["dvc", "repro", "studies/grading/dvc.yaml"], path))
    return path


@pytest.mark.slow
def test_tiny_grading_study_trains_from_the_main_start_point_and_writes_tables_and_docs(grading_repo: Path) -> None:
    ran = stages_run((grading_repo / "first.log").read_text())
    prefix = "studies/grading/dvc.yaml:"
    study = {f"{prefix}{name}@{seed}" for name in ("train", "grade") for seed in (42, 43)} | {f"{prefix}summarize"}
    # The main pipeline's stages up to the start point run; none of its trainings do.
    assert ran == study | {"synthesize", "preprocess", "pretrain@resnet18"}
    assert not list((grading_repo / "models").glob("*.pt"))
    axes = read_axes(load_params(grading_repo / STUDY / "params.yaml"))
    for seed in (42, 43):
        record = json.loads((grading_repo / STUDY / "metrics" / "grade" / f"resnet18-true-{seed}.json").read_text())
        assert [r["refit"] for r in record["refits"]] == ["none", "1"] and record["refits"][1]["applied"]
        assert len(record["components"]) == 16 and {(a["refit"], a["blend"]) for a in record["arms"]} == {
            ("none", "none"), ("none", "0.03"), ("1", "none"), ("1", "0.03")}
        folder = grading_repo / STUDY / "metrics" / "predictions" / f"resnet18-true-{seed}"
        assert sorted(p.stem for p in folder.glob("*.csv")) == sorted(axes.arms)
        frame = pd.read_csv(folder / f"{arm_name('1', NONE)}.csv")
        assert set(frame["split"]) == {"val", "test"} and frame["predicted"].between(0, 4).all()
    results = grading_repo / STUDY / "results"
    summary = json.loads((results / "grading.json").read_text())
    assert [(e["refit"], e["blend"]) for e in summary["arms"]] == [
        ("none", "none"), ("none", "0.03"), ("1", "none"), ("1", "0.03"),
    ]
    assert {d["label"] for d in summary["differences"]} == {
        "refit C=1 - no refit", "blend C=0.03 - no blend (no refit)", "blend C=0.03 - no blend (refit C=1)"}
    assert summary["choice"]["refit"]["chosen"] in {"none", "1"} and summary["seconds"]["training"] > 0
    text = (results / "grading.md").read_text()
    assert "dvc repro studies/grading/dvc.yaml" in text and "torch threads" in text and "## Verdicts" in text
    docs = (grading_repo / "docs" / "grading-results.md").read_text()
    assert "](../studies/grading/results/grading.png)" in docs
    assert (results / "grading.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (grading_repo / STUDY / "dvc.lock").is_file()


@pytest.mark.slow
def test_second_grading_study_repro_runs_nothing(grading_repo: Path) -> None:
    assert stages_run(run(["dvc", "repro", "studies/grading/dvc.yaml"], grading_repo)) == set()


@pytest.mark.slow
def test_the_main_pipelines_repro_does_not_run_the_grading_study(grading_repo: Path) -> None:
    out = run(["dvc", "repro", "--dry", "--force"], grading_repo)
    assert "synthesize" in out and "studies/grading" not in out
