"""The OpenAPI document (``/api/openapi.json``) against the route table: every route documented, nothing
documented that is not routed, and the document itself valid OpenAPI 3.1."""

from __future__ import annotations

import schemathesis

from stitcher.app import init_app
from stitcher.openapi.document import document
from tracker.settings import Settings

# routed and deliberately left out: HTML pages for people, not an API
UNDOCUMENTED_PREFIXES = ("/console", "/demo")
UNDOCUMENTED = {("GET", "/")}  # a redirect to the demo page


def _routed() -> set[tuple[str, str]]:
    """(method, path) of every route of the whole service, HEAD (aiohttp's twin of each GET) aside."""
    app = init_app(Settings(redis_url="redis://127.0.0.1:1/0"))  # nothing connects before start-up
    routed = set()
    for route in app.router.routes():
        assert route.resource is not None
        path = route.resource.canonical
        if route.method != "HEAD" and not path.startswith(UNDOCUMENTED_PREFIXES):
            routed.add((route.method, path))
    return routed - UNDOCUMENTED


def _documented() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document()["paths"].items() for method in item}


def test_every_route_is_documented() -> None:
    """A route added without its place in the document fails here, naming it."""
    assert _routed() - _documented() == set()


def test_nothing_is_documented_that_is_not_routed() -> None:
    """A documented operation the service does not answer fails here, naming it."""
    assert _documented() - _routed() == set()


def test_the_document_is_valid_openapi_3_1() -> None:
    """The document passes the OpenAPI 3.1 meta-schema (as schemathesis checks it) and every operation loads."""
    schema = schemathesis.openapi.from_dict(document())
    schema.validate()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(_documented())


def test_every_operation_documents_its_error_body() -> None:
    """Every operation's ``default`` answer is the one JSON error shape, naming the problem."""
    doc = document()
    error = doc["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"error", "message", "status"}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            default = operation["responses"]["default"]["content"]["application/json"]["schema"]
            assert default == {"$ref": "#/components/schemas/Error"}, (method, path)
