"""Sends and merges (SPEC §3, issue 10): a smartsend naming a contact merged into another reaches the winner,
as an event does; a send racing the merge of its contact lands on the winner, never on the merged-away row.
The races are meaningful on PostgreSQL (TEST_DATABASE_URL); on SQLite the two queue on its one writer."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from sqlalchemy import update

from stitcher.http_input import DB
from stitcher.store import repo
from stitcher.store.models import Contact
from tests.helpers import add_contact, call
from tests.integration.test_messages import client, create, outbox, send

__all__ = ["client"]


async def merged_pair(client: Any, tag: str) -> tuple[int, int]:
    """A winner holding an external ID and a loser (email + phone) folded into it: (winner, loser)."""
    winner = await add_contact(client, externalCustomerId=f"W-{tag}", firstName="Win")
    loser = await add_contact(client, channels=[{"type": "email", "value": f"l-{tag}@example.com"},
                                                {"type": "sms", "value": f"+38050{random.randrange(10**7):07d}"}])
    phone = next(c["value"] for c in (await call(client, "GET", f"/api/v1/contact/{loser}"))[1]["channels"]
                 if c["type"] == "sms")
    assert await add_contact(client, externalCustomerId=f"W-{tag}", channels=[{"type": "sms", "value": phone}]) \
        == winner
    return winner, loser


async def test_a_merged_contact_id_reaches_the_winner_and_says_so(client):
    """contactId of a merged-away contact: sent to the winner (rendered from the winner's fields), ``id`` is the
    winner and ``message`` says the contact was merged; its outbox row and timeline are the winner's."""
    winner, loser = await merged_pair(client, "a")
    mid = await create(client)
    [result] = (await send(client, mid, {"contactId": loser}))["results"]
    assert result["status"] == "OK" and result["id"] == winner, result
    assert result["message"] == f"contact {loser} was merged into contact {winner}"
    assert result["locator"] == "l-a@example.com"
    [row] = (await outbox(client, f"/api/v1/message/{mid}/outbox"))["outbox"]
    assert row["contactId"] == winner and row["subject"] == "Hi Win"
    # a lower-priority field still has to agree with the winner
    [bad] = (await send(client, mid, {"contactId": loser, "externalCustomerId": "someone-else"}))["results"]
    assert bad["status"] == "ERROR" and "externalCustomerId" in bad["message"]
    [fine] = (await send(client, mid, {"contactId": loser, "externalCustomerId": "W-a",
                                       "locator": "l-a@example.com"}))["results"]
    assert fine["status"] == "OK" and fine["id"] == winner


async def test_a_merged_contact_whose_winner_is_deleted_or_erased_fails(client):
    """The winner soft-deleted: the recipient fails as a deleted contact does; erased: as an unknown one."""
    winner, loser = await merged_pair(client, "d")
    mid = await create(client)
    assert (await call(client, "DELETE", f"/api/v1/contact/{winner}"))[0] == 200
    [deleted] = (await send(client, mid, {"contactId": loser}))["results"]
    assert deleted["status"] == "ERROR" and deleted["message"] == f"contact {winner} is deleted", deleted
    assert (await call(client, "DELETE", f"/api/v1/contact/{winner}", params={"erase": "true"}))[0] == 200
    [erased] = (await send(client, mid, {"contactId": loser}))["results"]
    assert erased["status"] == "ERROR" and "not found" in erased["message"], erased
    assert (await outbox(client, f"/api/v1/message/{mid}/outbox"))["total"] == 0


async def test_a_one_off_email_to_a_merged_contact_s_address_reaches_the_winner(client):
    winner, _ = await merged_pair(client, "e")
    code, answer = await call(client, "POST", "/api/v1/message/email", {
        "from": "shop@example.com", "subject": "S", "htmlText": "<p>x</p>", "emails": ["l-e@example.com"]})
    assert code == 200 and answer["results"][0]["status"] == "OK" and answer["results"][0]["id"] == winner


async def test_merge_winners_follows_chains_set_wise(client):
    """The one merge-chain helper (events, stitching, sends): chains of merges, live and erased ends."""
    a, b, c, d = [await add_contact(client, externalCustomerId=f"chain-{i}") for i in range(4)]
    db = client.app[DB]
    async with db.transaction() as s:  # a -> b -> c (as two merges leave it), d erased after a merge into it
        await s.execute(update(Contact).where(Contact.id == a).values(merged_into_id=b))  # type: ignore[arg-type]
        await s.execute(update(Contact).where(Contact.id == b).values(merged_into_id=c))  # type: ignore[arg-type]
    async with db.reader() as s:
        assert await repo.merge_winners(s, [a, b, c, d, 10**12]) == {a: c, b: c, c: c, d: d}
        assert (await repo.resolve_merged(s, a)).id == c  # type: ignore[union-attr]
        assert await repo.resolve_merged(s, 10**12) is None


async def test_a_send_racing_the_merge_of_its_contact_lands_on_the_winner(client):
    """A smartsend (by the loser's contactId, or its email) and the request merging that contact away, at once:
    the send is on the winner's outbox and timeline, once — never left on the merged-away contact."""
    mid = await create(client)
    run = f"{random.getrandbits(32):08x}"

    async def one(i: int) -> None:
        tag = f"{run}-{i}"
        winner = await add_contact(client, externalCustomerId=f"W-{tag}")
        phone = f"+38067{random.randrange(10**7):07d}"
        loser = await add_contact(client, channels=[{"type": "email", "value": f"l-{tag}@example.com"},
                                                    {"type": "sms", "value": phone}])
        recipient = {"contactId": loser} if i % 2 else {"locator": f"l-{tag}@example.com"}
        calls = [send(client, mid, recipient),
                 add_contact(client, externalCustomerId=f"W-{tag}", channels=[{"type": "sms", "value": phone}])]
        if i % 4 < 2:
            calls.reverse()
        results = await asyncio.gather(*calls)
        answer = next(r for r in results if isinstance(r, dict))
        assert next(r for r in results if isinstance(r, int)) == winner
        assert answer["results"][0]["status"] == "OK", answer
        sent = await outbox(client, f"/api/v1/contact/{winner}/messages")
        assert sent["total"] == 1 and sent["outbox"][0]["requestId"] == answer["results"][0]["requestId"], (i, sent)

    await asyncio.gather(*[one(i) for i in range(20)])
    rows = (await outbox(client, f"/api/v1/message/{mid}/outbox"))["outbox"]
    assert len(rows) == 20
