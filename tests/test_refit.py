"""Classifier re-training (retinopathy.refit): the last layer refitted on frozen features, nothing else touched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from retinopathy.evaluation import evaluate_variant
from retinopathy.models import build_model
from retinopathy.refit import fit_classifier, pooled_features, refit_classifier
from retinopathy.settings import EvalSettings, TrainConfig
from retinopathy.train_stage import train_variant


def _blobs(counts: list[int], seed: int = 0, dim: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters, one per grade, ``counts[k]`` points of grade k."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, (len(counts), dim))
    x = np.concatenate([centres[k] + rng.normal(0.0, 1.0, (n, dim)) for k, n in enumerate(counts)])
    y = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    return x, y


def test_fit_classifier_learns_a_rare_grade_and_weights_move_decisions_towards_it() -> None:
    x, y = _blobs([300, 30, 60, 10, 6])
    coef, bias, info = fit_classifier(x, y, num_classes=5, class_weights=None, c=1.0)
    assert coef.shape == (5, 6) and bias.shape == (5,)
    assert info["converged"] and info["images"] == len(y)
    predicted = (x @ coef.T + bias).argmax(1)
    assert (predicted[y == 4] == 4).mean() > 0.5  # separable clusters: the 6 grade-4 points are mostly found
    # Up-weighting grade 4 can only widen its region: at least as many points go to it.
    weights = np.array([1.0, 1.0, 1.0, 1.0, 20.0])
    coef_w, bias_w, _ = fit_classifier(x, y, num_classes=5, class_weights=weights, c=1.0)
    x_test, _ = _blobs([300, 30, 60, 10, 6], seed=1)
    assert ((x_test @ coef_w.T + bias_w).argmax(1) == 4).sum() >= ((x_test @ coef.T + bias).argmax(1) == 4).sum()


@pytest.mark.parametrize("c", [0.0, -1.0, float("nan")])
def test_fit_classifier_refuses_a_non_positive_c(c: float) -> None:
    x, y = _blobs([5, 5, 5, 5, 5])
    with pytest.raises(ValueError, match="refit_c"):
        fit_classifier(x, y, num_classes=5, class_weights=None, c=c)


def test_fit_classifier_names_bad_labels_and_length_mismatch() -> None:
    x, y = _blobs([5, 5, 5, 5, 5])
    with pytest.raises(ValueError, match="0..4"):
        fit_classifier(x, np.where(y == 4, 7, y), num_classes=5, class_weights=None, c=1.0)
    with pytest.raises(ValueError, match="labels"):
        fit_classifier(x, y[:-1], num_classes=5, class_weights=None, c=1.0)


def _loader(labels: list[int], seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(len(labels), 3, 32, 32, generator=generator)
    return DataLoader(TensorDataset(images, torch.tensor(labels)), batch_size=8, shuffle=False)


def test_refit_replaces_only_the_last_layer_with_the_fitted_regression() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = _loader([0] * 12 + [1] * 6 + [2] * 6 + [3] * 4 + [4] * 4)
    record = refit_classifier(model, loader, torch.device("cpu"), class_weights=None, c=1.0)
    assert record["applied"] and record["images"] == 32 and record["c"] == 1.0
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}
    # The new layer is exactly scikit-learn's fit on the same features.
    feats, labels = pooled_features(model, loader, torch.device("cpu"))
    coef, bias, _ = fit_classifier(feats, labels, num_classes=5, class_weights=None, c=1.0)
    assert np.allclose(model.fc.weight.detach().numpy(), coef, atol=1e-6)
    assert np.allclose(model.fc.bias.detach().numpy(), bias, atol=1e-6)
    with torch.no_grad():
        logits = torch.cat([model(images) for images, _ in loader]).numpy()
    assert np.allclose(logits, feats @ coef.T + bias, atol=1e-4)


def test_refit_keeps_the_layer_when_a_grade_has_no_training_image() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=5)
    fc = model.fc.weight.detach().clone()
    record = refit_classifier(model, _loader([0] * 10 + [1] * 4 + [2] * 4 + [3] * 2), torch.device("cpu"),
                              class_weights=None, c=1.0)
    assert not record["applied"] and "[4]" in record["reason"]
    assert torch.equal(model.fc.weight, fc)


def test_train_variant_refits_after_the_chosen_epoch_and_records_it(processed_dir: Path, tmp_path: Path) -> None:
    outs = {}
    for refit in (False, True):
        config = TrainConfig(lr=0.01, batch_size=8, epochs=1, seed=3, rotation=0.0, precision="fp32",
                             refit_classifier=refit)
        out = tmp_path / str(refit)
        summary = train_variant(
            "resnet18", pretrained=False, config=config, data_dir=processed_dir, model_out=out / "model.pt",
            summary_out=out / "summary.json",
        )
        assert json.loads((out / "summary.json").read_text())["refit"] == summary["refit"]
        outs[refit] = (summary, torch.load(out / "model.pt", weights_only=False))
    assert outs[False][0]["refit"] == {"applied": False, "reason": "refit_classifier is false"}
    grades = set(np.loadtxt(processed_dir / "train.csv", delimiter=",", skiprows=1, usecols=1, dtype=str).tolist())
    record = outs[True][0]["refit"]
    assert outs[True][1]["refit"] == record
    evaluated = evaluate_variant(model_path=tmp_path / "True" / "model.pt", data_dir=processed_dir,
                                 metrics_out=tmp_path / "e.json", predictions_out=tmp_path / "e.csv",
                                 settings=EvalSettings(batch_size=8, bootstrap_resamples=20))
    assert evaluated["grading"]["refit"] == record  # the evaluation says how the model it scored was made
    backbone = [k for k in outs[False][1]["state_dict"] if not k.startswith("fc.")]
    for key in backbone:  # the refit never touches the trained backbone
        assert torch.equal(outs[False][1]["state_dict"][key], outs[True][1]["state_dict"][key]), key
    if len(grades) == 5:
        assert record["applied"] and set(record) >= {"val_kappa_before", "val_kappa_after", "iterations"}
        assert not torch.equal(outs[False][1]["state_dict"]["fc.weight"], outs[True][1]["state_dict"]["fc.weight"])
    else:  # the tiny set may lack a grade: then the layer is kept and the record says which grade
        assert not record["applied"] and "no training image" in record["reason"]
        assert torch.equal(outs[False][1]["state_dict"]["fc.weight"], outs[True][1]["state_dict"]["fc.weight"])


@pytest.mark.parametrize("c", [0.0, -1.0])
def test_a_non_positive_refit_c_is_refused_naming_the_key(c: float) -> None:
    with pytest.raises(ValueError, match="'refit_c' must be positive"):
        TrainConfig(epochs=1, refit_c=c)
