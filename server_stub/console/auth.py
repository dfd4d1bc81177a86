"""Console sign-in: session cookies, CSRF tokens and roles.

A session is a random token in an HttpOnly, SameSite=Strict cookie (Secure when served over
https); the database keeps only its sha256 and the session's CSRF token. Every form carries
that CSRF token and every POST compares it in constant time. The sign-in form, which has no
session yet, uses a double-submit token: a random cookie that the form must repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum

from fastapi import Request
from starlette.responses import Response

from server_stub.context import ServerContext
from server_stub.store.users import UserRecord

SESSION_COOKIE = "endpoint_session"
SIGNIN_COOKIE = "endpoint_signin"
SESSION_LIFETIME = timedelta(hours=12)


class Level(IntEnum):
    """What each role may do; a higher role may do everything a lower one may."""

    READER = 1
    ANALYST = 2
    ADMIN = 3


ROLES = {"reader": Level.READER, "analyst": Level.ANALYST, "admin": Level.ADMIN}


class ConsoleDenied(Exception):
    """Raised by a page: `signin` sends the browser to the sign-in page, otherwise a 403 page."""

    def __init__(self, message: str, *, signin: bool = False, status: int = 403) -> None:
        super().__init__(message)
        self.message = message
        self.signin = signin
        self.status = status


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in user of a request."""

    user: UserRecord
    csrf_token: str
    token_hash: str

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def role(self) -> str:
        return self.user.role

    def can(self, level: Level) -> bool:
        return ROLES.get(self.user.role, Level.READER) >= level


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def start_session(ctx: ServerContext, request: Request, response: Response, user: UserRecord) -> None:
    token = secrets.token_urlsafe(32)
    now = ctx.now()
    ctx.store.users.create_session(
        user.id, _digest(token), secrets.token_urlsafe(32), now, now + SESSION_LIFETIME
    )
    set_cookie(response, request, SESSION_COOKIE, token, int(SESSION_LIFETIME.total_seconds()))
    response.delete_cookie(SIGNIN_COOKIE, path="/")


def end_session(ctx: ServerContext, viewer: Viewer, response: Response) -> None:
    ctx.store.users.end_session(viewer.token_hash)
    response.delete_cookie(SESSION_COOKIE, path="/")


def viewer_of(ctx: ServerContext, request: Request) -> Viewer | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token or len(token) > 128:
        return None
    digest = _digest(token)
    session = ctx.store.users.session(digest, ctx.now())
    if session is None:
        return None
    return Viewer(user=session.user, csrf_token=session.csrf_token, token_hash=digest)


def require(ctx: ServerContext, request: Request, level: Level = Level.READER) -> Viewer:
    viewer = viewer_of(ctx, request)
    if viewer is None:
        raise ConsoleDenied("please sign in", signin=True, status=303)
    if not viewer.can(level):
        raise ConsoleDenied(f"your role ({viewer.role}) may not do this; it needs {level.name.lower()}")
    return viewer


def check_csrf(expected: str | None, presented: object) -> None:
    if (
        not expected
        or not isinstance(presented, str)
        or not hmac.compare_digest(expected.encode(), presented.encode("utf-8", "replace"))
    ):
        raise ConsoleDenied(
            "the form is missing its security token or it has expired; reload the page and retry"
        )


def signin_token(request: Request) -> str:
    """The double-submit token of the sign-in form: the cookie's if present, else a new one."""
    current = request.cookies.get(SIGNIN_COOKIE)
    return current if current and 20 <= len(current) <= 64 else secrets.token_urlsafe(24)


def locked_for(user: UserRecord, now: datetime) -> int:
    """Seconds the account must still wait before the next sign-in attempt."""
    if user.locked_until is None or user.locked_until <= now:
        return 0
    return max(1, int((user.locked_until - now).total_seconds() + 0.999))
