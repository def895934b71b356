"""The OpenAPI 3.1 document of the service's HTTP API, kept by hand beside the handlers.

Enums and limits are the handlers' own constants, so the document cannot drift from them; the paths are
checked against the route table by ``tests/unit/test_openapi.py``. Request bodies are described as the
handlers read them: fields they do not model are accepted (``additionalProperties`` is left open), as
SPEC §3 asks. Every error has one shape (``Error``), documented as each operation's ``default`` answer.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from stitcher.domain.identifiers import MAX_EXTERNAL_ID, IdentifierKind
from stitcher.domain.orders import OrderStatus
from stitcher.domain.rules import DedupeOn
from stitcher.domain.segments import MAX_CONDITIONS, GroupType, Match, Op
from stitcher.events.handlers import MAX_HELD_PAGE
from stitcher.events.payload import MAX_IDEMPOTENCY_KEY, MAX_TYPE_KEY
from stitcher.http_input import MAX_ROWS, MAX_START
from stitcher.imports.request import MAX_ROWS as MAX_IMPORT_ROWS
from stitcher.messages.payload import MAX_EXTERNAL_REQUEST_ID, MAX_RECIPIENTS, Channel
from stitcher.orders.payload import MAX_ORDERS
from stitcher.payload import MAX_GROUPS, MAX_VISITORS
from tracker.limits import MAX_REQUEST_ID

Schema = dict[str, Any]
JSON = "application/json"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: tuple[str, ...] = (), **properties: Schema) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def _text(max_length: int | None = None, **kw: Any) -> Schema:
    return {"type": "string", **({"maxLength": max_length} if max_length else {}), **kw}


def _int(minimum: int | None = None, maximum: int | None = None) -> Schema:
    return {"type": "integer", **({"minimum": minimum} if minimum is not None else {}),
            **({"maximum": maximum} if maximum is not None else {})}


def _query(name: str, schema: Schema, description: str = "", required: bool = False) -> Schema:
    return {"name": name, "in": "query", "required": required, "schema": schema,
            **({"description": description} if description else {})}


def _path(name: str, schema: Schema) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _header(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


def _json(schema: Schema, description: str = "OK") -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _op(summary: str, ok: dict[str, Schema], *, params: list[Schema] | None = None, body: Schema | None = None,
        public: bool = False, media: tuple[str, ...] = (JSON,)) -> Schema:
    operation: Schema = {"summary": summary, "responses": {
        **ok, "default": _json(_ref("Error"), "an error: a JSON body naming the problem")}}
    if params:
        operation["parameters"] = params
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {m: {"schema": body} for m in media}}
    if public:
        operation["security"] = []
    return operation


_CONTACT_ID = _path("contact_id", _int(1))
_GROUP_ID = _path("group_id", _int(1))
_MESSAGE_ID = _path("message_id", _int(1))
_PAGE = [_query("startindex", _int(1, MAX_START), "the first row, 1-based"),
         _query("maxrows", _int(1, MAX_ROWS), "rows per page")]
_CURSOR = [_query("limit", _int(1, 1000)),
           _query("after", _text(pattern=r"^[0-9]+\.[0-9]+$"), "the previous page's `next`")]
_IDEMPOTENCY = _header("Idempotency-Key", _text(MAX_IDEMPOTENCY_KEY, minLength=1),
                       "a resend with the same key is a no-op")
_ERASE = _query("erase", {"enum": ["true", "false", "1", "0"]}, "true: remove the person for good")
_TOTAL = {"TotalCount": {"schema": {"type": "string"}, "description": "rows in the whole list"}}


_OBJECT = {"200": _json({"type": "object"})}


def _components() -> Schema:
    identifier = {"type": ["string", "integer"]}
    contact = _obj(
        externalCustomerId={"type": ["string", "integer"], "maxLength": MAX_EXTERNAL_ID},
        contactId=_int(), id=_int(),
        firstName=_text(256), lastName=_text(256), languageCode=_text(16),
        channels={"type": ["array", "object"], "items": _ref("Channel")},
        address={"type": "object"},
        fields={"type": ["array", "object"], "items": _obj(id=identifier, value={})},
        groups={"type": ["array", "object"], "maxItems": MAX_GROUPS, "items": _ref("GroupRef")},
        visitorIds={"type": "array", "maxItems": MAX_VISITORS, "items": _text(64, format="uuid")},
    )
    condition = _obj(("field", "op"), field={"type": ["string", "object"]},
                     op={"enum": [o.value for o in Op]}, value={})
    order_item = _obj(externalItemId=_text(256), name=_text(1024), quantity={"type": ["number", "string"]},
                      cost={"type": ["number", "string"]}, url=_text(2048))
    order = _obj(("externalOrderId", "totalCost"),
                 externalOrderId=identifier, externalCustomerId=identifier, email=_text(), phone=_text(),
                 firstName=_text(256), lastName=_text(256), status={"enum": [s.value for s in OrderStatus]},
                 date=_text(64), totalCost={"type": ["number", "string"]}, currency=_text(3),
                 items={"type": "array", "items": order_item})
    recipient = _obj(contactId=_int(1), externalCustomerId=identifier, locator=_text(),
                     jsonParam={"type": ["string", "object"]})
    return {
        "securitySchemes": {"basic": {"type": "http", "scheme": "basic",
                                      "description": "any user name, an API key as the password"}},
        "schemas": {
            "Error": _obj(("error", "message", "status"), error=_text(), message=_text(), status=_int(400, 599),
                          errors={"type": "array", "items": _obj(field=_text(), message=_text())}),
            "Channel": _obj(("type", "value"), type={"enum": [k.value for k in IdentifierKind]},
                            value={"type": ["string", "integer", "null"]}, device={"type": ["string", "object"]}),
            "GroupRef": {"oneOf": [_text(256), _obj(id=_int(1), name=_text(256), type=_text())]},
            "Contact": contact,
            "Subscribe": _obj(("contact",), contact=_ref("Contact"), groups=contact["properties"]["groups"],
                              formType=_text(128)),
            "ContactOutcome": _obj(("id", "status"), id=_int(1), status=_text(), ignored={"type": "array"}),
            "Event": _obj(("eventTypeKey",), eventTypeKey=_text(MAX_TYPE_KEY, minLength=1), keyValue=_text(),
                          params={"type": "array", "items": _obj(name=_text(256), value={})}),
            "Import": _obj(("contacts", "dedupeOn"), dedupeOn={"enum": [d.value for d in DedupeOn]},
                           contacts={"type": "array", "minItems": 1, "maxItems": MAX_IMPORT_ROWS,
                                     "items": _ref("Contact")},
                           fieldId=_int(), contactFields={"type": "array", "items": _text()},
                           groupNames={"type": "array", "items": _text(256)}, restoreDeleted={"type": "boolean"}),
            "Orders": _obj(("orders",), orders={"type": "array", "minItems": 1, "maxItems": MAX_ORDERS,
                                                "items": order}),
            "Group": _obj(("name",), name=_text(256, minLength=1), type={"enum": [t.value for t in GroupType]},
                          match={"enum": [m.value for m in Match]},
                          conditions={"type": "array", "maxItems": MAX_CONDITIONS, "items": condition}),
            "Message": _obj(("channel", "name", "body"), channel={"enum": [c.value for c in Channel]},
                            name=_text(256, minLength=1), subject=_text(), body=_text(), **{"from": _text(320)}),
            "Smartsend": _obj(("recipients",), recipients={"type": "array", "minItems": 1,
                                                           "maxItems": MAX_RECIPIENTS, "items": recipient},
                              fromName=_text(256), externalRequestId=_text(MAX_EXTERNAL_REQUEST_ID)),
            "Email": _obj(("from", "subject", "htmlText", "emails"), subject=_text(998), htmlText=_text(),
                          plainText=_text(), emails={"type": "array", "minItems": 1, "maxItems": MAX_RECIPIENTS,
                                                     "items": _text()},
                          tags={"type": "array", "items": _text(256)},
                          externalRequestId=_text(MAX_EXTERNAL_REQUEST_ID), **{"from": _text(320)}),
            "Beacon": _obj(("events",), vid=_text(64), sent_at=_int(0), reset={"type": "boolean"},
                           events={"type": "array", "minItems": 1, "items": _obj(
                               ("id", "type"), id=_text(128), type=_text(128), ts=_int(0), url=_text(2000),
                               ref=_text(2000), title=_text(2000), props={"type": "object"})}),
        },
    }


def _paths() -> dict[str, dict[str, Schema]]:
    contact_body, outcome = _ref("Contact"), _json(_ref("ContactOutcome"))
    page_of = {"200": {**_json({"type": "array"}), "headers": _TOTAL}}
    return {
        # tracking (public) and operations
        "/t": {"post": _op("store a beacon's events (also sent as text/plain)", {"204": {"description": "stored"}},
                           body=_ref("Beacon"), public=True),
               "options": _op("CORS preflight of the beacon", {"204": {"description": "allowed"}}, public=True)},
        "/t/identify": {
            "post": _op("signed identify: link the visitor to an external customer ID signed by the site's backend "
                        "(HMAC-SHA256 with IDENTIFY_SECRET)", {"202": {"description": "queued for the stitcher"}},
                        body=_obj(("externalCustomerId", "signature"), externalCustomerId=_text(MAX_EXTERNAL_ID),
                                  signature=_text(64), vid=_text(64), reset={"type": "boolean"}), public=True),
            "options": _op("CORS preflight of identify", {"204": {"description": "allowed"}}, public=True)},
        "/t/forget": {"post": _op("consent withdrawn: expire the visitor cookie", {"204": {"description": "done"}},
                                  public=True)},
        "/t.gif": {"get": _op("the beacon as a pixel: `d` is the beacon body, base64url",
                              {"200": {"description": "a 1x1 GIF", "content": {"image/gif": {}}}},
                              params=[_query("d", _text())], public=True)},
        "/t.js": {"get": _op("the tracking script", {"200": {"description": "the script",
                                                            "content": {"application/javascript": {}}},
                                                    "304": {"description": "not modified"}}, public=True)},
        "/healthz": {"get": _op("alive", {"200": _json(_obj(status=_text()))}, public=True)},
        "/readyz": {"get": _op("Redis and SQL reachable", {"200": _json({"type": "object"}),
                                                           "503": _json({"type": "object"}, "not ready")},
                               public=True)},
        "/metrics": {"get": _op("Prometheus metrics", {"200": {"description": "the exposition",
                                                               "content": {"text/plain": {}}}}, public=True)},
        # the API (Basic auth)
        "/api/openapi.json": {"get": _op("this document", _OBJECT)},
        "/api/v1/visitor/{vid}/events": {"get": _op(
            "a visitor's anonymous history and linked contact", _OBJECT,
            params=[_path("vid", _text(64, format="uuid"))])},
        "/api/v1/tracker/rejected": {"get": _op("the latest rejected beacon events", _OBJECT,
                                                params=[_query("count", _int(1, 1000))])},
        "/api/v1/contact": {
            "post": _op("add or update one contact", {"200": outcome}, body=contact_body),
            "delete": _op("delete a contact by external ID (`erase=true`: for good)", _OBJECT,
                          params=[_query("externalCustomerId", _text(MAX_EXTERNAL_ID), required=True),
                                  _ERASE])},
        "/api/v1/contact/subscribe": {"post": _op("subscribe: contact, groups, formType", {"200": outcome},
                                                  body=_ref("Subscribe"))},
        "/api/v1/contact/{contact_id}": {
            "get": _op("one contact", _OBJECT, params=[_CONTACT_ID]),
            "put": _op("update one contact", {"200": outcome}, params=[_CONTACT_ID], body=contact_body),
            "delete": _op("delete a contact (`erase=true`: for good)", _OBJECT,
                          params=[_CONTACT_ID, _ERASE])},
        "/api/v1/contact/{contact_id}/events": {"get": _op(
            "the contact's timeline, oldest first", _OBJECT, params=[_CONTACT_ID, *_CURSOR])},
        "/api/v1/contact/{contact_id}/identity-log": {"get": _op(
            "every identity change of the contact", {"200": _json({"type": ["object", "array"]})},
            params=[_CONTACT_ID])},
        "/api/v1/contact/{contact_id}/orders": {"get": _op(
            "the contact's orders, newest first", _OBJECT, params=[_CONTACT_ID, *_CURSOR])},
        "/api/v1/contact/{contact_id}/messages": {"get": _op(
            "the contact's sends, newest first", _OBJECT,
            params=[_CONTACT_ID, *_CURSOR, _query("externalRequestId", _text(MAX_EXTERNAL_REQUEST_ID))])},
        "/api/v1/contacts": {
            "get": _op("search live contacts (`externalCustomerId` alone)", page_of, params=[
                _query("email", _text()), _query("sms", _text()), _query("firstname", _text()),
                _query("lastname", _text()), _query("externalCustomerId", _text(MAX_EXTERNAL_ID)), *_PAGE]),
            "post": _op("bulk import, answered at once", {"200": _json(_obj(id=_int(), asyncSessionId=_text()))},
                        body=_ref("Import"))},
        "/api/v1/importstatus/{session_id}": {"get": _op(
            "an import's status", _OBJECT,
            params=[_path("session_id", _text(64, format="uuid"))])},
        "/api/v1/event": {"post": _op("an API event (v1 path)", _OBJECT,
                                      params=[_IDEMPOTENCY], body=_ref("Event"))},
        "/api/v2/event": {"post": _op("an API event", _OBJECT,
                                      params=[_IDEMPOTENCY], body=_ref("Event"))},
        "/api/v1/events/held": {"get": _op("held events, oldest first", _OBJECT, params=[
            _query("limit", _int(1, MAX_HELD_PAGE)), _query("after", _int(0, 2**63 - 1)),
            _query("identifier", _text())])},
        "/api/v1/account/info": {"get": _op("the account, from configuration", _OBJECT)},
        "/api/v1/version": {"get": _op("versions", {"200": _json(_obj(version=_text(), protocolVersion=_text()))})},
        "/api/v1/orders": {"post": _op("upsert orders; each bad one fails alone", _OBJECT,
                                       body=_ref("Orders"))},
        "/api/v1/groups": {
            "get": _op("a page of the groups", page_of, params=_PAGE),
            "post": _op("create a group", {"200": _json(_obj(id=_int(1)))}, body=_ref("Group"))},
        "/api/v1/group/{group_id}": {
            "get": _op("one group", _OBJECT, params=[_GROUP_ID]),
            "delete": _op("delete a group and its memberships", _OBJECT,
                          params=[_GROUP_ID])},
        "/api/v1/group/{group_id}/contacts": {"get": _op(
            "a page of a group's live contacts", page_of, params=[_GROUP_ID, *_PAGE])},
        "/api/v1/messages": {
            "get": _op("prepared messages, newest first", _OBJECT, params=_CURSOR),
            "post": _op("create a prepared message", {"200": _json(_obj(id=_int(1)))}, body=_ref("Message"))},
        "/api/v1/message/{message_id}": {"get": _op("one prepared message", _OBJECT,
                                                    params=[_MESSAGE_ID])},
        "/api/v1/message/{message_id}/smartsend": {"post": _op(
            "send a prepared message; each recipient fails alone", _OBJECT,
            params=[_MESSAGE_ID, _IDEMPOTENCY], body=_ref("Smartsend"))},
        "/api/v1/message/email": {"post": _op("send one email to known contacts", _OBJECT,
                                              params=[_IDEMPOTENCY], body=_ref("Email"))},
        "/api/v1/message/{message_id}/outbox": {"get": _op(
            "a message's sends, newest first", _OBJECT,
            params=[_MESSAGE_ID, *_CURSOR, _query("externalRequestId", _text(MAX_EXTERNAL_REQUEST_ID))])},
    }


def document() -> dict[str, Any]:
    """The whole document: every path answers with and without a trailing slash under ``/api`` (listed
    once), and HEAD wherever GET is (not listed)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Stitcher", "version": version("stitcher"),
                 "description": "Web tracking and identity stitching. Every answer carries `X-Request-Id` (the "
                                f"caller's own if 1-{MAX_REQUEST_ID} printable ASCII characters)."},
        "security": [{"basic": []}],
        "paths": _paths(),
        "components": _components(),
    }
