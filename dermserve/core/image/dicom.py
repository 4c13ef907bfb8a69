"""DICOM input: a Part 10 file's bytes in, its one colour photograph out (a JPEG frame still
encoded, for core/image/opening.py to open like any JPEG, or the converted pixels), or
InvalidImage with a stable reason. Recognised by content only: the `DICM`
marker after the 128-byte preamble (PS3.10 section 7.1), never by a file name.

Accepted (docs/integration.md has the conformance statement and its sources):

| attribute                 | accepted                                                       |
|---------------------------|----------------------------------------------------------------|
| SOP Class UID             | VL Photographic Image Storage 1.2.840.10008.5.1.4.1.1.77.1.4,  |
|                           | Dermoscopic Photography Image Storage 1.2.840.10008.5.1.4.1.1.77.1.7 |
| Modality                  | XC (external-camera photography), DMS (dermoscopy)             |
| Transfer Syntax UID       | JPEG Baseline 1.2.840.10008.1.2.4.50, Explicit VR Little Endian |
|                           | 1.2.840.10008.1.2.1, Implicit VR Little Endian 1.2.840.10008.1.2 |
| Number of Frames          | absent or 1                                                    |
| Samples per Pixel         | 3                                                              |
| Photometric Interpretation| RGB, YBR_FULL, YBR_FULL_422                                    |
| Bits Allocated / Stored   | 8 / 8                                                          |
| Study, Series and SOP     | present and valid UIDs (they travel with the result)           |
| Instance UIDs             |                                                                |

Everything is judged from the header before a pixel is decoded, cheapest first: the SOP class,
the modality, the transfer syntax, the frame count, the colour, the bit depth, then Rows and
Columns against the same pixel, side and aspect limits as a JPEG or PNG, then the pixel data's
presence and length, then the UIDs. A JPEG Baseline frame then goes through the JPEG path of
core/image/ (opening.py's header and scan checks, decoding.py's reduced-scale decode, decode
budget, deadline), and its size must be the header's (`check_frame_size`). Uncompressed pixels
are converted by pydicom (which turns YBR into RGB) when the file is read; the classifier opens a
DICOM file within a decode-budget share (core/image/opening.py `parse_share`: the file's bytes
counted as RGB pixels, twice), so parsing waits for the budget like decoding.

Colour: a JPEG frame's samples are YCbCr unless the DICOM header says RGB (PS3.5 section 8.2.1:
no colour transform was applied). libjpeg assumes YCbCr for a three-component frame without an
Adobe marker, so such a frame gets an Adobe APP14 marker with transform 0 (and loses a JFIF
marker, which would imply YCbCr) before Pillow sees it. A frame with an Adobe marker keeps it:
the marker says what the encoder did.

Before pydicom parses anything, core/image/dicom_scan.py counts the file's elements, items and
fragments in its bytes (DICOM_TOO_COMPLEX past `max_dicom_elements` or `max_dicom_depth`), so a
file of a million empty items costs milliseconds, not a gigabyte; the scan checks the deadline
as it goes. A file that is also a JPEG or PNG (a polyglot) is refused as AMBIGUOUS_FORMAT by
core/image/opening.py before either reader sees it.

Privacy: only the study, series and SOP instance UIDs, the SOP class and the modality leave this
module (`DicomReference`), and the patient context the model may use (`file_context`: Patient's
Age, Patient's Sex and Body Part Examined, which go to the model and nowhere else; a value that
is malformed or outside core/context.py's vocabularies is dropped, never refused). Patient name,
ID and birth date are never read, so pydicom never validates, logs or warns about them. No
refusal message quotes a value from the file, and `quiet_pydicom` keeps pydicom from validating
values while reading, from printing `warnings` and from logging text from the file.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    UID,
    DermoscopicPhotographyImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    VLPhotographicImageStorage,
)

from dermserve.core.context import NO_CONTEXT, PatientContext, lenient_context
from dermserve.core.errors import DermserveError, InvalidImage
from dermserve.core.image.dicom_scan import check_structure
from dermserve.core.image.limits import DeadlineCheck, ImageLimits, check_dimensions
from dermserve.core.prediction import DicomReference

DICM_OFFSET = 128  # bytes of preamble before the marker (PS3.10 section 7.1)
DICM_MARKER = b"DICM"

SOP_CLASSES = {
    VLPhotographicImageStorage: "VL Photographic Image Storage",
    DermoscopicPhotographyImageStorage: "Dermoscopic Photography Image Storage",
}
INSTANCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
MODALITIES = frozenset({"XC", "DMS"})
TRANSFER_SYNTAXES = frozenset({JPEGBaseline8Bit, ExplicitVRLittleEndian, ImplicitVRLittleEndian})
COLOUR_INTERPRETATIONS = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422"})
ADOBE_RGB_MARKER = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
"""An APP14 Adobe segment with transform 0: the samples are RGB, not YCbCr."""
ADOBE_PREFIX = b"\xff\xee"
JFIF_PREFIX = b"\xff\xe0"
JPEG_SOI = b"\xff\xd8"



@dataclass(frozen=True)
class DicomContent:
    """A DICOM file that passed every header check: where it came from, its size (Columns,
    Rows), and its image: a JPEG Baseline frame still encoded (its colour made explicit) or the
    converted uncompressed pixels."""

    reference: DicomReference
    size: tuple[int, int]
    image: bytes | Image.Image
    context: PatientContext = NO_CONTEXT


PYDICOM_LOGGER = "pydicom"
PYDICOM_MODULES = r"pydicom(\.|$)"
WITHHELD = "pydicom warned about an irregular DICOM file (details withheld: they may quote " \
    "values from the file)"


def withhold_details(record: logging.LogRecord) -> bool:
    """A logging filter: pydicom's records keep their level, lose their text (which quotes the
    file's values)."""
    record.msg, record.args = WITHHELD, None
    return True


def quiet_pydicom() -> None:
    """pydicom's process-wide settings for untrusted files, set when a classifier is built:
    values are not validated while reading (each invalid value was a warning quoting it), its
    `warnings` (raw lines on stderr, outside the JSON logs) are ignored, and its log records
    keep no text from the file. Idempotent."""
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    warnings.filterwarnings("ignore", module=PYDICOM_MODULES)
    logging.getLogger(PYDICOM_LOGGER).addFilter(withhold_details)


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file by content: `DICM` after the 128-byte preamble."""
    return data[DICM_OFFSET:DICM_OFFSET + len(DICM_MARKER)] == DICM_MARKER


def read_dicom(data: bytes, limits: ImageLimits,
               check_deadline: DeadlineCheck | None = None) -> DicomContent:
    """Every check that needs no pixels, then the image: a JPEG frame still encoded (opened and
    decoded later, within the decode budget) or the converted uncompressed pixels."""
    check_structure(data, limits.max_dicom_elements, limits.max_dicom_depth, check_deadline)
    if check_deadline is not None:
        check_deadline()
    dataset = parse(data)
    with corrupt_unless_ours():
        reference = check_header(dataset, limits)
        image = (jpeg_frame(dataset) if transfer_syntax(dataset) == JPEGBaseline8Bit else
                 native_image(dataset))
        return DicomContent(reference, (int(dataset.get("Columns", 0)),
                                        int(dataset.get("Rows", 0))), image,
                            file_context(dataset))


@contextmanager
def corrupt_unless_ours() -> Iterator[None]:
    """Our refusals (and the deadline passing) go through; anything else raised while a DICOM
    file's elements or its frame are read is CORRUPT_IMAGE."""
    try:
        yield
    except DermserveError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on broken elements
        raise InvalidImage("the DICOM file is corrupt", "CORRUPT_IMAGE") from exc


def parse(data: bytes) -> Dataset:
    """The data set, its elements still raw (pydicom converts an element when it is read)."""
    try:
        return dcmread(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on broken files
        raise InvalidImage("the DICOM file cannot be parsed (corrupt or truncated)",
                           "CORRUPT_IMAGE") from exc


def transfer_syntax(dataset: Dataset) -> str:
    meta = getattr(dataset, "file_meta", None)
    return str(getattr(meta, "TransferSyntaxUID", "")) if meta is not None else ""


def check_header(dataset: Dataset, limits: ImageLimits) -> DicomReference:
    """Each refusal in the module's table, in that order; the reference when all pass."""
    check_kind(dataset)
    check_encoding(dataset)
    columns, rows = int(dataset.get("Columns", 0)), int(dataset.get("Rows", 0))
    check_dimensions(columns, rows, limits)
    check_pixel_data(dataset, columns, rows)
    study, series, instance = (instance_uid(dataset, keyword) for keyword in INSTANCE_UIDS)
    return DicomReference(study, series, instance, str(dataset.SOPClassUID),
                          str(dataset.Modality))


AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}  # years per unit
AGE_STRING = re.compile(r"(\d{3})([DWMY])")
"""The Age String VR (PS3.5 section 6.2): three digits and a unit, e.g. 045Y or 006M."""


def file_context(dataset: Dataset) -> PatientContext:
    """Patient's Age (0010,1010), Patient's Sex (0010,0040) and Body Part Examined (0018,0015),
    each dropped when malformed; a request's own fields override them (core/classifier.py)."""
    sex = {"F": "female", "M": "male"}.get(text_of(dataset, "PatientSex").upper(), "")
    return lenient_context(age_years(text_of(dataset, "PatientAge")), sex,
                           text_of(dataset, "BodyPartExamined"))


def text_of(dataset: Dataset, keyword: str) -> str:
    try:
        return str(dataset.get(keyword, "") or "").strip()
    except Exception:  # noqa: BLE001 - a broken element is as good as a missing one here
        return ""


def age_years(text: str) -> float | None:
    """An Age String in years, or None when it is not one."""
    match = AGE_STRING.fullmatch(text.upper())
    return None if match is None else int(match.group(1)) * AGE_UNITS[match.group(2)]


def instance_uid(dataset: Dataset, keyword: str) -> str:
    """A UID the result carries: it must be there and valid (PS3.5 section 9.1), since it is
    how the receiving system finds the study again."""
    uid = UID(str(dataset.get(keyword, "")))
    if not uid.is_valid:
        raise InvalidImage(f"the DICOM {keyword} is missing or not a valid UID", "INVALID_UID")
    return str(uid)


def check_kind(dataset: Dataset) -> None:
    """Only visible-light photographs of skin: no CT, MR, structured report, ultrasound..."""
    sop_class = str(dataset.get("SOPClassUID", ""))
    if not sop_class:  # type 1 in every storage object: pydicom stops quietly where a file ends
        raise InvalidImage("the DICOM file has no SOP Class UID (truncated or corrupt)",
                           "CORRUPT_IMAGE")
    if sop_class not in SOP_CLASSES:
        raise InvalidImage("the DICOM SOP class is not accepted; accepted: "
                           f"{', '.join(SOP_CLASSES.values())}",
                           "UNSUPPORTED_SOP_CLASS")
    modality = str(dataset.get("Modality", ""))
    if modality not in MODALITIES:
        raise InvalidImage("the DICOM modality is not accepted; accepted: "
                           f"{', '.join(sorted(MODALITIES))}", "UNSUPPORTED_MODALITY")


def check_encoding(dataset: Dataset) -> None:
    syntax = transfer_syntax(dataset)
    if syntax not in TRANSFER_SYNTAXES:
        raise InvalidImage("the DICOM transfer syntax is not accepted; "
                           "accepted: JPEG Baseline, Explicit or Implicit VR Little Endian",
                           "UNSUPPORTED_TRANSFER_SYNTAX")
    if int(dataset.get("NumberOfFrames", 1) or 1) != 1:
        raise InvalidImage("multi-frame DICOM images are not accepted", "MULTI_FRAME")
    interpretation = str(dataset.get("PhotometricInterpretation", ""))
    if int(dataset.get("SamplesPerPixel", 0)) != 3 or interpretation not in \
            COLOUR_INTERPRETATIONS:
        raise InvalidImage("the DICOM photometric interpretation is not accepted; the model "
                           "needs colour (RGB, YBR_FULL, YBR_FULL_422)",
                           "UNSUPPORTED_COLOR")
    if int(dataset.get("BitsAllocated", 0)) != 8 or int(dataset.get("BitsStored", 0)) != 8:
        raise InvalidImage("only 8 bits per sample are accepted", "UNSUPPORTED_BIT_DEPTH")


def check_pixel_data(dataset: Dataset, columns: int, rows: int) -> None:
    if "PixelData" not in dataset:
        raise InvalidImage("the DICOM file has no pixel data", "MISSING_PIXEL_DATA")
    if transfer_syntax(dataset) == JPEGBaseline8Bit:
        return  # its length is the JPEG decoder's to judge
    expected = columns * rows * (2 if dataset.PhotometricInterpretation == "YBR_FULL_422" else 3)
    if len(dataset.PixelData) < expected:
        raise InvalidImage("the DICOM pixel data is truncated", "CORRUPT_IMAGE")


def jpeg_frame(dataset: Dataset) -> bytes:
    """The frame, still encoded, its colour made explicit."""
    frames = generate_frames(dataset.PixelData, number_of_frames=1)
    frame = next(frames, b"")
    if not frame.startswith(JPEG_SOI):
        raise InvalidImage("the DICOM pixel data is not a JPEG frame", "CORRUPT_IMAGE")
    if dataset.PhotometricInterpretation == "RGB":
        frame = declared_rgb(frame)
    return frame


def check_frame_size(frame: Image.Image, size: tuple[int, int]) -> None:
    """The opened frame's size must be the header's: the limits were judged on Rows and
    Columns."""
    if frame.size != size:
        raise InvalidImage("the JPEG frame's size differs from the DICOM header's",
                           "CORRUPT_IMAGE")


def declared_rgb(frame: bytes) -> bytes:
    """`frame` with an Adobe marker saying its samples are RGB, unless it has one already (see
    the module docstring); a JFIF marker right after SOI, which implies YCbCr, is dropped."""
    if has_adobe_marker(frame):  # the encoder's own marker decides
        return frame
    rest = frame[len(JPEG_SOI):]
    if rest.startswith(JFIF_PREFIX) and rest[4:9] == b"JFIF\x00":
        rest = rest[2 + int.from_bytes(rest[2:4], "big"):]
    return JPEG_SOI + ADOBE_RGB_MARKER + rest


def has_adobe_marker(frame: bytes) -> bool:
    """Whether the frame's header has an APP14 Adobe segment long enough to carry its transform
    byte (libjpeg ignores a shorter one, and so does this)."""
    header = frame[:frame.find(b"\xff\xda")]  # up to the first scan
    start = header.find(ADOBE_PREFIX)
    while start != -1:
        length = int.from_bytes(header[start + 2:start + 4], "big")
        if header[start + 4:start + 9] == b"Adobe" and length >= len(ADOBE_RGB_MARKER) - 2:
            return True
        start = header.find(ADOBE_PREFIX, start + 1)
    return False


def native_image(dataset: Dataset) -> Image.Image:
    """Uncompressed pixels as an RGB image; pydicom converts YBR_FULL(_422) to RGB."""
    array: np.ndarray[Any, Any] = pixel_array(dataset, raw=False)  # raw=False: YBR -> RGB
    return Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
