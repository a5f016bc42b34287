"""The real dvc.yaml, end to end on tiny params in a temporary git repository: the first run, a rerun,
adding a seed, a train stage run twice. Changing params is tests/test_pipeline_params.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dvc_repo import AGGREGATES, UPSTREAM, VARIANTS, reproduced_repo, run, stages_run


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC repository holding the project's pipeline with tiny params, reproduced once."""
    return reproduced_repo(tmp_path_factory, "pipeline")


def test_repro_runs_every_stage_and_writes_models_metrics_and_figures(repo: Path) -> None:
    ran = stages_run((repo / "first.log").read_text())
    expected = {"synthesize", "preprocess", "pretrain@resnet18", "pretrain@resnet50", "quality_gate"} | AGGREGATES
    expected |= {f"{stage}@{v}" for stage in ("train", "evaluate") for v in VARIANTS}
    assert ran == expected
    for variant in VARIANTS:
        assert (repo / "models" / f"{variant}.pt").is_file()
        metrics = json.loads((repo / "metrics" / "eval" / f"{variant}.json").read_text())
        assert 0.0 <= metrics["accuracy"] <= 1.0 and -1.0 <= metrics["kappa"] <= 1.0
        assert sum(map(sum, metrics["confusion"])) == metrics["n"] == 10
        for name in ("accuracy", "kappa", "macro_f1"):
            ci = metrics["intervals"][name]
            assert ci["low"] <= ci["value"] <= ci["high"]
        assert metrics["bootstrap"]["unit"] == "patient" and metrics["bootstrap"]["patients"] == 5
        assert "auc" in metrics["referable"] and set(metrics["referable"]["operating_points"]) == {
            "high_sensitivity", "high_specificity",
        }
        assert metrics["grading"]["head"] == "classification" and metrics["grading"]["tta"] == "none"
        assert "applied" in metrics["grading"]["refit"]  # the train stage's record of the classifier refit
        # The evaluation scores the configured grading only; the ablation is the grading study's.
        assert "components" not in metrics and metrics["seconds"] > 0
        assert 0.0 <= metrics["calibration"]["ece"]["value"] <= 1.0 and metrics["referral"]["curve"][0]["kept"] == 10
        # The external site: 4 patients, 8 photographs, scored at the thresholds chosen on in-domain validation.
        external = metrics["external"]
        assert external["n"] == external["site"]["images"] == 8 and external["site"]["patients"] == 4
        assert set(external["referable"]["operating_points"]) == {"high_sensitivity", "high_specificity"}
        for name, point in external["referable"]["operating_points"].items():
            assert point["threshold"] == metrics["referable"]["operating_points"][name]["threshold"]
        assert len(pd.read_csv(repo / "metrics" / "external" / f"{variant}.csv")) == 8
        summary = json.loads((repo / "metrics" / "train" / f"{variant}.json").read_text())
        assert summary["seconds"] >= summary["train_seconds"] > 0
    figures = sorted(p.name for p in (repo / "metrics" / "figures").glob("*.png"))
    assert figures == ["accuracy_resnet18.png", "accuracy_resnet50.png", "calibration.png", "confusion_resnet18.png",
                       "confusion_resnet50.png", "referral.png", "roc_referable.png", "roc_sight_threatening.png",
                       "summary.png"]
    compared = json.loads((repo / "metrics" / "compare.json").read_text())
    assert len(compared["comparisons"]) == 4 * 4  # 4 questions x 4 metrics
    assert all(c["low"] <= c["high"] and c["verdict"] for c in compared["comparisons"])
    assert set(json.loads((repo / "metrics" / "summary.json").read_text())) == {
        "r18_pre", "r18_scr", "r50_pre", "r50_scr",
    }
    assert set(compared["external"]["variants"]) == {v.rsplit("-", 1)[0] for v in VARIANTS}
    for rows in compared["external"]["variants"].values():
        assert set(rows) == {"kappa", "accuracy", "referable_auc"}
        assert all(r["low"] <= r["difference"] <= r["high"] or r["method"] for r in rows.values())
    gate = json.loads((repo / "metrics" / "quality_gate.json").read_text())
    assert gate["images"] == 12 and gate["sensitivity"]["images"] == gate["specificity"]["images"] == 6
    report = (repo / "metrics" / "report.md").read_text()
    for section in ("## External validation", "## Calibration and referral", "## Gradability gate"):
        assert section in report
    assert "## Paired differences" in report and "Does pretraining help ResNet18?" in report
    assert "## Stage times" in report
    assert "Classifier refit (last layer refitted" in report
    assert (repo / "metrics" / "forest.png").is_file() and (repo / "dvc.lock").is_file()


def test_second_repro_runs_nothing(repo: Path) -> None:
    assert stages_run(run(["dvc", "repro"], repo)) == set()


def test_adding_a_seed_runs_only_that_seeds_stages_and_the_aggregates(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["seeds"] = [42, 7]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = stages_run(run(["dvc", "repro"], repo))
    new = [v.replace("-42", "-7") for v in VARIANTS]
    assert ran == {f"{stage}@{v}" for stage in ("train", "evaluate") for v in new} | AGGREGATES
    compared = json.loads((repo / "metrics" / "compare.json").read_text())
    assert compared["variants"]["resnet18-true"]["seeds"] == [42, 7]
    assert all(c["seeds_a"] == 2 and c["seeds_b"] == 2 for c in compared["comparisons"])


def test_stage_with_a_missing_params_key_fails_naming_it(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    del params["momentum"]
    bad = repo / "bad-params.yaml"
    bad.write_text(yaml.safe_dump(params))
    done = subprocess.run(
        [sys.executable, "stages/train.py", "--arch", "resnet18", "--pretrained", "false", "--seed", "42",
         "--params", str(bad)],
        cwd=repo, capture_output=True, text=True,
    )
    assert done.returncode != 0 and "missing key 'momentum'" in done.stderr


def test_unknown_architecture_is_refused_by_the_stage(repo: Path) -> None:
    done = subprocess.run([sys.executable, "stages/pretrain.py", "--arch", "resnet34"], cwd=repo,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "resnet34" in done.stderr


def test_train_stage_gives_identical_weights_in_a_second_working_copy(repo: Path, tmp_path: Path) -> None:
    import torch

    copy = tmp_path / "copy"
    shutil.copytree(repo, copy, ignore=shutil.ignore_patterns(".git", ".dvc", "__pycache__"))
    run([sys.executable, "stages/train.py", "--arch", "resnet18", "--pretrained", "false", "--seed", "42"], copy)
    first = torch.load(repo / "models" / "resnet18-false-42.pt", weights_only=True)["state_dict"]
    second = torch.load(copy / "models" / "resnet18-false-42.pt", weights_only=True)["state_dict"]
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    # dvclive's per-epoch log carries no timestamps: the same bytes in both copies.
    logs = [sorted((root / "metrics" / "live" / "resnet18-false-42").rglob("*")) for root in (repo, copy)]
    assert [p.relative_to(repo) for p in logs[0]] == [p.relative_to(copy) for p in logs[1]] and len(logs[0]) > 8
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(*logs) if a.is_file())


def test_the_external_site_reaches_no_stage_upstream_of_evaluate(repo: Path, tmp_path: Path) -> None:
    """Shuffling the external site's labels changes what evaluate reports of the site and nothing upstream: no
    stage that trains, selects or fits reads it, and the in-domain results stay as they were."""
    work = tmp_path / "repo"
    shutil.copytree(repo, work, symlinks=True)
    before = {v: json.loads((work / "metrics" / "eval" / f"{v}.json").read_text()) for v in VARIANTS}
    labels_csv = work / "data" / "external" / "trainLabels.csv"
    labels = pd.read_csv(labels_csv)
    labels["level"] = (labels["level"] + 1) % 5  # every grade changed
    labels.to_csv(labels_csv, index=False)
    status = run(["dvc", "status", "--json"], work)
    stale = json.loads(status[status.index("{"):])
    assert not set(stale) & (UPSTREAM - {"synthesize"}), stale
    ran = stages_run(run(["dvc", "repro", "-s", *[f"evaluate@{v}" for v in VARIANTS]], work))
    assert ran == {f"evaluate@{v}" for v in VARIANTS}
    for variant, old in before.items():
        new = json.loads((work / "metrics" / "eval" / f"{variant}.json").read_text())
        for key in ("accuracy", "kappa", "macro_f1", "confusion", "referable", "calibration"):
            assert new[key] == old[key], key
        assert new["external"]["confusion"] != old["external"]["confusion"]
