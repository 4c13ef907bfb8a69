"""What the front service hosts for batch jobs: the BatchJobs API on its own port.

The front offers BatchJobs when `DERMSERVE_REDIS_URL` is set (as `make run` and deploy/ do);
without Redis there are no batch jobs to serve, and the front serves Classify alone. This side
needs Redis and the output directory, never TensorFlow: the workers do the classifying.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import grpc

from worker.jobs import JobService
from worker.servicer import batch_jobs_service
from worker.settings import env_name, settings_from_env

REDIS_URL_ENV = env_name("redis_url")


def front_services(environ: Mapping[str, str]) -> list[tuple[str, Callable[[grpc.Server], None]]]:
    """[("dermserve.v1.BatchJobs", adder)] when Redis is configured, else []."""
    if not environ.get(REDIS_URL_ENV):
        return []
    jobs = JobService.from_settings(settings_from_env(environ))
    return [batch_jobs_service(jobs)]
