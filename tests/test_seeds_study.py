"""The seeds study (studies/seeds/): exact code deps, the main pipeline's variants and params, and a summary that
answers the study's questions from the stages' files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from retinopathy.metrics import quadratic_weighted_kappa, referable
from retinopathy.utils import write_csv, write_json
from test_label_efficiency_study import _stages, study_code_mismatches

ROOT = Path(__file__).resolve().parents[1]
STUDY = Path("studies/seeds")


def test_every_seeds_study_stage_declares_exactly_the_code_it_imports() -> None:
    problems = study_code_mismatches(ROOT, STUDY)
    assert not problems, "studies/seeds/dvc.yaml deps out of date:\n" + "\n".join(problems)


def test_the_study_trains_and_evaluates_the_main_pipelines_variants_with_the_same_params() -> None:
    main = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    study = yaml.safe_load((ROOT / STUDY / "dvc.yaml").read_text())["stages"]
    for name in ("train", "evaluate"):
        # The study's evaluations score no external site (--no-external), so they do not read that section.
        assert study[name]["params"] == [key for key in main[name]["params"] if key != "external"], name
        assert study[name]["matrix"]["arch"] == main[name]["matrix"]["arch"]
        assert study[name]["matrix"]["pretrained"] == main[name]["matrix"]["pretrained"]
    seeds = yaml.safe_load((ROOT / STUDY / "params.yaml").read_text())["seeds"]
    assert len(seeds) >= 5 and len(set(seeds)) == len(seeds)
    addresses = {stage.addressing for stage in _stages(ROOT, STUDY / "dvc.yaml")}
    assert "studies/seeds/dvc.yaml:train@resnet50-false-" + str(seeds[-1]) in addresses
    assert len(addresses) == 2 * 4 * len(seeds) + 1


def _fake_study_outputs(study: Path, seeds: list[int], *, n_patients: int = 30) -> None:
    """Each variant's evaluation and test predictions per seed: pretrained ResNet18 grades every eye right, the
    others about half of them, so only the questions involving pretrained ResNet18 have a clear answer."""
    rng = np.random.default_rng(1)
    actual = rng.choice(5, size=2 * n_patients, p=[0.6, 0.1, 0.2, 0.05, 0.05])
    frame = pd.DataFrame({"image": [f"{i // 2}_{'left' if i % 2 == 0 else 'right'}" for i in range(len(actual))],
                          "patient": np.repeat(np.arange(n_patients), 2).astype(str), "actual": actual})
    for arch in ("resnet18", "resnet50"):
        for pretrained in ("true", "false"):
            for seed in seeds:
                right = 1.0 if (arch, pretrained) == ("resnet18", "true") else 0.5
                predicted = np.where(rng.random(len(actual)) < right, actual, 0)
                key = f"{arch}-{pretrained}-{seed}"
                write_csv(study / "metrics" / "predictions" / f"{key}.csv",
                          frame.assign(predicted=predicted, p_referable=referable(predicted) * 0.9 + 0.05))
                write_json(study / "metrics" / "eval" / f"{key}.json", {
                    "accuracy": float(np.mean(predicted == actual)),
                    "kappa": quadratic_weighted_kappa(actual, predicted), "macro_f1": 0.5,
                    "referable": {"auc": {"value": 0.9}}, "hardware": "test CPU", "precision": "fp32"})


def test_summary_answers_each_question_over_the_seeds(tmp_path: Path) -> None:
    seeds = [1, 2, 3]
    study = tmp_path / "study"
    _fake_study_outputs(study, seeds)
    (tmp_path / "seeds.yaml").write_text(yaml.safe_dump({"seeds": seeds}))
    project = {"compare": {"bootstrap_resamples": 50, "confidence": 0.95, "bootstrap_seed": 0}, "plot": {"dpi": 40}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(project))
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, str(ROOT / STUDY / "summarize.py"), "--params", str(tmp_path / "seeds.yaml"),
                    "--project-params", str(tmp_path / "params.yaml"), "--study", str(study), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / "forest.png").stat().st_size > 0
    summary = yaml.safe_load((out / "summary.json").read_text())
    assert set(summary) == {"r18_pre", "r18_scr", "r50_pre", "r50_scr"} and summary["r18_pre"]["acc"] == 1.0
    text = (out / "seeds.md").read_text()
    assert "Training seeds: 1, 2, 3 (3 per variant)" in text and "Machine: test CPU, precision fp32" in text
    assert "| question | metric | difference (95% interval) | df | verdict |" in text
    answers = text.split("## Answers")[1]
    assert "**Does pretraining help ResNet18?** a difference is detected" in answers
    assert "**ResNet50 or ResNet18, from scratch?** a difference is detected" not in answers
    one_seed = text.split("## One seed at a time")[1]
    assert all(f"\n| {seed} | " in one_seed for seed in seeds)
    assert one_seed.count("ResNet18, pretrained better") >= 2 * len(seeds)  # both questions with pretrained ResNet18
