"""Actions: token, cookie + CSRF, the decider in the audit log, and what each button does."""

from __future__ import annotations

import re
from typing import Any

import pytest
from ui_helpers import TOKEN, bearer, client_for, sign_in

ACTIONS = [
    ("/api/approvals/1/approve", {"by": "ann"}),
    ("/api/approvals/1/reject", {"by": "ann", "reason": "no"}),
    ("/api/runs/r1/cancel", {"by": "ann"}),
    ("/api/runs/r1/resume", {"by": "ann"}),
    ("/api/runs/r1/retry-failed-items", {"by": "ann", "asset": "squares"}),
    ("/api/pipelines/ui_unit/assets/keyed/backfills", {"by": "ann", "start": "k0001",
                                                       "end": "k0002"}),
]


@pytest.mark.parametrize(("path", "body"), ACTIONS)
def test_actions_without_credentials_are_refused(pipeline: Any, path: str, body: Any) -> None:
    client = client_for(pipeline)
    assert client.post(path, json=body).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token-at-all"}
    assert client.post(path, json=body, headers=wrong).status_code == 403
    assert client.post(path, json={"garbage": True}).status_code == 401  # before validation
    client.get(f"/?token={TOKEN}")  # the cookie alone is not enough: CSRF token needed
    assert client.post(path, json=body).status_code == 403
    assert client.post(path, json=body, headers={"X-CSRF-Token": "0" * 64}).status_code == 403


def test_approve_with_bearer_resumes_the_run_and_records_the_decider(pipeline: Any) -> None:
    run = pipeline.run("shipped")
    assert run.status == "waiting"
    client = client_for(pipeline)
    inbox = client.get("/api/waits").json()
    [approval] = inbox["approvals"]
    assert approval["message"] == "ship these numbers?"
    assert '"total": 20' in approval["preview"]["text"]
    out = client.post(f"/api/approvals/{approval['id']}/approve", headers=bearer(),
                      json={"by": "alice"})
    assert out.status_code == 200, out.text
    assert out.json()["status"] == "succeeded"
    assert pipeline.get("shipped") == 20
    audit = client.get(f"/api/runs/{run.run_id}").json()["audit"]
    decided = [e for e in audit if e["kind"] == "approval_approved"]
    assert decided and decided[0]["detail"]["by"] == "alice"
    again = client.post(f"/api/approvals/{approval['id']}/approve", headers=bearer(),
                        json={"by": "alice"})
    assert again.status_code == 409
    assert client.get("/api/waits").json()["approvals"] == []


def test_reject_through_the_form_with_cookie_and_csrf(pipeline: Any) -> None:
    run = pipeline.run("shipped")
    client = client_for(pipeline)
    csrf = sign_in(client)
    page = client.get("/waits").text
    approval_id = re.search(r'data-approval="(\d+)"', page).group(1)  # type: ignore[union-attr]
    missing_csrf = client.post(f"/actions/approvals/{approval_id}/reject",
                               data={"by": "bob", "reason": "too big"})
    assert missing_csrf.status_code == 403
    response = client.post(f"/actions/approvals/{approval_id}/reject",
                           data={"by": "bob", "reason": "too big", "csrf_token": csrf,
                                 "next": "/waits"})
    assert response.status_code == 303
    assert "rejected+by+bob" in response.headers["location"]
    assert pipeline.result(run.run_id).status == "failed"
    audit = pipeline.store.list_audit(run.run_id)
    rejected = [e for e in audit if e.kind == "approval_rejected"]
    assert rejected[0].detail["by"] == "bob" and rejected[0].detail["reason"] == "too big"


def test_cancel_resume_and_retry_failed_items(pipeline: Any) -> None:
    client = client_for(pipeline)
    waiting = pipeline.run("shipped").run_id
    out = client.post(f"/api/runs/{waiting}/cancel", headers=bearer(), json={"by": "carol"})
    assert out.json()["status"] == "cancelled"
    kinds = [(e.kind, e.detail.get("by")) for e in pipeline.store.list_audit(waiting)]
    assert ("ui_action", "carol") in kinds
    resumed = client.post(f"/api/runs/{waiting}/resume", headers=bearer(), json={"by": "carol"})
    assert resumed.status_code == 200 and resumed.json()["status"] == "waiting"
    done = pipeline.run("doubled").run_id
    refused = client.post(f"/api/runs/{done}/resume", headers=bearer(), json={"by": "carol"})
    assert refused.status_code == 400
    scattered = pipeline.run("squares").run_id
    retry = client.post(f"/api/runs/{scattered}/retry-failed-items", headers=bearer(),
                        json={"by": "dan", "asset": "squares"})
    assert retry.status_code == 200, retry.text
    new_run = retry.json()["run_id"]
    assert new_run != scattered
    assert pipeline.store.get_run(new_run).tags == {"retry_failed_items_of": scattered}


def test_pages_render_and_link_up(pipeline: Any) -> None:
    run = pipeline.run("handled")
    pipeline.run("squares")
    pipeline.run("shipped")
    client = client_for(pipeline)
    graph = client.get("/pipelines/ui_unit/graph")
    assert graph.status_code == 200 and 'id="asset-graph"' in graph.text
    assert "/pipelines/ui_unit/assets/handled" in graph.text
    runs = client.get("/runs")
    assert f"/runs/{run.run_id}" in runs.text
    detail = client.get(f"/runs/{run.run_id}")
    assert "chose <b>small</b>" in detail.text and 'id="steps"' in detail.text
    asset = client.get("/pipelines/ui_unit/assets/doubled")
    assert 'id="value-preview"' in asset.text
    grid = client.get("/pipelines/ui_unit/assets/keyed/partitions?limit=100")
    assert grid.text.count('<a class="cell st-missing"') == 100
    multi = client.get("/pipelines/ui_unit/assets/regional/partitions")
    assert 'class="matrix"' in multi.text
    waits = client.get("/waits")
    assert "ship these numbers?" in waits.text and "Approve" in waits.text
    missing = client.get("/runs/nope")
    assert missing.status_code == 404 and "nope" in missing.text
    bad_time = client.get("/runs?since=yesterday")
    assert bad_time.status_code == 400
    assert client.get("/").headers["location"] == "/pipelines/ui_unit/graph"
    assert client.get("/?token=wrong").status_code == 403
    assert "Content-Security-Policy" in graph.headers


def test_backfill_form_starts_a_job_the_page_polls(pipeline: Any) -> None:
    client = client_for(pipeline)
    csrf = sign_in(client)
    response = client.post("/actions/pipelines/ui_unit/assets/keyed/backfill",
                           data={"by": "erin", "start": "k0003", "end": "k0005",
                                 "parallel": "2", "csrf_token": csrf})
    assert response.status_code == 303
    location = response.headers["location"]
    job = re.search(r"backfill=([0-9a-f]+)", location).group(1)  # type: ignore[union-attr]
    page = client.get(location)
    assert f'data-poll-backfill="/api/backfills/{job}"' in page.text
    bad = client.post("/actions/pipelines/ui_unit/assets/keyed/backfill",
                      data={"by": "erin", "start": "k0005", "end": "zzz", "csrf_token": csrf})
    assert bad.status_code == 303 and "error" in bad.headers["location"]
    client.app.state.flowstone.backfills.join()  # type: ignore[attr-defined]


def test_sign_in_form_and_redirects_stay_on_this_server(pipeline: Any) -> None:
    client = client_for(pipeline, protect_reads=True)
    shown = client.get("/runs")
    assert shown.status_code == 401 and 'name="token"' in shown.text
    assert client.post("/login", data={"token": "nope-nope-nope-nope"}).status_code == 403
    signed = client.post("/login", data={"token": TOKEN})
    assert signed.status_code == 303 and "HttpOnly" in signed.headers["set-cookie"]
    assert "SameSite=strict" in signed.headers["set-cookie"]
    assert client.get("/runs").status_code == 200
    run = pipeline.run("shipped")
    approval = pipeline.store.find_approval(run.run_id, "review", "")
    csrf = client.app.state.flowstone.auth.csrf  # type: ignore[attr-defined]
    for evil in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        out = client.post(f"/actions/approvals/{approval.id}/reject",
                          data={"by": "x", "csrf_token": csrf, "next": evil})
        assert out.headers["location"].startswith("/waits?"), evil
        run = pipeline.run("shipped", force=True)
        approval = pipeline.store.find_approval(run.run_id, "review", "")
