"""API keys with scopes (ingest, read, admin) bound to tenants.

A key bound to tenant ``acme`` may only touch groups that tenant owns: ``org:acme``
and the user, team and derived groups whose events came from ``acme`` (the
workers record a group's owner; see ``processors/aggregate.py``). ``global`` is
readable by every tenant through context assembly, but only a ``*`` admin key may
change it. With no keys configured the API runs open, which ``create_api``
allows only on a loopback address, and says so loudly.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from learnloop.api.problems import Problem
from learnloop.settings import Scope, Settings

ALL_SCOPES: frozenset[Scope] = frozenset({"ingest", "read", "admin"})


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    scopes: frozenset[Scope]
    tenant: str  # an org id, or "*" for all

    def require(self, scope: Scope) -> None:
        if scope not in self.scopes and "admin" not in self.scopes:
            raise Problem(403, "forbidden", f"this key lacks the {scope!r} scope")

    def may_see(self, group: str, owner: str | None) -> bool:
        """Whether this caller may read ``group``, owned by ``owner`` (None = unclaimed)."""
        if self.tenant == "*":
            return True
        if group == f"org:{self.tenant}":
            return True
        return owner == self.tenant and not group.startswith("org:")

    def check_group(self, group: str, owner: str | None, *, change: bool = False) -> None:
        if group == "global" and change and self.tenant != "*":
            raise Problem(403, "forbidden", "only an all-tenant admin key may change global")
        if group != "global" and not self.may_see(group, owner):
            # same answer as an unknown group: do not reveal that another tenant has it
            raise Problem(404, "unknown_group", f"no group {group!r}")


OPEN_CALLER = Caller("anonymous", ALL_SCOPES, "*")


def authenticate(settings: Settings, request: Request) -> Caller:
    """The caller of this request, from ``Authorization: Bearer`` or ``X-API-Key``."""
    if not settings.auth_enabled:
        return OPEN_CALLER
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    token = token or request.headers.get("x-api-key", "").strip()
    if not token:
        raise Problem(401, "unauthenticated", "send Authorization: Bearer <key> or X-API-Key")
    for name, spec in settings.api_keys.items():
        if hmac.compare_digest(spec.key.get_secret_value().encode(), token.encode()):
            return Caller(name, spec.scopes, spec.tenant)
    raise Problem(401, "unauthenticated", "unknown API key")


async def current_caller(request: Request) -> Caller:
    """FastAPI dependency: the caller, with the app's settings (``app.state.settings``).

    ``async`` although it never awaits: FastAPI runs a plain ``def`` dependency in a
    thread pool, a thread hop on every request for a few dictionary lookups.
    """
    return authenticate(request.app.state.settings, request)


CallerDep = Annotated[Caller, Depends(current_caller)]
