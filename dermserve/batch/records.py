"""What a batch job is, transport-free: its state, priority and the record Redis keeps of it.

The servicer turns a JobRecord into a BatchJob message; the CLI prints its fields.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from dermserve.core.identity import ANONYMOUS


class ChunkOutcome(enum.StrEnum):
    """How one attempt at a chunk ended (the store's Lua scripts answer these words). Also the
    `outcome` label of dermserve_batch_chunks_total."""

    OK = "OK"  # ran and was counted; more chunks remain
    LAST = "LAST"  # ran and was counted, and was the job's last: finalise the job
    DUPLICATE = "DUPLICATE"  # ran, but another run had already counted it
    DONE = "DONE"  # not run: already counted
    BUSY = "BUSY"  # not run: another worker holds its lease
    GONE = "GONE"  # not run: the job expired or never existed
    SUCCEEDED = "SUCCEEDED"  # not run: the job already ended so
    FAILED = "FAILED"  # the job failed (then, or before this run)
    CANCELLED = "CANCELLED"  # the job was cancelled (then, or before this run)

    @property
    def counted(self) -> bool:
        """Whether this run's images were counted (and so go into the image metrics)."""
        return self in (ChunkOutcome.OK, ChunkOutcome.LAST)


class JobState(enum.Enum):
    """Mirrors dermserve.v1.BatchJobState."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


ALL_IMAGES_FAILED = "ALL_IMAGES_FAILED"
"""The reason that starts a FAILED job's error when every image failed (its results are kept)."""

TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class Priority(enum.Enum):
    """Mirrors dermserve.v1.BatchJobPriority; each has its own rq queue, HIGH listened to first."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class ChunkState(enum.Enum):
    """A chunk's state in the job's chunk hash (one letter: it is stored per chunk)."""

    PENDING = "P"
    RUNNING = "R"
    DONE = "D"


@dataclass(frozen=True)
class JobRecord:
    """One job as Redis holds it: state and counts only; images and results live in files."""

    job_id: str
    client_job_id: str
    state: JobState
    priority: Priority
    total: int
    chunk_count: int
    chunk_size: int
    done: int
    failed: int
    abstained: int
    chunks_done: int
    model_name: str
    requested_version: int | None
    requested_label: str
    resolved_version: int | None
    created: float
    started: float | None
    finished: float | None
    error: str
    job_dir: str
    owner: str = ANONYMOUS.identity

    @property
    def progress_key(self) -> tuple[object, ...]:
        """What a watcher compares to decide whether anything changed."""
        return (self.state, self.done, self.failed, self.abstained, self.resolved_version)

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left at the rate so far; None before the first image or after the end."""
        if self.state.terminal or self.started is None or self.done == 0:
            return None
        elapsed = (now if now is not None else time.time()) - self.started
        return max(0.0, elapsed / self.done * (self.total - self.done))

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> JobRecord:
        return cls(
            job_id=raw["job_id"],
            client_job_id=raw.get("client_job_id", ""),
            state=JobState(raw["state"]),
            priority=Priority(raw.get("priority", Priority.NORMAL.value)),
            total=int(raw["total"]),
            chunk_count=int(raw["chunk_count"]),
            chunk_size=int(raw["chunk_size"]),
            done=int(raw.get("done", 0)),
            failed=int(raw.get("failed", 0)),
            abstained=int(raw.get("abstained", 0)),
            chunks_done=int(raw.get("chunks_done", 0)),
            model_name=raw["model_name"],
            requested_version=_optional_int(raw.get("requested_version", "")),
            requested_label=raw.get("requested_label", ""),
            resolved_version=_optional_int(raw.get("resolved_version", "")),
            created=float(raw["created"]),
            started=_optional_float(raw.get("started", "")),
            finished=_optional_float(raw.get("finished", "")),
            error=raw.get("error", ""),
            job_dir=raw["job_dir"],
            owner=raw.get("owner", ANONYMOUS.identity),  # jobs from before owners: anonymous's
        )


def _optional_int(text: str) -> int | None:
    return int(text) if text else None


def _optional_float(text: str) -> float | None:
    return float(text) if text else None
