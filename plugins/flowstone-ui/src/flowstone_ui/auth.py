"""Who may act: one secret token, a session cookie derived from it, and CSRF tokens.

The token comes from ``FLOWSTONE_UI_TOKEN`` or is generated when the server starts and
printed with the URL, as a notebook server does. A client proves it holds the token either

* per request, with ``Authorization: Bearer <token>`` (scripts; no CSRF token needed, a
  browser never sends that header on its own), or
* with the session cookie a browser gets by opening ``/?token=<token>`` or the login form:
  ``HttpOnly``, ``SameSite=Strict``, holding an HMAC of the token (never the token).
  Requests that act with the cookie must also carry the CSRF token (``X-CSRF-Token``
  header or ``csrf_token`` form field), an HMAC the pages embed.

Every comparison is constant-time (:func:`hmac.compare_digest`). Actions without
credentials get 401, with wrong ones 403.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from typing import Literal

from flowstone.errors import UsageError

__all__ = ["COOKIE", "CSRF_FIELD", "CSRF_HEADER", "TOKEN_ENV", "Auth", "resolve_token"]

TOKEN_ENV = "FLOWSTONE_UI_TOKEN"  # noqa: S105 - the variable's name, not a secret
COOKIE = "flowstone_ui_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
_MIN_TOKEN = 16

Verdict = Literal["ok", "missing", "wrong"]


def resolve_token(given: str | None = None) -> tuple[str, bool]:
    """The token to use and whether it was generated (``given``, else the environment,
    else a new random one of 256 bits).

    Raises:
        UsageError: a configured token is shorter than 16 characters.
    """
    token = given if given is not None else os.environ.get(TOKEN_ENV)
    if token is None or token == "":
        return secrets.token_urlsafe(32), True
    if len(token) < _MIN_TOKEN:
        raise UsageError(
            f"{TOKEN_ENV} is {len(token)} characters long; use at least {_MIN_TOKEN} random "
            "characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token, False


@dataclass(frozen=True, slots=True)
class Auth:
    """Checks credentials against ``token``; ``protect_reads`` makes pages need them too."""

    token: str
    protect_reads: bool = False

    def _mac(self, purpose: str) -> str:
        return hmac.new(self.token.encode(), purpose.encode(), hashlib.sha256).hexdigest()

    @property
    def session(self) -> str:
        """The session cookie's value."""
        return self._mac("flowstone-ui session")

    @property
    def csrf(self) -> str:
        """The CSRF token the pages embed in forms."""
        return self._mac("flowstone-ui csrf")

    def token_matches(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(
            candidate.encode(), self.token.encode()
        )

    def check(
        self, *, bearer: str | None, cookie: str | None, csrf: str | None, acting: bool
    ) -> Verdict:
        """Whether a request may go on: ``ok``, ``missing`` (401) or ``wrong`` (403).

        ``acting`` requests with the cookie also need the CSRF token.
        """
        if bearer is not None:
            return "ok" if self.token_matches(bearer) else "wrong"
        if cookie is None:
            return "missing"
        if not hmac.compare_digest(cookie.encode(), self.session.encode()):
            return "wrong"
        if acting and (csrf is None or not hmac.compare_digest(csrf.encode(), self.csrf.encode())):
            return "wrong"
        return "ok"
