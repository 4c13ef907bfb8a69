"""The one place where errors become gRPC status codes.

`ErrorMappingInterceptor` wraps every RPC: a DermserveError becomes its status code
(`DermserveError.status`, e.g. InvalidImage -> INVALID_ARGUMENT) with its readable message, and
its stable reason in the trailing metadata key `dermserve-reason`. Any other exception (a bug)
becomes INTERNAL with a generic message and an incident id; the traceback goes to the log only.
It also times each call and reports (method, code, seconds) to a CallRecorder for the metrics.
It must be the outermost interceptor so that errors raised by the others (auth) are mapped too.

A call the client gave up on (cancelled, or past its deadline) is counted CANCELLED or
DEADLINE_EXCEEDED, whatever the behaviour raised on its way out (reading a cancelled request
stream raises), and is not logged as an error: grpcurl closes its reflection stream that way on
every use, and the INTERNAL-rate alert must not fire on ordinary use.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Protocol

import grpc

from dermserve.core.errors import ClientGone, DermserveError, InternalError
from dermserve.protocol.wire import REASON_METADATA_KEY
from dermserve.service.handlers import (
    Behaviour,
    CallbackBehaviour,
    Continuation,
    SendResponse,
    rewrap,
)
from dermserve.service.logs import request_id_var

log = logging.getLogger(__name__)

GENERIC_INTERNAL_MESSAGE = "internal error; quote incident {incident} to the operators"


class CallRecorder(Protocol):
    """Receives the outcome of every RPC (service/metrics.py implements it)."""

    def call_finished(self, method: str, code: str, seconds: float) -> None: ...


def status_code(error: DermserveError) -> grpc.StatusCode:
    """The gRPC code named by the error's transport-free `status`."""
    try:
        return grpc.StatusCode[error.status]
    except KeyError:
        return grpc.StatusCode.INTERNAL


def public_error(error: BaseException, method: str) -> DermserveError:
    """What a client may learn about `error`: everything for a deliberate, non-internal error;
    an incident id for anything else, whose details go to the log."""
    if isinstance(error, DermserveError) and status_code(error) != grpc.StatusCode.INTERNAL:
        log.info("%s failed: %s %s", method, error.status, error)
        return error
    incident = uuid.uuid4().hex[:12]
    log.error("%s failed with an internal error, incident %s", method, incident,
              exc_info=error)
    return InternalError(GENERIC_INTERNAL_MESSAGE.format(incident=incident))


def abort(context: grpc.ServicerContext, error: DermserveError) -> None:
    """Raises, as grpc's abort does, after attaching the reason."""
    context.set_trailing_metadata(((REASON_METADATA_KEY, error.reason),))
    context.abort(status_code(error), error.client_message)


class ErrorMappingInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Maps exceptions to status codes and reports every call's outcome."""

    def __init__(self, recorder: CallRecorder | None = None) -> None:
        self.recorder = recorder

    def intercept_service(self, continuation: Continuation,
                          handler_call_details: grpc.HandlerCallDetails,
                          ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return rewrap(handler, lambda behaviour: self._unary(behaviour, method),
                      lambda behaviour: self._stream(behaviour, method),
                      lambda behaviour: self._callback_stream(behaviour, method))

    def _unary(self, behaviour: Behaviour, method: str) -> Behaviour:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            # The servicer sets the call's request id; this scope keeps it in the failure log
            # below and clears it for the thread's next call.
            scope = request_id_var.set("")
            try:
                return self._call_unary(behaviour, method, request, context)
            finally:
                request_id_var.reset(scope)
        return wrapped

    def _call_unary(self, behaviour: Behaviour, method: str, request: Any,
                    context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        failure: DermserveError | None = None
        try:
            return behaviour(request, context)
        except Exception as exc:  # noqa: BLE001 - every failure is mapped, none escapes raw
            failure = self._failure(exc, method, context)
        finally:
            self._record(method, context, failure, started)
        abort(context, failure)

    def _stream(self, behaviour: Behaviour, method: str) -> Behaviour:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            failure: DermserveError | None = None
            try:
                yield from behaviour(request, context)
                return
            except Exception as exc:  # noqa: BLE001
                failure = self._failure(exc, method, context)
            finally:
                self._record_at_termination(method, context, failure, started)
            abort(context, failure)
        return wrapped

    def _record_at_termination(self, method: str, context: grpc.ServicerContext,
                               failure: DermserveError | None, started: float) -> None:
        """Counts a stream once grpc has handled the client's close: a stream whose client
        cancelled may end here first (see `cancelled_by_client`), and is counted CANCELLED."""
        if self.recorder is None:
            return
        seconds = time.perf_counter() - started
        code_now = outcome_of(context, failure)
        recorder = self.recorder

        def record() -> None:
            recorder.call_finished(method, settled_outcome(context, failure, code_now), seconds)

        if not context.add_callback(record):  # the call has already terminated
            record()

    def _callback_stream(self, behaviour: CallbackBehaviour, method: str) -> CallbackBehaviour:
        """A non-blocking stream (health's Watch) is counted when it ends, which is when the
        client leaves unless the behaviour ended it by sending None."""
        def wrapped(request: Any, context: grpc.ServicerContext, send: SendResponse) -> None:
            started = time.perf_counter()
            ended_by_server = threading.Event()
            recorded = threading.Lock()

            def record(failure: DermserveError | None, code: str) -> None:
                if recorded.acquire(blocking=False):  # once: the end callback runs after a failure
                    self._record(method, context, failure, started, code)

            def send_tracked(response: Any) -> None:
                if response is None:
                    ended_by_server.set()
                send(response)

            context.add_callback(lambda: record(None, code_set_by(context)
                                                if ended_by_server.is_set() else "CANCELLED"))
            try:
                behaviour(request, context, send_tracked)
            except Exception as exc:  # noqa: BLE001
                failure = public_error(exc, method)
                record(failure, status_code(failure).name)
                abort(context, failure)
        return wrapped

    def _failure(self, error: Exception, method: str,
                 context: grpc.ServicerContext) -> DermserveError:
        """The error to answer with; when the client has gone nobody hears it, so an error of
        ours is not logged as one (reading a cancelled request stream raises grpc.RpcError)."""
        if not isinstance(error, DermserveError) and not context.is_active():
            log.debug("%s: the client went away (%s)", method, type(error).__name__)
            return ClientGone("the client cancelled the call or its deadline passed")
        return public_error(error, method)

    def _record(self, method: str, context: grpc.ServicerContext,
                failure: DermserveError | None, started: float, code: str | None = None) -> None:
        if self.recorder is None:
            return
        if code is None:
            code = outcome_of(context, failure)
        self.recorder.call_finished(method, code, time.perf_counter() - started)


def outcome_of(context: grpc.ServicerContext, failure: DermserveError | None) -> str:
    """The code a call ends with: CANCELLED or DEADLINE_EXCEEDED when the client is gone, else
    the failure's, else what the behaviour set."""
    if not context.is_active():
        return gone_code(context)
    return status_code(failure).name if failure is not None else code_set_by(context)


def gone_code(context: grpc.ServicerContext) -> str:
    """The code of a call whose client went away: its deadline passed, or it cancelled."""
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"


def settled_outcome(context: grpc.ServicerContext, failure: DermserveError | None,
                    code_at_end: str) -> str:
    """A terminated call's code: CANCELLED or DEADLINE_EXCEEDED when grpc recorded that the client
    went away, even if the behaviour ended normally first; else the code at the behaviour's end."""
    if code_at_end in GONE_CODES or not cancelled_by_client(context):
        return code_at_end
    return gone_code(context)


GONE_CODES = frozenset({"CANCELLED", "DEADLINE_EXCEEDED"})

GRPC_CLIENT_CANCELLED = "cancelled"
"""grpc-python's record of a call whose client cancelled (`grpc._server._CANCELLED`)."""


def cancelled_by_client(context: grpc.ServicerContext) -> bool:
    """Whether grpc recorded the client's cancel (or passed deadline) for this call.

    Why grpc's private state: a client's cancel reaches a streaming server as two events, the
    pending read ending empty and the close saying "cancelled". The request iterator can wake
    between them and end like a clean half-close while `is_active()` is still true
    (grpc/grpc#33038, open), so the behaviour returns normally. By the time the termination
    callbacks run, grpc has handled both; there is no public accessor. Where a grpc keeps no such
    record this answers False, and the code seen at the behaviour's end stands (the old count);
    `tests/service/test_streams.py` pins it against the installed grpc."""
    state = getattr(context, "_state", None)
    return getattr(state, "client", None) == GRPC_CLIENT_CANCELLED


def code_set_by(context: grpc.ServicerContext) -> str:
    """The code a behaviour set without raising (the health service does), else OK."""
    reader = getattr(context, "code", None)  # grpc-stubs does not declare code()
    code = reader() if reader is not None else None
    return code.name if isinstance(code, grpc.StatusCode) else "OK"
