"""DICOM files for the tests: written here with pydicom from real HAM10000 dermatoscopy images
(../shared/data/ham10000), and pydicom's own bundled test files (`pydicom.data`, written by
other toolkits) for the files we did not write.

Every file made here carries a planted patient name, ID and birth date, so that a test can check
that none of them leaks into a response, a log line, an error or a metric."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import UID, DermoscopicPhotographyImageStorage, VLPhotographicImageStorage

from devtools.dicom_sample import photograph_dataset, to_bytes

REPO = Path(__file__).resolve().parents[1]
HAM_IMAGES = REPO.parent / "shared" / "data" / "ham10000" / "images"
HAM_IMAGE_NAMES = ("ISIC_0024306.jpg", "ISIC_0024307.jpg", "ISIC_0024308.jpg")
PATIENT_NAME = "Planted^Zebedee^Quux"
PATIENT_ID = "PLANTED-PID-93817"
PATIENT_BIRTH_DATE = "19230417"
PLANTED = (PATIENT_NAME, "Zebedee", PATIENT_ID, PATIENT_BIRTH_DATE)
"""What must never appear in a response, a log, an error or a metric."""

def ham_image(name: str = HAM_IMAGE_NAMES[0]) -> Image.Image:
    """A real HAM10000 image (RGB, as ../shared holds it); skips the test where ../shared has no
    data."""
    path = HAM_IMAGES / name
    if not path.is_file():
        pytest.skip(f"HAM10000 image {name} not in ../shared")
    with Image.open(path) as image:
        return image.convert("RGB")


def dicom_dataset(image: Image.Image, variant: str = "uncompressed-rgb",
                  sop_class: UID = VLPhotographicImageStorage, modality: str = "XC") -> Dataset:
    """devtools.dicom_sample's photograph with the planted patient attributes."""
    ds = photograph_dataset(image, variant)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.Modality = modality
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.PatientBirthDate = PATIENT_BIRTH_DATE
    return ds


def ham_dicom(variant: str = "uncompressed-rgb", name: str = HAM_IMAGE_NAMES[0],
              sop_class: UID = VLPhotographicImageStorage, modality: str = "XC") -> bytes:
    return to_bytes(dicom_dataset(ham_image(name), variant, sop_class, modality))


def dermoscopic_dicom(name: str = HAM_IMAGE_NAMES[1]) -> bytes:
    """The dermoscopy-specific SOP class and modality of newer DICOM editions."""
    return ham_dicom("jpeg-ybr422", name, DermoscopicPhotographyImageStorage, "DMS")


def bundled(name: str) -> bytes:
    """One of pydicom's bundled test files, as it is."""
    return Path(get_testdata_file(name)).read_bytes()  # type: ignore[arg-type]


def bundled_as_photograph(name: str) -> bytes:
    """A bundled file relabelled as a VL Photographic image (SOP class and modality only), so
    that its pixel encoding, not its SOP class, decides."""
    ds = dcmread(get_testdata_file(name))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = VLPhotographicImageStorage
    ds.Modality = "XC"
    ds.PatientName = PATIENT_NAME
    for _ in ds:  # convert every raw element, so that it is written back as it was read
        pass
    return to_bytes(ds)

