"""The reference peers (devtools/bench/peers/, issue 27) keep working: each starts from its own
environment, answers the tiny model's probabilities for an image decoded as dermserve decodes
it, and the run refuses a peer that answers otherwise. Timings are the benchmark's business."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from PIL import Image

from dermserve.core.image.decoding import decode_for_model
from dermserve.core.image.limits import ImageLimits
from dermserve.core.model_config import ModelConfig
from devtools.bench import harness
from devtools.bench.peers import clients, grpc_predict_v2_pb2, launch, report
from devtools.bench.peers import run as peers_run
from devtools.bench.peers.served_model import ServedModel
from tests.conftest import TINY_MODEL_NAME

CALLS = 3  # per peer: enough to cross a keep-alive connection and a second batch


GRPC_DEFAULT_MAX_BYTES = 4 * 1024 * 1024  # what a gRPC server receives unless told otherwise


def jpeg(size: tuple[int, int], colour: tuple[int, int, int], quality: int = 90) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), np.uint8)
    image = Image.blend(Image.fromarray(pixels), Image.new("RGB", size, colour), 0.5)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def expected_probabilities(version_dir: Path, image: bytes) -> np.ndarray:
    """The signature called in this process on dermserve's own decode of `image`."""
    import tensorflow as tf

    spec = ModelConfig.read(version_dir).input
    pixels = decode_for_model(image, ImageLimits(), spec)
    serve = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    return np.asarray(serve(image=tf.constant(pixels[None]))["probabilities"].numpy()[0])


@pytest.mark.parametrize("name", sorted(launch.PEERS))
def test_each_peer_answers_the_models_probabilities(name: str, model_base: Path,
                                                    tmp_path: Path) -> None:
    version_dir = model_base / TINY_MODEL_NAME / "2"
    image = jpeg((120, 90), (170, 110, 90))
    expected = expected_probabilities(version_dir, image)
    # Over gRPC's default message limit and under dermserve's (a 12 MP photo is about this size).
    photo = jpeg((2600, 1950), (170, 110, 90), quality=95)
    assert GRPC_DEFAULT_MAX_BYTES < len(photo) < 10 * 1024 * 1024
    with launch.running_peer(name, version_dir, TINY_MODEL_NAME, tmp_path) as peer:
        call = peer.new_client(image)
        answers = [call() for _ in range(CALLS)]
        photo_answer = peer.new_client(photo)()
        assert peer.probe.counters()["cpu_s"] > 0
        assert (peer.probe.rss_bytes() or 0) > 0
    for answer in answers:
        np.testing.assert_allclose(answer, expected, atol=peers_run.AGREEMENT_ATOL)
    np.testing.assert_allclose(photo_answer, expected_probabilities(version_dir, photo),
                               atol=peers_run.AGREEMENT_ATOL)


def test_the_peers_decode_and_resize_as_dermserve_does(model_base: Path) -> None:
    version_dir = model_base / TINY_MODEL_NAME / "1"
    served = ServedModel(version_dir)
    source = jpeg((200, 150), (150, 90, 80))
    for name, image in harness.matrix_images(source).items():
        ours = decode_for_model(image, ImageLimits(), served.spec)
        np.testing.assert_array_equal(served.input_of_bytes(image), ours, err_msg=name)


def descriptor_fields(proto: descriptor_pb2.FileDescriptorProto) -> dict[str, Any]:
    """Every message's fields (nested ones by dotted name) as (number, type, label, type name)."""
    found: dict[str, Any] = {}

    def walk(message: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        name = prefix + message.name
        found[name] = sorted([f.name, f.number, f.type, f.label, f.type_name]
                             for f in message.field)
        for nested in message.nested_type:
            walk(nested, name + ".")

    for message in proto.message_type:
        walk(message, "")
    return found


def test_the_vendored_v2_proto_matches_the_one_kserve_ships() -> None:
    ours = descriptor_pb2.FileDescriptorProto()
    grpc_predict_v2_pb2.DESCRIPTOR.CopyToProto(ours)
    dump = ("import sys; from google.protobuf import descriptor_pb2; "
            "from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb; "
            "p = descriptor_pb2.FileDescriptorProto(); pb.DESCRIPTOR.CopyToProto(p); "
            "sys.stdout.buffer.write(p.SerializeToString())")
    shipped = descriptor_pb2.FileDescriptorProto.FromString(subprocess.run(
        [launch.venv_python(".venv-kserve"), "-c", dump], check=True, capture_output=True,
        timeout=120).stdout)
    theirs = descriptor_fields(shipped)
    assert ours.package == shipped.package == "inference"
    for message, fields in descriptor_fields(ours).items():
        assert theirs[message] == fields, message
    service = {m.name: (m.input_type, m.output_type) for m in shipped.service[0].method}
    for method in ours.service[0].method:
        assert service[method.name] == (method.input_type, method.output_type)


class Answers:
    """A server that answers fixed probabilities for any image (a `run.Server`'s client)."""

    def __init__(self, probabilities: list[float]) -> None:
        self.probabilities = np.asarray(probabilities, np.float32)

    def __call__(self, image: bytes) -> clients.Call:
        return lambda: self.probabilities


def fake_server(name: str, probabilities: list[float]) -> peers_run.Server:
    return peers_run.Server(name, name, Answers(probabilities), launch.TreeProbe(0))


def test_a_peer_that_answers_other_probabilities_is_not_timed() -> None:
    reference = fake_server("dermserve", [0.25, 0.75])
    close = fake_server("close", [0.25 + peers_run.AGREEMENT_ATOL / 2, 0.75])
    wrong = fake_server("wrong", [0.75, 0.25])
    errors: dict[str, str] = {}
    agreeing, gaps = peers_run.checked(reference, [close, wrong], {"a": b"", "b": b""}, errors)
    assert [server.name for server in agreeing] == ["close"]
    assert gaps["close"] == pytest.approx(peers_run.AGREEMENT_ATOL / 2, rel=1e-3)  # float32
    assert "wrong" in errors and "differs from dermserve" in errors["wrong"]


def step(p50: float, p99: float, calls_per_s: float, cpu_ms: float) -> dict[str, float]:
    return {"p50_ms": p50, "p99_ms": p99, "calls_per_s": calls_per_s,
            "server_cpu_ms_per_call": cpu_ms}


def test_the_targets_name_a_peer_that_wins_and_why() -> None:
    image = peers_run.IMAGES[0]
    ours = {"1": step(10, 12, 100, 9), "8": step(40, 60, 200, 8), "32": step(150, 200, 210, 8)}
    faster = {"1": step(8, 9, 120, 14), "8": step(40, 70, 180, 9), "32": step(160, 250, 150, 9)}
    slower = {"1": step(20, 30, 50, 9), "8": step(90, 120, 90, 9), "32": step(300, 400, 100, 9)}
    results = {"dermserve": {image: ours}, "fast": {image: faster}, "slow": {image: slower}}
    judged = peers_run.image_targets(results, image)
    assert judged["best_peer_c32"] == "fast"
    assert judged["throughput_c32_over_best_peer"] == pytest.approx(210 / 150)
    assert not judged["throughput_target_met"]  # 1.4x < 1.5x
    assert not judged["p50_c1_below_every_peer"]
    assert judged["p99_c32_below_every_peer"]
    [won] = judged["peer_wins"]
    assert (won["peer"], won["metric"]) == ("fast", "p50_ms_c1")
    assert won["peer_why"]["cores_per_call_c1"] == pytest.approx(14 / 8)
    assert not peers_run.memory_target({"dermserve": 300, "fast": 250, "slow": 400}, 40)["met"]
    memory = peers_run.memory_target({"dermserve": 300, "fast": 250, "slow": 400}, 60)
    assert memory["best_peer"] == "fast" and memory["met"]
    result = {"rounds": 2, "seconds_per_window": 3.0,
              "machine": {"cpus": 2, "load_average_1m_before_after": [0.5, 0.6]},
              "servers": {"dermserve": "d"}, "agreement_max_abs_diff": {"fast": 1e-7},
              "errors": {}, "results": results,
              "rss_ready_bytes": {"dermserve": 200 * report.MIB},
              "rss_end_bytes": {"dermserve": 300 * report.MIB, "fast": 250 * report.MIB},
              "targets": {"by_image": {image: judged}, "memory": memory}}
    text = "\n".join(report.report_lines(result))
    assert "NOT met" in text and "fast wins p50_ms_c1" in text
    assert "| dermserve | 200 | 300 |" in text and "| fast | - | 250 |" in text
    json.dumps(result)  # the run writes this as JSON
