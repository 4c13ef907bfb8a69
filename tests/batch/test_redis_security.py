"""Redis as deploy/ runs it (issue 11, defect 8): TLS only, no anonymous access, an ACL user without
administration commands, and rq jobs that cannot name code. A real redis-server started with the
shipped redis.conf and the dev overlay's ACL file (only paths and ports replaced), and the real job
service and worker over a rediss:// URL with a password file and a CA."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from rq import Queue

from dermserve.batch.jobs import InlineImage, JobInput, JobService, SubmitRequest
from dermserve.batch.queues import SERIALIZER
from dermserve.batch.records import JobState
from dermserve.batch.store import connect
from dermserve.worker.settings import WorkerSettings
from devtools.stack.ports import free_port
from devtools.stack.redis import redis_binary
from tests.pki import Pki, make_pki
from tests.worker.conftest import FakeBackend, jpeg_bytes, run_worker_burst, wait_until

ROOT = Path(__file__).resolve().parents[2]
REDIS_CONF = ROOT / "deploy" / "base" / "redis" / "redis.conf"
DEV_SECRETS = ROOT / "deploy" / "overlays" / "dev" / "secrets"
ACL_USER = "dermserve"


@dataclass
class SecureRedis:
    """redis-server on deploy/'s redis.conf; `restart()` rereads the ACL file, as a pod restart
    does."""

    port: int
    pki: Pki
    password_file: Path
    acl_file: Path
    conf: Path
    process: subprocess.Popen[bytes] | None = None

    def url(self, scheme: str = "rediss", user: str = ACL_USER) -> str:
        return f"{scheme}://{user}@localhost:{self.port}/0"

    def admin(self) -> redis.Redis:
        return redis.Redis(host="localhost", port=self.port, ssl=True,
                           ssl_ca_certs=str(self.pki.ca), username=ACL_USER,
                           password=self.password_file.read_text().strip())

    def start(self) -> None:
        process = subprocess.Popen([redis_binary(), str(self.conf)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        self.process = process
        client = self.admin()
        wait_until(lambda: process.poll() is not None or _pings(client),
                   "the TLS redis-server to answer")
        assert process.poll() is None, "redis-server refused the deployed redis.conf"
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


@pytest.fixture
def secure_redis(tmp_path: Path) -> Iterator[SecureRedis]:
    pki = make_pki(tmp_path / "pki")
    acl = tmp_path / "users.acl"
    shutil.copy(DEV_SECRETS / "users.acl", acl)
    password_file = tmp_path / "password"
    shutil.copy(DEV_SECRETS / "redis-password", password_file)
    port = free_port()
    (tmp_path / "data").mkdir()
    conf = tmp_path / "redis.conf"
    conf.write_text(deployed_conf({
        "bind": "127.0.0.1", "tls-port": str(port), "dir": str(tmp_path / "data"),
        "tls-cert-file": str(pki.server_cert), "tls-key-file": str(pki.server_key),
        "aclfile": str(acl)}))
    server = SecureRedis(port, pki, password_file, acl, conf)
    server.start()
    yield server
    server.stop()


def deployed_conf(replaced: dict[str, str]) -> str:
    """deploy/'s redis.conf with the directives in `replaced` (the pod's paths and addresses)
    given this test's values; every other line as shipped."""
    lines = []
    for line in REDIS_CONF.read_text().splitlines():
        directive = line.split(" ", 1)[0]
        lines.append(f"{directive} {replaced[directive]}" if directive in replaced else line)
    assert all(f"{d} " in "\n".join(lines) for d in replaced), "a directive left redis.conf"
    return "\n".join(lines) + "\n"


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.AuthenticationError):
        return False


def secure_settings(server: SecureRedis, tmp_path: Path) -> WorkerSettings:
    return WorkerSettings(
        redis_url=server.url(), redis_password_file=str(server.password_file),
        redis_ca_cert=str(server.pki.ca), batch_output_dir=tmp_path / "output", chunk_size=4,
        images_per_call=2, max_inline_images=5, max_inline_bytes=200_000, lease_ttl_s=2.0,
        reap_interval_s=0.3, reap_grace_s=0.0, backend_retries=1, backoff_base_s=0.01,
        backoff_cap_s=0.05, watch_interval_s=0.05, model_name="tiny", worker_metrics_port=0,
        redis_retries=0, burst=True)


def test_a_job_runs_over_tls_with_the_shipped_acl(secure_redis: SecureRedis,
                                                  tmp_path: Path) -> None:
    settings = secure_settings(secure_redis, tmp_path)
    jobs = JobService.from_settings(settings)
    try:
        images = [InlineImage(f"photo-{i}", jpeg_bytes(i)) for i in range(3)]
        job_id = jobs.submit(SubmitRequest(JobInput(inline=images))).job.job_id
        run_worker_burst(settings, FakeBackend())
        job = jobs.get(job_id)
        assert (job.state, job.done, job.failed) == (JobState.SUCCEEDED, 3, 0)
    finally:
        jobs.close()


@pytest.mark.parametrize("url, password, error", [
    ("redis", True, redis.ConnectionError),        # plaintext to the TLS-only port
    ("rediss", False, redis.AuthenticationError),  # no password: the default user is off
])
def test_redis_refuses_plaintext_and_anonymous_clients(
        secure_redis: SecureRedis, tmp_path: Path, url: str, password: bool,
        error: type[Exception]) -> None:
    settings = secure_settings(secure_redis, tmp_path).with_overrides(
        redis_url=secure_redis.url(url, user="") if not password else secure_redis.url(url),
        redis_password_file=str(secure_redis.password_file) if password else "",
        redis_ca_cert=str(secure_redis.pki.ca) if url == "rediss" else "")
    client = connect(settings)
    with pytest.raises(error):
        client.set("probe", "1")
    client.close()


def test_a_wrong_password_is_refused(secure_redis: SecureRedis, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    settings = secure_settings(secure_redis, tmp_path).with_overrides(
        redis_password_file=str(wrong))
    client = connect(settings)
    with pytest.raises(redis.AuthenticationError):
        client.ping()
    client.close()


@pytest.mark.parametrize("command", [
    ("FLUSHALL",), ("CONFIG", "SET", "dir", "/tmp"), ("BGSAVE",), ("ACL", "LIST"),
    ("MIGRATE", "x", "1", "k", "0", "1"), ("SHUTDOWN", "NOSAVE"), ("KEYS", "*")])
def test_the_service_user_cannot_administer_redis(secure_redis: SecureRedis,
                                                  command: tuple[str, ...]) -> None:
    client = secure_redis.admin()
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command(*command)
    client.close()


def replace_file(path: Path, text: str) -> None:
    staged = path.with_name(path.name + ".new")
    staged.write_text(text)
    os.replace(staged, path)


def test_a_rotated_password_reaches_the_clients_without_their_restart(
        secure_redis: SecureRedis, tmp_path: Path) -> None:
    """Rotation as docs/security.md describes it: the ACL accepts both passwords (Redis restarts),
    the clients' password file changes (new connections use it), the ACL drops the old one."""
    client = connect(secure_settings(secure_redis, tmp_path))
    assert client.set("before", "1")
    old = secure_redis.password_file.read_text().strip()
    acl = secure_redis.acl_file.read_text()
    replace_file(secure_redis.acl_file, acl.replace(f">{old}", f">{old} >rotated-password"))
    secure_redis.stop()
    secure_redis.start()
    replace_file(secure_redis.password_file, "rotated-password\n")
    replace_file(secure_redis.acl_file, acl.replace(f">{old}", ">rotated-password"))
    secure_redis.stop()
    secure_redis.start()
    client.connection_pool.disconnect()  # the restart closed them; the client reconnects
    assert client.set("after", "1")
    client.close()
    stale = tmp_path / "stale"
    stale.write_text(old)
    with pytest.raises(redis.AuthenticationError):
        connect(secure_settings(secure_redis, tmp_path).with_overrides(
            redis_password_file=str(stale))).ping()


def test_workers_run_no_code_that_redis_names(secure_redis: SecureRedis, tmp_path: Path) -> None:
    """Whoever can write to Redis could enqueue an rq job calling any importable function, with
    pickled arguments. The workers read JSON jobs only and call only the chunk functions."""
    settings = secure_settings(secure_redis, tmp_path)
    marker_pickle, marker_json = tmp_path / "pwned-pickle", tmp_path / "pwned-json"
    raw = connect(settings, decode_responses=False)
    queue_name = f"{settings.queue_name}-normal"
    Queue(queue_name, connection=raw).enqueue("os.mkdir", str(marker_pickle))  # pickle
    Queue(queue_name, connection=raw, serializer=SERIALIZER).enqueue("os.mkdir", str(marker_json))
    Queue(queue_name, connection=raw, serializer=SERIALIZER).enqueue(
        "builtins.exec", f"import os; os.mkdir({str(marker_json)!r})")
    raw.close()
    run_worker_burst(settings, FakeBackend())  # returns once the queues are empty
    assert not marker_pickle.exists() and not marker_json.exists()
