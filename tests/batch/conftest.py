"""The batch domain's tests run against a real redis-server (tests/worker/conftest.py)."""

from tests.worker.conftest import input_root, jobs, redis_server, settings  # noqa: F401 (fixtures)
