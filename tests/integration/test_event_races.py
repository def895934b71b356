"""Races of the events API with the writers that create contacts (SPEC §3): an event for a new person and the
call that creates that person, sent at the same moment, end with the event on the timeline exactly once —
never lost, never held forever, never twice. Meaningful on PostgreSQL (TEST_DATABASE_URL), where the two
transactions really run in parallel and meet on the identity-key locks; on SQLite they queue on its writer.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from tests.conftest import auth
from tests.helpers import add_contact as add
from tests.helpers import call, timeline_ids

PAIRS = 40


async def post_event(client: Any, params: dict[str, Any], key: str) -> dict[str, Any]:
    r = await client.post("/api/v2/event", headers={**auth(), "Idempotency-Key": key}, json={
        "eventTypeKey": "signup", "params": [{"name": k, "value": v} for k, v in params.items()]})
    assert r.status == 200, await r.text()
    return dict(await r.json())


async def pair(client: Any, i: int, run: str) -> None:
    """One event and one add/update for the same new person, in a random order, concurrently."""
    address = f"race-{run}-{i}@example.com"
    kind = i % 3
    params: dict[str, Any] = {"email": address}
    contact: dict[str, Any] = {"channels": [{"type": "email", "value": address}]}
    if kind == 1:  # the event names the external ID, the contact brings both
        params = {"externalCustomerId": f"R-{run}-{i}"}
        contact["externalCustomerId"] = f"R-{run}-{i}"
    elif kind == 2:  # a push token: the event holds it as mobilepush, the contact brings a web push token
        params = {"pushToken": f"tok-{run}-{i}"}
        contact = {"channels": [{"type": "webpush", "value": f"tok-{run}-{i}"}]}
    calls = [post_event(client, params, f"{run}-{i}"), add(client, contact)]
    if random.random() < 0.5:
        calls.reverse()
    results = await asyncio.gather(*calls)
    answer = next(r for r in results if isinstance(r, dict))
    cid = next(r for r in results if isinstance(r, int))
    assert answer["contactId"] in (None, cid), answer
    assert await timeline_ids(client, cid) == [answer["id"]], (i, answer)


async def test_event_racing_its_contact_s_creation_lands_once(client: Any) -> None:
    run = f"{random.getrandbits(32):08x}"
    await asyncio.gather(*[pair(client, i, run) for i in range(PAIRS)])
    status, held = await call(client, "GET", "/api/v1/events/held")
    assert status == 200 and held["events"] == [], held
    # a resend of each, now that every person is known, changes nothing
    for i in range(0, PAIRS, 7):
        again = await post_event(client, {"email": f"race-{run}-{i}@example.com"}
                                 if i % 3 == 0 else {"externalCustomerId": f"R-{run}-{i}"}
                                 if i % 3 == 1 else {"pushToken": f"tok-{run}-{i}"}, f"{run}-{i}")
        assert again["duplicate"] is True and again["status"] == "stored"


async def test_two_writers_reaching_one_held_event_by_different_keys_attach_it_once(client: Any) -> None:
    """A held push-token event claimed at once by a contact with that mobile token and one with that web token
    (two different identity locks): it lands on exactly one of them."""
    for i in range(10):
        token = f"shared-{random.getrandbits(32):08x}-{i}"
        answer = await post_event(client, {"pushToken": token}, f"tok-{token}")
        assert answer["status"] == "held"
        a, b = await asyncio.gather(
            add(client, {"externalCustomerId": f"M-{token}", "channels": [{"type": "mobilepush", "value": token}]}),
            add(client, {"externalCustomerId": f"W-{token}", "channels": [{"type": "webpush", "value": token}]}))
        both = await timeline_ids(client, a) + await timeline_ids(client, b)
        assert both == [answer["id"]], (i, both)


async def test_event_racing_a_merge_of_its_contact_follows_it_to_the_winner(client: Any) -> None:
    """An event reaching a contact by an identifier the merging request does not name (no common identity
    lock) while that contact is merged away: the event's share lock on the row orders the two, so the event
    ends on the winner's timeline — never on the merged-away contact, never lost."""
    run = f"{random.getrandbits(32):08x}"

    async def one(i: int) -> None:
        winner = await add(client, {"externalCustomerId": f"W-{run}-{i}"})
        loser = await add(client, {"channels": [{"type": "email", "value": f"l-{run}-{i}@example.com"},
                                                {"type": "sms", "value": f"+38050{3000000 + i:07d}"}]})
        merge = add(client, {"externalCustomerId": f"W-{run}-{i}",
                             "channels": [{"type": "sms", "value": f"+38050{3000000 + i:07d}"}]})
        calls = [post_event(client, {"email": f"l-{run}-{i}@example.com"}, f"m-{run}-{i}"), merge]
        if i % 2:
            calls.reverse()
        results = await asyncio.gather(*calls)
        answer = next(r for r in results if isinstance(r, dict))
        assert next(r for r in results if isinstance(r, int)) == winner
        assert answer["contactId"] in (winner, loser)
        assert await timeline_ids(client, winner) == [answer["id"]], (i, answer)

    await asyncio.gather(*[one(i) for i in range(PAIRS // 2)])
