"""Both pretraining sources: ImageNet weights through torchvision's cache, and rotation self-supervision."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
from torchvision.models import ResNet18_Weights

from retinopathy.data import build_transform, make_loader, patient_of, processed_dataset
from retinopathy.models import load_backbone, resnet18
from retinopathy.pretraining import PretextTraining, imagenet_state_dict, rotation_pretrain


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME, with downloads made to fail as they do on a machine without network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(url: str, *args, **kwargs) -> None:
        raise OSError(f"network unreachable: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path


def test_imagenet_weights_load_from_the_torch_home_cache(torch_home: Path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    cached = torch_home / "hub" / "checkpoints" / os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url)
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)

    state = imagenet_state_dict("resnet18")
    assert not any(k.startswith("fc.") for k in state)
    ours = resnet18(num_classes=5)
    load_backbone(ours, state)
    torch.testing.assert_close(ours.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(ours.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)


def test_missing_imagenet_weights_name_the_file_and_where_to_put_it(torch_home: Path) -> None:
    expected = torch_home / "hub" / "checkpoints" / os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url)
    with pytest.raises(FileNotFoundError) as caught:
        imagenet_state_dict("resnet18")
    assert str(expected) in str(caught.value) and ResNet18_Weights.IMAGENET1K_V1.url in str(caught.value)


def test_backbone_of_another_architecture_is_rejected() -> None:
    from retinopathy.models import resnet50
    from retinopathy.pretraining import backbone_state

    with pytest.raises(ValueError, match="does not fit"):
        load_backbone(resnet18(num_classes=5), backbone_state(resnet50(num_classes=4)), source="r50.pt")


def test_rotation_pretraining_learns_above_chance(processed_dir: Path) -> None:
    torch.manual_seed(0)
    ds = processed_dataset(processed_dir, "train",
                           build_transform(mean=[0.4, 0.2, 0.1], std=[0.3, 0.15, 0.08], train=False))
    loader = make_loader(ds, batch_size=16, train=True, num_workers=0, generator=torch.Generator().manual_seed(0),
                         device=torch.device("cpu"))
    training = PretextTraining(epochs=6, lr=0.01, weight_decay=0.0, momentum=0.9, optimizer="sgd")
    model, history = rotation_pretrain("resnet18", loader, training, device=torch.device("cpu"))
    assert model.fc.out_features == 4 and len(history) == 6
    assert history[-1]["pretext_loss"] < history[0]["pretext_loss"]


def test_contrastive_loss_is_lower_when_views_agree_than_when_they_do_not() -> None:
    from retinopathy.pretraining import nt_xent

    torch.manual_seed(0)
    a = torch.randn(8, 16)
    matched = nt_xent(torch.cat([a, a + 0.01 * torch.randn_like(a)]), temperature=0.2)
    unmatched = nt_xent(torch.cat([a, torch.randn_like(a)]), temperature=0.2)
    assert matched < unmatched


def test_simclr_pretraining_yields_a_backbone_that_loads_into_the_classifier(processed_dir: Path) -> None:
    from retinopathy.pretraining import TwoViews, backbone_state, contrastive_transform, simclr_pretrain

    torch.manual_seed(0)
    ds = processed_dataset(processed_dir, "train", TwoViews(contrastive_transform(32, mean=[0.4] * 3, std=[0.2] * 3)))
    assert ds[0][0].shape == (2, 3, 32, 32)
    loader = make_loader(ds, batch_size=8, train=True, num_workers=0, generator=torch.Generator().manual_seed(0),
                         device=torch.device("cpu"))
    training = PretextTraining(epochs=1, lr=0.05, weight_decay=0.0, momentum=0.9, optimizer="sgd")
    model, history = simclr_pretrain("resnet18", loader, training, device=torch.device("cpu"))
    assert len(history) == 1 and history[0]["pretext_loss"] > 0
    classifier = resnet18(num_classes=5)
    load_backbone(classifier, backbone_state(model))
    torch.testing.assert_close(classifier.layer1[0].conv1.weight, model.layer1[0].conv1.weight)


def test_pretraining_refuses_a_pool_holding_an_eye_of_a_validation_patient(processed_dir: Path, tmp_path: Path) -> None:
    from retinopathy.pretraining import check_pool, pretrain_backbone

    check_pool(processed_dir)  # the preprocess stage's pool holds no validation or test patient
    data = tmp_path / "processed"
    shutil.copytree(processed_dir, data)
    val_image = pd.read_csv(data / "val.csv", dtype={"image": str})["image"].iloc[0]
    pool = pd.read_csv(data / "unlabeled.csv", dtype={"image": str})
    pd.concat([pool, pd.DataFrame({"image": [val_image]})]).to_csv(data / "unlabeled.csv", index=False)
    shutil.copy(data / "val" / f"{val_image}.png", data / "unlabeled" / f"{val_image}.png")
    with pytest.raises(ValueError, match=rf"(?s)unlabeled\.csv: 1 pool image.*'{val_image}' "
                                         rf"\(patient '{patient_of(val_image)}' is in val\)"):
        pretrain_backbone("resnet18", source="selfsup", method="rotation", data_dir=data, out=tmp_path / "start",
                          epochs=1, lr=0.01, batch_size=8, optimizer="sgd", weight_decay=0.0, momentum=0.9, seed=0,
                          device="cpu", precision="fp32")
    assert not (tmp_path / "start").exists()
