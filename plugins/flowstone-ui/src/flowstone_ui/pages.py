"""The HTML pages (server-rendered Jinja2) and the form posts their buttons send.

Pages render the same models the JSON API returns; ``static/ui.js`` polls the API to keep
progress bars and run states live. Forms post ``application/x-www-form-urlencoded`` with
the CSRF token and redirect back (303) with a message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from flowstone.errors import FlowStoneError, UsageError
from flowstone_ui import actions
from flowstone_ui.app import credentials, require, state_of, status_for
from flowstone_ui.auth import COOKIE, CSRF_FIELD
from flowstone_ui.views_assets import asset_detail, asset_graph
from flowstone_ui.views_partitions import partition_grid
from flowstone_ui.views_runs import RUN_STATUSES, list_runs, run_detail, running_scatters
from flowstone_ui.views_waits import inbox

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.filters["json_text"] = lambda value: json.dumps(value, ensure_ascii=False,
                                                              default=str)
_MAX_FORM = 64 * 1024
_LOCAL_PAGE = re.compile(r"/(?:waits|runs/[A-Za-z0-9_.%-]{1,600})")


def _page(request: Request, name: str, **context: Any) -> HTMLResponse:
    state = state_of(request)
    if state.auth.protect_reads and credentials(request, acting=False) != "ok":
        return templates.TemplateResponse(request, "login.html", {
            "pipelines": state.names, "csrf": "", "signed_in": False,
            "msg": "this server needs its token to show anything: paste it, or open the URL "
            "it printed"}, status_code=401)  # fmt: skip
    return templates.TemplateResponse(request, name, {
        "pipelines": state.names, "csrf": state.auth.csrf,
        "signed_in": credentials(request, acting=False) == "ok",
        "msg": request.query_params.get("msg"), **context,
    })  # fmt: skip


def _safe(request: Request, name: str, build: Callable[[], Any], **context: Any) -> HTMLResponse:
    try:
        data = build()
    except FlowStoneError as exc:
        response = _page(request, "error.html", error=str(exc))
        response.status_code = status_for(exc)
        return response
    return _page(request, name, data=data, **context)


@router.get("/")
def home(request: Request, token: str | None = None) -> Response:
    state = state_of(request)
    target = f"/pipelines/{quote(state.names[0])}/graph"
    if token is not None:
        if not state.auth.token_matches(token):
            raise HTTPException(403, "wrong token")
        return _signed_in(RedirectResponse(target, 303), state.auth.session)
    return RedirectResponse(target, 303)


def _signed_in(response: Response, session: str) -> Response:
    response.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/")
    return response


@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    state = state_of(request)
    return templates.TemplateResponse(request, "login.html", {
        "pipelines": state.names, "csrf": "", "signed_in": False, "msg": None})  # fmt: skip


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    state = state_of(request)
    if not state.auth.token_matches(form.get("token")):
        raise HTTPException(403, "wrong token")
    return _signed_in(RedirectResponse("/", 303), state.auth.session)


@router.get("/pipelines/{pipeline}/graph")
def graph_page(request: Request, pipeline: str) -> HTMLResponse:
    state = state_of(request)
    return _safe(request, "graph.html", lambda: asset_graph(state, pipeline), current=pipeline)


@router.get("/pipelines/{pipeline}/assets/{asset}")
def asset_page(
    request: Request, pipeline: str, asset: str, cursor: str | None = None,
    materialization: str | None = None,
) -> HTMLResponse:
    state = state_of(request)
    return _safe(request, "asset.html", lambda: asset_detail(
        state, pipeline, asset, cursor=cursor, limit=20, materialization=materialization,
    ), current=pipeline)  # fmt: skip


@router.get("/pipelines/{pipeline}/assets/{asset}/partitions")
def partitions_page(
    request: Request, pipeline: str, asset: str, start: int = 0, limit: int = 1000,
    group: int = 1, after: str | None = None, row_dim: str | None = None,
    col_dim: str | None = None, col_start: int = 0, backfill: str | None = None,
) -> HTMLResponse:
    state = state_of(request)
    fixed = {
        k[len("fixed_"):]: v for k, v in request.query_params.items() if k.startswith("fixed_")
    }
    jobs = state.backfills.list(pipeline, asset) if pipeline in state.pipelines else []
    return _safe(request, "partitions.html", lambda: partition_grid(
        state, pipeline, asset, start=max(0, start), limit=limit, group=group, after=after,
        row_dim=row_dim, col_dim=col_dim, fixed=fixed, col_start=max(0, col_start),
    ), current=pipeline, backfills=jobs, watch=backfill)  # fmt: skip


@router.get("/runs")
def runs_page(
    request: Request, pipeline: str | None = None, status: str | None = None,
    asset: str | None = None, since: str | None = None, until: str | None = None,
    cursor: str | None = None,
) -> HTMLResponse:
    state = state_of(request)
    filters = {k: v for k, v in {"pipeline": pipeline, "status": status, "asset": asset,
                                  "since": since, "until": until}.items() if v}  # fmt: skip
    return _safe(request, "runs.html", lambda: list_runs(
        state, pipeline=pipeline or None, status=status or None, asset=asset or None,
        since=_when(since), until=_when(until), cursor=cursor or None, limit=50,
    ), filters=filters, statuses=RUN_STATUSES, query=urlencode(filters))  # fmt: skip


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{text!r} is not a time; use 2026-01-31T12:00+00:00") from None
    if at.tzinfo is None:
        raise UsageError(f"{text!r} has no timezone; add one, e.g. +00:00 or Z")
    return at


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: str) -> HTMLResponse:
    state = state_of(request)
    return _safe(request, "run.html", lambda: run_detail(state, run_id))


@router.get("/scatters")
def scatters_page(request: Request) -> HTMLResponse:
    state = state_of(request)
    return _safe(request, "scatters.html", lambda: running_scatters(state))


@router.get("/waits")
def waits_page(
    request: Request, pipeline: str | None = None, after: int | None = None,
    gates_cursor: str | None = None,
) -> HTMLResponse:
    state = state_of(request)
    return _safe(request, "waits.html", lambda: inbox(
        state, pipeline=pipeline or None, after=after, gates_cursor=gates_cursor, limit=50))


# --- form posts -----------------------------------------------------------------------------
async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > _MAX_FORM:
        raise HTTPException(413, "form too large")
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, f"not a form: {exc}") from exc
    return {k: v[0] for k, v in fields.items()}


async def _acting(request: Request) -> dict[str, str]:
    form = await _form(request)
    require(request, acting=True, csrf=form.get(CSRF_FIELD))
    by = form.get("by", "").strip()
    if not by or len(by) > 100:
        raise HTTPException(400, "say who you are (1-100 characters) in 'by'")
    form["by"] = by
    return form


def _back(to: str, message: str) -> RedirectResponse:
    return RedirectResponse(f"{to}?{urlencode({'msg': message})}", 303)


def _act(to: str, work: Callable[[], Any], done: Callable[[Any], str]) -> RedirectResponse:
    try:
        result = work()
    except FlowStoneError as exc:
        return _back(to, f"error: {exc}")
    return _back(to, done(result))


@router.post("/actions/approvals/{approval_id}/{verdict}")
async def decide(request: Request, approval_id: int, verdict: str) -> RedirectResponse:
    form = await _acting(request)
    if verdict not in ("approve", "reject"):
        raise HTTPException(404, "approve or reject")
    to = form.get("next", "/waits")
    if not _LOCAL_PAGE.fullmatch(to):  # back to one of our pages only, never elsewhere
        to = "/waits"
    state = state_of(request)
    return _act(to, lambda: actions.decide(
        state, approval_id, approve=verdict == "approve", by=form["by"],
        reason=form.get("reason") or None,
    ), lambda out: out.message)  # fmt: skip


@router.post("/actions/runs/{run_id}/{action}")
async def run_action(request: Request, run_id: str, action: str) -> RedirectResponse:
    form = await _acting(request)
    state = state_of(request)
    to = f"/runs/{quote(run_id)}"
    if action == "cancel":
        return _act(to, lambda: actions.cancel(state, run_id, by=form["by"]), lambda o: o.message)
    if action == "resume":
        return _act(to, lambda: actions.resume(state, run_id, by=form["by"]), lambda o: o.message)
    if action == "retry-failed-items":
        return _act(to, lambda: actions.retry_items(
            state, run_id, form.get("asset", ""), form.get("partition", ""), by=form["by"],
        ), lambda o: o.message)  # fmt: skip
    raise HTTPException(404, "cancel, resume or retry-failed-items")


@router.post("/actions/pipelines/{pipeline}/assets/{asset}/backfill")
async def backfill(request: Request, pipeline: str, asset: str) -> RedirectResponse:
    form = await _acting(request)
    state = state_of(request)
    to = f"/pipelines/{quote(pipeline)}/assets/{quote(asset)}/partitions"
    try:
        parallel = int(form.get("parallel") or 4)
        job = actions.backfill(state, pipeline, asset, start=form.get("start", ""),
                               end=form.get("end", ""), parallel=max(1, min(parallel, 32)),
                               by=form["by"])  # fmt: skip
    except (FlowStoneError, ValueError) as exc:
        return _back(to, f"error: {exc}")
    query = urlencode({"backfill": job.id, "msg": f"backfill {job.id} started by {form['by']}"})
    return RedirectResponse(f"{to}?{query}", 303)
