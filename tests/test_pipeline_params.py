"""The real dvc.yaml on tiny params: a params change reruns only the stages that read it. These start from
the same reproduced repository as tests/test_pipeline.py, in a copy of their own, so the two modules run
side by side under `make test`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dvc_repo import AGGREGATES, VARIANTS, reproduced_repo, run, stages_run


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the reproduced tiny repository, for this module's params changes."""
    return reproduced_repo(tmp_path_factory, "params")


def test_changing_lr_reruns_only_train_evaluate_and_the_aggregates(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["lr"] = 0.0005
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = stages_run(run(["dvc", "repro"], repo))
    assert ran == {f"{stage}@{v}" for stage in ("train", "evaluate") for v in VARIANTS} | AGGREGATES


def test_changing_pretraining_leaves_the_scratch_variants_alone(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pretrain"]["lr"] = 0.02
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = stages_run(run(["dvc", "repro"], repo))
    assert "synthesize" not in ran and "preprocess" not in ran
    assert {"pretrain@resnet18", "pretrain@resnet50", "train@resnet18-true-42", "train@resnet50-true-42"} <= ran
    assert not ran & {"train@resnet18-false-42", "train@resnet50-false-42", "evaluate@resnet18-false-42"}
