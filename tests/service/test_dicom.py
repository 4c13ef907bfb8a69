"""DICOM input (dermserve/core/image/dicom.py): real HAM10000 images wrapped as DICOM by pydicom and
pydicom's bundled files from other toolkits, through the core decode and over the real server."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import grpc
import numpy as np
import pytest
from fhir.resources.R4B.bundle import Bundle
from prometheus_client import generate_latest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage

from dermserve.cli.main import main
from dermserve.core.errors import BackendTimeout, InvalidImage
from dermserve.core.image.decoding import decode_image
from dermserve.core.image.limits import ImageLimits
from dermserve.core.image.opening import open_image
from devtools.dicom_sample import VARIANTS, to_bytes
from tests.dicom_files import (
    PLANTED,
    bundled,
    bundled_as_photograph,
    dermoscopic_dicom,
    dicom_dataset,
    ham_dicom,
    ham_image,
)
from tests.service.conftest import Running, pb, reason_of

SMALL_OK = ImageLimits(min_side=1)  # pydicom's colour test files are 100x100 and smaller


def mean_difference(image: object, reference: np.ndarray) -> float:
    return float(np.abs(np.asarray(image, np.int16) - reference.astype(np.int16)).mean())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ham10000_dicom_decodes_to_the_image_it_wraps(variant: str) -> None:
    """Each encoding and colour space gives back the photograph: a wrong colour conversion
    (YBR read as RGB, or RGB converted as if YCbCr) is off by tens of levels on average."""
    source = ham_image()
    decoded = decode_image(ham_dicom(variant), ImageLimits())
    assert decoded.mode == "RGB" and decoded.size == source.size
    assert mean_difference(decoded, np.asarray(source)) < 3.0  # JPEG q95, 4:2:2 chroma: a little


@pytest.mark.parametrize("name", ["SC_rgb_jpeg.dcm", "SC_jpeg_no_color_transform.dcm",
                                  "SC_jpeg_no_color_transform_2.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                                  "SC_rgb_jpeg_lossy_gdcm.dcm",
                                  "SC_ybr_full_422_uncompressed.dcm", "examples_rgb_color.dcm"])
def test_colour_files_of_other_toolkits_decode_as_pydicom_does(name: str) -> None:
    """JPEG frames with and without Adobe or JFIF markers, RGB and YBR: our decode (Pillow's
    JPEG path, with the colour made explicit) equals pydicom's reference decode."""
    data = bundled_as_photograph(name)
    reference = dcmread(io.BytesIO(data)).pixel_array
    decoded = np.asarray(decode_image(data, SMALL_OK), np.int16)
    assert decoded.shape == reference.shape
    assert int(np.abs(decoded - reference).max()) <= 1


@pytest.mark.parametrize(("name", "reason"), [
    ("CT_small.dcm", "UNSUPPORTED_SOP_CLASS"),
    ("MR_small.dcm", "UNSUPPORTED_SOP_CLASS"),
    ("test-SR.dcm", "UNSUPPORTED_SOP_CLASS"),  # a structured report
    ("examples_ybr_color.dcm", "UNSUPPORTED_SOP_CLASS"),  # ultrasound
])
def test_other_modalities_are_refused(name: str, reason: str) -> None:
    with pytest.raises(InvalidImage) as caught:
        decode_image(bundled(name), SMALL_OK)
    assert caught.value.reason == reason


@pytest.mark.parametrize(("name", "reason"), [
    ("examples_ybr_color.dcm", "MULTI_FRAME"),  # 30 frames
    ("SC_rgb_rle_2frame.dcm", "UNSUPPORTED_TRANSFER_SYNTAX"),  # RLE
    ("JPEG2000.dcm", "UNSUPPORTED_TRANSFER_SYNTAX"),
    ("SC_rgb_jpeg_gdcm.dcm", "UNSUPPORTED_TRANSFER_SYNTAX"),  # JPEG lossless
    ("MR_small.dcm", "UNSUPPORTED_COLOR"),  # MONOCHROME2
    ("examples_palette.dcm", "UNSUPPORTED_COLOR"),  # PALETTE COLOR
])
def test_bundled_pixel_encodings_we_do_not_take_are_refused(name: str, reason: str) -> None:
    """The same files relabelled as photographs: their pixel encoding decides."""
    with pytest.raises(InvalidImage) as caught:
        decode_image(bundled_as_photograph(name), SMALL_OK)
    assert caught.value.reason == reason


def refusal(data: bytes, limits: ImageLimits | None = None) -> str:
    with pytest.raises(InvalidImage) as caught:
        decode_image(data, limits or ImageLimits())
    return caught.value.reason


def test_a_truncated_file_is_corrupt_wherever_it_is_cut() -> None:
    for variant in ("uncompressed-rgb", "jpeg-ybr422"):
        data = ham_dicom(variant)
        for cut in (140, 300, len(data) // 2, len(data) - 100):
            assert refusal(data[:cut]) == "CORRUPT_IMAGE", (variant, cut)
    assert refusal(bundled("MR_truncated.dcm")) == "UNSUPPORTED_SOP_CLASS"  # judged first


def test_a_corrupt_jpeg_frame_is_corrupt() -> None:
    ds = dicom_dataset(ham_image(), "jpeg-ybr422")
    frame = bytearray(ds.PixelData)
    frame[600:1600] = bytes(1000)  # inside the JPEG's entropy-coded data and tables
    ds.PixelData = bytes(frame)
    assert refusal(to_bytes(ds)) == "CORRUPT_IMAGE"


def test_a_sequence_nested_thousands_deep_is_refused_not_a_crash() -> None:
    """A hostile file nests undefined-length sequences 5000 deep after the meta information:
    the structure scan refuses it before pydicom's recursive reader sees it."""
    data = ham_dicom()
    meta_end = 144 + int.from_bytes(data[140:144], "little")  # after (0002,0000)'s value
    opening = (b"\x09\x00\x10\x00SQ\x00\x00\xff\xff\xff\xff"  # (0009,0010) SQ, undefined
               b"\xfe\xff\x00\xe0\xff\xff\xff\xff")  # an item of undefined length
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    bomb = data[:meta_end] + opening * 5000 + closing * 5000 + data[meta_end:]
    assert refusal(bomb) == "DICOM_TOO_COMPLEX"


def test_missing_pixel_data_and_uids_are_refused() -> None:
    ds = dicom_dataset(ham_image())
    del ds.PixelData
    assert refusal(to_bytes(ds)) == "MISSING_PIXEL_DATA"
    ds = dicom_dataset(ham_image())
    del ds.StudyInstanceUID
    assert refusal(to_bytes(ds)) == "INVALID_UID"


def test_other_bit_depths_are_refused() -> None:
    ds = dicom_dataset(ham_image())
    ds.BitsStored, ds.HighBit = 7, 6
    assert refusal(to_bytes(ds)) == "UNSUPPORTED_BIT_DEPTH"


def test_a_photograph_labelled_ct_is_refused() -> None:
    assert refusal(ham_dicom(modality="CT")) == "UNSUPPORTED_MODALITY"
    assert refusal(ham_dicom(sop_class=CTImageStorage)) == "UNSUPPORTED_SOP_CLASS"


def test_limits_are_judged_on_the_header_before_decoding() -> None:
    """Rows x Columns over the pixel limit is refused as TOO_MANY_PIXELS although its pixel data
    is far too short: had anything decoded it, the answer would be CORRUPT_IMAGE."""
    ds = dicom_dataset(ham_image())
    ds.Rows, ds.Columns = 30_000, 30_000
    assert refusal(to_bytes(ds)) == "TOO_MANY_PIXELS"
    ds.Rows, ds.Columns = 150, 20
    assert refusal(to_bytes(ds), ImageLimits(min_side=10)) == "BAD_ASPECT_RATIO"
    width, height = ham_image().size
    assert refusal(ham_dicom("jpeg-ybr422"), ImageLimits(max_pixels=width * height - 1)) == \
        "TOO_MANY_PIXELS"


def test_recognised_by_content_only() -> None:
    data = ham_dicom()
    assert refusal(data[128:]) == "UNSUPPORTED_FORMAT"  # no preamble: DICM not at byte 128
    assert refusal(bytes(128) + b"DICM" + b"\x00" * 64) == "CORRUPT_IMAGE"


def test_a_passed_deadline_is_not_a_corrupt_file() -> None:
    def expired() -> None:
        raise BackendTimeout("the deadline passed")

    with pytest.raises(BackendTimeout):
        open_image(ham_dicom("jpeg-ybr422"), ImageLimits(), expired)


def test_the_dermoscopy_sop_class_and_modality_are_accepted() -> None:
    assert decode_image(dermoscopic_dicom(), ImageLimits()).size == ham_image().size


# --- over the real server ----------------------------------------------------------------------
def classify(running: Running, data: bytes, **fields: object) -> pb.ClassifyResponse:
    return running.stub.Classify(pb.ClassifyRequest(image=data, **fields),  # type: ignore[arg-type]
                                 timeout=10)


@pytest.mark.parametrize("variant", ["uncompressed-rgb", "jpeg-ybr422"])
def test_classify_answers_dicom_with_its_uids(fake_server: Running, variant: str) -> None:
    data = ham_dicom(variant)
    ds = dcmread(io.BytesIO(data))
    response = classify(fake_server, data)
    assert len(response.probabilities) == 7
    assert response.HasField("dicom") and not response.fhir_bundle_json
    assert (response.dicom.study_instance_uid, response.dicom.series_instance_uid,
            response.dicom.sop_instance_uid, response.dicom.modality) == (
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, "XC")
    plain = classify(fake_server, jpeg_of_ham())
    assert not plain.HasField("dicom")


def jpeg_of_ham() -> bytes:
    buffer = io.BytesIO()
    ham_image().save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def test_classify_with_format_fhir_returns_a_valid_bundle(fake_server: Running) -> None:
    data = dermoscopic_dicom()
    response = classify(fake_server, data, format=pb.RESULT_FORMAT_FHIR)
    bundle = Bundle.model_validate_json(response.fhir_bundle_json)
    kinds = [entry.resource.get_resource_type() for entry in bundle.entry]
    assert kinds.count("DiagnosticReport") == 1 and kinds.count("ImagingStudy") == 1
    study = next(entry.resource for entry in bundle.entry
                 if entry.resource.get_resource_type() == "ImagingStudy")
    assert study.identifier[0].value == f"urn:oid:{response.dicom.study_instance_uid}"
    assert study.series[0].instance[0].uid == response.dicom.sop_instance_uid
    assert study.series[0].modality.code == "DMS"


def test_a_refused_dicom_file_is_invalid_argument_with_its_reason(fake_server: Running) -> None:
    for name, reason in (("CT_small.dcm", "UNSUPPORTED_SOP_CLASS"),
                         ("MR_small.dcm", "UNSUPPORTED_SOP_CLASS")):
        with pytest.raises(grpc.RpcError) as caught:
            classify(fake_server, bundled(name))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert reason_of(caught.value) == reason
    with pytest.raises(grpc.RpcError) as caught:
        classify(fake_server, bundled_as_photograph("examples_ybr_color.dcm"))
    assert reason_of(caught.value) == "MULTI_FRAME"


def test_classify_stream_takes_dicom_among_other_images(fake_server: Running) -> None:
    images = {"rgb": ham_dicom(), "jpeg": ham_dicom("jpeg-ybr422"), "ct": bundled("CT_small.dcm"),
              "plain": jpeg_of_ham()}
    requests = iter([pb.ClassifyStreamRequest(request=pb.ClassifyRequest(
        image=data, request_id=key, format=pb.RESULT_FORMAT_FHIR))
        for key, data in images.items()])
    answers = {answer.request_id: answer
               for answer in fake_server.stub.ClassifyStream(requests, timeout=20)}
    assert set(answers) == set(images)
    assert answers["ct"].error.reason == "UNSUPPORTED_SOP_CLASS"
    for key in ("rgb", "jpeg"):
        result = answers[key].result
        assert result.dicom.sop_instance_uid == dcmread(io.BytesIO(images[key])).SOPInstanceUID
        Bundle.model_validate_json(result.fhir_bundle_json)
    assert not answers["plain"].result.HasField("dicom")


def test_patient_data_never_leaves_the_server(fake_server: Running,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """A planted patient name, ID and birth date are in none of the responses, errors, log
    records or metrics of accepted and refused DICOM files."""
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    for variant in sorted(VARIANTS):
        response = classify(fake_server, ham_dicom(variant), format=pb.RESULT_FORMAT_FHIR)
        seen.append(str(response))
    for bad in (ham_dicom(modality="CT"), ham_dicom()[:-500],
                bundled_as_photograph("MR_small.dcm")):
        with pytest.raises(grpc.RpcError) as caught:
            classify(fake_server, bad)
        seen.append(f"{caught.value.details()} {caught.value.trailing_metadata()}")  # type: ignore[attr-defined]
    seen.append("\n".join(record.getMessage() for record in caplog.records))
    seen.append(generate_latest(fake_server.metrics.registry).decode())
    text = "\n".join(seen)
    assert "probabilities" in text and "UNSUPPORTED_MODALITY" in text  # what we searched
    for planted in PLANTED:
        assert planted not in text


def test_cli_classify_prints_a_fhir_bundle(fake_server: Running, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "lesion-without-suffix"  # recognised by content, not by name
    image.write_bytes(ham_dicom("jpeg-ybr422"))
    assert main(["classify", str(image), "--format", "fhir",
                 "--target", f"127.0.0.1:{fake_server.port}"]) == 0
    bundle = Bundle.model_validate_json(capsys.readouterr().out)
    report = bundle.entry[0].resource
    assert report.get_resource_type() == "DiagnosticReport" and report.status == "final"
    assert json.loads(bundle.model_dump_json()) == json.loads(Bundle.model_validate_json(
        bundle.model_dump_json()).model_dump_json())


def test_pydicom_test_files_are_the_bundled_ones() -> None:
    """The refusal tests read files shipped inside the pydicom package (no download)."""
    assert "pydicom" in Path(get_testdata_file("CT_small.dcm")).parts  # type: ignore[arg-type]
