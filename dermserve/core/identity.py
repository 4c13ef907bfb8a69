"""Who a call acts as, transport-free: batch jobs belong to the identity that submitted them.

The token interceptor (service/auth.py) binds the Caller of each authenticated call with
`acting_as` for as long as the call runs; `service.auth.caller_of(context)` reads it back (or
the client certificate's subject, or ANONYMOUS). Without auth every caller is ANONYMOUS, one
identity, so a deployment without auth behaves as before. A delegating token (the web page's)
may name the person it acts for in ON_BEHALF_OF_KEY metadata: the call is then `user:<name>`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

OPERATOR_ROLE = "operator"
ON_BEHALF_OF_KEY = "dermserve-on-behalf-of"
ON_BEHALF_ROLE_KEY = "dermserve-on-behalf-role"
"""Call metadata a delegating token sends: the user's name and, for an operator, OPERATOR_ROLE."""
DELEGATED_PREFIX = "user:"
DELEGATED_NAME = re.compile(r"[\x21-\x7e]{1,256}")
"""A delegated user's name: printable ASCII without spaces, at most 256 characters (an email
address or an OIDC subject fits; a control character or a 60 KB name does not)."""


@dataclass(frozen=True)
class Caller:
    """An identity (`token:<name>`, `user:<name>`, `cert:<subject>` or `anonymous`); an operator
    sees every
    identity's jobs."""

    identity: str
    operator: bool = False

    def may_see(self, owner: str) -> bool:
        return self.operator or owner == self.identity


ANONYMOUS = Caller("anonymous")
"""Every caller when auth is off, and the owner of jobs created before jobs had owners."""

CURRENT_CALLER: ContextVar[Caller | None] = ContextVar("dermserve_caller", default=None)


@contextmanager
def acting_as(caller: Caller) -> Iterator[None]:
    """Bind `caller` for the call running in this block, and unbind it after, so that the
    server thread's next call cannot inherit it."""
    scope = CURRENT_CALLER.set(caller)
    try:
        yield
    finally:
        CURRENT_CALLER.reset(scope)
