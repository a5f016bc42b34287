"""Every section of params.yaml as one typed settings class, its defaults equal to params.yaml's.

Each class checks itself on construction (:func:`retinopathy.params.check_fields`): the type its
annotation gives, the allowed values in its field's ``choices``, and its field's ``rule``; an error
names the params key. :func:`retinopathy.params.load_settings` fills a class from params.yaml.
``tests/test_settings.py`` fails when a default here drifts from params.yaml. The why of each value
is in params.yaml's comments; ``docs/params.md`` explains every key.

This module imports nothing heavy, so the stages that never touch a tensor can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from retinopathy.params import check_fields, setting

# The allowed values of the keys that name a choice.
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
SELECT_ON = ("kappa", "accuracy", "loss")
CLASS_WEIGHTING = ("none", "inverse", "sqrt_inverse")
HEADS = ("classification", "regression")
DECODINGS = ("argmax", "expected")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DATA_SOURCES = ("synthetic", "course", "kaggle", "aptos")
LEAK_POLICIES = ("error", "warn", "resplit")
BAD_IMAGE_POLICIES = ("error", "skip")
PRETRAIN_SOURCES = ("selfsup", "imagenet")
PRETRAIN_METHODS = ("simclr", "rotation")
TTA = ("none", "flips")
# The sections below the top level, in params.yaml's order.
SECTIONS = ("synthetic", "data", "preprocess", "pretrain", "evaluate", "compare", "plot")

_POSITIVE = (lambda v: v > 0, "positive")
_AT_LEAST_ONE = (lambda v: v >= 1, "at least 1")
_NOT_NEGATIVE = (lambda v: v >= 0, "0 or more")
_FRACTION = (lambda v: 0 < v < 1, "between 0 and 1")
_SHARE = (lambda v: 0 < v <= 1, "in (0, 1]")


@dataclass(frozen=True)
class TrainConfig:
    """The top level of params.yaml: training, and the device settings every network stage shares.

    ``seed`` is params.yaml's top-level seed (the validation split and pretraining flow from it);
    each train stage replaces it with its own training seed from ``seeds``.
    """

    SECTION: ClassVar[str | None] = None
    # Keys at the top level that are not training settings: the training seeds and the sections.
    OTHER_KEYS: ClassVar[tuple[str, ...]] = ("seeds", *SECTIONS)

    lr: float = setting(1e-3, rule=_POSITIVE)
    batch_size: int = setting(32, rule=_AT_LEAST_ONE)
    epochs: int = setting(6, rule=_AT_LEAST_ONE)
    weight_decay: float = setting(5e-4, rule=_NOT_NEGATIVE)
    momentum: float = setting(0.9, rule=_NOT_NEGATIVE)
    optimizer: str = setting("adamw", choices=OPTIMIZERS)
    lr_schedule: str = setting("cosine", choices=SCHEDULES)
    class_weighting: str = setting("sqrt_inverse", choices=CLASS_WEIGHTING)
    select_on: str = setting("kappa", choices=SELECT_ON)
    head: str = setting("classification", choices=HEADS)
    decode: str = setting("argmax", choices=DECODINGS)
    refit_classifier: bool = setting(True)
    refit_c: float = setting(1.0, rule=_POSITIVE)
    flip: bool = setting(True)
    rotation: float = setting(15.0, rule=_NOT_NEGATIVE)
    zero_init_residual: bool = setting(False)
    num_workers: int = setting(0, rule=_NOT_NEGATIVE)
    device: str = setting("auto")
    precision: str = setting("auto", choices=PRECISIONS)
    compile: bool = setting(False)
    nproc: int = setting(1, rule=_AT_LEAST_ONE)
    sync_bn: bool = setting(False)
    seed: int = setting(42)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class SyntheticSpec:
    """The ``synthetic`` section: sizes of the embedded set; every random choice derives from ``seed``."""

    SECTION: ClassVar[str | None] = "synthetic"

    seed: int = setting(2015)
    train_patients: int = setting(500, rule=_AT_LEAST_ONE)
    test_patients: int = setting(150, rule=_AT_LEAST_ONE)
    unlabeled_patients: int = setting(150, rule=_NOT_NEGATIVE)
    min_size: int = setting(192, rule=_AT_LEAST_ONE)
    max_size: int = setting(320, rule=_AT_LEAST_ONE)
    jpeg_quality_min: int = setting(70, rule=(lambda v: 1 <= v <= 100, "in 1..100"))
    jpeg_quality_max: int = setting(95, rule=(lambda v: 1 <= v <= 100, "in 1..100"))
    # The share of patients with one grade in both eyes (synthetic.py says where it comes from).
    eye_agreement: float = setting(0.85, rule=(lambda v: 0 <= v <= 1, "in [0, 1]"))

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class DataSettings:
    """The ``data`` section: which images, and how they are split by patient."""

    SECTION: ClassVar[str | None] = "data"

    source: str = setting("synthetic", choices=DATA_SOURCES)
    root: str = setting("data/synthetic")
    val_fraction: float = setting(0.15, rule=_FRACTION)
    test_fraction: float = setting(0.2, rule=(lambda v: 0 <= v < 1, "in [0, 1)"))
    label_fraction: float = setting(1.0, rule=_SHARE)
    on_split_leak: str = setting("warn", choices=LEAK_POLICIES)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class PreprocessSettings:
    """The ``preprocess`` section: how every image is cropped and resized, and by how many processes."""

    SECTION: ClassVar[str | None] = "preprocess"

    size: int = setting(64, rule=_AT_LEAST_ONE)
    fov_threshold: int = setting(20, rule=(lambda v: 0 <= v <= 255, "in 0..255"))
    graham: bool = setting(False)
    graham_sigma: float = setting(0.0333, rule=_POSITIVE)
    workers: int = setting(0, rule=_NOT_NEGATIVE)
    on_bad_image: str = setting("error", choices=BAD_IMAGE_POLICIES)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class PretrainSettings:
    """The ``pretrain`` section: where the pretrained variants' backbones come from."""

    SECTION: ClassVar[str | None] = "pretrain"

    source: str = setting("selfsup", choices=PRETRAIN_SOURCES)
    method: str = setting("rotation", choices=PRETRAIN_METHODS)
    optimizer: str = setting("adamw", choices=OPTIMIZERS)
    epochs: int = setting(3, rule=_AT_LEAST_ONE)
    lr: float = setting(1e-3, rule=_POSITIVE)
    batch_size: int = setting(64, rule=_AT_LEAST_ONE)
    weight_decay: float = setting(5e-4, rule=_NOT_NEGATIVE)
    momentum: float = setting(0.9, rule=_NOT_NEGATIVE)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class EvalSettings:
    """The ``evaluate`` section: test metrics, their intervals and the screening operating points."""

    SECTION: ClassVar[str | None] = "evaluate"

    batch_size: int = setting(64, rule=_AT_LEAST_ONE)
    sensitivity_target: float = setting(0.95, rule=_SHARE)  # high-sensitivity point, chosen on validation
    specificity_target: float = setting(0.95, rule=_SHARE)  # high-specificity point, chosen on validation
    bootstrap_resamples: int = setting(1000, rule=_AT_LEAST_ONE)
    confidence: float = setting(0.95, rule=_FRACTION)
    bootstrap_seed: int = setting(0)
    tta: str = setting("none", choices=TTA)  # flips: the mean over the image and its three flips
    patient_blend: bool = setting(False)  # grade each eye from its own outputs and its partner's
    blend_c: float = setting(0.03, rule=_POSITIVE)  # the blend's inverse L2 strength

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class CompareSettings:
    """The ``compare`` section: the paired bootstrap behind every difference between variants."""

    SECTION: ClassVar[str | None] = "compare"

    bootstrap_resamples: int = setting(2000, rule=_AT_LEAST_ONE)
    confidence: float = setting(0.95, rule=_FRACTION)
    bootstrap_seed: int = setting(0)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class PlotSettings:
    """The ``plot`` section."""

    SECTION: ClassVar[str | None] = "plot"

    dpi: int = setting(110, rule=_AT_LEAST_ONE)

    def __post_init__(self) -> None:
        check_fields(self)


ALL = (TrainConfig, SyntheticSpec, DataSettings, PreprocessSettings, PretrainSettings, EvalSettings, CompareSettings,
       PlotSettings)
