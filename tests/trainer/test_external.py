"""Issue 10's trainer pieces: colour constancy in the graph, a second rendition and extra training
data in the lesion split, the external check's figures and gate, and seed ensembles."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dermserve.trainer import metrics as m
from dermserve.trainer.data import (
    EXTERNAL_CHECK_SPLITS,
    HAM10000_LABELS,
    base_image_id,
    load_labelled_folder,
    load_lesion_labelled_folder,
    load_records,
    load_rendition,
    split_by_lesion,
    with_extra_training,
)
from dermserve.trainer.errors import DataError, PromotionRefused
from dermserve.trainer.external import (
    Measurer,
    Sources,
    check_external_gate,
    comparison_markdown,
    external_metrics,
    measure_checks,
    outside_calls,
    served_decision,
)
from tests.conftest import TINY_INPUT
from tests.trainer.conftest import CLASS_COLOURS, write_ham_dataset

MEL, NV, BKL = (HAM10000_LABELS.index(c) for c in ("mel", "nv", "bkl"))


def write_isic_like(root: Path, per_class_and_split: int = 3) -> Path:
    """labels.csv (image_id, dx, isic2017_split) and 24x24 JPEGs of mel, nv and bkl."""
    (root / "images").mkdir(parents=True)
    rows = []
    for split in ("train", "validation", "test"):
        for dx in ("mel", "nv", "bkl"):
            for n in range(per_class_and_split):
                image_id = f"ISIC_{split[:2]}{dx}{n}"
                Image.new("RGB", (24, 24), CLASS_COLOURS[dx]).save(
                    root / "images" / f"{image_id}.jpg")
                rows.append({"image_id": image_id, "dx": dx, "isic2017_split": split})
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image_id", "dx", "isic2017_split"])
        writer.writeheader()
        writer.writerows(rows)
    return root


# --- colour constancy ---------------------------------------------------------------------


def test_shades_of_gray_removes_a_colour_cast() -> None:
    from dermserve.trainer.network import shades_of_gray

    rng = np.random.default_rng(0)
    scene = rng.uniform(0.2, 0.8, (1, 16, 16, 3)).astype(np.float32)
    cast = scene * np.array([1.0, 0.7, 0.55], np.float32)  # a yellow-red light
    both = np.concatenate([scene, cast]) * 2 - 1
    corrected = (np.asarray(shades_of_gray(both)) + 1) / 2
    before = np.abs(scene - cast).mean()
    after = np.abs(corrected[0] / corrected[0].mean() - corrected[1] / corrected[1].mean()).mean()
    assert after < before / 10
    # the light estimate (p-norm of each channel) comes out grey: equal channels
    light = np.power(np.power(corrected[1], 6).mean(axis=(0, 1)), 1 / 6)
    np.testing.assert_allclose(light, light.mean(), rtol=0.02)


def test_shades_of_gray_keeps_range_and_clips_gains_on_one_coloured_images() -> None:
    from dermserve.trainer.network import MAX_COLOUR_GAIN, shades_of_gray

    red = np.zeros((1, 8, 8, 3), np.float32)
    red[..., 0] = 0.9
    out = (np.asarray(shades_of_gray(red * 2 - 1)) + 1) / 2
    assert out.min() >= 0 and out.max() <= 1
    # green and blue were ~0: a gain of thousands would turn noise into colour; clipped instead
    assert out[..., 1].max() <= 1e-6 * MAX_COLOUR_GAIN + 1e-6


def test_the_network_applies_colour_constancy_in_its_graph() -> None:
    import keras

    from dermserve.trainer.network import COLOUR_LAYER, build_network, shades_of_gray

    plain = build_network(7, TINY_INPUT, "tiny", seed=0)
    corrected = build_network(7, TINY_INPUT, "tiny", seed=0, colour_constancy="shades_of_gray")
    assert COLOUR_LAYER not in [layer.name for layer in plain.layers]
    # what the backbone sees is the corrected image (so training, export and serving share it)
    probe = keras.Model(corrected.inputs, corrected.get_layer(COLOUR_LAYER).output)
    image = np.random.default_rng(1).uniform(-0.6, 0.6, (2, 32, 32, 3)).astype(np.float32)
    image[1] *= np.array([1.0, 0.8, 0.6], np.float32)
    np.testing.assert_allclose(np.asarray(probe(image)), np.asarray(shades_of_gray(image)),
                               atol=1e-6)
    with pytest.raises(ValueError, match="colour constancy"):
        build_network(7, TINY_INPUT, "tiny", colour_constancy="retinex")


# --- data: renditions and extra training images --------------------------------------------


def test_a_second_rendition_stays_on_its_lesions_side_and_keeps_the_split(tmp_path: Path) -> None:
    write_ham_dataset(tmp_path / "ham", lesions_per_class=6)
    write_ham_dataset(tmp_path / "crops", lesions_per_class=6, size=(24, 24), seed=3)
    records = load_records(tmp_path / "ham")
    crops = load_rendition(tmp_path / "crops", records)
    assert len(crops) == len(records)
    assert all(c.path.parent.parent.name == "crops" for c in crops)
    both = split_by_lesion([*records, *crops], seed=4)
    alone = split_by_lesion(records, seed=4)
    for name, part in both.parts().items():
        lesions = {r.lesion_id for r in part}
        assert lesions == {r.lesion_id for r in alone.parts()[name]}
        # both renditions of each image are on the same side
        assert sorted(base_image_id(r.image_id) for r in part if "@" in r.image_id) == \
            sorted(r.image_id for r in part if "@" not in r.image_id)


def test_extra_training_images_go_to_train_only(tmp_path: Path) -> None:
    write_ham_dataset(tmp_path / "ham")
    isic = write_isic_like(tmp_path / "isic2017")
    extra = load_labelled_folder(isic, ("train",))
    assert len(extra) == 9 and {r.dx for r in extra} == {"mel", "nv", "bkl"}
    split = with_extra_training(split_by_lesion(load_records(tmp_path / "ham"), seed=0), extra)
    ids = {r.image_id for r in extra}
    assert ids <= {r.image_id for r in split.train}
    assert not ids & {r.image_id for r in (*split.val, *split.test)}
    held_back = load_labelled_folder(isic, EXTERNAL_CHECK_SPLITS)
    assert len(held_back) == 18 and not {r.image_id for r in held_back} & ids


def test_an_unknown_label_in_extra_data_is_a_data_error(tmp_path: Path) -> None:
    from dermserve.trainer.errors import DataError

    isic = write_isic_like(tmp_path / "isic2017")
    text = (isic / "labels.csv").read_text().replace("bkl", "sk")
    (isic / "labels.csv").write_text(text)
    with pytest.raises(DataError, match="unknown dx"):
        load_labelled_folder(isic, ("train",))


# --- the external check's figures and gate -------------------------------------------------


def _probabilities(rows: list[dict[str, float]]) -> np.ndarray:
    out = np.full((len(rows), 7), 0.01)
    for n, row in enumerate(rows):
        for label, value in row.items():
            out[n, HAM10000_LABELS.index(label)] = value
    return out / out.sum(axis=1, keepdims=True)


def test_external_metrics_at_the_served_operating_point() -> None:
    y = np.array([MEL, MEL, NV, NV, NV, BKL])
    probabilities = _probabilities([{"mel": 0.6, "nv": 0.3}, {"mel": 0.3, "nv": 0.6},
                                    {"nv": 0.9}, {"mel": 0.35, "nv": 0.6}, {"nv": 0.8},
                                    {"bkl": 0.7, "nv": 0.2}])
    result = external_metrics(y, probabilities, HAM10000_LABELS, melanoma_threshold=0.25,
                              bootstrap=50)
    # P(mel) ranks: both melanomas above 3 of the 4 others, one below the fourth (0.35 > 0.3)
    assert result["melanoma_auc"]["value"] == pytest.approx(7 / 8)
    assert result["recall_argmax"] == {"mel": 0.5, "nv": 1.0, "bkl": 1.0}
    # at P(mel) >= 0.25 both melanomas are flagged, and so is one nevus of three
    assert result["melanoma_sensitivity"] == 1.0
    assert result["nevus_specificity"] == pytest.approx(2 / 3)
    assert result["recall_served"] == {"mel": 1.0, "nv": pytest.approx(2 / 3), "bkl": 1.0}
    low, high = result["melanoma_auc"]["ci95"]
    assert 0 <= low <= high <= 1
    served = served_decision(probabilities, HAM10000_LABELS, None)
    np.testing.assert_array_equal(served, probabilities.argmax(1))


def _figure(value: float) -> dict[str, Any]:
    return {"value": value, "ci95": [value - 0.1, value + 0.1]}


def _published(model_dir: Path, version: int, checks: dict[str, Any] | None) -> Path:
    version_dir = model_dir / str(version)
    (version_dir / "assets.extra" / "report").mkdir(parents=True)
    (version_dir / "saved_model.pb").write_bytes(b"")
    report: dict[str, Any] = {}
    if checks is not None:
        report["external_check"] = checks
    (version_dir / "assets.extra" / "report" / "report.json").write_text(json.dumps(report))
    return version_dir


def _candidate(auc: float, balanced: float = 0.5, bcn: tuple[float, float] | None = None
               ) -> dict[str, Any]:
    checks = {"external": {"melanoma_auc": _figure(auc), "balanced_accuracy": _figure(balanced)}}
    if bcn is not None:
        checks["external_bcn84"] = {"melanoma_auc": _figure(bcn[0]),
                                    "balanced_accuracy": _figure(bcn[1])}
    return checks


def test_the_external_gate_refuses_a_version_worse_abroad(tmp_path: Path) -> None:
    model_dir = tmp_path / "models" / "ham10000"
    sources = Sources(tmp_path)
    check_external_gate(model_dir, _candidate(0.5), sources)  # nothing published yet: passes
    _published(model_dir, 1, _candidate(0.80, 0.5, bcn=(0.75, 0.32)))
    check_external_gate(model_dir, _candidate(0.81, 0.5, bcn=(0.80, 0.33)), sources)
    with pytest.raises(PromotionRefused, match="ISIC 2017 melanoma_auc 0.7900 is below version "
                                               "1's 0.8000"):
        check_external_gate(model_dir, _candidate(0.79, 0.5, bcn=(0.80, 0.33)), sources)
    # better at melanoma on both, worse at the seven classes in Barcelona: refused too
    with pytest.raises(PromotionRefused, match="BCN-84 balanced_accuracy 0.3000 is below"):
        check_external_gate(model_dir, _candidate(0.81, 0.5, bcn=(0.80, 0.30)), sources)
    check_external_gate(model_dir, _candidate(0.79, 0.5, bcn=(0.80, 0.30)), sources, force=True)


def test_the_external_gate_measures_what_the_latest_version_was_published_without(
        tmp_path: Path) -> None:
    """Version 3 was published before BCN-84 and before balanced accuracy was a gate figure: the
    gate measures the latest version on the checks now, through its SavedModel."""
    from dermserve.trainer.export import export_tiny_version
    from tests.conftest import tiny_config

    model_dir = tmp_path / "models" / "ham10000"
    export_tiny_version(model_dir / "1", tiny_config())
    bcn = write_bcn_like(tmp_path / "bcn")
    sources = Sources(tmp_path, bcn_dir=bcn)
    measured = measure_checks(Measurer(model_dir / "1"), sources, bootstrap=20)
    latest = measured["external_bcn84"]
    shares = latest["abstention"]
    assert set(shares) == {"answered", "low_confidence", "out_of_distribution"}
    assert sum(shares.values()) == pytest.approx(1.0)
    auc, balanced = latest["melanoma_auc"]["value"], latest["balanced_accuracy"]["value"]
    candidate = {"external_bcn84": {"melanoma_auc": _figure(auc),
                                    "balanced_accuracy": _figure(balanced)}}
    check_external_gate(model_dir, candidate, sources, bootstrap=20)  # level: passes
    candidate["external_bcn84"]["balanced_accuracy"] = _figure(balanced - 0.01)
    with pytest.raises(PromotionRefused, match="BCN-84 balanced_accuracy"):
        check_external_gate(model_dir, candidate, sources, bootstrap=20)


BCN_ROWS = [("ISIC_b1", "mel", "BCN_1"), ("ISIC_b2", "mel", "BCN_1"), ("ISIC_b3", "nv", "BCN_2"),
            ("ISIC_b4", "bkl", "BCN_3"), ("ISIC_b5", "akiec", "BCN_4"),
            ("ISIC_b6", "scc", "BCN_5"), ("ISIC_b7", "scc", "BCN_6")]


def write_bcn_like(root: Path) -> Path:
    """BCN-84's layout: labels.csv with lesion ids and context, 84x84 JPEGs, scc rows."""
    (root / "images").mkdir(parents=True)
    fields = ["image_id", "dx", "isic2019_label", "lesion_id", "age_approx", "sex",
              "anatom_site_general"]
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for image_id, dx, lesion in BCN_ROWS:
            colour = CLASS_COLOURS.get(dx, (120, 60, 60))
            Image.new("RGB", (84, 84), colour).save(root / "images" / f"{image_id}.jpg")
            writer.writerow({"image_id": image_id, "dx": dx, "isic2019_label": dx.upper(),
                             "lesion_id": lesion, "age_approx": "55" if dx != "nv" else "",
                             "sex": "male", "anatom_site_general": "anterior torso"})
    return root


def test_bcn_records_keep_lesions_context_and_the_scc_rows_apart(tmp_path: Path) -> None:
    records = load_lesion_labelled_folder(write_bcn_like(tmp_path / "bcn"))
    assert [(r.image_id, r.dx, r.lesion_id) for r in records] == BCN_ROWS
    assert records[0].age == 55.0 and records[2].age is None
    assert records[0].sex == "male" and records[0].localization == "anterior torso"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "labels.csv").write_text("image_id,dx,lesion_id\nx,melanoma,L\n")
    with pytest.raises(DataError, match="unknown dx code"):
        load_lesion_labelled_folder(tmp_path / "bad")


def test_external_metrics_bootstrap_whole_lesions_and_report_balanced_accuracy() -> None:
    y = np.array([MEL, MEL, NV, NV, BKL])
    probabilities = _probabilities([{"mel": 0.6}, {"mel": 0.6}, {"nv": 0.9}, {"mel": 0.7},
                                    {"bkl": 0.8}])
    groups = ["L1", "L1", "L2", "L3", "L4"]
    result = external_metrics(y, probabilities, HAM10000_LABELS, None, bootstrap=200,
                              groups=groups)
    assert result["bootstrap_unit"] == "lesion" and result["lesions"] == 4
    assert result["balanced_accuracy"]["value"] == pytest.approx((1 + 0.5 + 1) / 3)
    # a resample draws L1's two images together or not at all: melanoma counts are even
    for index in m.lesion_bootstrap_indices(groups, 50, 0):
        assert int((y[index] == MEL).sum()) % 2 == 0


def test_an_external_check_says_how_often_the_version_abstains_by_its_own_rule(
        tmp_path: Path) -> None:
    from dermserve.core.model_config import AbstentionRule
    from dermserve.trainer.export import export_tiny_version
    from tests.conftest import tiny_config

    config = dataclasses.replace(tiny_config(), abstention=AbstentionRule(0.5, 2.0))
    export_tiny_version(tmp_path / "1", config)
    probabilities = _probabilities([{"mel": 0.9}, {"mel": 0.3, "nv": 0.3, "bkl": 0.3},
                                    {"nv": 0.9}, {"nv": 0.95}])
    shares = Measurer(tmp_path / "1").abstentions(probabilities, np.array([0.1, 0.1, 3.0, 1.0]))
    assert shares == {"answered": 0.5, "low_confidence": 0.25, "out_of_distribution": 0.25}


def test_outside_class_images_are_reported_as_what_they_are_called() -> None:
    probabilities = _probabilities([{"akiec": 0.9}, {"bcc": 0.8}, {"akiec": 0.6, "mel": 0.3}])
    calls = outside_calls(probabilities, HAM10000_LABELS, melanoma_threshold=0.25)
    assert calls["images"] == 3
    assert calls["called_argmax"]["akiec"] == pytest.approx(2 / 3)
    assert calls["called_served"]["mel"] == pytest.approx(1 / 3)
    assert sum(calls["called_argmax"].values()) == pytest.approx(1.0)


def test_comparison_tables_have_one_row_per_version_and_check() -> None:
    own = {"balanced_accuracy": 0.7, "macro_auc": 0.9, "ece": 0.03, "melanoma_sensitivity": 0.8}
    check = {"images": 10, "lesions": 8, "melanoma_sensitivity": 0.7, "nevus_specificity": 0.6,
             "macro_auc": 0.8, "recall_argmax": {"mel": 0.5}, "abstention": {"answered": 0.9}}
    result = {"version_dir": "v", "name": "candidate A", "labels": ["mel", "nv"],
              "own_test": own,
              "robustness": {"primary_x0.5": own, "primary_x1": own, "primary_x2": own,
                             "primary_84px": {**own, "balanced_accuracy": 0.4}},
              "external": {**check, **_candidate(0.81)["external"]},
              "external_bcn84": {**check, **_candidate(0.5, bcn=(0.76, 0.35))["external_bcn84"],
                                 "outside": {"scc": {"images": 4, "called_argmax": {
                                     "mel": 0.25, "nv": 0.75}}}},
              "cost": {"single_image_p50_ms": 20.0, "batch_images_per_s": 80.0}}
    own_rows, checks_rows, bcn_rows = (part.strip().splitlines() for part in
                                       comparison_markdown([result, {**result,
                                                                     "name": "B"}]).split("\n\n"))
    assert len(own_rows) == 4 and own_rows[2].startswith("| candidate A | 0.700 |")
    assert own_rows[2].endswith("| 0.400 | 20.0 | 80.0 |")
    assert len(checks_rows) == 6
    assert checks_rows[2].startswith("| candidate A | ISIC 2017 | 10 (8) | 0.810 [0.710-0.910] |")
    assert checks_rows[3].startswith("| candidate A | BCN-84 | 10 (8) | 0.760 [0.660-0.860] | "
                                     "0.350 [0.250-0.450] |")
    assert checks_rows[3].endswith("| 0.700 / 0.600 | 0.900 |")
    assert bcn_rows[0] == "| version | BCN-84 recall mel / nv (argmax) | scc called mel / nv |"
    assert bcn_rows[2] == "| candidate A | 0.500 / - | 0.25 / 0.75 |"


# --- seed ensembles --------------------------------------------------------------------------


def test_an_ensemble_is_one_network_with_the_same_contract(tmp_path: Path) -> None:
    from dermserve.core.model_config import ModelConfig
    from dermserve.trainer.ensemble_network import ensemble_network
    from dermserve.trainer.export import ServingModule, save_version
    from dermserve.trainer.network import build_network
    from dermserve.trainer.served import ServedVersion

    members = [build_network(7, TINY_INPUT, "tiny", seed=s, colour_constancy="shades_of_gray",
                             name=f"member_{s}") for s in (1, 2)]
    ensemble = ensemble_network(members)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    scaled = images.astype(np.float32) / 127.5 - 1
    logits, features = (np.asarray(t) for t in ensemble(scaled, training=False))
    member_logits = [np.asarray(m(scaled, training=False)[0]) for m in members]
    log_softmax = [x - np.log(np.exp(x).sum(axis=1, keepdims=True)) for x in member_logits]
    np.testing.assert_allclose(logits, np.mean(log_softmax, axis=0), atol=1e-5)
    assert features.shape == (3, 2 * np.asarray(members[0](scaled)[1]).shape[1])

    config = ModelConfig(labels=HAM10000_LABELS, display_names={}, input=TINY_INPUT)
    save_version(ServingModule(ensemble, config), config, tmp_path / "1")
    served, _ = ServedVersion(tmp_path / "1").classify_arrays(images)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(served, expected, atol=1e-5)

    from dermserve.trainer.ensemble import ensemble_name

    assert ensemble_name([Path("var/s1"), Path("var/s2")], True, "mobilenet_v2") == (
        "ensemble of 2 mobilenet_v2 networks (s1, s2; mean log-probabilities, flip TTA)")
    flipped = ensemble_network(members, flip_tta=True)
    mirror = np.asarray(flipped(scaled[:, :, ::-1].copy(), training=False)[0])
    np.testing.assert_allclose(np.asarray(flipped(scaled, training=False)[0]), mirror,
                               atol=1e-5)


# --- the GPU path: training under Keras 3 on JAX, exporting under TensorFlow -----------------


def test_the_trainer_trains_under_jax_and_publishes_under_tensorflow(tmp_path: Path) -> None:
    """What a lent accelerator runs (TensorFlow does not run there, Keras on JAX does): the
    resumable training under KERAS_BACKEND=jax, then evaluation and export of the same workdir
    under TensorFlow, here on the CPU with the tiny backbone."""
    import os
    import subprocess
    import sys

    write_ham_dataset(tmp_path / "ham", lesions_per_class=5)
    common = ["--data-dir", str(tmp_path / "ham"), "--workdir", str(tmp_path / "work"),
              "--backbone", "tiny", "--input-size", "32", "--reference-pixels", "3072",
              "--first-trainable", "tiny_conv2", "--views-per-image", "1", "--batch-size", "16",
              "--head-epochs", "2", "--fine-tune-epochs", "1", "--imbalance", "class_weights",
              "--colour-constancy", "shades_of_gray", "--bootstrap-samples", "20",
              "--ood-components", "4", "--noise-images", "0", "--sample-predictions", "4"]
    run = [sys.executable, "-m", "dermserve.trainer"]
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    trained = subprocess.run([*run, "--train-only", *common], env=env, capture_output=True,
                             text=True, timeout=240)
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.loads((tmp_path / "work" / "training.json").read_text())
    assert summary["stages"]["top"]["history"], "stage 2 ran no epoch"
    env["KERAS_BACKEND"] = "tensorflow"
    published = subprocess.run([*run, "--publish-only", "--model-base", str(tmp_path / "models"),
                                *common], env=env, capture_output=True, text=True, timeout=240)
    assert published.returncode == 0, published.stderr[-3000:]
    assert (tmp_path / "models" / "ham10000" / "1" / "saved_model.pb").is_file()


def test_candidates_compares_head_only_single_and_ensemble_networks(tmp_path: Path) -> None:
    from dermserve.trainer.data import split_by_lesion as split_lesions
    from dermserve.trainer.research.candidates import main as candidates_main
    from dermserve.trainer.settings import TrainSettings
    from dermserve.trainer.train import train_network

    write_ham_dataset(tmp_path / "ham", lesions_per_class=5, size=(40, 30))
    isic = write_isic_like(tmp_path / "isic2017")
    split = split_lesions(load_records(tmp_path / "ham"), seed=0)
    for seed in (1, 2):
        workdir = tmp_path / f"s{seed}"
        split.save(workdir / "split.json")
        train_network(split, TrainSettings(
            backbone="tiny", input_size=32, reference_pixels=64 * 48,
            first_trainable="tiny_conv2", views_per_image=1, batch_size=8, head_epochs=2,
            fine_tune_epochs=1, imbalance="class_weights", seed=seed), workdir)
    first, second = tmp_path / "s1", tmp_path / "s2"
    specs = [f"{first}:head", str(first), f"{first}+{second}", f"{first}^flip"]
    out = tmp_path / "candidates.json"
    assert candidates_main(["--data-dir", str(tmp_path / "ham"), "--external-dir", str(isic),
                            "--out", str(out), *specs]) == 0
    results = json.loads(out.read_text())
    assert list(results) == specs
    for result in results.values():
        assert result["external"]["images"] == 18 and result["own_test"]["images"] == len(
            split.test)
        assert 0 <= result["own_test"]["balanced_accuracy"] <= 1
    # the ensemble and the flip-averaged network are other networks than the first member
    assert results[specs[2]]["temperature"] != results[specs[1]]["temperature"]
    assert results[specs[3]]["temperature"] != results[specs[1]]["temperature"]
    assert out.with_suffix(".md").read_text().count("\n") == 2 + len(specs)


def test_prior_correction_and_the_geometric_mean_of_two_models() -> None:
    from dermserve.trainer.research.sklesion import (
        UNKNOWN_METADATA,
        figures,
        geometric_mean,
        prior_corrected,
    )

    priors = np.array([0.5, 0.25, 0.25])
    probabilities = np.array([[0.5, 0.3, 0.2], [0.6, 0.2, 0.2]])
    corrected = prior_corrected(probabilities, priors)
    np.testing.assert_allclose(corrected.sum(axis=1), 1)
    # a class seen half the time needs twice the evidence: the first image changes its argmax
    assert corrected[0].argmax() == 1 and corrected[1].argmax() == 0
    mean = geometric_mean(np.array([[0.9, 0.1]]), np.array([[0.1, 0.9]]))
    np.testing.assert_allclose(mean, [[0.5, 0.5]])
    # the metadata vector of an image without metadata: unknown sex and site, a missing age
    assert UNKNOWN_METADATA.shape == (10,) and UNKNOWN_METADATA[-1] == 1
    y = np.array([MEL, NV])
    result = figures(y, _probabilities([{"mel": 0.9}, {"nv": 0.9}]))
    assert result["balanced_accuracy"] == 1.0 and result["melanoma_auc"] == 1.0


def test_an_ensemble_refuses_a_member_trained_at_another_input_size(tmp_path: Path) -> None:
    import json

    from dermserve.trainer.ensemble import check_built_as_trained
    from dermserve.trainer.errors import VersionMismatch
    from dermserve.trainer.settings import TrainSettings

    trained = TrainSettings(input_size=224)
    (tmp_path / "training.json").write_text(json.dumps({"settings": {
        "input_size": 224, "backbone": trained.backbone, "colour_constancy":
            trained.colour_constancy, "reference_pixels": trained.reference_pixels}}))
    check_built_as_trained(tmp_path, trained)
    # built at the default 192 its weights would load and serve a model nobody measured
    with pytest.raises(VersionMismatch, match="input_size 224 \\(here 192\\)"):
        check_built_as_trained(tmp_path, TrainSettings(input_size=192))
    with pytest.raises(VersionMismatch, match="no readable training settings"):
        check_built_as_trained(tmp_path / "missing", trained)
