"""Wrap a photograph as a DICOM file dermserve accepts, to try the DICOM path without a PACS:

    python -m devtools.dicom_sample IMAGE OUT.dcm [--variant jpeg-ybr422] [--dermoscopic]

Variants: JPEG Baseline with YCbCr 4:2:2 samples (`jpeg-ybr422`) or with RGB samples coded
without a colour transform (`jpeg-rgb`), uncompressed RGB (`uncompressed-rgb`) or uncompressed
YBR_FULL_422 in Implicit VR (`uncompressed-ybr422-implicit`). The SOP class is VL Photographic
Image Storage with modality XC, or with `--dermoscopic` Dermoscopic Photography Image Storage
with modality DMS. Fresh UIDs, no patient attributes (the tests add planted ones). The tests
build their DICOM files with the same functions.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
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

VARIANTS = {
    # name: (transfer syntax, photometric interpretation)
    "uncompressed-rgb": (ExplicitVRLittleEndian, "RGB"),
    "uncompressed-ybr422-implicit": (ImplicitVRLittleEndian, "YBR_FULL_422"),
    "jpeg-ybr422": (JPEGBaseline8Bit, "YBR_FULL_422"),
    "jpeg-rgb": (JPEGBaseline8Bit, "RGB"),
}
JPEG_QUALITY = 95  # a clinical archive's usual lossy quality; q95 keeps dermoscopic texture


def ybr_422_samples(image: Image.Image) -> bytes:
    """Uncompressed YBR_FULL_422 (PS3.3 C.7.6.3.1.2): Y0 Y1 Cb Cr for each pair of pixels, the
    chroma averaged over the pair (an odd last column is dropped: the width must be even)."""
    ycbcr = np.asarray(image.convert("YCbCr"), np.uint16)[:, : image.width // 2 * 2]
    y = ycbcr[..., 0].astype(np.uint8)
    chroma = ((ycbcr[:, 0::2, 1:] + ycbcr[:, 1::2, 1:] + 1) // 2).astype(np.uint8)
    packed = np.stack([y[:, 0::2], y[:, 1::2], chroma[..., 0], chroma[..., 1]], axis=-1)
    return packed.tobytes()


def jpeg_frame(image: Image.Image, photometric: str) -> bytes:
    """A JPEG Baseline frame: YCbCr 4:2:2 for YBR_FULL_422; for RGB, the R, G and B samples
    coded as they are (no colour transform: Pillow writes such a frame from a YCbCr-mode image
    holding the RGB bytes, with a JFIF marker that a reader must ignore, as PS3.5 8.2.1 puts the
    photometric interpretation before the JPEG markers)."""
    buffer = io.BytesIO()
    if photometric == "RGB":
        raw = Image.frombytes("YCbCr", image.size, image.tobytes())
        raw.save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    else:
        image.save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=1)  # 1: 4:2:2
    return buffer.getvalue()


def pixel_data(image: Image.Image, syntax: UID, photometric: str) -> bytes:
    if syntax == JPEGBaseline8Bit:
        return encapsulate([jpeg_frame(image, photometric)])
    if photometric == "YBR_FULL_422":
        return ybr_422_samples(image)
    return image.tobytes()


def photograph_dataset(image: Image.Image, variant: str = "jpeg-ybr422",
                       dermoscopic: bool = False) -> Dataset:
    """A single-frame colour photograph as a DICOM data set with its file meta information."""
    syntax, photometric = VARIANTS[variant]
    if photometric == "YBR_FULL_422" and syntax != JPEGBaseline8Bit:
        image = image.crop((0, 0, image.width // 2 * 2, image.height))
    sop_class = DermoscopicPhotographyImageStorage if dermoscopic else VLPhotographicImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "DMS" if dermoscopic else "XC"
    ds.Rows, ds.Columns = image.height, image.width
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, photometric
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixel_data(image, syntax, photometric)
    ds["PixelData"].VR = "OB"
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """The data set as a DICOM Part 10 file (preamble, DICM, file meta information)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.dicom_sample",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="jpeg-ybr422")
    parser.add_argument("--dermoscopic", action="store_true",
                        help="Dermoscopic Photography Image Storage, modality DMS")
    args = parser.parse_args(argv)
    with Image.open(args.image) as image:
        ds = photograph_dataset(image.convert("RGB"), args.variant, args.dermoscopic)
    args.output.write_bytes(to_bytes(ds))
    print(f"{args.output}: {ds.file_meta.TransferSyntaxUID.name}, "
          f"{ds.PhotometricInterpretation}, {ds.Columns}x{ds.Rows}, study {ds.StudyInstanceUID}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
