"""The embedded backend on real tiny SavedModels: version selection, hot reload, safe unload."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dermserve.core.backends.base import ModelRef, VersionState
from dermserve.core.backends.embedded import DEFAULT_MISSING_SCANS_TO_UNLOAD, EmbeddedBackend
from dermserve.core.backends.factory import open_backend
from dermserve.core.backends.savedmodel import LoadedVersion
from dermserve.core.errors import BackendUnavailable, ModelNotFound
from dermserve.core.model_config import SERVING_SIGNATURE, ModelConfig
from dermserve.service.settings import Settings
from tests.conftest import TINY_INPUT, TINY_MODEL_NAME
from tests.core.backends.conftest import FAST_POLL_S
from tests.core.backends.helpers import Traffic, publish_version, wait_until

LATEST = ModelRef(TINY_MODEL_NAME)
SLOW_POLL_S = 3600.0
"""For tests that drive scans by hand with poll(): the poller thread never fires."""

Events = list[tuple[str, int, str]]
MakeBackend = Callable[..., EmbeddedBackend]


def images(count: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, TINY_INPUT.height, TINY_INPUT.width, 3), dtype=np.uint8)


def signature_output(version_dir: Path, batch: np.ndarray) -> np.ndarray:
    """The version's probabilities straight from its signature, for comparison."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(version_dir))
    return np.asarray(loaded.signatures["serving_default"](image=tf.constant(batch))
                      ["probabilities"])


def states(backend: EmbeddedBackend) -> dict[int, VersionState]:
    return {info.version: info.state for info in backend.list_versions(TINY_MODEL_NAME)}


def test_serves_the_latest_version(make_backend: MakeBackend, model_dir: Path) -> None:
    backend = make_backend(poll_interval_s=SLOW_POLL_S)
    info = backend.resolve(LATEST)
    assert info.version == 2 and info.state is VersionState.AVAILABLE
    assert info.config is not None and info.config.labels[0] == "akiec"
    batch = images()
    out = backend.predict(LATEST, batch)
    assert out.version.version == 2
    assert out.probabilities.shape == (3, 7) and out.ood_scores.shape == (3,)
    np.testing.assert_allclose(out.probabilities, signature_output(model_dir / "2", batch),
                               rtol=1e-6)
    assert [i.version for i in backend.list_versions(TINY_MODEL_NAME)] == [2, 1]


def test_pins_a_version_or_a_label(make_backend: MakeBackend, model_dir: Path) -> None:
    backend = make_backend(poll_interval_s=SLOW_POLL_S, version_labels={"stable": 1})
    batch = images()
    pinned = backend.predict(ModelRef(TINY_MODEL_NAME, version=1), batch)
    assert pinned.version.version == 1
    np.testing.assert_allclose(pinned.probabilities, signature_output(model_dir / "1", batch),
                               rtol=1e-6)
    latest = backend.predict(LATEST, batch)
    assert not np.allclose(pinned.probabilities, latest.probabilities)
    assert backend.resolve(ModelRef(TINY_MODEL_NAME, label="stable")).version == 1
    assert backend.resolve(ModelRef(TINY_MODEL_NAME, version=1)).labels_assigned == ("stable",)


def test_labels_file_overrides_and_is_reread(make_backend: MakeBackend, model_dir: Path) -> None:
    backend = make_backend(poll_interval_s=SLOW_POLL_S, version_labels={"stable": 1})
    (model_dir / "version_labels.json").write_text(json.dumps({"stable": 2, "canary": 1}))
    backend.poll()
    assert backend.resolve(ModelRef(TINY_MODEL_NAME, label="stable")).version == 2
    assert backend.resolve(ModelRef(TINY_MODEL_NAME, label="canary")).version == 1
    (model_dir / "version_labels.json").write_text("{not json")
    backend.poll()  # a broken file keeps the labels we had
    assert backend.resolve(ModelRef(TINY_MODEL_NAME, label="canary")).version == 1


def test_policy_keeps_the_latest_n_and_labelled_versions(make_backend: MakeBackend) -> None:
    latest_only = make_backend(poll_interval_s=SLOW_POLL_S, max_loaded_versions=1)
    assert states(latest_only) == {2: VersionState.AVAILABLE}
    with pytest.raises(ModelNotFound):
        latest_only.resolve(ModelRef(TINY_MODEL_NAME, version=1))
    labelled = make_backend(poll_interval_s=SLOW_POLL_S, max_loaded_versions=1,
                            version_labels={"stable": 1})
    assert states(labelled) == {2: VersionState.AVAILABLE, 1: VersionState.AVAILABLE}


@pytest.mark.parametrize("ref", [
    ModelRef(TINY_MODEL_NAME, version=7),
    ModelRef(TINY_MODEL_NAME, label="nope"),
    ModelRef("other-model"),
])
def test_unknown_version_label_or_model_is_not_found(make_backend: MakeBackend,
                                                     ref: ModelRef) -> None:
    backend = make_backend(poll_interval_s=SLOW_POLL_S)
    with pytest.raises(ModelNotFound):
        backend.resolve(ref)
    with pytest.raises(ModelNotFound):
        backend.predict(ref, images())


def test_new_version_is_picked_up_without_restart(make_backend: MakeBackend, model_dir: Path,
                                                  version3_dir: Path) -> None:
    events: Events = []
    backend = make_backend(poll_interval_s=FAST_POLL_S, events=lambda *e: events.append(e))
    assert backend.resolve(LATEST).version == 2
    publish_version(version3_dir, model_dir, 3)
    wait_until(lambda: backend.resolve(LATEST).version == 3, what="version 3 to serve")
    assert backend.predict(LATEST, images()).version.version == 3
    # The policy keeps the latest two: version 1 leaves once 3 is available.
    wait_until(lambda: states(backend).get(1) is VersionState.END, what="version 1 to unload")
    assert (TINY_MODEL_NAME, 3, "loaded") in events
    assert (TINY_MODEL_NAME, 1, "unloaded") in events
    assert events.index((TINY_MODEL_NAME, 3, "loaded")) < events.index(
        (TINY_MODEL_NAME, 1, "unloaded"))


def test_hot_reload_during_traffic_fails_no_call(make_backend: MakeBackend, model_dir: Path,
                                                 version3_dir: Path) -> None:
    backend = make_backend(poll_interval_s=FAST_POLL_S)
    with Traffic(backend, LATEST, [images(2, seed) for seed in range(3)]) as traffic:
        traffic.wait_for_more(20, "traffic on version 2")
        publish_version(version3_dir, model_dir, 3)
        shutil.rmtree(model_dir / "1")
        wait_until(lambda: backend.resolve(LATEST).version == 3 and 1 not in states(backend),
                   what="version 3 to serve and version 1 to leave")
        traffic.wait_for_more(20, "traffic after the reload")
    assert traffic.errors == []
    assert set(traffic.answered) == {2, 3}
    assert traffic.answered[-1] == 3
    assert states(backend) == {3: VersionState.AVAILABLE, 2: VersionState.AVAILABLE}


def test_directory_still_being_written_serves_only_once_complete(make_backend: MakeBackend,
                                                     model_dir: Path,
                                                     version3_dir: Path) -> None:
    backend = make_backend(poll_interval_s=SLOW_POLL_S)
    target = model_dir / "3"
    shutil.copytree(version3_dir, target, ignore=shutil.ignore_patterns("variables*"))
    backend.poll()  # first sighting: not known to be stable
    assert 3 not in states(backend)
    backend.poll()  # unchanged since, but its variables are missing: the load fails
    assert states(backend)[3] is VersionState.END
    shutil.copytree(version3_dir / "variables", target / "variables")
    backend.poll()  # the files changed: wait for them to settle
    assert backend.resolve(LATEST).version == 2
    backend.poll()
    assert backend.resolve(LATEST).version == 3


def test_half_written_or_broken_versions_never_serve(make_backend: MakeBackend, model_dir: Path,
                                                     version3_dir: Path) -> None:
    events: Events = []
    backend = make_backend(poll_interval_s=SLOW_POLL_S, events=lambda *e: events.append(e))
    (model_dir / "3" / "variables").mkdir(parents=True)  # no saved_model.pb yet
    shutil.copytree(version3_dir, model_dir / ".publishing-5")  # complete, not yet renamed
    garbage = model_dir / "4"
    garbage.mkdir()
    (garbage / "saved_model.pb").write_bytes(b"this is not a protobuf")
    for _ in range(3):
        backend.poll()
    assert backend.resolve(LATEST).version == 2
    assert backend.predict(LATEST, images()).version.version == 2
    listed = {info.version: info for info in backend.list_versions(TINY_MODEL_NAME)}
    assert set(listed) == {4, 2, 1}
    assert listed[4].state is VersionState.END and "cannot load" in listed[4].error
    assert events.count((TINY_MODEL_NAME, 4, "load_failed")) == 1  # retried only on change
    assert listed[1].state is VersionState.AVAILABLE  # the failure did not push 1 out


def test_missing_model_base_is_unavailable_until_a_version_appears(
        make_backend: MakeBackend, tmp_path: Path, model_dir: Path) -> None:
    base = tmp_path / "empty-base"
    backend = make_backend(base, poll_interval_s=FAST_POLL_S)
    with pytest.raises(BackendUnavailable, match="does not exist"):
        backend.resolve(LATEST)
    with pytest.raises(BackendUnavailable):
        backend.predict(LATEST, images())
    (base / TINY_MODEL_NAME).mkdir(parents=True)
    publish_version(model_dir / "1", base / TINY_MODEL_NAME, 1)
    wait_until(lambda: states(backend).get(1) is VersionState.AVAILABLE, what="version 1")
    assert backend.predict(LATEST, images()).version.version == 1


def test_unload_waits_for_in_flight_calls(make_backend: MakeBackend, model_dir: Path) -> None:
    events: Events = []
    backend = make_backend(poll_interval_s=SLOW_POLL_S, events=lambda *e: events.append(e))
    version1 = ModelRef(TINY_MODEL_NAME, version=1)
    # Hold version 1 as a predict call does, to stand for a call in flight during the unload.
    with backend._acquire(version1) as (info, loaded):
        shutil.rmtree(model_dir / "1")
        backend.poll()
        assert states(backend)[1] is VersionState.UNLOADING
        with pytest.raises(ModelNotFound):
            backend.resolve(version1)
        assert (TINY_MODEL_NAME, 1, "unloaded") not in events
        probabilities, _ = loaded.predict(images())
        assert info.version == 1 and probabilities.shape == (3, 7)
    assert (TINY_MODEL_NAME, 1, "unloaded") in events
    backend.poll()
    assert 1 not in states(backend)


def test_an_unloaded_version_is_collected_by_the_next_scan(make_backend: MakeBackend,
                                                          model_dir: Path) -> None:
    """A SavedModel's graphs and functions reference each other: dropping an unloaded version
    frees them only at a full collection, which may come minutes later (a swapped-out ensemble
    held ~300 MB meanwhile). The scan that unloads it collects them.

    Judged by a weak reference to the unloaded version's serving graph (which lives in those
    cycles), not by counting what a later collection finds: other threads of the process make
    cycles of their own meanwhile."""
    import gc
    import weakref

    backend = make_backend(poll_interval_s=SLOW_POLL_S)
    with backend._acquire(ModelRef(TINY_MODEL_NAME, version=1)) as (_, loaded):
        serving_graph = weakref.ref(loaded._saved_model.signatures[SERVING_SIGNATURE].graph)
    del loaded
    gc.collect()
    gc.disable()  # from here only the backend's own collection frees cycles
    try:
        shutil.rmtree(model_dir / "1")
        backend.poll()
        assert 1 not in states(backend)  # unloaded, and forgotten with its directory
        assert serving_graph() is None, "the unloaded graph waits for the next collection"
    finally:
        gc.enable()


def test_closed_backend_is_unavailable(make_backend: MakeBackend) -> None:
    backend = make_backend(poll_interval_s=FAST_POLL_S)
    backend.close()
    with pytest.raises(BackendUnavailable, match="closed"):
        backend.resolve(LATEST)


def test_a_model_directory_missing_for_a_scan_keeps_serving(make_backend: MakeBackend,
                                                            model_dir: Path) -> None:
    # An NFS blip: the directory is gone for one scan. Unloading then cost ~9 s of outage.
    events: Events = []
    backend = make_backend(poll_interval_s=SLOW_POLL_S, events=lambda *e: events.append(e))
    away = model_dir.with_name("away")
    model_dir.rename(away)
    backend.poll()
    assert backend.predict(LATEST, images()).version.version == 2
    assert states(backend) == {2: VersionState.AVAILABLE, 1: VersionState.AVAILABLE}
    away.rename(model_dir)
    backend.poll()
    assert backend.predict(LATEST, images()).version.version == 2
    assert not [event for event in events if event[2] == "unloaded"]


def test_a_model_directory_gone_for_several_scans_unloads(make_backend: MakeBackend,
                                                          model_dir: Path) -> None:
    backend = make_backend(poll_interval_s=SLOW_POLL_S)
    shutil.rmtree(model_dir)
    for _ in range(DEFAULT_MISSING_SCANS_TO_UNLOAD - 1):
        backend.poll()
        assert backend.resolve(LATEST).version == 2
    backend.poll()
    assert set(states(backend).values()) <= {VersionState.END}
    with pytest.raises(BackendUnavailable, match="does not exist") as caught:
        backend.resolve(LATEST)
    assert str(model_dir.parent) not in caught.value.message  # no server path for clients


class SizeRecordingVersion(LoadedVersion):
    """A real loaded version that notes the batch size of every predict it runs."""

    def __init__(self, saved_model: object, config: ModelConfig, freeze: bool = True) -> None:
        super().__init__(saved_model, config, freeze)
        self.sizes: list[int] = []

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.sizes.append(len(images))
        return super().predict(images)


def test_a_version_is_warmed_up_at_every_batch_size_largest_first(model_base: Path) -> None:
    # Before it answers anyone, so that a server reaches its working memory at load and no
    # first call at a new batch size pays the set-up.
    version = SizeRecordingVersion.load(model_base / TINY_MODEL_NAME / "1", warm_up_max_batch=5)
    assert version.sizes == [5, 4, 3, 2, 1]
    assert SizeRecordingVersion.load(model_base / TINY_MODEL_NAME / "1").sizes == [1]


@pytest.mark.parametrize(("flags", "largest_batch", "expected"), [
    ([], 32, 32), ([], 1, 1), (["--warm-up-max-batch", "4"], 32, 4)])
def test_the_warm_up_covers_the_largest_batch_the_process_sends_unless_told(
        model_base: Path, flags: list[str], largest_batch: int, expected: int) -> None:
    settings = Settings.from_sources(["--model-base", str(model_base), *flags])
    backend = open_backend(settings, block=True, largest_batch=largest_batch)
    try:
        assert isinstance(backend, EmbeddedBackend)
        assert backend.warm_up_max_batch == expected
        assert backend.resolve(LATEST).version == 2
    finally:
        backend.close()
