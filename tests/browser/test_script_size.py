"""The size budget of static/t.js: ≤ 3 KB gzipped, as served (the service's own minifier, gzip -9)."""

from __future__ import annotations

from pathlib import Path

from tracker.script import Script

SCRIPT = Path(__file__).resolve().parents[2] / "static" / "t.js"


def test_the_script_stays_within_3_kb_gzipped() -> None:
    """Every page of a site downloads the script: what GET /t.js serves gzipped stays within 3 KB."""
    assert len(Script.load(SCRIPT).gzipped) <= 3 * 1024
