"""Logs: one structured line per request, never a raw email, phone or token (DESIGN invariant 10)."""

import uuid

from structlog.testing import capture_logs

from tests.conftest import auth


async def test_request_log_has_no_personal_data(client):
    """A subscribe with email, phone and push token logs its request without any of those values."""
    vid = str(uuid.uuid4())
    secrets = ["ann.secret@example.com", "+380671234567", "tok-SECRET-123"]
    with capture_logs() as logs:
        r = await client.post("/api/v1/contact/subscribe", headers=auth(), json={"contact": {
            "externalCustomerId": "C-LOG-1", "visitorIds": [vid], "channels": [
                {"type": "email", "value": secrets[0]}, {"type": "sms", "value": secrets[1]},
                {"type": "mobilepush", "value": secrets[2]}]}})
        assert r.status == 200
        r = await client.get("/api/v1/contacts", headers=auth(), params={"email": secrets[0]})
        assert r.status == 200
    requests = [e for e in logs if e.get("event") == "request"]
    assert {e["route"] for e in requests} == {"/api/v1/contact/subscribe", "/api/v1/contacts"}
    assert all(e["request_id"] for e in requests)
    text = repr(logs)
    for secret in secrets:
        assert secret not in text


async def test_one_line_per_request_with_status_and_request_id(client):
    """Each request writes one canonical line naming route, status and the request id it answered with."""
    with capture_logs() as logs:
        r = await client.get("/api/v1/contact/999", headers={**auth(), "X-Request-Id": "req-abc"})
    assert r.status == 404 and r.headers["X-Request-Id"] == "req-abc"
    lines = [e for e in logs if e.get("event") == "request"]
    assert len(lines) == 1
    assert lines[0]["status"] == 404 and lines[0]["request_id"] == "req-abc"
    assert lines[0]["route"] == "/api/v1/contact/{contact_id}"


async def test_the_identity_log_names_the_request_id_the_response_carried(client):
    """With no X-Request-Id (or an unusable one) the service makes one up; the audit rows of that request
    carry the same id, so support can go from a response to what it changed."""
    for sent in ({}, {"X-Request-Id": "x" * 500}, {"X-Request-Id": "req-audit-1"}):
        r = await client.post("/api/v1/contact", headers={**auth(), **sent},
                              json={"externalCustomerId": f"C-AUDIT-{uuid.uuid4()}"})
        assert r.status == 200, await r.text()
        answered = r.headers["X-Request-Id"]
        if sent.get("X-Request-Id") == "req-audit-1":
            assert answered == "req-audit-1"  # a sane id of the caller's is kept
        else:
            assert 0 < len(answered) <= 128 and answered != sent.get("X-Request-Id")  # made up here
        contact_id = (await r.json())["id"]
        log = await (await client.get(f"/api/v1/contact/{contact_id}/identity-log", headers=auth())).json()
        assert [e["requestId"] for e in log["entries"]] == [answered]
