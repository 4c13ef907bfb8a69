"""The trainer's settings: one frozen dataclass, built once by the entry point from flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.model_config import DEFAULT_REFERENCE_PIXELS, InputSpec

COLOUR_CONSTANCY_MODES = ("none", "shades_of_gray")  # trainer.network's, without importing keras
FINE_TUNE_MODES = ("cached", "full")  # stage 2: top blocks on cached views, or every layer
DEFAULT_INPUT_SIZE = 192  # pixels, square: the data is 200x150, and 224 costs 1.36x the compute
DEFAULT_FIRST_TRAINABLE = "block_13_expand"
"""MobileNetV2's layer where stage 2 starts training: blocks 13-16 and Conv_1 (the top blocks, at
1/16 and 1/32 resolution), which is cheap enough to train on cached activations on a CPU."""


@dataclass(frozen=True)
class TrainSettings:
    """How to train the network; every field has a default that reproduces the released model."""

    weights_path: Path | None = None  # ImageNet weights file; None trains from scratch
    backbone: str = "mobilenet_v2"
    input_size: int = DEFAULT_INPUT_SIZE
    reference_pixels: int = DEFAULT_REFERENCE_PIXELS
    seed: int = 1
    dropout: float = 0.3  # on the pooled features, before the dense head
    # In the graph, before the backbone (trainer.network.shades_of_gray): clinics' lights and
    # cameras differ, and colour is the first thing that shifts between them.
    colour_constancy: str = "shades_of_gray"
    first_trainable: str = DEFAULT_FIRST_TRAINABLE
    views_per_image: int = 3  # augmented views cached per training image (one per epoch, cycled)
    batch_size: int = 64  # images per step
    head_epochs: int = 30  # stage 1 (head only on pooled features): seconds per epoch, so many
    head_learning_rate: float = 1e-3
    fine_tune_epochs: int = 8  # stage 2 (top blocks + head on cached activations)
    # Adam, cosine-decayed over the stage's epochs, starting from the trained head. Measured: 3e-4
    # wrecked the pretrained top blocks (val balanced accuracy 0.58 -> 0.17); 1e-5 barely moved
    # them (0.54-0.57 in 8 epochs); 3e-5 for 8 epochs is the measured recipe (README, issue 10).
    fine_tune_learning_rate: float = 3e-5
    # "cached": stage 2 trains the top blocks (from first_trainable, BatchNorm frozen) on the
    # cached views, about 2 min an epoch on 2 CPU cores; "full": every layer, on images augmented
    # afresh each epoch, 8-20 min an epoch on 2 CPU cores (measured): meant for a GPU.
    fine_tune: str = "cached"
    batchnorm_momentum: float = 0.99  # "full" only; Keras' 0.999 is too slow for short runs
    # "full" only: False keeps BatchNorm frozen on its ImageNet statistics. Training it switches
    # to batch statistics, which costs the head its footing (measured: validation balanced
    # accuracy 0.585 -> 0.36 after the first epoch) and takes epochs to win back.
    fine_tune_batchnorm: bool = True
    patience: int = 3  # epochs without a better validation balanced accuracy before stopping
    # Stage 2's patience: its whole cosine schedule by default. The top blocks' validation score
    # dips in the first epochs before it climbs (measured: 0.54 -> 0.50 -> 0.54 -> 0.57 -> 0.58),
    # and patience counts from the head alone (epoch -1), so 3 stopped one seed before it
    # climbed; the best epoch is still the one kept.
    fine_tune_patience: int = 8
    imbalance: str = "auto"  # "auto" (measure on stage 1), "class_weights", "balanced_sampling"
    imbalance_trial_epochs: int = 15  # stage-1 epochs per strategy when measuring
    # Another workdir whose cached activations to reuse (the same backbone, cut, input size and
    # colour constancy; its training images must begin with this split's, as when it trained on
    # the same split plus extra images). The views keep the source's augmentation seed, so seeds
    # then differ in initialisation, dropout and batch order only, and cost no new cache.
    cache_source: Path | None = None
    threads: int = 2  # TensorFlow intra-op threads: the machine has 2 cores
    time_budget_s: float | None = None  # stop fine-tuning before an epoch would overrun this
    # data, evaluation, calibration and publication (trainer.pipeline; defaults in their modules)
    data_dir: Path | None = None  # HAM10000: metadata CSV and images (see trainer.data)
    # A second rendition of the same HAM10000 images (`images/<image_id>.jpg`, e.g. the 224x224
    # central crops): its images join their lesion's side of the split; None: not used.
    renditions_dir: Path | None = None
    # Extra training images from other clinics (ISIC 2017: `labels.csv` with image_id, dx and
    # isic2017_split); only its `train` rows are used, and only for training. None: not used.
    extra_train_dir: Path | None = None
    # ISIC 2017 (`labels.csv`): its validation and test images are the external check, measured
    # for the report and the promotion gate only (never trained, tuned or thresholded on).
    external_dir: Path | None = None
    split_seed: int | None = None  # the lesion split's seed; None: the same as `seed`
    train_only: bool = False  # stop after training (no calibration, evaluation or publishing)
    workdir: Path = Path("var/train")  # checkpoints, caches, predictions, reports (git-ignored)
    model_base: Path = Path("models")  # published as <model_base>/<model_name>/<version>/
    model_name: str = "ham10000"
    val_fraction: float = 0.15  # of each class's lesions
    test_fraction: float = 0.15  # of each class's lesions; never used for a decision
    sanity_dir: Path | None = None  # non-skin photos the version must abstain on
    noise_images: int = 4  # generated noise images it must abstain on too
    allow_sanity_failures: bool = False  # publish even if a sanity image is answered
    force: bool = False  # publish even if the promotion gate refuses
    publish_only: bool = False  # fail rather than train when workdir has no finished network
    tta: bool = False  # also measure flip-averaged test-time augmentation
    bootstrap_samples: int = 1000  # lesion resamples for the 95% intervals
    ood_components: int = 128  # PCA dims of the features for the Mahalanobis OOD score
    ood_fit_images: int = 4000  # training images fitting the OOD statistics (0: all); caps CPU time
    ood_quantile: float = 0.99  # of validation OOD scores -> max_ood_score
    target_coverage: float = 0.90  # of validation images answered -> min_confidence
    melanoma_sensitivity: float = 0.85  # validation sensitivity fixing the mel operating point
    sample_predictions: int = 16  # recorded predictions the published graph must reproduce
    weights_dtype: str = "float32"  # "float16": variables stored at half size (weights rounded)

    def __post_init__(self) -> None:
        # Checked here, not when stage 2 starts: a typo must not cost the minutes of stage 1.
        if self.fine_tune not in FINE_TUNE_MODES:
            raise ValueError(f"fine_tune must be one of {FINE_TUNE_MODES}, "
                             f"not {self.fine_tune!r}")
        if self.colour_constancy not in COLOUR_CONSTANCY_MODES:
            raise ValueError(f"colour_constancy must be one of {COLOUR_CONSTANCY_MODES}, "
                             f"not {self.colour_constancy!r}")

    @property
    def effective_split_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    def input_spec(self) -> InputSpec:
        return InputSpec(height=self.input_size, width=self.input_size,
                         reference_pixels=self.reference_pixels)
