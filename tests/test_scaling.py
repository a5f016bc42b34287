"""Long and wide runs: an interrupted run resumes to the same result; two torchrun processes take one run's step."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DistributedSampler, TensorDataset

from retinopathy.data import class_weights, make_loader
from retinopathy.distributed import distributed_sampler, init_distributed, shutdown_distributed, torchrun_command
from retinopathy.inference import memory_format_for, place
from retinopathy.models import build_model
from retinopathy.results import read_history
from retinopathy.settings import TrainConfig
from retinopathy.startpoints import write_start_point
from retinopathy.train_stage import train_variant
from retinopathy.training import make_criterion, make_optimizer, make_schedule, prepare_model, train_one_epoch

ROOT = Path(__file__).resolve().parents[1]
# The step schedule keeps state of its own (milestones); rotation draws from the global generator.
CONFIG = TrainConfig(lr=0.01, batch_size=8, epochs=3, seed=3, lr_schedule="step", rotation=15.0,
                     zero_init_residual=True, precision="fp32")


class Interrupted(Exception):
    """Stands in for a kill, a power cut or Ctrl-C between two epochs."""


def _train(
    processed_dir: Path, out: Path, *, config: TrainConfig = CONFIG, resume: Path | None = None, on_epoch=None
) -> dict:
    return train_variant(
        "resnet18", pretrained=False, config=config, data_dir=processed_dir, start_path=None,
        model_out=out / "model.pt", summary_out=out / "summary.json", live_dir=out / "live",
        resume_path=resume, on_epoch=on_epoch,
    )


def _stop_after_first_epoch(epoch: int, row: dict[str, float]) -> None:
    if epoch == 1:
        raise Interrupted


@pytest.fixture(scope="module")
def uninterrupted(processed_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    _train(processed_dir, out)
    return out


def test_run_killed_after_one_epoch_resumes_to_the_same_model_and_metrics(
    processed_dir: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "checkpoints" / "variant.pt"
    with pytest.raises(Interrupted):
        _train(processed_dir, tmp_path, resume=checkpoint, on_epoch=_stop_after_first_epoch)
    assert checkpoint.is_file() and not (tmp_path / "model.pt").exists()
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    # A new process starts with other random states; the snapshot must bring back the old ones.
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    epochs_run: list[int] = []
    summary = _train(processed_dir, tmp_path, resume=checkpoint, on_epoch=lambda epoch, row: epochs_run.append(epoch))
    assert epochs_run == [2, 3]
    assert not checkpoint.exists()
    # The resumed run's dvclive log holds every epoch, the restored one included, as the uninterrupted run's does.
    pd.testing.assert_frame_equal(read_history(tmp_path / "live"), read_history(uninterrupted / "live"))
    assert (tmp_path / "live" / "metrics.json").read_bytes() == (uninterrupted / "live" / "metrics.json").read_bytes()
    resumed, whole = (
        torch.load(tmp_path / "model.pt", weights_only=True), torch.load(uninterrupted / "model.pt", weights_only=True)
    )
    assert resumed["best_epoch"] == whole["best_epoch"] == summary["best_epoch"]
    for name, tensor in whole["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], tensor), name


def test_changed_params_ignore_the_old_snapshot_and_start_afresh(processed_dir: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "variant.pt"
    with pytest.raises(Interrupted):
        _train(processed_dir, tmp_path, resume=checkpoint, on_epoch=_stop_after_first_epoch)
    epochs_run: list[int] = []
    changed = dataclasses.replace(CONFIG, lr=0.02, epochs=2)
    _train(processed_dir, tmp_path, config=changed, resume=checkpoint,
           on_epoch=lambda epoch, row: epochs_run.append(epoch))
    assert epochs_run == [1, 2]
    assert not checkpoint.exists()


def _stage(workdir: Path, processed_dir: Path, nproc: int) -> Path:
    """Run the train stage with tiny params on the CPU in ``workdir``, as ``nproc`` torchrun processes.

    fp32 whatever the CPU: ``precision: auto`` would take bf16 on a CPU with native bf16.
    """
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(epochs=1, batch_size=8, device="cpu", num_workers=0, nproc=nproc, precision="fp32")
    workdir.mkdir(parents=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The pretrain stage's from-scratch start point: no weights, the training set's statistics.
    stats = json.loads((processed_dir / "stats.json").read_text())
    write_start_point(workdir / "models" / "start" / "resnet18-false", arch="resnet18", source="scratch",
                      mean=stats["mean"], std=stats["std"])
    argv = [str(ROOT / "stages" / "train.py"), "--arch", "resnet18", "--pretrained", "false", "--seed", "42",
            "--data", str(processed_dir)]
    done = subprocess.run([sys.executable, *argv], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return workdir


def test_two_torchrun_processes_on_cpu_write_one_model_and_its_metrics(processed_dir: Path, tmp_path: Path) -> None:
    double = _stage(tmp_path / "double", processed_dir, 2)
    written = sorted(p.relative_to(double).as_posix() for p in double.rglob("*") if p.is_file())
    live = "metrics/live/resnet18-false-42"
    logged = [f"{live}/plots/metrics/{split}/{metric}.tsv" for split, metric in
              [("test", "acc"), ("test", "kappa"), ("test", "loss"), ("train", "acc"), ("train", "loss"),
               ("val", "acc"), ("val", "kappa"), ("val", "loss")]]
    assert written == [f"{live}/metrics.json", *logged, "metrics/train/resnet18-false-42.json",
                       "models/resnet18-false-42.pt", "models/start/resnet18-false/start.json", "params.yaml"]
    assert not (double / "checkpoints").exists()  # the resume snapshot goes once the run is complete
    checkpoint = torch.load(double / "models" / "resnet18-false-42.pt", weights_only=True)
    # no "module." prefixes
    build_model("resnet18", num_classes=5).load_state_dict(checkpoint["state_dict"], strict=True)
    summary = json.loads((double / "metrics" / "train" / "resnet18-false-42.json").read_text())
    assert summary["processes"] == 2 and summary["device"] == "cpu" and summary["precision"] == "fp32"
    history = read_history(double / live)
    assert (
        history["epoch"].tolist() == [1] and {"train_loss", "val_loss", "val_acc", "val_kappa"} <= set(history.columns)
    )
    assert np.isfinite(history[["train_loss", "val_loss"]].to_numpy()).all() and history["val_acc"].between(0, 1).all()


# One optimisation step, the same in the two torchrun workers (run as this file's __main__) and in the test:
# eight fixed images, a global batch of 8 (4 per process), one SGD step of a freshly seeded ResNet18.
STEP_SEED, STEP_BATCH, STEP_PROCESSES = 5, 8, 2
STEP_LABELS = [0, 1, 2, 3, 4, 0, 0, 2]


def _step_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(STEP_SEED)
    return TensorDataset(torch.randn(len(STEP_LABELS), 3, 32, 32, generator=generator), torch.tensor(STEP_LABELS))


def _step_setup() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, nn.Module]:
    """Model, optimizer, schedule and (class-weighted) loss, identical wherever they are built."""
    torch.manual_seed(STEP_SEED)
    model = build_model("resnet18", num_classes=5)
    optimizer = make_optimizer("sgd", model, lr=0.1, momentum=0.9, weight_decay=5e-4)
    criterion = make_criterion("classification", torch.tensor(class_weights(STEP_LABELS, "sqrt_inverse"),
                                                              dtype=torch.float32))
    return model, optimizer, make_schedule("constant", optimizer, total_steps=1), criterion


def _shard(rank: int) -> list[int]:
    """The images of process ``rank`` in epoch 1: what the train stage's DistributedSampler draws."""
    sampler = DistributedSampler(_step_data(), num_replicas=STEP_PROCESSES, rank=rank, shuffle=True, seed=STEP_SEED)
    sampler.set_epoch(1)
    return list(sampler)


def _ddp_step_worker(out: Path) -> None:
    """One torchrun worker: the training loop's own DDP step on this process's half-batch; writes gradients and
    weights."""
    world, device = init_distributed(torch.device("cpu"))
    try:
        model, optimizer, schedule, criterion = _step_setup()
        model, net = prepare_model(model, device, world=world)
        data = _step_data()
        loader = make_loader(data, batch_size=STEP_BATCH // world.world_size, train=True, num_workers=0, generator=None,
                             device=device, sampler=distributed_sampler(data, world, seed=STEP_SEED))
        loader.sampler.set_epoch(1)
        assert list(loader.sampler) == _shard(world.rank) and len(loader) == 1
        stats = train_one_epoch(net, loader, optimizer, schedule, criterion, device, world=world, precision="fp32")
        grads = {name: param.grad.detach().clone() for name, param in model.named_parameters()}
        torch.save({"loss": stats.loss, "grads": grads, "state": model.state_dict()}, out / f"rank{world.rank}.pt")
    finally:
        shutdown_distributed()


def _reference_step(shards: list[list[int]]) -> tuple[float, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One step in this process whose gradient is the mean of one backward pass per shard, BatchNorm in training
    mode."""
    model, optimizer, schedule, criterion = _step_setup()
    # In the training loop's memory layout (memory_format_for), so both run the same convolution kernels: another
    # layout sums in another order, which BatchNorm over 2-image halves amplifies past the tolerance.
    cpu = torch.device("cpu")
    place(model, cpu)
    images, labels = _step_data().tensors
    images = images.contiguous(memory_format=memory_format_for(cpu))
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = 0.0
    for shard in shards:
        part = criterion(model(images[shard]), labels[shard]) / len(shards)
        part.backward()  # gradients add up over the shards: their mean, as DDP averages over processes
        loss += part.item()
    grads = {name: param.grad.detach().clone() for name, param in model.named_parameters()}
    optimizer.step()
    schedule.step()
    return loss, grads, model.state_dict()


def _worst_relative_error(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    """The largest difference of any tensor, relative to that tensor's largest magnitude."""
    return max(float((ours[k] - theirs[k]).abs().max() / theirs[k].abs().max().clamp_min(1e-30)) for k in theirs)


# fp32 rounds to 2^-24 (6e-8) relative. A gradient here is a sum over up to 4 images x 32 x 32 pixels
# x 64 channels; the workers (one thread each, OMP_NUM_THREADS=1) and this process may sum in another order
# (other blocking in the convolution kernels), which moves it by a few rounding steps of its largest
# terms: 1e-5 of the tensor's largest value is some 100 times that, and far below the difference
# BatchNorm makes between half-batch and full-batch statistics (checked below).
FP32_TOLERANCE = 1e-5


def test_one_ddp_step_of_two_cpu_processes_equals_the_mean_of_their_half_batch_gradients(tmp_path: Path) -> None:
    """Two gloo processes, each on its half of the batch, take the same step as one process averaging the
    two halves' gradients.

    Not the same step as one process on the full batch: BatchNorm normalises each process's half-batch by
    that half's own mean and variance (``sync_bn`` is off on CPU), so DDP's all-reduced gradient is the mean
    of the two half-batch gradients, each with its half's statistics. The reference computes exactly that,
    one backward pass per half in training mode, and the full-batch step is shown to differ by far more
    than the tolerance, so the comparison could tell the two apart. Precision is fp32 in both, whatever
    the CPU: under ``precision: auto`` a CPU with native bf16 would run bf16, whose 8-bit mantissa no
    exact comparison survives.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(torchrun_command(STEP_PROCESSES, Path(__file__), [str(tmp_path)]), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(STEP_PROCESSES)]
    parameters = [name for name, _ in build_model("resnet18", num_classes=5).named_parameters()]
    # DDP keeps the processes' weights identical (not BatchNorm's running statistics: each process updates
    # them from its own half, and rank 0's are broadcast at the next forward pass).
    for name in parameters:
        assert torch.equal(ranks[1]["state"][name], ranks[0]["state"][name]), name
    shards = [_shard(rank) for rank in range(STEP_PROCESSES)]
    assert sorted(shards[0] + shards[1]) == list(range(len(STEP_LABELS)))  # the two halves make the whole batch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers
    try:
        loss, grads, state = _reference_step(shards)
        _, full_batch_grads, _ = _reference_step([shards[0] + shards[1]])
    finally:
        torch.set_num_threads(threads)
    assert ranks[0]["loss"] == pytest.approx(loss, rel=FP32_TOLERANCE)
    assert _worst_relative_error(ranks[0]["grads"], grads) < FP32_TOLERANCE
    assert _worst_relative_error(
        {k: ranks[0]["state"][k] for k in parameters}, {k: state[k] for k in parameters}
    ) < FP32_TOLERANCE
    assert _worst_relative_error(full_batch_grads, grads) > 100 * FP32_TOLERANCE


if __name__ == "__main__":
    _ddp_step_worker(Path(sys.argv[1]))
