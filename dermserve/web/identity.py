"""Who a page request acts for. In the local default (no trusted proxies) every request is the
one local user, and the page calls the front as its own token's identity. Behind an
authenticating proxy (oauth2-proxy, or ingress-nginx's auth_request to it), the proxy signs the
user in and names them in a header; the page believes that header only on connections from the
configured proxy addresses, and forwards the user to the front, which decides what they may see
(service/auth.py's delegation). A request without a believable user gets 401 on /api/*.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from starlette.datastructures import Headers

from dermserve.core.identity import DELEGATED_NAME
from dermserve.web.settings import WebSettings


class InvalidIdentity(Exception):
    """The proxy's identity header is there but not a name the front can take."""


@dataclass(frozen=True)
class WebUser:
    """A signed-in person; an operator sees every identity's jobs."""

    name: str
    operator: bool = False


class IdentityPolicy:
    """Reads the proxy's identity headers, from the trusted proxy addresses only."""

    def __init__(self, settings: WebSettings) -> None:
        self.networks = tuple(ipaddress.ip_network(cidr) for cidr in settings.trusted_proxies)
        self.user_header = settings.user_header.lower()
        self.groups_header = settings.groups_header.lower()
        self.operator_group = settings.operator_group

    @property
    def required(self) -> bool:
        """Whether API requests need a signed-in user (a proxy is configured)."""
        return bool(self.networks)

    def trusts(self, peer: str | None) -> bool:
        try:
            address = ipaddress.ip_address(peer or "")
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def user_of(self, peer: str | None, headers: Headers) -> WebUser | None:
        """The user a trusted proxy names, None without one; InvalidIdentity if malformed."""
        if not self.trusts(peer):
            return None
        name = headers.get(self.user_header, "").strip()
        if not name:
            return None
        if not DELEGATED_NAME.fullmatch(name):
            raise InvalidIdentity("the proxy's user name is not printable ASCII of at most "
                                  "256 characters")
        groups = {group.strip() for group in headers.get(self.groups_header, "").split(",")}
        return WebUser(name, bool(self.operator_group) and self.operator_group in groups)
