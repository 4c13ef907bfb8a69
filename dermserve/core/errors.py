"""The one exception tree of dermserve. Nothing here imports grpc.

    DermserveError                      reason: stable, machine-readable, UPPER_SNAKE
    ├── InvalidInput                    -> INVALID_ARGUMENT
    │   ├── InvalidImage                   the image bytes fail validation
    │   ├── InvalidRequest                 a field other than the image is wrong
    │   └── InvalidContext                 the patient context (age, sex, site) is wrong
    ├── NotFound                        -> NOT_FOUND
    │   ├── ModelNotFound                  no such model, version or label
    │   └── JobNotFound                    no such batch job
    ├── AlreadyExists                   -> ALREADY_EXISTS
    ├── ResourceExhausted               -> RESOURCE_EXHAUSTED
    ├── FailedPrecondition              -> FAILED_PRECONDITION
    │   └── ExplanationUnsupported         the version has no `explain` signature
    ├── Unauthenticated                 -> UNAUTHENTICATED
    ├── PermissionDenied                -> PERMISSION_DENIED
    ├── BackendUnavailable              -> UNAVAILABLE (retryable)
    ├── ServerDraining                  -> UNAVAILABLE (retry on another server)
    ├── BackendTimeout                  -> DEADLINE_EXCEEDED
    ├── StreamIdle                      -> DEADLINE_EXCEEDED
    ├── ClientGone                      -> CANCELLED (nobody hears it; counted, not logged)
    └── InternalError                   -> INTERNAL (message never reaches a client)

Each class names its status as a string so that this module stays transport-free; the gRPC layer
maps `status` to a grpc.StatusCode in exactly one place.
"""

from __future__ import annotations


class DermserveError(Exception):
    """Base of every error dermserve raises on purpose."""

    status = "INTERNAL"
    default_reason = "INTERNAL"

    def __init__(self, message: str, reason: str | None = None, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        # Words for the caller only, never logged: what to do, e.g. which input roots the
        # server reads (server paths stay out of the logs).
        self.hint = hint

    @property
    def client_message(self) -> str:
        """The message a client gets: the logged one, and the hint."""
        return f"{self.message} {self.hint}" if self.hint else self.message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class InvalidInput(DermserveError):
    """The caller sent something we will not process."""

    status = "INVALID_ARGUMENT"
    default_reason = "INVALID_ARGUMENT"


class InvalidImage(InvalidInput):
    """The image bytes failed validation (format, size, decoding, dimensions)."""

    default_reason = "INVALID_IMAGE"


class InvalidRequest(InvalidInput):
    """A request field other than the image is malformed or out of range."""

    default_reason = "INVALID_REQUEST"


class InvalidContext(InvalidInput):
    """The optional patient context is out of range or outside its vocabulary (core/context.py);
    its message never quotes the value."""

    default_reason = "INVALID_CONTEXT"


class NotFound(DermserveError):
    """A named resource does not exist."""

    status = "NOT_FOUND"
    default_reason = "NOT_FOUND"


class ModelNotFound(NotFound):
    """No such model, version or version label is loaded."""

    default_reason = "MODEL_NOT_FOUND"


class JobNotFound(NotFound):
    """No batch job has that id."""

    default_reason = "JOB_NOT_FOUND"


class AlreadyExists(DermserveError):
    """The resource exists already and the request may not replace it."""

    status = "ALREADY_EXISTS"
    default_reason = "ALREADY_EXISTS"


class ResourceExhausted(DermserveError):
    """A size or capacity limit was hit (job too large, queue full)."""

    status = "RESOURCE_EXHAUSTED"
    default_reason = "RESOURCE_EXHAUSTED"


class FailedPrecondition(DermserveError):
    """The system is not in a state that allows the operation (e.g. job already finished)."""

    status = "FAILED_PRECONDITION"
    default_reason = "FAILED_PRECONDITION"


class ExplanationUnsupported(FailedPrecondition):
    """The model version was exported without the `explain` signature (Grad-CAM)."""

    default_reason = "EXPLANATION_UNSUPPORTED"


class Unauthenticated(DermserveError):
    """No valid credentials were presented."""

    status = "UNAUTHENTICATED"
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(DermserveError):
    """The credentials are valid but do not allow this call."""

    status = "PERMISSION_DENIED"
    default_reason = "PERMISSION_DENIED"


class BackendUnavailable(DermserveError):
    """The model backend (TF Serving, the embedded runtime) cannot be reached; retry later."""

    status = "UNAVAILABLE"
    default_reason = "BACKEND_UNAVAILABLE"


class BackendTimeout(DermserveError):
    """The model backend did not answer within the deadline."""

    status = "DEADLINE_EXCEEDED"
    default_reason = "BACKEND_TIMEOUT"


class ServerDraining(DermserveError):
    """The server is stopping: it ends open streams once their accepted work is answered."""

    status = "UNAVAILABLE"
    default_reason = "SERVER_DRAINING"


class StreamIdle(DermserveError):
    """A stream carried no message either way for longer than the server's idle timeout."""

    status = "DEADLINE_EXCEEDED"
    default_reason = "STREAM_IDLE"


class ClientGone(DermserveError):
    """The client cancelled the call or let its deadline pass; no answer can reach it."""

    status = "CANCELLED"
    default_reason = "CLIENT_GONE"


class InternalError(DermserveError):
    """A bug or an unexpected state; the client sees a generic message, the log the details."""

    default_reason = "INTERNAL"
