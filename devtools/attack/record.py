"""What the attack families saw: outcomes by status code per family, the reasons the server gave,
the attempts that ended INTERNAL or UNKNOWN, the expectations that failed (a refusal that did not
happen, a file outside the roots that was read, another client's job that was found), and a few
measurements per family (the slowest refusal of a CPU bomb, the images a non-reading client got
read). An outcome is a status code name ("OK", "INVALID_ARGUMENT", ...) or, for an answer inside
a stream, "STREAM:<code>"."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import grpc

T = TypeVar("T")
REASON_KEY = "dermserve-reason"  # trailing metadata that carries the stable reason code
FAILED = {"INTERNAL", "UNKNOWN"}
"""Outcomes that mean the server failed, not the attacker: never acceptable."""


def reason_of(error: grpc.RpcError) -> str:
    """The stable reason of a refused call ("" when the server sent none)."""
    call = cast(grpc.Call, error)  # a failed call's RpcError is also its Call
    for key, value in call.trailing_metadata() or ():
        if key == REASON_KEY:
            return str(value)
    return ""


def refusal(error: grpc.RpcError) -> tuple[str, str]:
    """(status code name, reason) of a refused call."""
    return cast(grpc.Call, error).code().name, reason_of(error)


@dataclass
class Record:
    """Everything the families saw; thread-safe (families call from several threads)."""

    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    reasons: dict[str, Counter[str]] = field(default_factory=dict)
    internal: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    measures: dict[str, dict[str, Any]] = field(default_factory=dict)
    timing: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, family: str, attempt: str, outcome: str, reason: str = "") -> None:
        with self._lock:
            self.outcomes.setdefault(family, Counter())[outcome] += 1
            if reason:
                self.reasons.setdefault(family, Counter())[f"{outcome}/{reason}"] += 1
            if outcome.split(":")[-1] in FAILED:
                self.internal.append(f"{family}/{attempt}")

    def call(self, family: str, attempt: str, call: Callable[[], T]) -> T | None:
        """Make one attempt; its answer, or None when it was refused (and recorded)."""
        outcome = self.attempt(family, attempt, call)
        return outcome if not isinstance(outcome, tuple) else None

    def attempt(self, family: str, attempt: str, call: Callable[[], T]
                ) -> T | tuple[str, str]:
        """Make one attempt; its answer, or its refusal as (code, reason)."""
        try:
            answer = call()
        except grpc.RpcError as error:
            code, reason = refusal(error)
            self.add(family, attempt, code, reason)
            return code, reason
        self.add(family, attempt, "OK")
        return answer

    def expect(self, family: str, holds: bool, what: str) -> None:
        """A property the hardening promises; its failure fails the suite."""
        if not holds:
            with self._lock:
                self.violations.append(f"{family}: {what}")

    def expect_fast(self, family: str, holds: bool, what: str) -> None:
        """A promise about time: judged by `make attack`, reported (not asserted) by the quick
        test, which must not depend on how loaded the machine is."""
        if not holds:
            with self._lock:
                self.timing.append(f"{family}: {what}")

    def measure(self, family: str, name: str, value: Any) -> None:
        with self._lock:
            self.measures.setdefault(family, {})[name] = value
