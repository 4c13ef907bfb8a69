"""Limits on streaming calls, so that open streams cannot starve the unary ones.

A blocking stream (ClassifyStream, WatchBatchJob, reflection) holds one server thread for as long
as it is open, so 64 idle streams used to take all 64 threads. `StreamLimiter` gives every
streaming call a slot from one of two pools, and refuses a call past a pool's total or its
per-client cap with RESOURCE_EXHAUSTED (reasons TOO_MANY_STREAMS, TOO_MANY_CLIENT_STREAMS):
- streams: total below the thread count (Settings enforces it), so unary calls keep the rest;
- health watches: grpc.health.v1 Watch needs no token and, kept non-blocking, holds no thread,
  but each holds one of gRPC's `max_concurrent_rpcs` call slots.
A client is the identity the call acts as (`service.auth.caller_of`, the one definition that
batch job ownership uses too): its token's identity once auth checked the token, else its client
certificate's subject (mutual TLS); an anonymous call counts against its address.

Blocking streams also idle out: the behaviour sees `context.is_active()` turn False once the
stream has carried no message either way for `idle_timeout_s`, and the call then ends with
DEADLINE_EXCEEDED (reason STREAM_IDLE). Behaviours that wait poll `is_active` between waits
(ClassifyStream's answer loop, WatchBatchJob's progress poll), so this needs nothing from them.
A behaviour that blocks without polling (reflection, waiting for its client's next request) is
cancelled by an `IdleReaper` a little later instead; its client sees CANCELLED.

The limiter sits inside the auth interceptor (a client is known only once its token is checked)
and inside the ErrorMappingInterceptor (which maps its refusals).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import grpc
from grpc_health.v1 import health

from dermserve.core.errors import ResourceExhausted, StreamIdle
from dermserve.core.identity import ANONYMOUS
from dermserve.service.auth import caller_of, service_of
from dermserve.service.handlers import (
    Behaviour,
    CallbackBehaviour,
    Continuation,
    SendResponse,
    rewrap,
)
from dermserve.service.settings import StreamSettings

log = logging.getLogger(__name__)

IDLE_CANCEL_GRACE_S = 2.0
"""Seconds past the idle timeout before the reaper cancels a stream: behaviours that poll
is_active (every 0.5 s) end well within it, with the clearer STREAM_IDLE status."""


class SlotPool:
    """Counts open calls of one kind, in total and per client."""

    def __init__(self, kind: str, total: int, per_client: int) -> None:
        self.kind = kind
        self.total = total
        self.per_client = per_client
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def acquire(self, client: str) -> None:
        """Take a slot for `client`, or raise ResourceExhausted."""
        with self._lock:
            if self._open[client] >= self.per_client:
                raise ResourceExhausted(
                    f"this client has {self.per_client} {self.kind} open already; close one "
                    "or send more down one stream", "TOO_MANY_CLIENT_STREAMS")
            if self._open.total() >= self.total:
                raise ResourceExhausted(f"the server has {self.total} {self.kind} open; "
                                        "retry later", "TOO_MANY_STREAMS")
            self._open[client] += 1

    def release(self, client: str) -> None:
        with self._lock:
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]

    def open_count(self) -> int:
        with self._lock:
            return self._open.total()


class IdleClock:
    """When the stream last carried a message."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._last = time.monotonic()

    def touch(self) -> None:
        self._last = time.monotonic()

    def idle_s(self) -> float:
        return time.monotonic() - self._last

    def expired(self) -> bool:
        return self.idle_s() > self.timeout_s


class IdleReaper:
    """Cancels the blocking streams whose behaviour did not end them when they idled out. Its
    thread runs only while streams are open."""

    def __init__(self, timeout_s: float) -> None:
        self.limit_s = timeout_s + IDLE_CANCEL_GRACE_S
        self.period_s = min(1.0, self.limit_s / 4)
        self._streams: dict[IdleClock, grpc.ServicerContext] = {}
        self._lock = threading.Lock()
        self._running = False

    def watch(self, clock: IdleClock, context: grpc.ServicerContext) -> Callable[[], None]:
        """Watch one stream until the returned function is called."""
        with self._lock:
            self._streams[clock] = context
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="stream-idle-reaper", daemon=True).start()
        return lambda: self._forget(clock)

    def _forget(self, clock: IdleClock) -> None:
        with self._lock:
            self._streams.pop(clock, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.period_s)
            with self._lock:
                if not self._streams:
                    self._running = False
                    return
                stale = [context for clock, context in self._streams.items()
                         if clock.idle_s() > self.limit_s]
            for context in stale:
                log.info("cancelling a stream idle for over %.0f s", self.limit_s)
                context.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs lack types


class IdleAwareContext:
    """The call's context as the behaviour sees it: inactive once the stream idled out."""

    def __init__(self, context: grpc.ServicerContext, clock: IdleClock) -> None:
        self._context = context
        self._clock = clock

    def is_active(self) -> bool:
        return not self._clock.expired() and self._context.is_active()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def touching(requests: Iterable[Any], clock: IdleClock) -> Iterator[Any]:
    for request in requests:
        clock.touch()
        yield request


class StreamLimiter(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Slots and idle timeouts for every streaming call (see the module docstring)."""

    def __init__(self, settings: StreamSettings, max_streams: int) -> None:
        self.streams = SlotPool("streams", max_streams, settings.max_per_client)
        self.watches = SlotPool("health watches", settings.max_health_watches,
                                settings.max_per_client)
        self.idle_timeout_s = settings.idle_timeout_s
        self.reaper = IdleReaper(settings.idle_timeout_s)

    def intercept_service(self, continuation: Continuation,
                          handler_call_details: grpc.HandlerCallDetails,
                          ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or not (handler.request_streaming or handler.response_streaming):
            return handler
        service = service_of(handler_call_details.method)
        pool = self.watches if service == health.SERVICE_NAME else self.streams
        reads = handler.request_streaming
        return rewrap(handler, lambda behaviour: self._blocking(behaviour, pool, reads),
                      lambda behaviour: self._blocking(behaviour, pool, reads),
                      lambda behaviour: self._callback(behaviour, pool))

    def _blocking(self, behaviour: Behaviour, pool: SlotPool, reads: bool) -> Behaviour:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            who = client_identity(context)
            pool.acquire(who)
            clock = IdleClock(self.idle_timeout_s)
            request = touching(request, clock) if reads else request
            aware = cast(grpc.ServicerContext, IdleAwareContext(context, clock))
            forget = self.reaper.watch(clock, context)

            def release() -> None:
                forget()
                pool.release(who)
            try:
                answer = behaviour(request, aware)
            except BaseException:
                release()
                raise
            if isinstance(answer, Iterator):
                return self._responses(answer, clock, context, release)
            release()
            return answer
        return wrapped

    def _responses(self, responses: Iterator[Any], clock: IdleClock,
                   context: grpc.ServicerContext, release: Callable[[], None]) -> Iterator[Any]:
        try:
            for response in responses:
                clock.touch()
                yield response
            if clock.expired() and context.is_active():
                raise StreamIdle(f"the stream carried no message for {self.idle_timeout_s:g} s")
        finally:
            release()

    def _callback(self, behaviour: CallbackBehaviour, pool: SlotPool) -> CallbackBehaviour:
        def wrapped(request: Any, context: grpc.ServicerContext, send: SendResponse) -> None:
            who = client_identity(context)
            pool.acquire(who)
            release = once(lambda: pool.release(who))
            if not context.add_callback(release):  # the call has ended already
                release()
                return
            try:
                behaviour(request, context, send)
            except BaseException:
                release()
                raise
        return wrapped


def once(action: Callable[[], None]) -> Callable[[], None]:
    done = threading.Lock()

    def run() -> None:
        if done.acquire(blocking=False):
            action()
    return run


def client_identity(context: grpc.ServicerContext) -> str:
    """Whom a call counts against: the identity it acts as (a token's once auth checked it, else
    a client certificate's subject), else, for an anonymous call, its address without the port,
    which changes with every connection. Called inside the auth interceptor's scope."""
    caller = caller_of(context)
    if caller != ANONYMOUS:
        return caller.identity
    return "peer:" + peer_host(context.peer())


def peer_host(peer: str) -> str:
    """'ipv4:10.0.0.7:51234' -> 'ipv4:10.0.0.7'; 'ipv6:[::1]:5123' -> 'ipv6:[::1]'."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer
