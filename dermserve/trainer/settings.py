"""The trainer's settings: one frozen dataclass, built once by the entry point from flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dermserve.core.config import setting
from dermserve.core.model_config import DEFAULT_REFERENCE_PIXELS, InputSpec

COLOUR_CONSTANCY_MODES = ("none", "shades_of_gray")  # trainer.network's, without importing keras
FINE_TUNE_MODES = ("cached", "full")  # stage 2: top blocks on cached views, or every layer
DEFAULT_INPUT_SIZE = 192  # pixels, square: the data is 200x150, and 224 costs 1.36x the compute
DEFAULT_FIRST_TRAINABLE = "block_13_expand"
"""MobileNetV2's layer where stage 2 starts training: blocks 13-16 and Conv_1 (the top blocks, at
1/16 and 1/32 resolution), which is cheap enough to train on cached activations on a CPU."""


@dataclass(frozen=True)
class TrainSettings:
    """How to train the network; every field has a default that reproduces the released model.
    Each field is a `dermserve-train` flag and a `DERMSERVE_*` variable (core.config)."""

    weights_path: Path | None = setting(
        None, help="ImageNet weights file of the backbone (never downloaded); none: from scratch")
    backbone: str = setting("mobilenet_v2", help="Keras application backbone (or 'tiny' in tests)")
    input_size: int = setting(DEFAULT_INPUT_SIZE, unit="pixels",
                              help="side of the square model input")
    reference_pixels: int = setting(DEFAULT_REFERENCE_PIXELS, unit="pixels",
                                    help="detail every image is brought down to before resizing")
    seed: int = setting(1, help="training seed: initialisation, dropout, views, batch order")
    dropout: float = setting(0.3, help="dropout on the pooled features, before the dense head")
    # In the graph, before the backbone (trainer.network.shades_of_gray): clinics' lights and
    # cameras differ, and colour is the first thing that shifts between them.
    colour_constancy: str = setting("shades_of_gray", choices=COLOUR_CONSTANCY_MODES,
                                    help="colour constancy applied in the network's graph")
    first_trainable: str = setting(DEFAULT_FIRST_TRAINABLE,
                                   help="first backbone layer stage 2 trains (cached below it)")
    views_per_image: int = setting(3, unit="views",
                                   help="augmented views cached per training image, one an epoch")
    batch_size: int = setting(64, unit="images", help="images per training step")
    head_epochs: int = setting(30, unit="epochs",
                               help="stage 1 (the head on pooled features; seconds an epoch)")
    head_learning_rate: float = setting(1e-3, help="stage 1's Adam learning rate")
    fine_tune_epochs: int = setting(8, unit="epochs", help="stage 2's cosine schedule")
    # Adam, cosine-decayed over the stage's epochs, starting from the trained head. Measured: 3e-4
    # wrecked the pretrained top blocks (val balanced accuracy 0.58 -> 0.17); 1e-5 barely moved
    # them (0.54-0.57 in 8 epochs); 3e-5 for 8 epochs is the measured recipe (docs/model.md,
    # issue 10).
    fine_tune_learning_rate: float = setting(3e-5, help="stage 2's peak Adam learning rate")
    # "cached": stage 2 trains the top blocks (from first_trainable, BatchNorm frozen) on the
    # cached views, about 1-2 min an epoch on 2 CPU cores; "full": every layer, on images
    # augmented afresh each epoch, 8-20 min an epoch on 2 CPU cores (measured): meant for a GPU.
    fine_tune: str = setting("cached", choices=FINE_TUNE_MODES,
                             help="stage 2: top blocks on cached views, or every layer")
    batchnorm_momentum: float = setting(
        0.99, help="'full' only: BatchNorm momentum (Keras' 0.999 is too slow for short runs)")
    # "full" only: False keeps BatchNorm frozen on its ImageNet statistics. Training it switches
    # to batch statistics, which costs the head its footing (measured: validation balanced
    # accuracy 0.585 -> 0.36 after the first epoch) and takes epochs to win back.
    fine_tune_batchnorm: bool = setting(True, help="'full' only: train BatchNorm too")
    patience: int = setting(3, unit="epochs",
                            help="epochs without a better validation score before stage 1 stops")
    # Stage 2's patience: its whole cosine schedule by default. The top blocks' validation score
    # dips in the first epochs before it climbs (measured: 0.54 -> 0.50 -> 0.54 -> 0.57 -> 0.58),
    # and patience counts from the head alone (epoch -1), so 3 stopped one seed before it
    # climbed; the best epoch is still the one kept.
    fine_tune_patience: int = setting(8, unit="epochs", help="stage 2's patience")
    imbalance: str = setting("auto", choices=("auto", "class_weights", "balanced_sampling"),
                             help="class imbalance handling; auto: measured on stage 1")
    imbalance_trial_epochs: int = setting(15, unit="epochs",
                                          help="stage-1 epochs per strategy when measuring")
    # The same backbone, cut, input size and colour constancy; its training images must include
    # this split's (the same split plus extra images, or with some extra images held out). The
    # views keep the source's augmentation seed, so seeds then differ in initialisation, dropout
    # and batch order only, and cost no new cache.
    cache_source: Path | None = setting(None, help="another workdir whose cached views to reuse")
    threads: int = setting(2, unit="threads", help="TensorFlow intra-op threads")
    time_budget_s: float | None = setting(
        None, help="stop fine-tuning before an epoch would overrun this; none: no budget")
    data_dir: Path | None = setting(None, help="HAM10000: metadata CSV and images")
    renditions_dir: Path | None = setting(
        None, help="a second rendition of the HAM10000 images (images/<image_id>.jpg, e.g. the "
                   "224x224 crops), kept on its lesion's side of the split")
    extra_train_dir: Path | None = setting(
        None, help="another source's labels.csv + images/ (ISIC 2017): its train rows are "
                   "training data only")
    # HAM10000 validation cannot choose the operating point of a model with a member trained on
    # HAM10000 elsewhere (sklesion): that member is confident on it. Images from another clinic
    # that no member trained on can; the held-out half is that set.
    extra_holdout: bool = setting(
        False, help="hold every second --extra-train-dir train row (in its labels.csv order) out "
                    "of training; the temperature and the melanoma threshold are then chosen on "
                    "them instead of on HAM10000 validation")
    external_dir: Path | None = setting(
        None, help="ISIC 2017: its validation and test rows are the external check (measured "
                   "for the report and the promotion gate, never trained, tuned or thresholded on)")
    bcn_dir: Path | None = setting(
        None, help="BCN-84 (labels.csv with lesion ids, images/): the second external check, "
                   "measured like --external-dir, never trained, tuned or thresholded on")
    split_seed: int | None = setting(None, help="the lesion split's seed; none: --seed")
    train_only: bool = setting(False, help="stop after training (no evaluation or publishing)")
    workdir: Path = setting(Path("var/train"),
                            help="checkpoints, caches, predictions, reports (git-ignored)")
    model_base: Path = setting(Path("models"),
                               help="published as <model_base>/<model_name>/<version>/")
    model_name: str = setting("ham10000", help="the model's name under the model base")
    val_fraction: float = setting(0.15, help="share of each class's lesions for validation")
    test_fraction: float = setting(0.15, help="share of each class's lesions held out for test")
    sanity_dir: Path | None = setting(None, help="non-skin photos the version must abstain on")
    noise_images: int = setting(4, unit="images",
                                help="generated noise images it must abstain on too")
    allow_sanity_failures: bool = setting(False,
                                          help="publish even if a sanity image is answered")
    force: bool = setting(False, help="publish even if a promotion gate refuses")
    publish_only: bool = setting(False,
                                 help="fail rather than train when the workdir has no network")
    tta: bool = setting(False, help="also measure flip-averaged test-time augmentation")
    bootstrap_samples: int = setting(1000, unit="resamples",
                                     help="lesion resamples for the 95% intervals")
    ood_components: int = setting(128, help="PCA dimensions for the Mahalanobis OOD score")
    ood_fit_images: int = setting(4000, unit="images",
                                  help="training images fitting the OOD statistics (0: all)")
    ood_quantile: float = setting(0.99, help="quantile of validation OOD scores: max_ood_score")
    target_coverage: float = setting(0.90,
                                     help="share of validation images answered: min_confidence")
    melanoma_sensitivity: float = setting(
        0.85, help="validation sensitivity fixing the melanoma operating point")
    sample_predictions: int = setting(
        16, unit="images", help="recorded predictions the published graph must reproduce")
    weights_dtype: str = setting("float32", choices=("float32", "float16"),
                                 help="how the variables are stored (float16: half the size)")

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
