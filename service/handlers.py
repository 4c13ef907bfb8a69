"""Rewrap a grpc.RpcMethodHandler's behaviour: the plumbing the interceptors share.

A sync gRPC server interceptor can only change a call by returning a new handler; this builds that
handler from the old one with its behaviour wrapped, for all four call shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Behaviour = Callable[[Any, grpc.ServicerContext], Any]
Wrapper = Callable[[Behaviour], Behaviour]


def rewrap(handler: grpc.RpcMethodHandler[Any, Any], unary_response: Wrapper,
           stream_response: Wrapper) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler like `handler` whose behaviour is wrapped by `unary_response` (for calls with
    one response) or `stream_response` (for calls whose behaviour returns an iterator)."""
    codecs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary_response(handler.unary_unary), **codecs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary_response(handler.stream_unary),
                                                    **codecs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream_response(handler.unary_stream),
                                                    **codecs)
    assert handler.stream_stream is not None  # a handler has exactly one behaviour
    return grpc.stream_stream_rpc_method_handler(stream_response(handler.stream_stream), **codecs)
