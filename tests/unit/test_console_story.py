"""The console's pure parts: the anonymous mark, the woven story, the chart and the per-minute ring."""

from __future__ import annotations

from stitcher.console import story
from stitcher.console.throughput import Growth

DAY = story.DAY_MS


def _web(t: int, received: int, vid: str | None = "v1", source: str = "web") -> dict[str, object]:
    return {"id": f"e{t}", "type": "page_view", "time": t, "receivedAt": received, "source": source,
            "visitorId": vid, "url": f"https://shop.example/{t}", "props": {"a": 1}}


def test_web_events_received_before_the_visitor_was_first_linked_are_anonymous():
    """Anonymous: a web event whose visitor nobody had linked when it arrived (or has ever linked)."""
    links = {"v1": 1000}
    assert story.is_anonymous(_web(1, 999), links)
    assert not story.is_anonymous(_web(1, 1000), links)
    assert story.is_anonymous(_web(1, 5000, vid="v2"), links)
    assert not story.is_anonymous(_web(1, 1, source="api"), links)
    assert not story.is_anonymous(_web(1, 1, vid=None), links)


def test_event_rows_summarise_the_page_and_keep_the_rest():
    """A page view reads as its url; the other fields stay as details; an unknown source is kept as is."""
    row = story.event_row(_web(5, 1, source="message"), {})
    assert (row.title, row.source, row.summary, row.details) == ("page_view", "message",
                                                                 "https://shop.example/5", {"props": {"a": 1}})


def test_identity_rows_link_the_contacts_they_name():
    """A merge's other contact becomes a link; a visitor id is kept; the rest are details."""
    row = story.identity_row({"action": "merged", "at": 7, "requestId": "r", "mergedContactId": 3,
                              "visitorIds": ["v"]})
    assert row.links == {"mergedContactId": 3} and row.time == 7 and row.kind == "identity"
    assert story.identity_row({"action": "linked_visitor", "at": 8, "visitorId": "v9"}).visitor_id == "v9"


def test_weave_puts_identity_changes_of_the_page_window_in_time_order():
    """Only identity changes within (after, until] join a page; at the same time the event comes first."""
    events = [story.event_row(_web(t, t), {}) for t in (10, 20, 30)]
    identity = [story.identity_row({"action": a, "at": t}) for a, t in
                (("old", 5), ("created", 20), ("linked_visitor", 25), ("late", 31))]
    woven = story.weave(events, identity, after=5, until=30)
    assert [r.title if r.kind == "identity" else r.time for r in woven] == [10, 20, "created", "linked_visitor", 30]
    assert [r.title for r in story.weave([], identity, None, None)] == ["old", "created", "linked_visitor", "late"]


def test_chart_stacks_anonymous_under_known_up_to_the_last_active_day():
    """One bar a day with quiet days at zero, scaled to the busiest day, at most CHART_DAYS of them."""
    chart = story.chart([(100, True, 3), (100, False, 1), (102, False, 2)], height=40)
    assert chart is not None and chart.peak == 4
    assert [(b.anonymous, b.known) for b in chart.bars] == [(3, 1), (0, 0), (0, 2)]
    assert (chart.bars[0].anonymous_height, chart.bars[0].known_height) == (30.0, 10.0)
    assert chart.bars[0].day == story.day_label(100) == "1970-04-11"
    long = story.chart([(d, False, 1) for d in range(0, 500, 7)])
    assert long is not None and len(long.bars) == story.CHART_DAYS
    assert story.chart([]) is None


def test_growth_is_what_the_counters_grew_by_since_it_was_sent():
    """Only what grew is pending; growth not sent (Redis away) stays pending and adds up with the next."""
    totals = {"received": 0.0, "rejected": 0.0}
    growth = Growth(lambda: dict(totals))
    assert growth.pending()[0] == {}
    totals["received"] = 5
    grown, current = growth.pending()
    assert grown == {"received": 5}
    totals["received"], totals["rejected"] = 7, 1
    grown, current = growth.pending()  # the first was never sent
    assert grown == {"received": 7, "rejected": 1}
    growth.sent(current)
    totals["received"] = 10
    assert growth.pending()[0] == {"received": 3}
