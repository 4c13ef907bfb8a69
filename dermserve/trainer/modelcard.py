"""The model card of a version (`assets.extra/MODEL_CARD.md`), rendered from its report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dermserve.core.model_config import ModelConfig
from dermserve.trainer.report import chosen_on

MODEL_CARD = "MODEL_CARD.md"
HAM10000_CITATION = (
    "Tschandl P., Rosendahl C., Kittler H. The HAM10000 dataset, a large collection of "
    "multi-source dermatoscopic images of common pigmented skin lesions. Sci. Data 5, 180161 "
    "(2018). doi:10.1038/sdata.2018.161")


def _value(metrics: dict[str, Any], name: str) -> str:
    entry = metrics.get(name)
    if not entry or entry["value"] is None or math.isnan(entry["value"]):
        return "n/a"
    low, high = entry["ci95"]
    interval = "" if low is None else f" (95% CI {low:.3f}-{high:.3f})"
    return f"{entry['value']:.3f}{interval}"


def _sanity_line(results: list[dict[str, Any]]) -> str:
    if not results:
        return "- Sanity check: no non-skin or noise images were checked."
    answered = [r["name"] for r in results if not r["abstained"]]
    line = (f"- Sanity check: abstained on {len(results) - len(answered)} of {len(results)} "
            "non-skin photos and noise images")
    return line + (f"; ANSWERED {', '.join(answered)}." if answered else ".")


CHECK_DESCRIPTIONS = {
    "external": "ISIC 2017 validation + test: {images} images from other clinics and cameras "
                "(mel, nv, bkl only, squashed to 256x256); image bootstrap.",
    "external_bcn84": "BCN-84 (Hospital Clinic de Barcelona, ISIC 2019): {images} images of "
                      "{lesions} lesions, all seven classes, stored at 84 px (compare models "
                      "with each other on it, not with full-resolution figures); lesion "
                      "bootstrap.",
}


def _check_lines(key: str, check: dict[str, Any]) -> list[str]:
    """One external check in the card."""
    auc, balanced = check["melanoma_auc"], check.get("balanced_accuracy")
    recall = ", ".join(f"{label} {value:.3f}" for label, value in check["recall_argmax"].items())
    lines = [CHECK_DESCRIPTIONS[key].format(**check), "",
             f"- Melanoma-vs-rest ROC AUC: {auc['value']:.3f} (95% CI {auc['ci95'][0]:.3f}-"
             f"{auc['ci95'][1]:.3f})"]
    if balanced:
        lines.append(f"- Balanced accuracy over the classes present: {balanced['value']:.3f} "
                     f"(95% CI {balanced['ci95'][0]:.3f}-{balanced['ci95'][1]:.3f})")
    lines += [f"- At the served operating point (P(mel) >= {check['melanoma_threshold']}): "
              f"melanoma sensitivity {check['melanoma_sensitivity']:.3f}, nevus specificity "
              f"{check['nevus_specificity']:.3f}",
              f"- Per-class recall (argmax): {recall}"]
    for dx, calls in check.get("outside", {}).items():
        called = ", ".join(f"{label} {share:.2f}" for label, share in
                           calls["called_argmax"].items())
        lines.append(f"- Its {calls['images']} {dx} images (not one of the seven) are called: "
                     f"{called}")
    return [*lines, ""]


def _external_lines(check: dict[str, Any] | None) -> list[str]:
    """The external checks in the card: what hospitals' images from other clinics look like."""
    from dermserve.trainer.external import CHECKS

    measured = [key for key in CHECKS if (check or {}).get(key)]
    if not measured:
        return ["Not measured for this version (published without `--external-dir` or "
                "`--bcn-dir`): its performance on other clinics' images is unknown.", ""]
    lines = ["Never trained, tuned, thresholded or epoch-picked on.", ""]
    if (check or {}).get("context") == "given":
        lines += ["This version takes patient context: each image was sent its own recorded age, "
                  "sex and body site, as a caller with the metadata sends them (`python -m "
                  "dermserve.trainer.external --neutral-context` measures it without).", ""]
    for key in measured:
        lines += _check_lines(key, (check or {})[key])
    robustness = (check or {}).get("robustness", {})
    for name, title in (("crops224", "in the 224x224 central-crop rendition"),
                        ("primary_84px", "shrunk to BCN-84's 84x84 pixels")):
        value = robustness.get(name, {}).get("balanced_accuracy")
        if value is not None:
            lines.append(f"- Own test {title}: balanced accuracy {value:.3f}")
    return [*lines, ""]


SKLESION_MARK = "sklesion"
"""How a network name says it holds the sklesion member (trainer.two_origin)."""
SKLESION_NOTES = [
    "- The sklesion member (sklesion 0.2.2, an Xception by its authors, MIT licence, fetched at "
    "training time, never at run time) was trained on HAM10000 with a split we do not know, so "
    "it may have seen this version's validation and test lesions: **the held-out figures below "
    "are optimistic; judge this version by the external checks.**",
]


def _member_notes(report: dict[str, Any]) -> list[str]:
    return SKLESION_NOTES if SKLESION_MARK in report["model"].get("backbone", "") else []


def render_model_card(config: ModelConfig, report: dict[str, Any]) -> str:
    test, data = report["test"]["metrics"], report["data"]
    labels = ", ".join(f"`{label}` ({config.display_name(label)})" for label in config.labels)
    rule = config.abstention
    return "\n".join([
        f"# Model card: {report['model']['name']}", "",
        "**Not a diagnostic device.** A research model for decision support experiments; it must "
        "not be used to diagnose, treat or triage patients. Non-commercial use only (see Licence).",
        "",
        "## Model", "",
        f"- Network: {report['model'].get('backbone', 'unknown')} "
        f"({report['model'].get('description', '')}), transfer learning from ImageNet weights.",
        *_member_notes(report),
        f"- Input: uint8 RGB `{config.input.height}x{config.input.width}` produced by "
        "`core.preprocessing.to_model_input`: the photo is first downscaled (antialiased) to "
        f"about {config.input.reference_pixels} pixels of detail, the 200x150 of the training "
        "images, then the whole frame is resized. Scaling to [-1, 1] is inside the graph.",
        f"- Output: calibrated probabilities over {len(config.labels)} classes: {labels}; "
        "an out-of-distribution score (Mahalanobis distance of the pooled features to the "
        "nearest class mean, in a PCA subspace of the training features).",
        f"- Calibration: temperature scaling, T = {config.temperature:.3f} (fitted on "
        f"{chosen_on(report)}; the melanoma threshold too).",
        f"- Abstention: answer only when the top probability >= {rule.min_confidence:.3f} and the "
        f"OOD score <= {rule.max_ood_score}; thresholds chosen on validation.",
        f"- Size: {report['model'].get('size_bytes', 'n/a')} bytes on disk.", "",
        "## Data", "",
        f"HAM10000 ({data.get('source', '')}): dermatoscopic images of pigmented lesions, "
        "mostly from two sites (Vienna, Queensland), predominantly light skin types. Split "
        f"train/validation/test by lesion_id (no lesion in two splits), stratified by dx, seed "
        f"{data['seed']}: images {data['images']}, lesions {data['lesions']}. The manifest is "
        "`assets.extra/split.json`.", "",
        *([f"A second rendition of the same images ({data['renditions']}) joins each image's "
           "side of the split."] if data.get("renditions") else []),
        *([f"Extra training images from other clinics: {data['extra_training']}; they are never "
           "in validation or test."] if data.get("extra_training") else []),
        "",
        "## Held-out metrics (test split, lesion-bootstrap 95% intervals)", "",
        f"- Balanced accuracy (mean per-class recall): {_value(test, 'balanced_accuracy')}",
        f"- Macro F1: {_value(test, 'macro_f1')}",
        f"- Macro one-vs-rest ROC-AUC: {_value(test, 'macro_auc')}",
        f"- Melanoma sensitivity / specificity at the operating point (P(mel) >= "
        f"{report['test']['melanoma_threshold']}): {_value(test, 'melanoma_sensitivity')} / "
        f"{_value(test, 'melanoma_specificity')}",
        f"- ECE (15 bins, after calibration): {_value(test, 'ece')}",
        _sanity_line(report.get("sanity", [])),
        "- Full report: `assets.extra/report/report.md`.", "",
        "## External checks (other clinics)", "",
        *_external_lines(report.get("external_check")),
        "## Intended use", "",
        "Research and engineering demonstrations of a skin-lesion classification service on "
        "dermatoscopic images. Not for clinical use, and not for photos taken without a "
        "dermatoscope.", "",
        "## Limitations", "",
        "- Trained and tested on one public data set; performance on other populations, skin "
        "types, devices and clinics is unknown and likely lower.",
        "- Trained at the detail of 200x150 frames: finer detail in sharper inputs is removed on "
        "purpose.",
        "- ISIC 2017 has only three of the seven classes; BCN-84 has all seven but only at 84 px "
        "and from one clinic.",
        "- Seven classes only: any other lesion (or non-lesion) is forced into one of them unless "
        "the abstention rule catches it; the OOD score is a heuristic, not a guarantee.",
        "- Many HAM10000 labels come from follow-up or consensus rather than histopathology.",
        "- Minority classes (df, vasc, akiec) have few test lesions: wide intervals.", "",
        "## Licence", "",
        "The weights are derived from HAM10000, licensed CC BY-NC 4.0: non-commercial use only, "
        f"with attribution. Cite: {HAM10000_CITATION}", ""])


def write_model_card(version_dir: Path, config: ModelConfig, report: dict[str, Any]) -> Path:
    path = version_dir / "assets.extra" / MODEL_CARD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_model_card(config, report), encoding="utf-8")
    return path
