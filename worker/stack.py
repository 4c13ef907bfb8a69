"""What `make run` (service/stack.py) starts for batch jobs: a redis-server on loopback with its
data under var/redis (AOF on, so a restart keeps the jobs), and one batch worker.

The front service must see the same Redis, input roots and output directory as the worker:
service/stack.py passes `batch_environment()` to the front process too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from service.stack import Process, has_versions

STACK_REDIS_PORT = 6390  # TCP port on loopback; not 6379, where a system Redis may already run
STACK_REDIS_DIR = Path("var/redis")  # the AOF lives here, next to the other local state
STACK_OUTPUT_DIR = Path("var/batch")
STACK_INPUT_ROOTS = (Path("../shared/data/ham10000"), Path("var/batch-input"))
"""Folders `dermserve batch submit` may reference in the local stack: the HAM10000 data and a
drop folder for anything else."""


def batch_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """DERMSERVE_* settings the front and the worker share; the caller's own values win."""
    roots = os.pathsep.join(str(root.resolve()) for root in STACK_INPUT_ROOTS)
    wanted = {"DERMSERVE_REDIS_URL": f"redis://127.0.0.1:{STACK_REDIS_PORT}/0",
              "DERMSERVE_INPUT_ROOTS": roots,
              "DERMSERVE_BATCH_OUTPUT_DIR": str(STACK_OUTPUT_DIR.resolve())}
    return {name: environ.get(name, value) for name, value in wanted.items()}


def redis_process() -> Process:
    STACK_REDIS_DIR.mkdir(parents=True, exist_ok=True)
    Path("var/batch-input").mkdir(parents=True, exist_ok=True)
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    return Process("redis", [binary, "--port", str(STACK_REDIS_PORT), "--bind", "127.0.0.1",
                             "--dir", str(STACK_REDIS_DIR.resolve()), "--appendonly", "yes",
                             "--save", ""])


def worker_process(args: argparse.Namespace) -> Process:
    base = args.model_base if has_versions(args.model_base / args.model_name) else args.demo_base
    return Process("worker", [sys.executable, "-m", "worker", "--model-base", str(base),
                              "--model-name", args.model_name], env=batch_environment())


def stack_processes(args: argparse.Namespace) -> list[Process]:
    """Redis first: the worker's Redis client retries until it answers."""
    return [redis_process(), worker_process(args)]
