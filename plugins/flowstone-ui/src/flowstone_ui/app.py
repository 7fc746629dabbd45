"""``create_app``: the FastAPI application serving the pages and the JSON API.

Example::

    from flowstone_ui import create_app
    app = create_app([pipeline], token="a-long-random-secret")
    # uvicorn.run(app, host="127.0.0.1", port=3000)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from flowstone.errors import (
    ApprovalError,
    DependencyError,
    FlowStoneError,
    RunNotFoundError,
    StorageError,
)
from flowstone.pipeline import Pipeline
from flowstone_ui._version import __version__
from flowstone_ui.auth import COOKIE, CSRF_HEADER, Auth
from flowstone_ui.state import UIState

__all__ = ["create_app", "credentials", "state_of"]

_HERE = Path(__file__).parent
_REFUSED = {
    401: "this needs the UI token: send 'Authorization: Bearer <token>' or open the URL the "
    "server printed",
    403: "wrong token, or the form's CSRF token is missing or wrong",
}


def create_app(
    pipelines: Sequence[Pipeline], *, token: str, protect_reads: bool = False
) -> FastAPI:
    """The UI for ``pipelines`` (which must share one run store).

    Args:
        pipelines: the pipelines to show and act on.
        token: the secret that actions need (see :mod:`flowstone_ui.auth`).
        protect_reads: require the token for the pages and read API too.

    Raises:
        UsageError: no pipelines, duplicate names, different stores, or a short token.
    """
    from flowstone_ui.api import router as api_router
    from flowstone_ui.auth import resolve_token
    from flowstone_ui.pages import router as page_router

    secret, _ = resolve_token(token)
    state = UIState.build(pipelines, Auth(secret, protect_reads))
    app = FastAPI(
        # no Swagger / ReDoc pages: they load third-party JavaScript from a CDN
        docs_url=None,
        redoc_url=None,
        title="FlowStone UI",
        version=__version__,
        description="Assets, runs, partitions, scatter progress and waits of FlowStone "
        "pipelines. Actions need the server's token (Authorization: Bearer <token>).",
    )
    app.state.flowstone = state
    app.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")
    app.include_router(api_router)
    app.include_router(page_router)

    @app.exception_handler(FlowStoneError)
    async def flowstone_error(request: Request, exc: FlowStoneError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status_for(exc))

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        # actions are refused before their body is even read: 401/403, never a 422
        if request.method not in ("GET", "HEAD", "OPTIONS") and request.url.path.startswith(
            "/api/"
        ):
            verdict = credentials(request, acting=True)
            if verdict != "ok":
                code = 401 if verdict == "missing" else 403
                return JSONResponse({"detail": _REFUSED[code]}, status_code=code,
                                    headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'",
        )
        return response

    return app


def status_for(exc: FlowStoneError) -> int:
    """The HTTP status of a FlowStone error: 404 unknown, 409 conflict, 503 store, 400 else."""
    if isinstance(exc, RunNotFoundError | DependencyError):
        return 404
    if isinstance(exc, ApprovalError):
        return 409
    if isinstance(exc, StorageError):
        return 503
    return 400


def state_of(request: Request) -> UIState:
    """The :class:`UIState` of the app serving ``request``."""
    state: UIState = request.app.state.flowstone
    return state


def credentials(
    request: Request, *, acting: bool, csrf: str | None = None
) -> Literal["ok", "missing", "wrong"]:
    """Check a request's credentials (see :meth:`Auth.check`); ``csrf`` from a form."""
    header = request.headers.get("authorization")
    bearer = None
    if header is not None:
        scheme, _, value = header.partition(" ")
        bearer = value.strip() if scheme.lower() == "bearer" else ""
    return state_of(request).auth.check(
        bearer=bearer, cookie=request.cookies.get(COOKIE),
        csrf=csrf if csrf is not None else request.headers.get(CSRF_HEADER), acting=acting,
    )  # fmt: skip


def require(request: Request, *, acting: bool, csrf: str | None = None) -> None:
    """Raise 401 without credentials, 403 with wrong ones (reads pass unless protected)."""
    if not acting and not state_of(request).auth.protect_reads:
        return
    verdict = credentials(request, acting=acting, csrf=csrf)
    if verdict != "ok":
        code = 401 if verdict == "missing" else 403
        raise HTTPException(code, _REFUSED[code], headers={"WWW-Authenticate": "Bearer"})
