"""DICOM files for the tests: written here with pydicom from real HAM10000 dermatoscopy images
(../shared/data/ham10000), and pydicom's own bundled test files (`pydicom.data`, written by
other toolkits) for the files we did not write.

Every file made here carries a planted patient name, ID and birth date, so that a test can check
that none of them leaks into a response, a log line, an error or a metric."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    DermoscopicPhotographyImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    VLPhotographicImageStorage,
    generate_uid,
)

REPO = Path(__file__).resolve().parents[1]
HAM_IMAGES = REPO.parent / "shared" / "data" / "ham10000" / "images"
HAM_IMAGE_NAMES = ("ISIC_0024306.jpg", "ISIC_0024307.jpg", "ISIC_0024308.jpg")
PATIENT_NAME = "Planted^Zebedee^Quux"
PATIENT_ID = "PLANTED-PID-93817"
PATIENT_BIRTH_DATE = "19230417"
PLANTED = (PATIENT_NAME, "Zebedee", PATIENT_ID, PATIENT_BIRTH_DATE)
"""What must never appear in a response, a log, an error or a metric."""

VARIANTS = {
    # name: (transfer syntax, photometric interpretation)
    "uncompressed-rgb": (ExplicitVRLittleEndian, "RGB"),
    "uncompressed-ybr422-implicit": (ImplicitVRLittleEndian, "YBR_FULL_422"),
    "jpeg-ybr422": (JPEGBaseline8Bit, "YBR_FULL_422"),
    "jpeg-rgb": (JPEGBaseline8Bit, "RGB"),
}


def ham_image(name: str = HAM_IMAGE_NAMES[0]) -> Image.Image:
    """A real HAM10000 image (RGB, as ../shared holds it); skips the test where ../shared has no
    data."""
    path = HAM_IMAGES / name
    if not path.is_file():
        pytest.skip(f"HAM10000 image {name} not in ../shared")
    with Image.open(path) as image:
        return image.convert("RGB")


def ybr_422_samples(image: Image.Image) -> bytes:
    """Uncompressed YBR_FULL_422 (PS3.3 C.7.6.3.1.2): Y0 Y1 Cb Cr for each pair of pixels, the
    chroma averaged over the pair."""
    ycbcr = np.asarray(image.convert("YCbCr"), np.uint16)
    y = ycbcr[..., 0].astype(np.uint8)
    chroma = ((ycbcr[:, 0::2, 1:] + ycbcr[:, 1::2, 1:] + 1) // 2).astype(np.uint8)
    packed = np.stack([y[:, 0::2], y[:, 1::2], chroma[..., 0], chroma[..., 1]], axis=-1)
    return packed.tobytes()


def jpeg_frame(image: Image.Image, photometric: str) -> bytes:
    """A JPEG baseline frame: YCbCr 4:2:2 for YBR_FULL_422; for RGB, the R, G and B samples
    coded as they are (no colour transform; Pillow writes such a frame from a YCbCr-mode image
    holding the RGB bytes, with a JFIF marker that dermserve must ignore)."""
    buffer = io.BytesIO()
    if photometric == "RGB":
        raw = Image.frombytes("YCbCr", image.size, image.tobytes())
        raw.save(buffer, "JPEG", quality=95, subsampling=0)
    else:
        image.save(buffer, "JPEG", quality=95, subsampling=1)  # 1: 4:2:2
    return buffer.getvalue()


def pixel_data(image: Image.Image, syntax: UID, photometric: str) -> bytes:
    if syntax == JPEGBaseline8Bit:
        return encapsulate([jpeg_frame(image, photometric)])
    if photometric == "YBR_FULL_422":
        return ybr_422_samples(image)
    return image.tobytes()


def dicom_dataset(image: Image.Image, variant: str = "uncompressed-rgb",
                  sop_class: UID = VLPhotographicImageStorage, modality: str = "XC") -> Dataset:
    syntax, photometric = VARIANTS[variant]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.PatientBirthDate = PATIENT_BIRTH_DATE
    ds.Rows, ds.Columns = image.height, image.width
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, photometric
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixel_data(image, syntax, photometric)
    ds["PixelData"].VR = "OB"
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


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
