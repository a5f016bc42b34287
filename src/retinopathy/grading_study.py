"""The grading study (``studies/grading/``): the classifier refit and the two-eye blend against neither, over seeds.

Each training seed of the study gives one network, trained as the project's train stage trains it but
without the classifier refit (stage ``train@<seed>``, :func:`train_network`). Stage ``grade@<seed>``
(:func:`retinopathy.ablation.grade_network`) grades it as trained and refitted at each C of the study's
``refit`` list, every way, and with the two-eye blend at each C of its ``blend_c`` list; stage ``summarize``
(:mod:`retinopathy.grading_summary`) takes the tables, the paired differences and the choices over the seeds.

This module holds what the study trains and compares (its axes, where its stages write, how arms are named)
and the training. It imports no evaluation code, so a change there reruns the grading, not the trainings.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from retinopathy.params import ParamsError, check_known, get, load_settings
from retinopathy.precision import cpu_info
from retinopathy.settings import TrainConfig
from retinopathy.train_stage import train_variant

NONE = "none"  # the baseline of both knobs: no refit, no blend
STUDY_PARAMS = "studies/grading/params.yaml"
STUDY_KEYS = ["arch", "pretrained", "seeds", "refit", "blend_c", "summary"]
SPLITS = ("val", "test")


# ---------------------------------------------------------------------------------------------------------------
# What the study trains and compares, and where its stages write.


@dataclass(frozen=True)
class StudyAxes:
    """The study's own params.yaml, less its summary section."""

    arch: str = "resnet18"
    pretrained: bool = True
    seeds: tuple[int, ...] = (42,)
    refits: tuple[float | None, ...] = (None, 1.0)  # refit_c values; None: the network as trained
    blend_cs: tuple[float, ...] = (0.03,)  # the blend's inverse L2 strengths; no blend is always an arm

    @property
    def variant(self) -> str:
        """``resnet18-true``: the architecture and pretraining, as the main pipeline names its start points."""
        return f"{self.arch}-{'true' if self.pretrained else 'false'}"

    def network(self, seed: int) -> str:
        """``resnet18-true-42``: how the network of ``seed`` and its files are named."""
        return f"{self.variant}-{seed}"

    @property
    def refit_labels(self) -> list[str]:
        return [setting_label(c) for c in self.refits]

    @property
    def blend_labels(self) -> list[str]:
        return [NONE, *(setting_label(c) for c in self.blend_cs)]

    @property
    def arms(self) -> list[str]:
        """Every argmax arm a grade stage writes predictions for: each refit with no blend and each blend C."""
        return [arm_name(refit, blend) for refit in self.refit_labels for blend in self.blend_labels]


def setting_label(c: float | None) -> str:
    """``"none"`` for no refit or blend, else C as it reads (``0.03``, ``1``)."""
    return NONE if c is None else f"{c:g}"


def arm_name(refit: str, blend: str) -> str:
    """``refit-1_blend-none``: one argmax arm, and the name of its predictions file."""
    return f"refit-{refit}_blend-{blend}"


def _positive_values(values: list, key: str, *, allow_none: bool) -> tuple[float | None, ...]:
    """The list under ``key`` as floats (``"none"`` as None where allowed), each positive and none twice."""
    out: list[float | None] = []
    for value in values:
        if allow_none and value == NONE:
            out.append(None)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            out.append(float(value))
        else:
            allowed = "'none' or a positive number" if allow_none else "a positive number"
            raise ParamsError(f"{STUDY_PARAMS}: every value of '{key}' must be {allowed}, got {value!r}")
    if len(set(out)) != len(out):
        raise ParamsError(f"{STUDY_PARAMS}: '{key}' lists a value twice: {values}")
    return tuple(out)


def read_arms(study: dict[str, Any]) -> tuple[tuple[float | None, ...], tuple[float, ...]]:
    """The refits and blend strengths of the study's params.yaml (``refit``, ``blend_c``), checked."""
    refits = _positive_values(get(study, "refit", list), "refit", allow_none=True)
    if None not in refits:
        raise ParamsError(f"{STUDY_PARAMS}: 'refit' must include 'none', the baseline every refit is compared with")
    return refits, _positive_values(get(study, "blend_c", list), "blend_c", allow_none=False)


def read_axes(study: dict[str, Any]) -> StudyAxes:
    """The study's axes from its params.yaml, every key checked (ParamsError naming the key)."""
    check_known(study, None, STUDY_KEYS)
    seeds = get(study, "seeds", list)
    if (not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise ParamsError(f"{STUDY_PARAMS}: 'seeds' must be distinct integers, at least one, got {seeds!r}")
    refits, blend_cs = read_arms(study)
    return StudyAxes(arch=get(study, "arch", str), pretrained=get(study, "pretrained", bool), seeds=tuple(seeds),
                     refits=refits, blend_cs=blend_cs)


@dataclass(frozen=True)
class StudyLayout:
    """Where the study's stages write, under ``root``; ``name`` is :meth:`StudyAxes.network`."""

    root: Path = Path("studies/grading")

    def model(self, name: str) -> Path:
        return self.root / "models" / f"{name}.pt"

    def checkpoint(self, name: str) -> Path:
        return self.root / "checkpoints" / f"{name}.pt"

    def live(self, name: str) -> Path:
        """The training run's per-epoch dvclive folder."""
        return self.root / "metrics" / "live" / name

    def train_summary(self, name: str) -> Path:
        return self.root / "metrics" / "train" / f"{name}.json"

    def grading(self, name: str) -> Path:
        return self.root / "metrics" / "grade" / f"{name}.json"

    def predictions(self, name: str) -> Path:
        """A folder holding one ``<arm>.csv`` per argmax arm (:func:`arm_name`)."""
        return self.root / "metrics" / "predictions" / name

    @property
    def results(self) -> Path:
        return self.root / "results"


def machine() -> dict[str, Any]:
    """The CPU model and torch threads: the study's figures depend on both."""
    return {"cpu": cpu_info()[0] or platform.processor(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__}


# ---------------------------------------------------------------------------------------------------------------
# Stage train@<seed>: the project's training, without the refit.


# The top-level keys the study's train stage reads (its dvc.yaml entry declares them): all but the split seed and the
# grading choices the study fixes. The refit and every argmax arm need a classification head, and the study tunes
# its own cut-points (:func:`retinopathy.ablation.components`).
TRAIN_KEYS = tuple(item.name for item in fields(TrainConfig)
                   if item.name not in ("seed", "head", "decode", "refit_classifier", "refit_c"))


def train_config(params: dict[str, Any], seed: int) -> TrainConfig:
    """The train stage's settings from the project's params.yaml, for a classification head graded by argmax."""
    return load_settings(TrainConfig, params, keys=TRAIN_KEYS, seed=seed, head="classification", decode="argmax",
                         refit_classifier=False)


def train_network(
    params: dict[str, Any], axes: StudyAxes, seed: int, *, data_dir: str | os.PathLike[str],
    start_dir: str | os.PathLike[str], layout: StudyLayout = StudyLayout(),
) -> dict[str, Any]:
    """Train the study's network of ``seed`` from the start point ``<start_dir>/<arch>-<pretrained>``; its summary."""
    name = axes.network(seed)
    return train_variant(
        axes.arch, pretrained=axes.pretrained, config=train_config(params, seed), data_dir=data_dir,
        start_path=Path(start_dir) / axes.variant, model_out=layout.model(name),
        summary_out=layout.train_summary(name), live_dir=layout.live(name),
        # Outside the stage's outputs, which DVC deletes before a rerun; the run deletes it when done.
        resume_path=layout.checkpoint(name),
    )
