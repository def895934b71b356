"""The service hands configured values to the pure identity rules (they read no settings themselves)."""

from __future__ import annotations

import pytest

from stitcher.app import normaliser
from stitcher.domain.errors import InvalidIdentifier
from stitcher.domain.identifiers import DEFAULT_PLACEHOLDERS
from tracker.settings import Settings


def test_the_normaliser_gets_the_configured_placeholders_and_region() -> None:
    """PLACEHOLDERS and DEFAULT_PHONE_REGION reach the normaliser; unset, the SPEC's own list applies."""
    configured = normaliser(Settings(placeholders=("nobody",), default_phone_region="UA"))
    with pytest.raises(InvalidIdentifier, match="placeholder"):
        configured.external_id("Nobody")
    assert configured.external_id("guest") == "guest"
    assert configured.phone("067 123 45 67", "f") == "+380671234567"
    assert normaliser(Settings()).placeholders == DEFAULT_PLACEHOLDERS
    with pytest.raises(InvalidIdentifier, match="placeholder"):
        normaliser(Settings()).external_id("guest")
    assert configured.absence(" Nobody ") == "placeholder" and configured.absence("guest") is None


def test_account_info_settings_come_from_the_environment() -> None:
    """ORGANISATION_NAME, USER_EMAIL and ORG_ID configure account/info; unset, the documented defaults."""
    assert (Settings().organisation_name, Settings().user_email, Settings().org_id) == ("Stitcher", None, 1)
    env = {"ORGANISATION_NAME": "Shop Ltd", "USER_EMAIL": "ops@shop.example", "ORG_ID": "4242"}
    settings = Settings.from_env(env)
    assert (settings.organisation_name, settings.user_email, settings.org_id) == ("Shop Ltd", "ops@shop.example", 4242)


def test_the_domain_imports_nothing_from_the_edge_or_the_store() -> None:
    """stitcher/domain is pure: no tracker, aiohttp, SQL or settings imports (DESIGN invariant 8)."""
    import ast
    from pathlib import Path

    domain = Path(__file__).resolve().parents[2] / "stitcher" / "domain"
    for path in domain.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(("tracker", "aiohttp", "sqlalchemy", "sqlmodel", "redis",
                                            "stitcher.store", "stitcher.api", "stitcher.payload")), \
                    f"{path.name} imports {name}"


def test_the_import_parser_process_loads_no_store() -> None:
    """What the import's parser process runs (``stitcher.imports.parse``) loads neither SQLAlchemy nor the
    store: a spawned parser starts in a fraction of the service's start-up."""
    import subprocess
    import sys

    probe = ("import sys, stitcher.imports.parse; "
             "print(sorted(m for m in sys.modules if m.startswith(('sqlalchemy', 'sqlmodel', 'stitcher.store'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
