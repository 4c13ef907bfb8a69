"""End to end on a synthetic HAM-like set with the tiny network: publish, gate, force, CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dermserve.core.model_config import ModelConfig
from dermserve.trainer.calibration import softmax
from dermserve.trainer.cli import build_parser, settings_from
from dermserve.trainer.data import Split, label_indices, load_records
from dermserve.trainer.errors import PromotionRefused, SanityCheckFailed
from dermserve.trainer.export import build_tiny_network
from dermserve.trainer.pipeline import NetworkHooks, run
from dermserve.trainer.served import ServedVersion, read_images
from dermserve.trainer.settings import TrainSettings
from dermserve.trainer.train import plain_view, predict_network, scale_pixels
from tests.conftest import TINY_INPUT
from tests.trainer.conftest import write_ham_dataset


def _tiny_config(split: Split) -> ModelConfig:
    return ModelConfig(labels=split.labels, display_names={}, input=TINY_INPUT)


def train_tiny(split: Split, settings: TrainSettings, workdir: Path) -> Any:
    """A few epochs of plain Keras fit: the colours of the synthetic classes are easy."""
    import keras

    keras.utils.set_random_seed(settings.seed)
    network = build_tiny_network(_tiny_config(split), seed=settings.seed)
    model = keras.Model(network.inputs, network.outputs[0])
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images = np.stack([plain_view(r, settings.input_spec()) for r in split.train])
    model.fit(scale_pixels(images), label_indices(split.train, split.labels), epochs=60,
              batch_size=16, verbose=0)
    return network


class RememberingTrainer:
    """train_tiny, keeping the network for the test to compare with."""

    network: Any = None

    def __call__(self, split: Split, settings: TrainSettings, workdir: Path) -> Any:
        self.network = train_tiny(split, settings, workdir)
        return self.network


def constant_tiny(split: Split, settings: TrainSettings, workdir: Path) -> Any:
    """A network that always says the first class: a worse version than train_tiny's."""
    network = build_tiny_network(_tiny_config(split), seed=settings.seed)
    dense = network.layers[-1]
    kernel, bias = dense.get_weights()
    dense.set_weights([np.zeros_like(kernel), np.eye(len(bias))[0] * 3])
    return network


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ham")
    write_ham_dataset(root, lesions_per_class=6, images_per_lesion=2)
    return root


@pytest.fixture
def sanity_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "sanity"
    folder.mkdir()
    Image.new("RGB", (300, 200), "white").save(folder / "white.bmp")
    return folder


def _settings(tmp_path: Path, data_dir: Path, workdir: str, **changes: Any) -> TrainSettings:
    values: dict[str, Any] = {
        "data_dir": data_dir, "workdir": tmp_path / workdir, "model_base": tmp_path / "models",
        "input_size": TINY_INPUT.height, "reference_pixels": TINY_INPUT.reference_pixels,
        "backbone": "tiny", "bootstrap_samples": 50, "ood_components": 8,
        "sample_predictions": 6}
    return TrainSettings(**{**values, **changes})


def test_pipeline_publishes_then_the_gate_refuses_a_worse_version(
        tmp_path: Path, data_dir: Path, sanity_dir: Path) -> None:
    settings = _settings(tmp_path, data_dir, "run1", sanity_dir=sanity_dir, tta=True)
    trainer = RememberingTrainer()
    version = run(settings, NetworkHooks(trainer, predict_network))
    assert version == tmp_path / "models" / "ham10000" / "1"
    extra = version / "assets.extra"
    for name in ("dermserve.json", "sample_predictions.json", "split.json", "MODEL_CARD.md",
                 "report/report.json", "report/report.md", "report/confusion_matrix.png",
                 "report/roc.png", "report/reliability.png", "report/ood_scores.png",
                 "report/data_report.md", "report/data_dx.png"):
        assert (extra / name).is_file(), name
    config = ModelConfig.read(version)
    assert config.description.startswith("tiny (seed 1) on HAM10000")
    assert config.metrics["balanced_accuracy"] > 0.5
    assert config.abstention.max_ood_score is not None and config.temperature > 0
    report = json.loads((extra / "report" / "report.json").read_text())
    assert report["data"]["lesions_in_two_splits"] == 0
    assert report["test_tta"] is not None and "tta_balanced_accuracy" in config.metrics
    assert [s["name"] for s in report["sanity"]][0] == "white.bmp"
    assert all(s["abstained"] for s in report["sanity"])
    assert "CC BY-NC 4.0" in (extra / "MODEL_CARD.md").read_text()
    assert (tmp_path / "run1" / "report" / "report.md").is_file()

    # serving the published version through the shared preprocessing gives the training-side
    # predictions (trainer.train.predict_network), temperature-scaled, within 1e-5
    records = Split.load(settings.workdir / "split.json", load_records(data_dir)).test
    served = ServedVersion(version).classify(read_images([r.path for r in records]))[0]
    logits, _ = predict_network(trainer.network, records, settings.input_spec())
    np.testing.assert_allclose(served, softmax(logits, config.temperature), atol=1e-5)

    worse = _settings(tmp_path, data_dir, "run2")
    with pytest.raises(PromotionRefused, match="below version 1"):
        run(worse, NetworkHooks(constant_tiny, predict_network))
    assert [p.name for p in (tmp_path / "models" / "ham10000").iterdir()] == ["1"]
    # forced through the gate, and stored as float16: the reproduce check still passes because
    # every prediction is made with the rounded weights
    forced = dataclasses.replace(worse, force=True, weights_dtype="float16")
    assert run(forced, NetworkHooks(constant_tiny, predict_network)).name == "2"
    assert ModelConfig.read(tmp_path / "models" / "ham10000" / "2").metrics[
        "balanced_accuracy"] < config.metrics["balanced_accuracy"]


def test_sanity_failure_blocks_the_publish_unless_allowed(
        tmp_path: Path, data_dir: Path) -> None:
    # a "sanity" image that is really a lesion from the training data gets answered: the publish
    # must fail and leave no version behind
    sanity = tmp_path / "sanity"
    sanity.mkdir()
    shutil.copyfile(next((data_dir / "images").iterdir()), sanity / "lesion.jpg")
    strict = _settings(tmp_path, data_dir, "run", sanity_dir=sanity, noise_images=0,
                       ood_quantile=1.0, target_coverage=1.0)
    hooks = NetworkHooks(constant_tiny, predict_network)
    with pytest.raises(SanityCheckFailed, match="lesion.jpg"):
        run(strict, hooks)
    model_dir = tmp_path / "models" / "ham10000"
    assert list(model_dir.iterdir()) == []
    report = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert any(not s["abstained"] for s in report["sanity"])
    assert run(dataclasses.replace(strict, allow_sanity_failures=True), hooks).name == "1"


def test_cli_builds_settings_from_flags_over_environment(tmp_path: Path) -> None:
    parser = build_parser({"DERMSERVE_SEED": "3", "DERMSERVE_TTA": "true",
                           "DERMSERVE_MODEL_BASE": "elsewhere"})
    args = parser.parse_args(["--data-dir", str(tmp_path), "--force", "--seed", "7",
                              "--sanity-dir", "none"])
    settings = settings_from(args)
    assert settings.data_dir == tmp_path and settings.force and settings.seed == 7
    assert settings.tta and settings.model_base == Path("elsewhere")
    assert settings.sanity_dir is None and settings.time_budget_s is None
    # one declaration: --help names each setting's unit, default and variable
    text = build_parser({}).format_help()
    assert "[pixels; default 192; env DERMSERVE_INPUT_SIZE]" in " ".join(text.split())
    with pytest.raises(SystemExit):  # a value outside its choices is a usage error
        build_parser({}).parse_args(["--fine-tune", "ful"])


def test_statistics_sample_keeps_small_classes_whole(tmp_path: Path) -> None:
    from collections import Counter

    from dermserve.trainer.data import Record
    from dermserve.trainer.pipeline import statistics_sample

    sizes = {"df": 3, "vasc": 5, "nv": 40, "mel": 12}
    records = [Record(f"{dx}{i}", f"L{dx}{i}", dx, tmp_path, None, "", "", "")
               for dx, count in sizes.items() for i in range(count)]
    counts = Counter(r.dx for r in statistics_sample(records, 30, seed=0))
    # 30 split over 4 classes smallest first: df 3, vasc 5, then mel and nv 11 each
    assert counts == {"df": 3, "vasc": 5, "mel": 11, "nv": 11}
    assert statistics_sample(records, 0, seed=0) == tuple(records)
    assert statistics_sample(records, 30, seed=1) != statistics_sample(records, 30, seed=0)


def test_publish_only_refuses_to_train(tmp_path: Path, data_dir: Path) -> None:
    from dermserve.core.errors import FailedPrecondition

    settings = _settings(tmp_path, data_dir, "untrained", publish_only=True)
    with pytest.raises(FailedPrecondition, match="network.weights.h5 does not exist"):
        run(settings, NetworkHooks(constant_tiny, predict_network))


def test_extra_holdout_chooses_the_temperature_and_threshold_and_is_never_trained_on(
        tmp_path: Path, data_dir: Path) -> None:
    from dermserve.trainer import evaluate
    from dermserve.trainer.calibration import calibrate
    from dermserve.trainer.data import load_labelled_folder
    from dermserve.trainer.pipeline import extra_records
    from tests.trainer.test_external import write_isic_like

    isic = write_isic_like(tmp_path / "isic2017", per_class_and_split=4)
    settings = _settings(tmp_path, data_dir, "held", extra_train_dir=isic, extra_holdout=True,
                         melanoma_sensitivity=0.5)
    rows = load_labelled_folder(isic, ("train",))
    trained_on, held_out = extra_records(settings)
    # every second train row of labels.csv, so each class stays on both sides
    assert [r.image_id for r in trained_on] == [r.image_id for r in rows[0::2]]
    assert [r.image_id for r in held_out] == [r.image_id for r in rows[1::2]]
    assert {r.dx for r in held_out} == {"mel", "nv", "bkl"}

    trainer = RememberingTrainer()
    version = run(settings, NetworkHooks(trainer, predict_network))
    split = Split.load(settings.workdir / "split.json",
                       [*load_records(data_dir), *rows])
    assert not {r.image_id for r in held_out} & {r.image_id for r in split.train}
    assert {r.image_id for r in trained_on} <= {r.image_id for r in split.train}

    # the published temperature and threshold are those of the held-out images, not validation's
    logits, _ = predict_network(trainer.network, held_out, settings.input_spec())
    y = label_indices(held_out, split.labels)
    temperature = calibrate(logits, y).temperature
    config = ModelConfig.read(version)
    assert config.temperature == pytest.approx(temperature)
    val_logits, _ = predict_network(trainer.network, split.val, settings.input_spec())
    assert temperature != pytest.approx(calibrate(val_logits, label_indices(
        split.val, split.labels)).temperature)
    assert config.metrics["melanoma_threshold"] == pytest.approx(evaluate.melanoma_threshold(
        softmax(logits, temperature), y, split.labels, 0.5))
    report = json.loads((version / "assets.extra" / "report" / "report.json").read_text())
    assert "held-out half" in report["operating_point"]["chosen_on"]
    assert "held-out half" in (version / "assets.extra" / "MODEL_CARD.md").read_text()
