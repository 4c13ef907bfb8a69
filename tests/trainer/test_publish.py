"""Export, atomic publish and the promotion gate, with the tiny network on synthetic images."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dermserve.core.model_config import ModelConfig
from dermserve.core.preprocessing import to_model_input
from dermserve.trainer.calibration import softmax
from dermserve.trainer.errors import PromotionRefused, PublishError
from dermserve.trainer.export import ServingModule, build_tiny_network, round_weights, save_version
from dermserve.trainer.features import FeatureStatistics
from dermserve.trainer.publish import (
    SAMPLE_RELATIVE_PATH,
    SamplePredictions,
    check_promotion,
    publish,
    verify_reproduces,
    version_numbers,
)
from dermserve.trainer.served import ServedVersion, read_images
from tests.conftest import TINY_MODEL_NAME, tiny_config

TEMPERATURE = 1.7


def _reference(network: Any, config: ModelConfig, paths: list[Path],
               stats: FeatureStatistics) -> tuple[np.ndarray, np.ndarray]:
    """What the training side computes: shared preprocessing, eager network, numpy statistics."""
    inputs = np.stack([to_model_input(image, config.input) for image in read_images(paths)])
    logits, features = network(inputs.astype(np.float32) / 127.5 - 1.0, training=False)
    return softmax(np.asarray(logits), config.temperature), stats.ood_scores(np.asarray(features))


@pytest.fixture(scope="module")
def candidate(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tests.trainer.conftest import write_ham_dataset

    root = tmp_path_factory.mktemp("ham")
    write_ham_dataset(root, lesions_per_class=2, images_per_lesion=2)
    paths = sorted((root / "images").iterdir())
    config = ModelConfig(**{**tiny_config(0).__dict__, "temperature": TEMPERATURE})
    network = build_tiny_network(config, seed=3)
    inputs = np.stack([to_model_input(i, config.input) for i in read_images(paths)])
    _, features = network(inputs.astype(np.float32) / 127.5 - 1.0, training=False)
    labels = np.arange(len(paths)) % len(config.labels)
    stats = FeatureStatistics.fit(np.asarray(features), labels, len(config.labels), components=8)
    probabilities, ood = _reference(network, config, paths, stats)
    return {"network": network, "config": config, "stats": stats, "paths": paths,
            "sample": SamplePredictions([p.stem for p in paths], probabilities.tolist(),
                                        ood.tolist())}


def _writer(candidate: dict[str, Any], sample: SamplePredictions | None = None) -> Any:
    def write(version_dir: Path) -> None:
        module = ServingModule(candidate["network"], candidate["config"], candidate["stats"])
        save_version(module, candidate["config"], version_dir)
        (sample or candidate["sample"]).write(version_dir)
    return write


def _verify(candidate: dict[str, Any]) -> Any:
    return lambda version_dir: verify_reproduces(version_dir, candidate["paths"])


def test_published_version_reproduces_the_training_predictions(
        candidate: dict[str, Any], tmp_path: Path) -> None:
    model_dir = tmp_path / TINY_MODEL_NAME
    version_dir = publish(model_dir, _writer(candidate), [_verify(candidate)])
    assert version_dir == model_dir / "1"
    assert (version_dir / SAMPLE_RELATIVE_PATH).is_file()
    served = ServedVersion(version_dir)
    probabilities, ood = served.classify(read_images(candidate["paths"]))
    np.testing.assert_allclose(probabilities, candidate["sample"].probabilities, atol=1e-5)
    np.testing.assert_allclose(ood, candidate["sample"].ood_scores, rtol=1e-3, atol=1e-3)
    assert served.config.temperature == TEMPERATURE
    assert float(np.ptp(probabilities)) > 0.01  # the check compares something that varies
    assert [p.name for p in model_dir.iterdir()] == ["1"]


def test_failed_verification_leaves_no_version(candidate: dict[str, Any], tmp_path: Path) -> None:
    model_dir = tmp_path / TINY_MODEL_NAME
    wrong = SamplePredictions(candidate["sample"].image_ids,
                              (np.asarray(candidate["sample"].probabilities) + 0.01).tolist(),
                              candidate["sample"].ood_scores)
    with pytest.raises(PublishError, match="probabilities differ"):
        publish(model_dir, _writer(candidate, wrong), [_verify(candidate)])
    assert list(model_dir.iterdir()) == []


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def write(version_dir: Path) -> None:
        version_dir.mkdir()
        (version_dir / "saved_model.pb").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish(tmp_path / "m", write)
    assert list((tmp_path / "m").iterdir()) == []


def test_concurrent_reader_never_sees_a_partial_version(
        candidate: dict[str, Any], tmp_path: Path) -> None:
    model_dir = tmp_path / TINY_MODEL_NAME
    model_dir.mkdir()
    seen_partial: list[str] = []
    done = threading.Event()

    def scan() -> None:
        while not done.is_set():
            for entry in model_dir.iterdir():
                if entry.name.isdigit() and not (entry / "saved_model.pb").is_file():
                    seen_partial.append(entry.name)

    reader = threading.Thread(target=scan)
    reader.start()
    try:
        for _ in range(2):
            publish(model_dir, _writer(candidate))
    finally:
        done.set()
        reader.join()
    assert seen_partial == []
    assert version_numbers(model_dir) == [1, 2]


def test_a_publisher_that_loses_the_race_takes_the_next_number(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"

    def write(version_dir: Path) -> None:
        version_dir.mkdir(parents=True)
        (version_dir / "saved_model.pb").write_bytes(b"ours")
        rival = model_dir / "1"  # another publisher renames its version in first
        rival.mkdir()
        (rival / "saved_model.pb").write_bytes(b"theirs")

    assert publish(model_dir, write) == model_dir / "2"
    assert (model_dir / "1" / "saved_model.pb").read_bytes() == b"theirs"
    assert (model_dir / "2" / "saved_model.pb").read_bytes() == b"ours"


def test_promotion_gate_refuses_a_worse_version(model_base: Path) -> None:
    model_dir = model_base / TINY_MODEL_NAME  # versions 1 and 2; 2 records 0.3
    with pytest.raises(PromotionRefused, match="0.2500 is below version 2's 0.3000"):
        check_promotion(model_dir, 0.25)
    check_promotion(model_dir, 0.35)
    check_promotion(model_dir, 0.25, force=True)
    check_promotion(model_base / "empty", 0.0)


def test_float16_weights_halve_the_variables_and_match_the_rounded_network(
        tmp_path: Path) -> None:
    from dermserve.trainer.network import build_network

    config = tiny_config(0)
    network = build_network(len(config.labels), config.input, "tiny", None, 0.3, 0)
    round_weights(network)
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3)).astype(np.uint8)
    expected = softmax(np.asarray(network(images / 127.5 - 1.0, training=False)[0]))
    sizes = {}
    for dtype in ("float32", "float16"):
        save_version(ServingModule(network, config, None, dtype), config, tmp_path / dtype)
        served = ServedVersion(tmp_path / dtype).classify_arrays(images)[0]
        np.testing.assert_allclose(served, expected, atol=1e-5)
        sizes[dtype] = sum(p.stat().st_size for p in (tmp_path / dtype / "variables").iterdir())
    assert sizes["float16"] < 0.6 * sizes["float32"]
    with pytest.raises(ValueError, match="weights_dtype"):
        ServingModule(network, config, None, "int8")
