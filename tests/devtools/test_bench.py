"""The benchmark's own pieces (issue 13): the matrix of inputs hospitals send is what it says,
made the same way every run; the naive peer answers over HTTP as the benchmark drives it; the
ratios and the printed summary cover every target. Timings are the benchmark's business, not
these tests'."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from dermserve.core.model_config import HAM10000_DISPLAY_NAMES
from dermserve.v1 import lesion_classifier_pb2 as pb
from devtools.bench import grpc_floor, harness
from devtools.bench import run as bench_run
from devtools.bench.naive_peer import PeerServer, handler_for

INPUT_SIZE = (32, 24)  # width, height of the fake model's input


class FakeKerasModel:
    """Keras' `predict` contract: a batch in, one row of probabilities per image out."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, ...]] = []

    def predict(self, batch: np.ndarray, verbose: int = 0) -> np.ndarray:
        self.seen.append(batch.shape)
        return np.full((len(batch), 7), 1 / 7, np.float32)


@pytest.fixture
def peer() -> Iterator[tuple[int, FakeKerasModel]]:
    model = FakeKerasModel()
    server = PeerServer(("127.0.0.1", 0), handler_for(model, INPUT_SIZE))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], model
    finally:
        server.shutdown()
        server.server_close()


def jpeg(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (180, 120, 100)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_the_matrix_holds_the_inputs_hospitals_send() -> None:
    images = harness.matrix_images(jpeg((200, 150)))
    expected = {**harness.MATRIX_SIZES, harness.MATRIX_PNG[0]: harness.MATRIX_PNG[1]}
    assert set(images) == set(expected)
    for name, data in images.items():
        image = Image.open(io.BytesIO(data))
        assert image.size == expected[name]
        assert image.format == ("PNG" if name.startswith("png") else "JPEG")
    assert 60_000 < len(images["jpeg_600x450"]) < 300_000  # a dermatoscope frame
    assert 3_000_000 < len(images[harness.PHONE_PHOTO]) < 6_000_000  # a 12-megapixel photo


def test_the_matrix_is_the_same_every_run() -> None:
    source = jpeg((200, 150))
    first, second = harness.matrix_images(source), harness.matrix_images(source)
    assert first == second


def test_the_peer_classifies_each_request_with_one_predict(
        peer: tuple[int, FakeKerasModel]) -> None:
    port, model = peer
    call = bench_run.peer_client(port, jpeg((640, 480)))
    answers = [json.loads(call()) for _ in range(3)]  # one keep-alive connection
    assert all(len(answer["probabilities"]) == 7 for answer in answers)
    assert model.seen == [(1, INPUT_SIZE[1], INPUT_SIZE[0], 3)] * 3  # unbatched, resized


def test_the_driver_counts_every_call(peer: tuple[int, FakeKerasModel]) -> None:
    port, model = peer
    step = harness.drive(lambda: bench_run.peer_client(port, jpeg((64, 48))), 2, 0.2)
    assert step["concurrency"] == 2
    assert step["calls"] >= 2  # at least one per client after the warm-up
    assert len(model.seen) >= step["calls"]
    assert {"p50_ms", "p95_ms", "calls_per_s", "client_cpu_ms_per_call"} <= set(step)


def step(p50_ms: float, calls_per_s: float) -> dict[str, float]:
    return {"p50_ms": p50_ms, "calls_per_s": calls_per_s}


def paired_round(raw_single_ms: float, served_ms: float, raw_batch: float,
                 served_calls_per_s: float, decode_ms: float = 2.0) -> dict[str, float]:
    return {"p50_c1_over_raw_single_plus_decode": served_ms / (raw_single_ms + decode_ms),
            "throughput_c32_over_raw_best_batch": served_calls_per_s / raw_batch,
            "raw_batch_images_per_s": raw_batch, "raw_single_p50_ms": raw_single_ms}


def test_the_ratios_cover_every_target_and_are_judged_on_the_paired_rounds() -> None:
    raw = {"single_image": step(20.0, 0.0), "best_images_per_s": 60.0}  # a fast moment
    decode = {"draft_decode": step(2.0, 0.0)}
    rounds = [paired_round(30.0, 34.0, 50.0, 46.0), paired_round(40.0, 50.0, 40.0, 30.0),
              paired_round(31.0, 33.0, 48.0, 47.0)]
    served = {"1": step(34.0, 29.0), "8": step(200.0, 40.0), "32": step(700.0, 46.0),
              "paired": {"rounds": rounds},
              "matrix": {harness.PHONE_PHOTO: {"8": step(300.0, 20.0)}}}
    peer = {"1": step(60.0, 16.0), "8": step(400.0, 20.0), "32": step(1600.0, 20.0),
            "matrix": {harness.PHONE_PHOTO: {"8": step(2000.0, 4.0)}}}
    ratios = bench_run.ratios(raw, decode, served, peer)
    # the medians over rounds: one slow round (the second) moves neither
    assert ratios["p50_c1_over_raw_single_plus_decode"] == pytest.approx(34.0 / 32.0)
    assert ratios["p50_target_met"] is True
    assert ratios["throughput_c32_over_raw_best_batch"] == pytest.approx(46.0 / 50.0)
    assert ratios["throughput_target_met"] is True
    # the sweep's figures, minutes apart from the served ones, are reported, not judged
    assert ratios["unpaired_p50_c1_over_sweep_single_plus_decode"] == pytest.approx(34.0 / 22.0)
    assert ratios["unpaired_throughput_c32_over_sweep_best_batch"] == pytest.approx(46.0 / 60.0)
    assert ratios["throughput_c8_over_peer"] == pytest.approx(2.0)
    assert ratios["throughput_c32_over_peer"] == pytest.approx(2.3)
    assert ratios[f"throughput_c8_{harness.PHONE_PHOTO}_over_peer"] == pytest.approx(5.0)
    assert ratios["peer_target_met"] is False  # 2x and 2.3x are under 5x
    assert ratios["model_ceiling_c8_over_peer"] == pytest.approx(48.0 / 20.0)  # median raw batch


def test_paired_rounds_alternate_raw_and_served_in_abba_order() -> None:
    order: list[str] = []

    class Raw:
        def single(self, seconds: float) -> list[float]:
            order.append("raw_single")
            return [0.010, 0.010, 0.012]

        def batch(self, size: int, seconds: float, callers: int = 1) -> tuple[float, float]:
            order.append(f"raw_batch_{size}x{callers}")
            return 40.0, 50.0

    def served(concurrency: int, seconds: float) -> harness.Window:
        order.append(f"served_{concurrency}")
        return harness.Window(concurrency, [0.011] * 20, 0.5, 0.01, {})

    paired = bench_run.paired_rounds(Raw(), (16, 2), 1.0, served, 1.0)  # type: ignore[arg-type]
    steps = ["raw_single", "served_1", "raw_batch_16x2", "served_32"]
    assert order == (steps + steps[::-1]) * (bench_run.PAIRED_ROUNDS // 2)
    assert len(paired["rounds"]) == bench_run.PAIRED_ROUNDS
    first = paired["rounds"][0]
    assert first["p50_c1_over_raw_single_plus_decode"] == pytest.approx(11.0 / 11.0)
    assert first["throughput_c32_over_raw_best_batch"] == pytest.approx(40.0 / 40.0)
    assert paired["served_32"]["calls"] == 20 * bench_run.PAIRED_ROUNDS


def test_the_server_costs_say_where_a_call_spends_its_time() -> None:
    exposition = "\n".join([
        "# HELP dermserve_batch_size Images per backend call.",
        "dermserve_batch_size_sum 40.0", "dermserve_batch_size_count 20.0",
        'dermserve_request_latency_seconds_sum{method="Classify"} 0.5',
        'dermserve_request_latency_seconds_count{method="Classify"} 10.0',
        'dermserve_request_latency_seconds_count{method="GetModel"} 99.0',
        "dermserve_decode_latency_seconds_sum 0.01", "dermserve_model_latency_seconds_sum 0.4",
        "dermserve_model_latency_seconds_count 10.0"])
    before = {key: 0.0 for key in harness.SERVER_TOTALS} | {"cpu_s": 3.0}
    after = harness.totals_in(exposition) | {"cpu_s": 4.0}
    assert set(after) == set(harness.SERVER_TOTALS) | {"cpu_s"}
    window = harness.Window(1, [0.052] * 10, 1.0, 0.0,
                          {key: after[key] - before[key] for key in after})
    figures = harness.pooled([window])
    assert figures["server_cpu_ms_per_call"] == pytest.approx(100.0)
    assert figures["mean_batch_images"] == pytest.approx(2.0)
    assert figures["server_handler_ms_mean"] == pytest.approx(50.0)
    assert figures["server_decode_ms_mean"] == pytest.approx(1.0)
    assert figures["server_model_ms_mean"] == pytest.approx(40.0)
    assert bench_run.breakdown_line(figures) == [
        "at c=1, means: client 52.0 ms = transport 2.0 + handler 50.0 (decode 1.0, model call "
        "40.0, the rest 9.0)"]


def test_the_warm_up_benchmark_reports_load_warm_up_and_growth_in_use(
        model_base: Path, tmp_path: Path) -> None:
    from devtools.bench import warm_up_bench

    out = tmp_path / "warmup.json"
    assert warm_up_bench.main(["--model-base", str(model_base), "--max-batch", "3",
                               "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["version_dir"].endswith("/2") and report["max_batch"] == 3
    assert report["load"]["seconds"] > 0 and report["warm_up"]["seconds"] > 0
    # RSS figures only: this pytest process holds other tests' memory, so no order among them
    assert min(report["rss_mib_at_start"], report["rss_mib_after_importing_tensorflow"],
               report["load"]["rss_mib"],
               report["warm_up"]["rss_mib_after_every_size"]) > 0
    assert len(report["in_use_growth_mib_per_pass"]) == 2


def test_the_raw_reference_takes_the_benchmarked_servers_threads_and_dispatchers() -> None:
    default = harness.served_settings([])
    assert (default.intra_op_threads, default.inter_op_threads) == (1, 0)
    assert default.batching.workers == 2
    tuned = harness.served_settings(["--intra-op-threads=2", "--inter-op-threads=3",
                                   "--batch-workers=4"])
    assert (tuned.intra_op_threads, tuned.inter_op_threads, tuned.batching.workers) == (2, 3, 4)


def test_the_sweep_times_its_best_batch_size_from_every_dispatcher_and_picks_the_best() -> None:
    class Raw:
        def single(self, seconds: float) -> list[float]:
            return [0.010]

        def batch(self, size: int, seconds: float, callers: int = 1) -> tuple[float, float]:
            return (10.0 * callers + (5.0 if size == 8 else 0.0), 20.0)

    sweep = harness.raw_floor(Raw(), 1.0, dispatchers=3)  # type: ignore[arg-type]
    assert sweep["batch_images_per_s"]["8"] == 15.0
    assert sweep["best_setup"] == "8x3"
    assert (sweep["best_batch_size"], sweep["best_callers"]) == (8, 3)
    assert sweep["best_images_per_s"] == 35.0
    assert "8x3" not in harness.raw_floor(Raw(), 1.0, dispatchers=1)["batch_images_per_s"]  # type: ignore[arg-type]


def test_the_grpc_floor_answers_classify_with_an_answer_of_real_size() -> None:
    server, port = grpc_floor.create_server("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = harness.grpc_client(channel, jpeg((64, 48)), 1)()
    finally:
        server.stop(None)
    assert isinstance(answer, pb.ClassifyResponse)
    assert [item.label for item in answer.probabilities] == list(HAM10000_DISPLAY_NAMES)
    assert answer.model.version == 1


def test_the_ceilings_add_only_the_floor_and_decoding_to_the_raw_model() -> None:
    raw = {"single_image": step(20.0, 0.0), "best_images_per_s": 60.0, "best_setup": "8x2",
           "batch_cpu_ms_per_image": {"8": 16.0, "8x2": 15.0}}
    decode = {"draft_decode": {**step(2.0, 0.0), "mean_ms": 2.5}}
    rounds = [paired_round(30.0, 34.0, 50.0, 46.0), paired_round(40.0, 50.0, 40.0, 30.0),
              paired_round(31.0, 33.0, 48.0, 47.0)]
    served = {"1": step(34.0, 29.0), "32": step(700.0, 46.0), "paired": {"rounds": rounds}}
    floor = {"1": step(0.8, 1000.0),
             "32": {**step(5.0, 3000.0), "server_cpu_ms_per_call": 0.3,
                    "client_cpu_ms_per_call": 0.2}}
    ceilings = bench_run.ratios(raw, decode, served, None, floor)["ceilings"]
    # p50: the floor's round trip over the median round's raw single (31 ms) plus decoding
    assert ceilings["p50_c1_over_raw_single_plus_decode"] == pytest.approx(1 + 0.8 / 33.0)
    # throughput: the best setup's CPU per image over it plus decoding and the floor's CPU
    assert ceilings["throughput_c32_over_raw_best_batch"] == pytest.approx(15.0 / 18.0)
    failed = bench_run.ratios(raw, decode, served, None, {"error": "OSError: no port"})
    assert "ceilings" not in failed


def test_the_server_cpu_is_split_by_thread_name() -> None:
    spent = {"cpu_s": 2.0, "cpu_s:tf_Compute": 1.5, "cpu_s:python": 0.5, "cpu_s:idle": 0.0}
    costs = harness.server_costs(spent, 100)
    assert costs["server_cpu_ms_per_call"] == pytest.approx(20.0)
    # threads that spent nothing in the window are left out
    assert costs["server_cpu_ms_per_call_by_thread"] == pytest.approx(
        {"python": 5.0, "tf_Compute": 15.0})


def test_the_printed_costs_at_32_name_each_threads_share() -> None:
    raw = {"best_setup": "8x2", "batch_cpu_ms_per_image": {"8x2": 12.5}}
    step = {"server_cpu_ms_per_call": 14.0, "mean_batch_images": 7.9,
            "client_cpu_ms_per_call": 0.3,
            "server_cpu_ms_per_call_by_thread": {"python": 1.4, "tf_Compute": 12.5}}
    assert bench_run.cost_lines(raw, step) == [
        "CPU at c=32: server 14.0 ms/call (mean batch 7.9, python 1.40, tf_Compute 12.50), "
        "clients 0.30 ms/call; raw best batch 12.5 ms/image"]
    assert bench_run.cost_lines(raw, {"calls_per_s": 1.0}) == []


def test_the_version_cost_serves_each_version_alone_and_reports_both_budgets(
        model_base: Path, tmp_path: Path) -> None:
    from devtools.bench import version_cost

    out = tmp_path / "cost.json"
    assert version_cost.main(["--model-base", str(model_base), "--versions", "1", "2",
                              "--seconds", "1", "--job-images", "4", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [entry["version"] for entry in report["versions"]] == [1, 2]
    for entry in report["versions"]:
        assert entry["classify_c1"]["calls"] > 0 and entry["classify_c1"]["p50_ms"] > 0
        # the job ran on the version measured, not on the latest of the real model base
        assert entry["batch_job"]["model_version"] == entry["version"]
        assert entry["batch_job"]["images_per_s"] > 0
    assert report["latency_budget_ms"] == 200.0 and report["throughput_budget"] == 10.0
