"""The training loop: class weights, schedules, selection on validation, determinism on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from retinopathy.data import class_weights, label_balance
from retinopathy.evaluation import evaluate_variant
from retinopathy.models import resnet18
from retinopathy.results import read_history
from retinopathy.settings import EvalSettings, TrainConfig
from retinopathy.train_stage import EpochLog, train_variant
from retinopathy.training import make_optimizer, make_schedule

# fp32 whatever the CPU (auto would take bf16 where it is native); no rotation, so the tiny runs stay cheap.
TINY = TrainConfig(lr=0.01, batch_size=8, epochs=2, seed=3, rotation=0.0, precision="fp32")
EVAL = EvalSettings(batch_size=8, bootstrap_resamples=50)


def test_inverse_class_weights_favour_rare_grades_and_average_one() -> None:
    labels = [0] * 70 + [1] * 10 + [2] * 15 + [3] * 3 + [4] * 2
    w = class_weights(labels, "inverse")
    counts = np.bincount(labels, minlength=5)
    assert w[4] > w[3] > w[1] > w[2] > w[0]
    assert float((w * counts).sum() / counts.sum()) == pytest.approx(1.0)
    sqrt = class_weights(labels, "sqrt_inverse")
    assert float(sqrt[4] / sqrt[0]) == pytest.approx(float(np.sqrt(float(w[4] / w[0]))), rel=1e-5)
    assert class_weights(labels, "none") is None


def test_label_balance_reports_the_weights_each_training_scheme_uses() -> None:
    labels = [0] * 70 + [1] * 10 + [2] * 15 + [3] * 3 + [4] * 2
    reported = label_balance(labels)["class_weights"]
    assert set(reported) == {"inverse", "sqrt_inverse"}
    for scheme, weights in reported.items():
        assert weights == pytest.approx(class_weights(labels, scheme).tolist(), abs=1e-4)


def test_weight_decay_skips_batchnorm_and_biases_of_a_module() -> None:
    model = resnet18(num_classes=5)
    opt = make_optimizer("adamw", model, lr=1e-3, momentum=0.9, weight_decay=0.05)
    decayed, free = opt.param_groups
    assert decayed["weight_decay"] == 0.05 and free["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in free["params"])
    ids = {id(p) for p in free["params"]}
    assert id(model.bn1.weight) in ids and id(model.fc.bias) in ids and id(model.fc.weight) not in ids
    assert len(decayed["params"]) + len(free["params"]) == len(list(model.parameters()))


def test_unknown_class_weighting_is_refused() -> None:
    with pytest.raises(ValueError, match="'balanced'"):
        class_weights([0, 1], "balanced")


def test_cosine_schedule_decays_to_zero_and_step_schedule_drops_tenfold() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = make_optimizer("sgd", [param], lr=1.0, momentum=0.9, weight_decay=0.0)
    cosine = make_schedule("cosine", opt, total_steps=10)
    rates = []
    for _ in range(10):
        opt.step()
        cosine.step()
        rates.append(opt.param_groups[0]["lr"])
    assert rates[0] < 1.0 and rates[-1] == pytest.approx(0.0, abs=1e-12)
    opt = make_optimizer("adam", [param], lr=1.0, momentum=0.9, weight_decay=0.0)
    step = make_schedule("step", opt, total_steps=8)
    for _ in range(6):
        opt.step()
        step.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)


def _train(processed_dir: Path, out: Path, pretrained: bool = False) -> tuple[dict, pd.DataFrame]:
    summary = train_variant(
        "resnet18", pretrained=pretrained, config=TINY, data_dir=processed_dir,
        start_path=out / "none" if pretrained else None,
        model_out=out / "model.pt", summary_out=out / "summary.json", live_dir=out / "live",
    )
    return summary, read_history(out / "live")


def test_logging_through_dvclive_changes_no_weight_and_logs_every_epoch(processed_dir: Path, tmp_path: Path) -> None:
    _, logged = _train(processed_dir, tmp_path / "logged")
    rows: list[dict] = []
    train_variant("resnet18", pretrained=False, config=TINY, data_dir=processed_dir,
                  model_out=tmp_path / "plain" / "model.pt", summary_out=tmp_path / "plain" / "summary.json",
                  on_epoch=lambda epoch, row: rows.append(row))
    a, b = (torch.load(tmp_path / run / "model.pt", weights_only=True)["state_dict"] for run in ("logged", "plain"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(logged, pd.DataFrame(rows).round(5), check_dtype=False)
    assert list(logged["epoch"]) == [1, 2] and not (tmp_path / "plain" / "live").exists()


def test_the_epoch_log_refuses_a_git_repository_without_dvc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".git").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="git repository without DVC"):
        EpochLog(tmp_path / "live")
    assert not (tmp_path / ".dvc").exists() and not (tmp_path / "live").exists()


def test_two_runs_with_the_same_params_give_the_same_metrics(processed_dir: Path, tmp_path: Path) -> None:
    first, h1 = _train(processed_dir, tmp_path / "a")
    second, h2 = _train(processed_dir, tmp_path / "b")
    pd.testing.assert_frame_equal(h1, h2)
    assert first["best_epoch"] == second["best_epoch"]
    m1 = evaluate_variant(model_path=tmp_path / "a" / "model.pt", data_dir=processed_dir,
                          metrics_out=tmp_path / "a.json", predictions_out=tmp_path / "a.csv", settings=EVAL)
    m2 = evaluate_variant(model_path=tmp_path / "b" / "model.pt", data_dir=processed_dir,
                          metrics_out=tmp_path / "b.json", predictions_out=tmp_path / "b.csv", settings=EVAL)
    # Everything but the wall time each evaluation records for itself.
    assert m1.pop("seconds") > 0 and m2.pop("seconds") > 0
    assert m1 == m2
    predictions = pd.read_csv(tmp_path / "a.csv")
    assert list(predictions.columns) == [
        "image", "patient", "actual", "predicted", "p0", "p1", "p2", "p3", "p4", "p_referable",
    ]
    assert np.allclose(predictions[[f"p{g}" for g in range(5)]].sum(axis=1), 1.0, atol=1e-3)


def test_history_has_train_val_test_per_epoch_and_best_epoch_is_chosen_on_validation(
    processed_dir: Path, tmp_path: Path
) -> None:
    summary, history = _train(processed_dir, tmp_path)
    assert history["epoch"].tolist() == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "val_kappa", "test_loss", "test_acc"} <= set(
        history.columns
    )
    best = history.loc[history["val_kappa"].idxmax()]
    assert summary["best_epoch"] == int(best["epoch"])
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["best_epoch"] == summary["best_epoch"]
    assert saved["class_weighting"] == TINY.class_weighting and len(saved["class_weights"]) == 5
    assert saved["precision"] == "fp32" and saved["hardware"]


def test_pretrained_variant_without_its_checkpoint_names_the_missing_file(processed_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="none"):
        _train(processed_dir, tmp_path, pretrained=True)
    assert not (tmp_path / "model.pt").exists()
