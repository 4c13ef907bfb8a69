"""Bearer-token authentication and TLS / mutual TLS credentials. All off by default (loopback);
deploy/ turns them on.

Tokens: a file with one grant per line,
`TOKEN [SERVICE ...] [name=NAME] [role=operator] [delegate=users|operators]`, where SERVICE is a
full gRPC service name such as `dermserve.v1.LesionClassifier`; a token without services may call
every service. `#` starts a comment. Clients send `authorization: Bearer TOKEN`.
A call acts as its token's identity, `token:NAME` (without a name: `token:` and a hash of the
token, so a rotated token keeps its jobs only if it keeps its name); batch jobs belong to it, and
an operator token sees every identity's jobs. Without tokens a call acts as its client
certificate's subject (mutual TLS), else as `anonymous` (core/identity.py).

Delegation: a token with `delegate=users` (the web page's) may act on behalf of the person it
serves, named in `dermserve-on-behalf-of: NAME` metadata; the call then acts as `user:NAME`, and
the token's own name and role no longer apply. `dermserve-on-behalf-role: operator` makes that
user an operator, and only a `delegate=operators` token may assert it. The page asserts what its
authenticating proxy told it (web/identity.py); nobody else should hold a delegating token.
- no `authorization` metadata, or not a Bearer token, or an unknown token -> UNAUTHENTICATED
- a known token calling a service it was not granted                    -> PERMISSION_DENIED
- on-behalf-of metadata from a token that may not delegate (or an operator role from a token
  that may delegate only users, or a malformed name)                     -> PERMISSION_DENIED
The health service is exempt, so that kubelet probes need no secret.

Rotation without a restart: the tokens file and the TLS files (certificate, key, client CA) are
watched (`FileWatch`: inode, size and mtime, looked at most every `interval_s`). A changed file is
loaded and checked before it replaces the old one; a file caught half-written or invalid keeps the
old grants or certificate in force, with a warning, and is tried again at the next look. Kubernetes
updates a mounted Secret by swapping a symlink, so both halves of a key pair change together.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc

from dermserve.core.errors import PermissionDenied, Unauthenticated
from dermserve.core.identity import (
    ANONYMOUS,
    CURRENT_CALLER,
    DELEGATED_NAME,
    DELEGATED_PREFIX,
    ON_BEHALF_OF_KEY,
    ON_BEHALF_ROLE_KEY,
    OPERATOR_ROLE,
    Caller,
    acting_as,
)
from dermserve.service.handlers import Behaviour, rewrap

log = logging.getLogger(__name__)

T = TypeVar("T")
Signature = tuple[tuple[int, int, int] | None, ...]

AUTHORIZATION_KEY = "authorization"
BEARER_PREFIX = "Bearer "
EXEMPT_SERVICES = frozenset({"grpc.health.v1.Health"})
DELEGATE_USERS, DELEGATE_OPERATORS = "users", "operators"


@dataclass(frozen=True)
class TokenGrant:
    """One token and the services it may call (empty: all of them)."""

    token: str
    services: frozenset[str] = frozenset()
    name: str = ""
    operator: bool = False
    delegate: str = ""  # "", DELEGATE_USERS or DELEGATE_OPERATORS

    def allows(self, service: str) -> bool:
        return not self.services or service in self.services

    @property
    def caller(self) -> Caller:
        tag = self.name or hashlib.sha256(self.token.encode()).hexdigest()[:16]
        return Caller(f"token:{tag}", self.operator)

    def acting_for(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
        """The caller: the token's own identity, or the user it acts on behalf of."""
        user, role = metadata_value(metadata, ON_BEHALF_OF_KEY), metadata_value(
            metadata, ON_BEHALF_ROLE_KEY)
        if user is None and role is None:
            return self.caller
        if not self.delegate or user is None:
            raise PermissionDenied("the token may not act on behalf of users",
                                   "DELEGATION_NOT_GRANTED")
        if not DELEGATED_NAME.fullmatch(user):
            raise PermissionDenied("the delegated user's name is malformed",
                                   "INVALID_DELEGATED_USER")
        if role not in (None, OPERATOR_ROLE) or (
                role == OPERATOR_ROLE and self.delegate != DELEGATE_OPERATORS):
            raise PermissionDenied("the token may not delegate that role",
                                   "ROLE_NOT_DELEGATED")
        return Caller(DELEGATED_PREFIX + user, role == OPERATOR_ROLE)

    @classmethod
    def parse(cls, words: Sequence[str]) -> TokenGrant:
        """`TOKEN [SERVICE ...] [name=NAME] [role=operator] [delegate=users|operators]`, as split
        into words."""
        options = dict(word.split("=", 1) for word in words[1:] if "=" in word)
        role = options.get("role", OPERATOR_ROLE)
        delegate = options.get("delegate", DELEGATE_USERS)
        if (not options.keys() <= {"name", "role", "delegate"} or role != OPERATOR_ROLE
                or delegate not in (DELEGATE_USERS, DELEGATE_OPERATORS)):
            raise ValueError(f"unknown token options {sorted(options)}: name=NAME, "
                             "role=operator and delegate=users|operators are known")
        return cls(words[0], frozenset(word for word in words[1:] if "=" not in word),
                   options.get("name", ""), options.get("role") == OPERATOR_ROLE,
                   options.get("delegate", ""))


class TokenTable:
    """The accepted tokens; comparisons are constant-time."""

    def __init__(self, grants: Sequence[TokenGrant]) -> None:
        if not grants:
            raise ValueError("a token table needs at least one token")
        self.grants = tuple(grants)

    @classmethod
    def parse(cls, text: str) -> TokenTable:
        grants = []
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if words:
                grants.append(TokenGrant.parse(words))
        return cls(grants)

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        return cls.parse(path.read_text(encoding="utf-8"))

    def grant_for(self, token: str) -> TokenGrant | None:
        found = None
        for grant in self.grants:  # no early exit: the time must not tell which token matched
            if hmac.compare_digest(grant.token.encode(), token.encode()):
                found = grant
        return found

    def check(self, metadata: Iterable[tuple[str, str | bytes]] | None, method: str) -> Caller:
        """Who the call acts as; Unauthenticated or PermissionDenied unless `metadata` may call
        `method`."""
        token = bearer_token(metadata)
        if token is None:
            raise Unauthenticated("send 'authorization: Bearer <token>'", "MISSING_TOKEN")
        grant = self.grant_for(token)
        if grant is None:
            raise Unauthenticated("the token is not valid", "INVALID_TOKEN")
        if not grant.allows(service_of(method)):
            raise PermissionDenied(f"the token may not call {service_of(method)}",
                                   "SERVICE_NOT_GRANTED")
        return grant.acting_for(metadata)


class TokenChecker(Protocol):
    def check(self, metadata: Iterable[tuple[str, str | bytes]] | None,
              method: str) -> Caller: ...


class FileWatch:
    """Tells when files changed on disk, looking at most every `interval_s` seconds; `poll(load)`
    returns what `load` made of the new files, or None (unchanged, or unloadable: kept for the
    next look). Thread-safe: gRPC calls TLS fetchers from its own threads."""

    def __init__(self, paths: Sequence[Path], interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.paths = tuple(paths)
        self.interval_s = interval_s
        self._clock = clock
        self._seen = self.signature()
        self._next_look = clock() + interval_s
        self._lock = threading.Lock()

    def signature(self) -> Signature:
        return tuple(_stat_signature(path) for path in self.paths)

    def poll(self, load: Callable[[], T]) -> T | None:
        with self._lock:
            now = self._clock()
            if now < self._next_look:
                return None
            self._next_look = now + self.interval_s
            current = self.signature()
            if current == self._seen:
                return None
            try:
                loaded = load()
            except (OSError, ValueError, ssl.SSLError) as exc:
                log.warning("changed %s not loaded, the previous one stays in force: %s",
                            ", ".join(p.name for p in self.paths), type(exc).__name__)
                return None
            self._seen = current
            log.info("reloaded %s", ", ".join(p.name for p in self.paths))
            return loaded


def _stat_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)  # follows symlinks: a Secret update swaps the `..data` link
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


class ReloadingTokens:
    """A TokenTable read from `path` (plus fixed `extra` grants), re-read when the file changes."""

    def __init__(self, path: Path, interval_s: float, extra: Sequence[TokenGrant] = ()) -> None:
        self.path = path
        self.extra = tuple(extra)
        self.watch = FileWatch([path], interval_s)
        self.table = self._load()  # a missing or empty file fails the start, loudly

    def _load(self) -> TokenTable:
        return TokenTable([*TokenTable.load(self.path).grants, *self.extra])

    def check(self, metadata: Iterable[tuple[str, str | bytes]] | None, method: str) -> Caller:
        fresh = self.watch.poll(self._load)
        if fresh is not None:
            self.table = fresh
        return self.table.check(metadata, method)


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == AUTHORIZATION_KEY and isinstance(value, str) and value.startswith(BEARER_PREFIX):
            return value[len(BEARER_PREFIX):].strip()
    return None


def metadata_value(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> str | None:
    """The first text value of `key` in a call's metadata (binary values do not count)."""
    for name, value in metadata or ():
        if name == key and isinstance(value, str):
            return value
    return None


def service_of(method: str) -> str:
    """'/dermserve.v1.LesionClassifier/Classify' -> 'dermserve.v1.LesionClassifier'."""
    return method.strip("/").split("/", 1)[0]


class TokenAuthInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Rejects calls without an accepted token. It raises core.errors, so it must sit inside
    the ErrorMappingInterceptor, which turns them into status codes and counts them."""

    def __init__(self, tokens: TokenChecker) -> None:
        self.tokens = tokens

    def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         grpc.RpcMethodHandler[Any, Any] | None],
            handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or service_of(method) in EXEMPT_SERVICES:
            return handler
        metadata = handler_call_details.invocation_metadata

        def check() -> Caller:
            return self.tokens.check(metadata, method)

        return rewrap(handler, lambda behaviour: guard_unary(behaviour, check),
                      lambda behaviour: guard_stream(behaviour, check))


def guard_unary(behaviour: Behaviour, check: Callable[[], Caller]) -> Behaviour:
    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        with acting_as(check()):
            return behaviour(request, context)
    return guarded


def guard_stream(behaviour: Behaviour, check: Callable[[], Caller]) -> Behaviour:
    def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with acting_as(check()):
            yield from behaviour(request, context)
    return guarded


def caller_of(context: grpc.ServicerContext) -> Caller:
    """Who the call acts as: its token's identity (bound by TokenAuthInterceptor), else the
    subject of its client certificate (mutual TLS), else ANONYMOUS."""
    caller = CURRENT_CALLER.get()
    if caller is not None:
        return caller
    # A list of bytes values, whatever grpc-stubs say (they type it as bytes).
    subject: Any = context.auth_context().get("x509_subject")
    if subject:
        return Caller("cert:" + subject[0].decode("utf-8", "replace"))
    return ANONYMOUS


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None,
                       reload_interval_s: float | None = None) -> grpc.ServerCredentials:
    """TLS from PEM files; with `client_ca`, mutual TLS: clients must present a certificate
    signed by it. With `reload_interval_s`, files changed on disk are used for new connections
    (connections already open keep the certificate they were made with)."""
    if reload_interval_s is None:
        return grpc.ssl_server_credentials(
            [(key.read_bytes(), cert.read_bytes())],
            root_certificates=client_ca.read_bytes() if client_ca else None,
            require_client_auth=client_ca is not None)
    files = [cert, key, *([client_ca] if client_ca else [])]
    watch = FileWatch(files, reload_interval_s)

    def load() -> grpc.ServerCertificateConfiguration:
        return certificate_configuration(cert, key, client_ca)

    def fetch() -> grpc.ServerCertificateConfiguration:
        # None keeps the current configuration (grpc's documentation); grpc-stubs omit it.
        return watch.poll(load)  # type: ignore[return-value]

    return grpc.dynamic_ssl_server_credentials(
        load(), fetch, require_client_authentication=client_ca is not None)


def certificate_configuration(cert: Path, key: Path, client_ca: Path | None
                              ) -> grpc.ServerCertificateConfiguration:
    """The PEM files as gRPC's configuration, after checking that the key matches the certificate
    and the CA parses (ssl.SSLError otherwise): a bad pair would fail every handshake."""
    check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    check.load_cert_chain(cert, key)
    if client_ca is not None:
        check.load_verify_locations(cafile=client_ca)
    return grpc.ssl_server_certificate_configuration(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None)
