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

from retinopathy.params import ParamsError, check_fields, setting

# The allowed values of the keys that name a choice.
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
SELECT_ON = ("kappa", "accuracy", "loss")
CLASS_WEIGHTING = ("none", "inverse", "sqrt_inverse")
HEADS = ("classification", "regression")
DECODINGS = ("argmax", "expected")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DATA_SOURCES = ("synthetic", "course", "kaggle", "aptos")
# The labelled sets an external evaluation reads (retinopathy.external), all graded on the ICDR 0-4 scale.
EXTERNAL_SOURCES = ("course", "kaggle", "aptos", "idrid", "messidor2")
LEAK_POLICIES = ("error", "warn", "resplit")
BAD_IMAGE_POLICIES = ("error", "skip")
UNGRADABLE_POLICIES = ("keep", "skip")
PRETRAIN_SOURCES = ("selfsup", "imagenet")
PRETRAIN_METHODS = ("simclr", "rotation")
TTA = ("none", "flips")
# The sections below the top level, in params.yaml's order.
SECTIONS = ("synthetic", "data", "preprocess", "quality", "pretrain", "evaluate", "external", "compare", "plot")

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
    # The external site's patients (test only, another camera; retinopathy.sites) and the gradability set's images.
    external_patients: int = setting(150, rule=_AT_LEAST_ONE)
    quality_images: int = setting(240, rule=(lambda v: v >= 2, "at least 2"))
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
    # A photograph the gradability gate calls ungradable: kept (the Kaggle and course labels grade such images) or
    # left out of every split; listed in the report either way.
    on_ungradable: str = setting("keep", choices=UNGRADABLE_POLICIES)

    def __post_init__(self) -> None:
        check_fields(self)


_UNIT = (lambda v: 0 <= v <= 1, "in [0, 1]")
_LEVEL = (lambda v: 0 <= v <= 255, "in 0..255")


@dataclass(frozen=True)
class QualityThresholds:
    """The ``quality`` section: the gradability gate's limits (:mod:`retinopathy.quality`); a photograph is ungradable
    when any measurement is beyond its limit. docs/quality.md gives the measurements behind each default.

    Raises:
        ParamsError: naming the key of a share outside [0, 1], a level outside 0..255, a negative ``min_focus``,
            or a ``dark_level`` not below ``bright_level``.
    """

    SECTION: ClassVar[str | None] = "quality"

    min_frame_share: float = setting(0.3, rule=_UNIT)  # the circle's area inside the frame, as a share of the frame
    min_retina_colour_share: float = setting(0.9, rule=_UNIT)  # usable pixels of a retina's colour
    dark_level: int = setting(25, rule=_LEVEL)  # luminance (0-255) at or below which a pixel is too dark
    bright_level: int = setting(215, rule=_LEVEL)  # luminance (0-255) at or above which a pixel is washed out
    max_dark_share: float = setting(0.5, rule=_UNIT)  # share of the field of view too dark
    max_bright_share: float = setting(0.25, rule=_UNIT)  # share washed out
    max_clipped_share: float = setting(0.7, rule=_UNIT)  # share whose red channel is clipped (>= 250)
    min_focus: float = setting(0.04, rule=_NOT_NEGATIVE)  # band-pass energy / mean brightness (quality.focus_energy)
    min_coverage: float = setting(0.7, rule=_UNIT)  # share of the whole circle in the frame and usable

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.dark_level < self.bright_level:
            raise ParamsError(f"params.yaml: key 'quality.dark_level' ({self.dark_level}) must be below "
                              f"'quality.bright_level' ({self.bright_level})")


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
class ExternalSettings:
    """The ``external`` section: the labelled set of another site that every evaluate stage scores too."""

    SECTION: ClassVar[str | None] = "external"

    source: str = setting("kaggle", choices=("none", *EXTERNAL_SOURCES))  # none: no external evaluation
    root: str = setting("data/external")  # the embedded external site (synthesize stage), in the Kaggle layout

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


ALL = (TrainConfig, SyntheticSpec, DataSettings, PreprocessSettings, QualityThresholds, PretrainSettings, EvalSettings,
       ExternalSettings, CompareSettings, PlotSettings)
