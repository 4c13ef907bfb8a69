"""The tfserving backend end to end over real gRPC, against the TF Serving stand-in."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from dermserve.core.backends.base import ModelRef, VersionState
from dermserve.core.backends.embedded import EmbeddedBackend
from dermserve.core.backends.tfserving import TFServingBackend
from dermserve.core.errors import (
    BackendTimeout,
    BackendUnavailable,
    InvalidRequest,
    ModelNotFound,
)
from tests.conftest import TINY_MODEL_NAME
from tests.core.backends.helpers import Traffic, publish_version, wait_until
from tests.core.backends.test_embedded import images
from tests.core.backends.tfserving_server import FakeTFServing, start_fake_tfserving

LATEST = ModelRef(TINY_MODEL_NAME)
DEADLINE_SLACK_S = 0.5
"""How far past its deadline a failing call may return (thread scheduling on shared CPUs)."""


@pytest.fixture
def make_client() -> Iterator[Callable[..., TFServingBackend]]:
    clients: list[TFServingBackend] = []

    def make(server: FakeTFServing, **kwargs: object) -> TFServingBackend:
        client = TFServingBackend(server.target, TINY_MODEL_NAME, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_predictions_equal_the_embedded_backends(
        fake_tfserving: FakeTFServing, make_client: Callable[..., TFServingBackend],
        make_backend: Callable[..., EmbeddedBackend]) -> None:
    client = make_client(fake_tfserving)
    embedded = make_backend(poll_interval_s=3600.0)
    batch = images(5)
    for ref in (LATEST, ModelRef(TINY_MODEL_NAME, version=1)):
        remote, local = client.predict(ref, batch), embedded.predict(ref, batch)
        assert remote.version.version == local.version.version
        assert remote.version.config == local.version.config
        np.testing.assert_allclose(remote.probabilities, local.probabilities, rtol=1e-6)
        np.testing.assert_allclose(remote.ood_scores, local.ood_scores, rtol=1e-6)
    assert client.resolve(LATEST).version == 2


def test_pins_versions_and_labels(fake_tfserving: FakeTFServing,
                                  make_client: Callable[..., TFServingBackend]) -> None:
    client = make_client(fake_tfserving)
    batch = images()
    assert client.predict(ModelRef(TINY_MODEL_NAME, version=1), batch).version.version == 1
    assert client.predict(ModelRef(TINY_MODEL_NAME, label="stable"), batch).version.version == 1
    assert client.resolve(ModelRef(TINY_MODEL_NAME, label="canary")).version == 2
    with pytest.raises(ModelNotFound) as unknown_label:
        client.predict(ModelRef(TINY_MODEL_NAME, label="nope"), batch)
    assert unknown_label.value.reason == "UNKNOWN_VERSION_LABEL"
    with pytest.raises(ModelNotFound):
        client.resolve(ModelRef(TINY_MODEL_NAME, version=7))
    with pytest.raises(ModelNotFound):
        client.resolve(ModelRef("other-model"))
    listed = client.list_versions(TINY_MODEL_NAME)
    assert [(i.version, i.state, i.labels_assigned) for i in listed] == [
        (2, VersionState.AVAILABLE, ("canary",)), (1, VersionState.AVAILABLE, ("stable",))]
    assert all(info.config is not None and len(info.config.labels) == 7 for info in listed)


def test_bad_batch_is_refused_before_the_wire(fake_tfserving: FakeTFServing,
                                              make_client: Callable[..., TFServingBackend]
                                              ) -> None:
    client = make_client(fake_tfserving)
    client.resolve(LATEST)
    before = fake_tfserving.calls["Predict"]
    with pytest.raises(InvalidRequest):
        client.predict(LATEST, np.zeros((1, 8, 8, 3), np.uint8))
    assert fake_tfserving.calls["Predict"] == before


def test_new_version_is_seen_without_restart(fake_tfserving: FakeTFServing,
                                             make_client: Callable[..., TFServingBackend],
                                             model_base: Path, version3_dir: Path) -> None:
    client = make_client(fake_tfserving, metadata_cache_ttl_s=0.05)
    assert client.predict(LATEST, images()).version.version == 2
    publish_version(version3_dir, model_base / TINY_MODEL_NAME, 3)
    wait_until(lambda: client.resolve(LATEST).version == 3, what="version 3 via TF Serving")
    out = client.predict(LATEST, images())
    assert out.version.version == 3 and out.version.config is not None
    assert out.version.config.description == "tiny test model, seed 3"


def test_hot_reload_during_traffic_fails_no_call(fake_tfserving: FakeTFServing,
                                                 make_client: Callable[..., TFServingBackend],
                                                 model_base: Path, version3_dir: Path) -> None:
    client = make_client(fake_tfserving, metadata_cache_ttl_s=0.05)
    with Traffic(client, LATEST, [images(2, seed) for seed in range(3)]) as traffic:
        traffic.wait_for_more(20, "traffic on version 2")
        publish_version(version3_dir, model_base / TINY_MODEL_NAME, 3)
        shutil.rmtree(model_base / TINY_MODEL_NAME / "1")
        wait_until(lambda: bool(traffic.answered) and traffic.answered[-1] == 3,
                   what="answers from version 3")
        traffic.wait_for_more(20, "traffic after the reload")
    assert traffic.errors == []
    assert set(traffic.answered) == {2, 3}


def test_unavailable_is_retried_a_bounded_number_of_times(
        fake_tfserving: FakeTFServing, make_client: Callable[..., TFServingBackend]) -> None:
    client = make_client(fake_tfserving, max_retries=3, retry_backoff_s=0.01)
    pinned = ModelRef(TINY_MODEL_NAME, version=2)
    client.resolve(pinned)  # cache the config: only Predict(serving_default) goes out below
    calls = fake_tfserving.calls["Predict"]
    fake_tfserving.fail_next = 2
    assert client.predict(pinned, images()).version.version == 2
    assert fake_tfserving.calls["Predict"] == calls + 3
    fake_tfserving.fail_next = 100
    with pytest.raises(BackendUnavailable):
        client.predict(pinned, images())
    assert fake_tfserving.calls["Predict"] == calls + 3 + 4  # one try and three retries
    fake_tfserving.fail_next = 0
    calls = fake_tfserving.calls["Predict"]
    with pytest.raises(ModelNotFound):
        client.predict(ModelRef(TINY_MODEL_NAME, version=7), images())
    assert fake_tfserving.calls["Predict"] == calls + 1  # NOT_FOUND is not retried


def test_server_down_is_unavailable_within_the_deadline_then_recovers(
        fake_tfserving: FakeTFServing, make_client: Callable[..., TFServingBackend],
        model_base: Path) -> None:
    timeout_s = 2.0
    client = make_client(fake_tfserving, timeout_s=timeout_s)
    assert client.predict(LATEST, images()).version.version == 2
    port = fake_tfserving.port
    fake_tfserving.stop()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        client.predict(LATEST, images())
    assert time.monotonic() - started < timeout_s + DEADLINE_SLACK_S
    restarted = start_fake_tfserving(model_base, TINY_MODEL_NAME, port=port)
    try:
        wait_until(lambda: _answers(client), timeout_s=15.0, what="recovery after restart")
    finally:
        restarted.stop()


def _answers(client: TFServingBackend) -> bool:
    try:
        return client.predict(LATEST, images()).version.version == 2
    except BackendUnavailable:
        return False


def test_slow_server_gives_backend_timeout(fake_tfserving: FakeTFServing,
                                           make_client: Callable[..., TFServingBackend]) -> None:
    client = make_client(fake_tfserving)
    pinned = ModelRef(TINY_MODEL_NAME, version=2)
    client.resolve(pinned)
    fake_tfserving.delay_s = 5.0
    started = time.monotonic()
    with pytest.raises(BackendTimeout):
        client.predict(pinned, images(), timeout=0.3)
    assert time.monotonic() - started < 0.3 + DEADLINE_SLACK_S


def test_server_without_versions_is_unavailable(tmp_path: Path,
                                                make_client: Callable[..., TFServingBackend]
                                                ) -> None:
    empty = start_fake_tfserving(tmp_path / "empty", TINY_MODEL_NAME, settle_s=0.0)
    try:
        client = make_client(empty)
        with pytest.raises(BackendUnavailable):
            client.resolve(LATEST)
        assert client.list_versions(TINY_MODEL_NAME) == []
    finally:
        empty.stop()


def test_a_version_load_error_reaches_clients_as_its_code_only() -> None:
    from tensorflow_serving.apis import get_model_status_pb2

    from dermserve.core.backends.tfserving import public_status_error

    status = get_model_status_pb2.ModelVersionStatus().status
    assert public_status_error(status) == ""
    status.error_code = 3  # tensorflow.error.Code.INVALID_ARGUMENT
    status.error_message = ("Op type not registered 'Foo' in binary running on tfs-0; loading "
                            "/models/ham10000/4/saved_model.pb")
    public = public_status_error(status)
    assert "INVALID_ARGUMENT" in public and "cannot load" in public
    assert "/models" not in public and "Op type" not in public


def test_upstream_errors_name_neither_tf_servings_address_nor_its_details(
        fake_tfserving: FakeTFServing, make_client: Callable[..., TFServingBackend]) -> None:
    client = make_client(fake_tfserving)
    with pytest.raises(ModelNotFound) as caught:
        client.predict(ModelRef(TINY_MODEL_NAME, version=7), images())
    message = caught.value.message
    assert message.startswith("the model server answered ") and message.endswith(" NOT_FOUND")
    assert fake_tfserving.target not in message
