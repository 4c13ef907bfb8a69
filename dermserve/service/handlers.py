"""Rewrap a grpc.RpcMethodHandler's behaviour: the plumbing the interceptors share.

A sync gRPC server interceptor can only change a call by returning a new handler; this builds that
handler from the old one with its behaviour wrapped, for all four call shapes.

A response-streaming behaviour may be *non-blocking* (grpc's `experimental_non_blocking`, which
the health service's Watch sets): it is called with a third argument, a callback that sends each
response (None ends the stream), and returns at once, so the call holds no server thread while it
stays open. Such a behaviour keeps that shape only when the interceptor passes a
`callback_stream` wrapper that knows it; otherwise it is adapted into a blocking iterator, which
is always correct but pins one server thread for the whole call.

The close callbacks such a behaviour registers run on a thread of their own: gRPC runs them on
its event thread, and health's takes the lock under which `set()` waits for that very thread to
send a status, which deadlocked the server's stop whenever a watch closed during it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

import grpc

Continuation = Callable[[grpc.HandlerCallDetails], "grpc.RpcMethodHandler[Any, Any] | None"]
"""What a server interceptor's intercept_service is given: the rest of the chain."""
Behaviour = Callable[[Any, grpc.ServicerContext], Any]
Wrapper = Callable[[Behaviour], Behaviour]
SendResponse = Callable[[Any], None]
CallbackBehaviour = Callable[[Any, grpc.ServicerContext, SendResponse], None]
CallbackWrapper = Callable[[CallbackBehaviour], CallbackBehaviour]


def rewrap(handler: grpc.RpcMethodHandler[Any, Any], unary_response: Wrapper,
           stream_response: Wrapper,
           callback_stream: CallbackWrapper | None = None) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler like `handler` whose behaviour is wrapped by `unary_response` (for calls with
    one response), `stream_response` (for calls whose behaviour returns an iterator) or
    `callback_stream` (for non-blocking streaming behaviours, see the module docstring)."""
    codecs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary_response(handler.unary_unary), **codecs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary_response(handler.stream_unary),
                                                    **codecs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            wrap_stream(handler.unary_stream, stream_response, callback_stream), **codecs)
    assert handler.stream_stream is not None  # a handler has exactly one behaviour
    return grpc.stream_stream_rpc_method_handler(
        wrap_stream(handler.stream_stream, stream_response, callback_stream), **codecs)


def is_non_blocking(behaviour: Any) -> bool:
    return bool(getattr(behaviour, "experimental_non_blocking", False))


def wrap_stream(behaviour: Any, stream_response: Wrapper,
                callback_stream: CallbackWrapper | None) -> Any:
    """`behaviour` wrapped, keeping grpc's non-blocking flag and thread pool when it can."""
    if not is_non_blocking(behaviour):
        return stream_response(behaviour)
    if callback_stream is None:
        return stream_response(blocking(behaviour))
    wrapped: Any = callback_stream(closing_apart(behaviour))
    wrapped.experimental_non_blocking = True
    wrapped.experimental_thread_pool = getattr(behaviour, "experimental_thread_pool", None)
    return wrapped


class CloseApartContext:
    """A call's context whose close callbacks run on a thread of their own."""

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._context = context

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return self._context.add_callback(
            lambda: threading.Thread(target=callback, name="stream-closed", daemon=True).start())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def closing_apart(behaviour: CallbackBehaviour) -> CallbackBehaviour:
    def wrapped(request: Any, context: grpc.ServicerContext, send: SendResponse) -> None:
        behaviour(request, cast(grpc.ServicerContext, CloseApartContext(context)), send)
    return wrapped


def blocking(behaviour: CallbackBehaviour) -> Behaviour:
    """A non-blocking streaming behaviour as an iterator of its responses (one pinned thread)."""
    def iterate(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        responses: queue.SimpleQueue[Any] = queue.SimpleQueue()
        behaviour(request, context, responses.put)
        while (response := responses.get()) is not None:
            yield response
    return iterate
