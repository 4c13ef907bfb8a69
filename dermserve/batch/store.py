"""The job store: every Redis key of a batch job, and the atomic steps on them.

Redis holds state and counts only (a few hundred bytes per job plus one letter per chunk); images
and results live in files (batch/results.py). Keys, under the prefix `P` (dermserve:batch):

    P:job:<id>               hash: the JobRecord fields, counts included
    P:job:<id>:chunks        hash: chunk index -> P(ending) | R(unning) | D(one)
    P:job:<id>:attempts      hash: chunk index -> runs started (recovery bumps it)
    P:job:<id>:errors        hash: chunk index -> reason of its last failed run
    P:job:<id>:lease:<i>     string with a TTL: the token of the worker running chunk i
    P:job:<id>:lease:final   string with a TTL: the worker writing the exports
    P:idem:<owner>:<client_job_id>
                             string: the job id an idempotency key maps to, per owner (a hash of
                             the owner's identity): another identity's same key is another job
    P:owner:<owner>:jobs     sorted set: an owner's job ids (the owner hashed, as above), scored
                             by creation time, for ListBatchJobs
    P:jobs                   sorted set: every job id by creation time (what an operator lists)
    P:active                 set: ids of jobs not yet in a terminal state
    P:stats                  hash: jobs finished per state (for the metrics)

Every key of a job gets a TTL (`active_job_ttl_s` while it runs, `job_ttl_s` once it finishes).
The two job indexes outlive single jobs, so they are kept bounded three ways: each `create` trims
entries older than the longest a job can live (`index_ttl_s`) and renews the index's TTL to that
(an owner who stops submitting leaves nothing behind), and listing drops the ids whose job hash
has expired. Jobs created before the indexes existed are in none and are not listed.
Chunk completion is counted at most once (the chunk hash is the guard, checked and set in one
script), so a chunk that runs twice after a worker was killed adds its counts once.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.credentials import CredentialProvider
from redis.retry import Retry

from dermserve.batch import defaults
from dermserve.batch.records import ChunkOutcome, ChunkState, JobRecord, JobState
from dermserve.batch.settings import BatchApiSettings, RedisSettings
from dermserve.core.errors import FailedPrecondition, JobNotFound
from dermserve.core.identity import ANONYMOUS

CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'GONE' end
if state ~= 'QUEUED' and state ~= 'RUNNING' then return state end
local chunk = redis.call('HGET', KEYS[2], ARGV[1])
if chunk == 'D' then return 'DONE' end
local holder = redis.call('GET', KEYS[3])
if chunk == 'R' and holder and holder ~= ARGV[2] then return 'BUSY' end
redis.call('HSET', KEYS[2], ARGV[1], 'R')
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
if state == 'QUEUED' then
  redis.call('HSET', KEYS[1], 'state', 'RUNNING', 'started', ARGV[4])
end
return 'OK'
"""

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

COMPLETE = """
local state = redis.call('HGET', KEYS[1], 'state')
if redis.call('GET', KEYS[3]) == ARGV[2] then redis.call('DEL', KEYS[3]) end
if not state then return 'GONE' end
if state ~= 'QUEUED' and state ~= 'RUNNING' then return state end
if redis.call('HGET', KEYS[2], ARGV[1]) == 'D' then return 'DUPLICATE' end
redis.call('HSET', KEYS[2], ARGV[1], 'D')
redis.call('HINCRBY', KEYS[1], 'done', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'failed', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'abstained', ARGV[5])
local finished = redis.call('HINCRBY', KEYS[1], 'chunks_done', 1)
if finished == tonumber(redis.call('HGET', KEYS[1], 'chunk_count')) then return 'LAST' end
return 'OK'
"""

REQUEUE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= 'R' then return -1 end
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], 'P')
return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
"""

REQUEUE_PENDING = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= 'P' then return -1 end
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return -1 end
return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
"""

UNPIN = """
if redis.call('HGET', KEYS[1], 'resolved_version') == ARGV[1] then
  return redis.call('HDEL', KEYS[1], 'resolved_version')
end
return 0
"""

FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'GONE' end
if state ~= 'QUEUED' and state ~= 'RUNNING' then return state end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finished', ARGV[2], 'error', ARGV[4])
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
local idem = redis.call('HGET', KEYS[1], 'idempotency_key')
if idem and idem ~= '' then redis.call('EXPIRE', idem, ARGV[3]) end
redis.call('SREM', KEYS[5], ARGV[5])
redis.call('HINCRBY', KEYS[6], ARGV[1], 1)
return 'OK'
"""


def connect(settings: RedisSettings, decode_responses: bool = True,
            retries: int | None = None) -> redis.Redis:
    """A client that reconnects by itself: each command is retried with exponential backoff
    while Redis is unreachable (a restart, a failover), for about a minute. rq needs its own
    client with `decode_responses=False` (it stores pickles)."""
    retry = Retry(ExponentialBackoff(cap=defaults.DEFAULT_REDIS_BACKOFF_CAP_S,
                                     base=defaults.DEFAULT_REDIS_BACKOFF_BASE_S),
                  settings.redis_retries if retries is None else retries)
    url, security = connection_security(settings)
    return redis.Redis.from_url(
        url, decode_responses=decode_responses, retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_socket_timeout_s, health_check_interval=30,
        **security)


class PasswordFile(CredentialProvider):
    """Redis credentials whose password is read from a file for each new connection, so that a
    rotated Secret is used without a restart (connections already open stay authenticated)."""

    def __init__(self, username: str | None, path: Path) -> None:
        self.username = username
        self.path = path

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        password = self.path.read_text(encoding="utf-8").strip()
        return (self.username, password) if self.username else (password,)


def connection_security(settings: RedisSettings) -> tuple[str, dict[str, Any]]:
    """The Redis URL and the client arguments for a password file and a CA. The user name stays
    in the URL (`rediss://dermserve@redis:6379/0`); redis-py refuses a credential provider next
    to a URL's user, so it moves into the provider."""
    url, extra = settings.redis_url, dict[str, Any]()
    parts = urlsplit(url)
    if settings.redis_ca_cert:
        if parts.scheme != "rediss":
            raise ValueError("a Redis CA certificate needs a rediss:// URL")
        extra["ssl_ca_certs"] = settings.redis_ca_cert
    if settings.redis_password_file:
        host = parts.netloc.rpartition("@")[2]
        url = urlunsplit(parts._replace(netloc=host))
        extra["credential_provider"] = PasswordFile(parts.username,
                                                    Path(settings.redis_password_file))
    return url, extra


IndexCursor = tuple[float, str]
"""A place in a job index: (creation time, job id), the order ListBatchJobs lists in."""


class JobStore:
    """Job state in Redis. Raises JobNotFound for unknown ids; everything else is atomic."""

    def __init__(self, client: redis.Redis, prefix: str, job_ttl_s: int,
                 active_job_ttl_s: int) -> None:
        self.client = client
        self.prefix = prefix
        self.job_ttl_s = job_ttl_s
        self.active_job_ttl_s = active_job_ttl_s
        self._claim = client.register_script(CLAIM)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._complete = client.register_script(COMPLETE)
        self._requeue = client.register_script(REQUEUE)
        self._requeue_pending = client.register_script(REQUEUE_PENDING)
        self._finish = client.register_script(FINISH)
        self._unpin = client.register_script(UNPIN)

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: BatchApiSettings) -> JobStore:
        return cls(client, settings.key_prefix, settings.job_ttl_s, settings.active_job_ttl_s)

    # --- keys ------------------------------------------------------------------------------------
    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def chunks_key(self, job_id: str) -> str:
        return f"{self.job_key(job_id)}:chunks"

    def attempts_key(self, job_id: str) -> str:
        return f"{self.job_key(job_id)}:attempts"

    def errors_key(self, job_id: str) -> str:
        return f"{self.job_key(job_id)}:errors"

    def lease_key(self, job_id: str, index: int | str) -> str:
        return f"{self.job_key(job_id)}:lease:{index}"

    def idempotency_key(self, owner: str, client_job_id: str) -> str:
        return f"{self.prefix}:idem:{owner_scope(owner)}:{client_job_id}"

    def owner_jobs_key(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner_scope(owner)}:jobs"

    @property
    def all_jobs_key(self) -> str:
        return f"{self.prefix}:jobs"

    def index_key(self, owner: str | None) -> str:
        """The index listing `owner`'s jobs, or every job for None (an operator)."""
        return self.all_jobs_key if owner is None else self.owner_jobs_key(owner)

    @property
    def index_ttl_s(self) -> int:
        """The longest a job's keys can live: the active TTL runs from creation, and a job that
        finishes just before it ends starts `job_ttl_s` afresh."""
        return self.active_job_ttl_s + self.job_ttl_s

    @property
    def active_key(self) -> str:
        return f"{self.prefix}:active"

    @property
    def stats_key(self) -> str:
        return f"{self.prefix}:stats"

    def _job_keys(self, job_id: str) -> list[str]:
        return [self.job_key(job_id), self.chunks_key(job_id), self.attempts_key(job_id),
                self.errors_key(job_id)]

    # --- creation and reading --------------------------------------------------------------------
    def create(self, fields: Mapping[str, str | int | float], chunk_count: int) -> None:
        """Write a new job and its pending chunks in one transaction."""
        job_id = str(fields["job_id"])
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.job_key(job_id), mapping={k: v for k, v in fields.items()})
            pipe.hset(self.chunks_key(job_id),
                      mapping={str(i): ChunkState.PENDING.value for i in range(chunk_count)})
            pipe.hset(self.attempts_key(job_id), mapping={str(i): 1 for i in range(chunk_count)})
            pipe.hset(self.errors_key(job_id), "-", "")  # so that the key exists for its TTL
            for key in self._job_keys(job_id):
                pipe.expire(key, self.active_job_ttl_s)
            pipe.sadd(self.active_key, job_id)
            owner = str(fields.get("owner", ANONYMOUS.identity))
            self._index(pipe, job_id, float(fields["created"]), owner)
            pipe.execute()

    def _index(self, pipe: Any, job_id: str, created: float, owner: str) -> None:
        """Add the job to its owner's index and to the operators', and trim both (see the
        module docstring: an index must not grow with jobs long expired)."""
        for key in (self.owner_jobs_key(owner), self.all_jobs_key):
            pipe.zadd(key, {job_id: created})
            pipe.zremrangebyscore(key, "-inf", f"({created - self.index_ttl_s}")
            pipe.expire(key, self.index_ttl_s)

    def claim_idempotency_key(self, key: str, job_id: str) -> str | None:
        """Map the idempotency `key` to `job_id` unless it is mapped already; returns the
        earlier id."""
        if self.client.set(key, job_id, nx=True, ex=self.active_job_ttl_s):
            return None
        earlier = self.client.get(key)
        return str(earlier) if earlier else None

    def remap_idempotency_key(self, key: str, job_id: str) -> None:
        """Point `key` at `job_id` (its earlier job expired)."""
        self.client.set(key, job_id, ex=self.active_job_ttl_s)

    def idempotency_job(self, key: str) -> str | None:
        """The job id `key` maps to, if any."""
        earlier = self.client.get(key)
        return str(earlier) if earlier else None

    def forget_active(self, job_id: str) -> None:
        """Drop `job_id` from the active set (its keys expired)."""
        self.client.srem(self.active_key, job_id)

    def close(self) -> None:
        self.client.close()

    def delete(self, job_id: str) -> None:
        owner = self.client.hget(self.job_key(job_id), "owner")
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(*self._job_keys(job_id))
            pipe.srem(self.active_key, job_id)
            pipe.zrem(self.all_jobs_key, job_id)
            if owner is not None:
                pipe.zrem(self.owner_jobs_key(str(owner)), job_id)
            pipe.execute()

    def load(self, job_id: str) -> JobRecord:
        raw: dict[str, str] = self.client.hgetall(self.job_key(job_id))  # type: ignore[assignment]
        if not raw:
            raise JobNotFound(f"no batch job {job_id!r} (unknown, or expired after its TTL)")
        return JobRecord.from_hash(raw)

    def indexed_jobs(self, owner: str | None, after: IndexCursor | None, count: int
                     ) -> list[tuple[IndexCursor, JobRecord | None]]:
        """Up to `count` entries of the index of `owner` (None: every job), newest first, after
        `after`, each with its job's record; None for a job whose keys expired (its id is
        dropped from the index here)."""
        key = self.index_key(owner)
        entries = self._index_entries(key, after, count)
        with self.client.pipeline(transaction=False) as pipe:
            for job_id, _ in entries:
                pipe.hgetall(self.job_key(job_id))
            hashes: list[dict[str, str]] = pipe.execute()
        expired = [job_id for (job_id, _), raw in zip(entries, hashes, strict=True) if not raw]
        if expired:
            self.client.zrem(key, *expired)
        return [((score, job_id), JobRecord.from_hash(raw) if raw else None)
                for (job_id, score), raw in zip(entries, hashes, strict=True)]

    def _index_entries(self, key: str, after: IndexCursor | None, count: int
                       ) -> list[tuple[str, float]]:
        """(id, creation time) pairs after `after`. Ids of one score come in reverse order of
        their text, as ZREVRANGEBYSCORE gives them, so a cursor on a tie resumes exactly."""
        if after is None:
            return self._scored(self.client.zrevrangebyscore(key, "+inf", "-inf", start=0,
                                                             num=count, withscores=True))
        score, last_id = after
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zrevrangebyscore(key, score, score, withscores=True)
            pipe.zrevrangebyscore(key, f"({score!r}", "-inf", start=0, num=count,
                                  withscores=True)
            ties, older = pipe.execute()
        same = [entry for entry in self._scored(ties) if entry[0] < last_id]
        return (same + self._scored(older))[:count]

    @staticmethod
    def _scored(raw: Any) -> list[tuple[str, float]]:
        return [(str(job_id), float(score)) for job_id, score in raw]

    def exists(self, job_id: str) -> bool:
        return bool(self.client.exists(self.job_key(job_id)))

    def state(self, job_id: str) -> JobState | None:
        text = self.client.hget(self.job_key(job_id), "state")
        return JobState(text) if text else None

    def chunk_states(self, job_id: str) -> dict[int, ChunkState]:
        raw: dict[str, str] = self.client.hgetall(self.chunks_key(job_id))  # type: ignore[assignment]
        return {int(index): ChunkState(value) for index, value in raw.items()}

    def active_jobs(self) -> list[str]:
        return sorted(self.client.smembers(self.active_key))  # type: ignore[arg-type]

    def finished_counts(self) -> dict[str, int]:
        raw: dict[str, str] = self.client.hgetall(self.stats_key)  # type: ignore[assignment]
        return {state: int(count) for state, count in raw.items()}

    # --- chunk steps -----------------------------------------------------------------------------
    def claim_chunk(self, job_id: str, index: int, token: str, lease_s: float
                    ) -> ChunkOutcome:
        """'OK' when this worker may run the chunk; else why not: DONE, BUSY, GONE or the job's
        terminal state (a cancelled job's chunks end here, before any image is read)."""
        keys = [self.job_key(job_id), self.chunks_key(job_id), self.lease_key(job_id, index)]
        return ChunkOutcome(str(self._claim(keys=keys,
                                            args=[index, token, int(lease_s * 1000), time.time()])))

    def renew_lease(self, job_id: str, index: int | str, token: str, lease_s: float) -> bool:
        keys = [self.lease_key(job_id, index)]
        return bool(self._renew(keys=keys, args=[token, int(lease_s * 1000)]))

    def release_lease(self, job_id: str, index: int | str, token: str) -> None:
        self._release(keys=[self.lease_key(job_id, index)], args=[token])

    def take_lease(self, job_id: str, index: int | str, token: str, lease_s: float) -> bool:
        """A lease for work that has no chunk state of its own (the final export)."""
        key = self.lease_key(job_id, index)
        return bool(self.client.set(key, token, nx=True, px=int(lease_s * 1000)))

    def lease_held(self, job_id: str, index: int | str) -> bool:
        return bool(self.client.exists(self.lease_key(job_id, index)))

    def complete_chunk(self, job_id: str, index: int, token: str, done: int, failed: int,
                       abstained: int) -> ChunkOutcome:
        """Count a chunk once: 'OK', 'LAST' (it was the job's last), 'DUPLICATE', or why not."""
        keys = [self.job_key(job_id), self.chunks_key(job_id), self.lease_key(job_id, index)]
        return ChunkOutcome(str(self._complete(keys=keys,
                                               args=[index, token, done, failed, abstained])))

    def requeue_abandoned(self, job_id: str, index: int) -> int | None:
        """Turn a running chunk whose lease expired back to pending; returns its next attempt."""
        keys = [self.chunks_key(job_id), self.attempts_key(job_id), self.lease_key(job_id, index)]
        attempt = int(self._requeue(keys=keys, args=[index]))
        return attempt if attempt > 0 else None

    def requeue_pending(self, job_id: str, index: int, attempt: int) -> int | None:
        """Bump a pending chunk whose rq job was lost from `attempt`; None if someone else did."""
        keys = [self.chunks_key(job_id), self.attempts_key(job_id)]
        bumped = int(self._requeue_pending(keys=keys, args=[index, attempt]))
        return bumped if bumped > 0 else None

    def attempts(self, job_id: str) -> dict[int, int]:
        raw: dict[str, str] = self.client.hgetall(self.attempts_key(job_id))  # type: ignore[assignment]
        return {int(index): int(count) for index, count in raw.items()}

    def record_chunk_error(self, job_id: str, index: int, reason: str) -> None:
        self.client.hset(self.errors_key(job_id), str(index), reason)

    def chunk_error(self, job_id: str, index: int) -> str:
        return str(self.client.hget(self.errors_key(job_id), str(index)) or "")

    def pin_version(self, job_id: str, version: int) -> int:
        """The job's model version: the first chunk to resolve one decides for the whole job."""
        key = self.job_key(job_id)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "resolved_version", version)
            pipe.hget(key, "resolved_version")
            results: list[Any] = pipe.execute()
        return int(results[1] or version)

    def unpin_version(self, job_id: str, version: int) -> None:
        """Forget the job's version if it is still `version` (the next chunk resolves again)."""
        self._unpin(keys=[self.job_key(job_id)], args=[version])

    # --- the end ---------------------------------------------------------------------------------
    def finish(self, job_id: str, state: JobState, error: str = "") -> str:
        """Move a running job to a terminal state and start its TTL; 'OK', or the state it was
        already in ('GONE' when it expired)."""
        keys = [*self._job_keys(job_id), self.active_key, self.stats_key]
        args = [state.value, time.time(), self.job_ttl_s, error, job_id]
        return str(self._finish(keys=keys, args=args))

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job; cancelling it twice is fine, cancelling a finished one is not."""
        outcome = self.finish(job_id, JobState.CANCELLED)
        if outcome == "GONE":
            raise JobNotFound(f"no batch job {job_id!r}")
        if outcome not in ("OK", JobState.CANCELLED.value):
            raise FailedPrecondition(f"job {job_id} already finished ({outcome})",
                                     "JOB_ALREADY_FINISHED")
        return self.load(job_id)


def owner_scope(owner: str) -> str:
    """An owner's part of a key: hashed, because an owner is any text (a certificate subject)
    and a key is not."""
    return hashlib.sha256(owner.encode("utf-8", "surrogateescape")).hexdigest()[:32]
