"""Bot flagging by user agent, with the maintained crawler patterns of the ``crawlerdetect`` package."""

from __future__ import annotations

from functools import lru_cache

from crawlerdetect import CrawlerDetect

_detector = CrawlerDetect()


@lru_cache(maxsize=8192)
def is_bot(user_agent: str) -> bool:
    """True for known crawlers, headless tools and an empty user agent. Cached: agents repeat a lot."""
    if not user_agent.strip():
        return True
    return bool(_detector.isCrawler(user_agent))
