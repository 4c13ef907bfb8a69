"""The embedded backend: versioned SavedModels served in process, with TF Serving's semantics.

Layout: `<model_base>/<model_name>/<version>/saved_model.pb` (docs/model-contract.md).

- Which versions load. A version is a directory named by a positive integer holding
  `saved_model.pb` (other names, such as the trainer's temporary directories, are ignored). It is
  loaded only once it is stable: the same files, sizes and mtimes on two consecutive scans. The
  policy keeps the latest `max_loaded_versions` loadable versions loaded (default 2), plus any
  version a label points to. A version that fails to load is marked END with its reason (the
  details, which name server paths and quote TensorFlow, go to the log only), emits
  `load_failed`, never affects the versions already serving, and is retried when its files change.
- A missing model directory. An NFS blip or a remount hides the directory for a scan or two, so
  while versions are loaded they keep serving until the directory has been missing for
  `missing_scans_to_unload` scans in a row; then they unload as if deleted.
- Hot reload. `start()` scans twice (`settle_s` apart) and loads synchronously, so the versions on
  disk are AVAILABLE when it returns (`start(block=False)` does the same in the poller thread).
  The poller then rescans every `poll_interval_s`: new versions load (and warm up) before older
  ones unload, so "latest" never goes missing. A version leaving the policy (or the disk) turns
  UNLOADING: new calls no longer see it, in-flight calls finish on it, and the last one out drops
  it (END, `unloaded` event).
- Which version answers. `ModelRef.version` pins a version, `ModelRef.label` names one through
  the labels given to the constructor, overridden by `<model_base>/<model_name>/version_labels.json`
  (e.g. `{"stable": 3, "canary": 4}`), re-read on every scan. Otherwise the highest AVAILABLE
  version answers. An unknown, unloaded or still-loading version or label is ModelNotFound (as in
  TF Serving); no AVAILABLE version at all (missing directory, nothing loadable yet) is
  BackendUnavailable, and serving starts by itself once a version loads.
- Deadlines. An in-process TF call cannot be cancelled; `timeout` is accepted for the interface
  and ignored, and the caller bounds its own wait.
- Events: `events(model_name, version, event)` with event "loaded", "load_failed" or "unloaded".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dermserve.core.backends.base import (
    BatchOutput,
    ExplainOutput,
    ModelRef,
    VersionInfo,
    VersionState,
    explain_output,
    load_failure,
)
from dermserve.core.backends.savedmodel import LoadedVersion, reclaim_memory
from dermserve.core.backends.version_dirs import (
    SAVED_MODEL_FILE,
    UNKNOWN_LABEL_REASON,
    Fingerprint,
    VersionDir,
    read_version_labels,
    scan_versions,
)
from dermserve.core.context import ContextBatch
from dermserve.core.errors import BackendUnavailable, InternalError, ModelNotFound
from dermserve.core.model_config import ModelConfig

logger = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL_S = 2.0
"""Seconds between scans of the model directory: a new version serves within about two scans
(it must look the same twice), and a scan costs a few stat() calls."""

DEFAULT_MAX_LOADED_VERSIONS = 2
"""Latest versions kept loaded: the newest plus the previous one, so pinned callers and a quick
rollback keep working through a release without holding every old model in memory."""

DEFAULT_SETTLE_S = 0.2
"""Seconds between start()'s two scans: a directory still being copied changes within this."""

DEFAULT_MISSING_SCANS_TO_UNLOAD = 3
"""Scans in a row the model directory may be missing before its loaded versions unload: 6 s at
the default interval. A network file system's blip or remount lasts a scan or two; unloading on
the first one cost about 9 s of outage (the reload); a directory really removed goes in three."""

POLLER_JOIN_TIMEOUT_S = 30.0
"""How long close() waits for a scan in progress (a model load) to finish."""

EventSink = Callable[[str, int, str], None]
"""events(model_name, version, event) with event in {"loaded", "load_failed", "unloaded"}."""


@dataclass
class _Version:
    """The mutable record of one version; only touched under EmbeddedBackend._lock."""

    number: int
    path: Path
    state: VersionState = VersionState.START
    loaded: LoadedVersion | None = None
    config: ModelConfig | None = None
    inflight: int = 0
    error: str = ""
    failed_fingerprint: Fingerprint | None = None


class EmbeddedBackend:
    """Serves the versions under `<model_base>/<model_name>/` in process. Thread-safe."""

    def __init__(self, model_base: Path, model_name: str,
                 poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
                 version_labels: dict[str, int] | None = None,
                 events: EventSink | None = None,
                 max_loaded_versions: int = DEFAULT_MAX_LOADED_VERSIONS,
                 settle_s: float = DEFAULT_SETTLE_S,
                 missing_scans_to_unload: int = DEFAULT_MISSING_SCANS_TO_UNLOAD,
                 warm_up_max_batch: int = 1, freeze_graph: bool = True) -> None:
        if max_loaded_versions < 1:
            raise ValueError("max_loaded_versions must be at least 1")
        if missing_scans_to_unload < 1:
            raise ValueError("missing_scans_to_unload must be at least 1")
        self.model_name = model_name
        self._model_dir = Path(model_base) / model_name
        self._poll_interval_s = poll_interval_s
        self._settle_s = settle_s
        self._max_loaded = max_loaded_versions
        self._missing_scans_to_unload = missing_scans_to_unload
        self.warm_up_max_batch = warm_up_max_batch  # a version answers once warm at all sizes
        self.freeze_graph = freeze_graph
        self._missing_scans = 0  # scans in a row that found no model directory
        self._events = events
        self._configured_labels = dict(version_labels or {})
        self._labels = dict(self._configured_labels)
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()  # one scan at a time (poller thread or poll())
        self._versions: dict[int, _Version] = {}
        self._previous_scan: dict[int, Fingerprint | None] = {}
        self._dir_state = "the model directory has not been scanned yet"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._unloaded_since_reclaim = False  # set under _lock; the next scan reclaims memory

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, block: bool = True) -> None:
        """Scan and load what is on disk (in this thread if `block`), then keep polling."""
        if self._thread is not None:
            return
        if block:
            self._first_scans()
        self._thread = threading.Thread(target=self._run, args=(not block,),
                                        name=f"model-poller-{self.model_name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop polling and drop every loaded version; later calls raise BackendUnavailable."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(POLLER_JOIN_TIMEOUT_S)
        with self._lock:
            self._closed = True
            for record in self._versions.values():
                record.loaded = None
                record.state = VersionState.END

    def poll(self) -> None:
        """One scan: re-read labels, load new stable versions, unload those out of policy."""
        with self._scan_lock:
            if self._stop.is_set():
                return
            scanned = scan_versions(self._model_dir)
            if self._riding_out_missing_dir(scanned is None):
                return
            self._refresh_labels(scanned is not None)
            dirs = scanned or {}
            self._describe_dir(scanned)
            stable = self._stable_versions(dirs)
            for number in sorted(self._wanted(dirs, stable), reverse=True):
                if self._stop.is_set():
                    return
                if self._needs_load(number):
                    self._load(stable[number])
            self._unload_unwanted(self._wanted(dirs, stable))
            self._forget_gone(dirs)
            self._reclaim_unloaded()

    def _reclaim_unloaded(self) -> None:
        """Give an unloaded version's memory back, on the poller's thread rather than a
        caller's: a SavedModel's graphs hold reference cycles, so dropping the last reference frees
        nothing until a full collection (a swapped-out ensemble kept ~300 MB for minutes)."""
        with self._lock:
            due, self._unloaded_since_reclaim = self._unloaded_since_reclaim, False
        if due:
            reclaim_memory()
            logger.info("reclaimed the memory of unloaded %s versions", self.model_name)

    def _riding_out_missing_dir(self, missing: bool) -> bool:
        """True while the directory has been missing for fewer than `missing_scans_to_unload`
        scans in a row and a version is loaded: this scan then changes nothing."""
        self._missing_scans = self._missing_scans + 1 if missing else 0
        if not missing or self._missing_scans >= self._missing_scans_to_unload:
            return False
        with self._lock:
            serving = any(r.state is VersionState.AVAILABLE for r in self._versions.values())
        if serving:
            logger.warning("model directory %s is missing (scan %d of %d before unloading); the "
                           "loaded versions keep serving", self._model_dir, self._missing_scans,
                           self._missing_scans_to_unload)
        return serving

    def _first_scans(self) -> None:
        self.poll()
        if not self._stop.wait(self._settle_s):
            self.poll()

    def _run(self, first_scans: bool) -> None:
        if first_scans:
            self._guarded(self._first_scans)
        while not self._stop.wait(self._poll_interval_s):
            self._guarded(self.poll)

    def _guarded(self, scan: Callable[[], None]) -> None:
        try:
            scan()
        except Exception:  # the poller must outlive any one bad scan
            logger.exception("scan of %s failed; retrying in %ss", self._model_dir,
                             self._poll_interval_s)

    # --- the Backend interface ---------------------------------------------------------------

    def resolve(self, ref: ModelRef, timeout: float | None = None) -> VersionInfo:
        with self._lock:
            return self._info(self._select(ref))

    def predict(self, ref: ModelRef, images: np.ndarray, timeout: float | None = None,
                context: ContextBatch | None = None) -> BatchOutput:
        with self._acquire(ref) as (info, loaded):
            probabilities, ood_scores = loaded.predict(images, context)
        return BatchOutput(info, probabilities, ood_scores)

    def explain(self, ref: ModelRef, images: np.ndarray, class_indices: np.ndarray,
                timeout: float | None = None,
                context: ContextBatch | None = None) -> ExplainOutput:
        with self._acquire(ref) as (info, loaded):
            out = loaded.explain(images, class_indices, context)
        return explain_output(info, out)

    def list_versions(self, name: str, timeout: float | None = None) -> list[VersionInfo]:
        self._check_name(name)
        with self._lock:
            return [self._info(record) for record in
                    sorted(self._versions.values(), key=lambda r: r.number, reverse=True)]

    # --- selecting a version -----------------------------------------------------------------

    def _check_name(self, name: str) -> None:
        if name != self.model_name:
            raise ModelNotFound(f"no model named {name!r} (this server has {self.model_name!r})")

    def _select(self, ref: ModelRef) -> _Version:
        """The AVAILABLE version `ref` names; call with _lock held."""
        self._check_name(ref.name)
        available = {n: r for n, r in self._versions.items() if r.state is VersionState.AVAILABLE}
        if self._closed or not available:
            raise BackendUnavailable(self._why_unavailable())
        number = ref.version
        if number is None and ref.label:
            number = self._labels.get(ref.label)
            if number is None:
                raise ModelNotFound(f"{ref.describe()}: no such version label",
                                    UNKNOWN_LABEL_REASON)
        if number is None:
            return available[max(available)]
        if number not in available:
            state = self._versions[number].state.value if number in self._versions else "unknown"
            raise ModelNotFound(f"{ref.describe()}: version {number} is not available ({state})")
        return available[number]

    def _why_unavailable(self) -> str:
        if self._closed:
            return f"the backend for {self.model_name!r} is closed"
        failures = "; ".join(f"version {r.number}: {r.error}" for r in self._versions.values()
                             if r.error)
        loading = [r.number for r in self._versions.values() if r.state is VersionState.LOADING]
        detail = (f"loading version {max(loading)}" if loading
                  else f"failed: {failures}" if failures else self._dir_state)
        return f"no version of model {self.model_name!r} is available yet: {detail}"

    @contextmanager
    def _acquire(self, ref: ModelRef) -> Iterator[tuple[VersionInfo, LoadedVersion]]:
        """Hold a version for one call: an unload waits for its in-flight calls to finish."""
        with self._lock:
            record = self._select(ref)
            if record.loaded is None:
                raise InternalError(f"version {record.number} is AVAILABLE but not loaded")
            record.inflight += 1
            held = (self._info(record), record.loaded)
        try:
            yield held
        finally:
            with self._lock:
                record.inflight -= 1
                finished = record.state is VersionState.UNLOADING and record.inflight == 0
                if finished:
                    self._finish_unload(record)
            if finished:
                self._emit(record.number, "unloaded")

    def _info(self, record: _Version) -> VersionInfo:
        labels = tuple(sorted(label for label, number in self._labels.items()
                              if number == record.number))
        return VersionInfo(self.model_name, record.number, record.state, record.config, labels,
                           record.error,
                           record.loaded is not None and record.loaded.takes_context,
                           record.loaded is not None and record.loaded.explain_takes_context)

    # --- the version policy ------------------------------------------------------------------

    def _refresh_labels(self, dir_exists: bool) -> None:
        try:
            from_file = read_version_labels(self._model_dir) if dir_exists else None
        except InternalError as exc:
            logger.warning("keeping the previous version labels: %s", exc.message)
            return
        with self._lock:
            self._labels = {**self._configured_labels, **(from_file or {})}

    def _describe_dir(self, scanned: dict[int, VersionDir] | None) -> None:
        """Remember what the scan saw, to explain BackendUnavailable while nothing serves. The
        explanation reaches clients, so it names no server path; the log has the path."""
        state = ("the model directory does not exist" if scanned is None
                 else f"the model directory has no version directory with {SAVED_MODEL_FILE}"
                 if not scanned else f"waiting for versions {sorted(scanned)} to settle")
        with self._lock:
            changed, self._dir_state = state != self._dir_state, state
        if changed:
            logger.info("model directory %s: %s", self._model_dir, state)

    def _stable_versions(self, dirs: dict[int, VersionDir]) -> dict[int, VersionDir]:
        """Versions whose files did not change since the previous scan."""
        previous, self._previous_scan = self._previous_scan, {
            n: d.fingerprint for n, d in dirs.items()}
        return {n: d for n, d in dirs.items()
                if d.fingerprint is not None and previous.get(n) == d.fingerprint}

    def _wanted(self, dirs: dict[int, VersionDir],
                stable: dict[int, VersionDir]) -> set[int]:
        """Latest N loadable versions on disk, plus those a label names."""
        with self._lock:
            eligible = {n for n in dirs if self._loadable(n, stable)}
            labelled = {n for n in self._labels.values() if n in eligible}
        return set(sorted(eligible, reverse=True)[:self._max_loaded]) | labelled

    def _loadable(self, number: int, stable: dict[int, VersionDir]) -> bool:
        record = self._versions.get(number)
        if record is not None and record.state is VersionState.AVAILABLE:
            return True
        if number not in stable:
            return False
        # A failed version is retried only once its files change (for instance, a re-copy).
        return record is None or record.failed_fingerprint != stable[number].fingerprint

    def _needs_load(self, number: int) -> bool:
        with self._lock:
            record = self._versions.get(number)
            return record is None or record.state in (VersionState.START, VersionState.END)

    def _load(self, version_dir: VersionDir) -> None:
        with self._lock:
            record = self._versions.setdefault(
                version_dir.number, _Version(version_dir.number, version_dir.path))
            record.state, record.error = VersionState.LOADING, ""
        logger.info("loading %s version %s from %s", self.model_name, record.number,
                    version_dir.path)
        try:
            loaded = LoadedVersion.load(version_dir.path, self.warm_up_max_batch,
                                        self.freeze_graph)
        except InternalError as exc:
            with self._lock:
                record.state, record.error = VersionState.END, load_failure(exc.reason)
                record.failed_fingerprint = version_dir.fingerprint
            logger.warning("%s version %s failed to load: %s", self.model_name, record.number,
                           exc.message)
            self._emit(record.number, "load_failed")
            return
        with self._lock:
            record.loaded, record.config = loaded, loaded.config
            record.state, record.failed_fingerprint = VersionState.AVAILABLE, None
        logger.info("%s version %s is available", self.model_name, record.number)
        self._emit(record.number, "loaded")

    def _unload_unwanted(self, wanted: set[int]) -> None:
        unloaded: list[int] = []
        with self._lock:
            for record in self._versions.values():
                if record.state is not VersionState.AVAILABLE or record.number in wanted:
                    continue
                record.state = VersionState.UNLOADING
                logger.info("unloading %s version %s (%s calls in flight)", self.model_name,
                            record.number, record.inflight)
                if record.inflight == 0:
                    self._finish_unload(record)
                    unloaded.append(record.number)
        for number in unloaded:
            self._emit(number, "unloaded")

    def _finish_unload(self, record: _Version) -> None:
        """Drop the model; call with _lock held once no call uses it."""
        record.loaded = None
        record.state = VersionState.END
        self._unloaded_since_reclaim = True
        logger.info("%s version %s unloaded", self.model_name, record.number)

    def _forget_gone(self, dirs: dict[int, VersionDir]) -> None:
        """Versions whose directory is gone and that hold nothing any more leave the listing."""
        with self._lock:
            for number in [n for n, r in self._versions.items()
                           if n not in dirs and r.state is VersionState.END]:
                del self._versions[number]

    def _emit(self, version: int, event: str) -> None:
        if self._events is None:
            return
        try:
            self._events(self.model_name, version, event)
        except Exception:  # a broken metrics hook must not stop loading or unloading
            logger.exception("model event hook failed for %s version %s: %s", self.model_name,
                             version, event)
