"""Calls shaped the way existing clients of the platform send them (issue 9, first part).

Each request below is built the way a client written for the eSputnik v1 API builds it — camelCase keys,
trailing slashes, a JSON string body with ``Content-Type: application/json; charset=UTF-8``, Basic auth with
an empty user name — from these sources, not from our own handlers:

- the Yespo (eSputnik) WooCommerce plugin, github.com/Yespo-CDP/yespo-woocommerce:
  ``integrations/esputnik/Esputnik_Contact_Mapping.php`` (``data_woo_to_yes``: an email channel plus an
  ``sms`` channel whose value is ``' '`` when the shop has no phone, the WordPress user ID as an integer
  ``externalCustomerId``, ``firstName``/``lastName`` of ``' '``, ``address`` parts ``region/town/address/
  postcode`` of ``' '``), ``Yespo_Curl_Request.php`` (``Authorization: Basic base64(':' . key)``,
  ``wp_json_encode`` body) and ``Esputnik_Account.php`` (``GET /api/v1/account/info`` to check a key);
- the PHP client github.com/updevru/php-esputnik-api: ``lib/Esputnik/Api/Contact.php`` (``POST contact/``,
  ``POST contact/subscribe/`` with top-level ``groups`` as names plus ``fields`` and ``dedupeOn``,
  ``PUT contact/{id}``, ``GET contact/{id}``, ``DELETE contact/{id}``) and its models
  ``lib/Esputnik/Model/{Contact,Group,Address}.php`` serialised by JMS (nulls dropped; a group object carries
  ``name``, ``type: "Static"`` and its ``types`` list; a contact ``addressBookId`` and ``contactKey``);
- the OpenCart module github.com/eSputnik-CDP/esputnik-opencart ``system/library/esputnik_http.php``
  (``Content-Type: application/json; charset=UTF-8``, ``CURLOPT_USERPWD 'user:' . key``);
- eSputnik's docs, docs.esputnik.com/docs/uploading-mobile-token-base (a ``mobilepush`` channel with a
  ``device`` object ``{appId, deviceModel, os, locale, appVersion}``, custom ``fields`` by id) and the
  contact schema's channel types ``email, sms, mobilepush, webpush, viber, telegram``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from aiohttp import web
from sqlalchemy import select

from tests.conftest import API_KEY

JSON = "application/json; charset=UTF-8"


def basic(user: str, key: str = API_KEY) -> str:
    return "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()


WOO = {"Accept": JSON, "Authorization": basic(""), "Content-Type": "application/json"}  # Yespo_Curl_Request
OPENCART = {"Accept": JSON, "Authorization": basic("user"), "Content-Type": JSON}  # esputnik_http.php


async def send(client: Any, method: str, path: str, body: Any = None, headers: dict[str, str] = WOO) -> tuple[int, Any]:
    """A request as the PHP clients make it: the body already a JSON string, never a redirect followed."""
    data = json.dumps(body) if body is not None else ""
    r = await client.request(method, path, data=data, headers=headers, allow_redirects=False)
    return r.status, await r.json()


def woo_contact(user_id: int | None, email: str, phone: str = "", first: str = "", last: str = "") -> dict[str, Any]:
    """``Esputnik_Contact_Mapping::data_woo_to_yes`` for a WooCommerce user (or a guest when user_id is None)."""
    data: dict[str, Any] = {"channels": [{"value": email, "type": "email"},
                                         {"value": "".join(c for c in phone if c.isdigit()) or " ", "type": "sms"}]}
    if user_id is not None:
        data["externalCustomerId"] = user_id
    data["firstName"] = first or " "
    data["lastName"] = last or " "
    data["address"] = {"region": " ", "town": "Kyiv", "address": " ", "postcode": " "}
    data["languageCode"] = "uk"
    return data


async def test_woocommerce_registered_user_without_phone_is_created_and_the_blank_phone_ignored(client: Any) -> None:
    """The plugin's new-user call (integer ID, sms ``' '``, blank names) creates the contact; the blank
    phone is named under ``ignored`` and the address parts are kept."""
    status, body = await send(client, "POST", "/api/v1/contact/", woo_contact(17, "Ann@Shop.example", first="Ann"))
    assert status == 200, body
    assert body["status"] == "created" and body["externalCustomerId"] == "17"
    assert body["ignored"] == [{"field": "channels[1].value", "reason": "blank"}]
    status, contact = await send(client, "GET", f"/api/v1/contact/{body['id']}/")
    assert status == 200, contact
    assert contact["channels"] == [{"type": "email", "value": "ann@shop.example"}]
    assert contact["address"] == {"region": " ", "town": "Kyiv", "address": " ", "postcode": " "}
    assert contact["firstName"] == "Ann" and contact["languageCode"] == "uk"


async def test_a_blank_phone_never_joins_two_shoppers(client: Any) -> None:
    """Two guests whose shop sent sms ``' '`` stay two contacts: a blank value finds no one."""
    ids = set()
    for email in ("a@shop.example", "b@shop.example"):
        status, body = await send(client, "POST", "/api/v1/contact/", woo_contact(None, email))
        assert status == 200 and body["status"] == "created", body
        ids.add(body["id"])
    assert len(ids) == 2


async def test_external_id_of_empty_string_or_zero_is_ignored_and_finds_no_one(client: Any) -> None:
    """``externalCustomerId`` of ``""`` or ``0`` is absent: the email decides, and no two people share an
    external ID "0"."""
    first = await send(client, "POST", "/api/v1/contact/", {**woo_contact(None, "c@shop.example"),
                                                            "externalCustomerId": 0})
    second = await send(client, "POST", "/api/v1/contact/", {**woo_contact(None, "d@shop.example"),
                                                             "externalCustomerId": ""})
    assert first[0] == second[0] == 200, (first, second)
    assert first[1]["externalCustomerId"] is None and second[1]["externalCustomerId"] is None
    assert first[1]["id"] != second[1]["id"]
    assert {"field": "externalCustomerId", "reason": "placeholder"} in first[1]["ignored"]
    assert {"field": "externalCustomerId", "reason": "blank"} in second[1]["ignored"]
    again = await send(client, "POST", "/api/v1/contact/", {**woo_contact(None, "c@shop.example"),
                                                            "externalCustomerId": "0"})
    assert again[1]["id"] == first[1]["id"] and again[1]["status"] == "updated"


async def test_nothing_but_blank_identifiers_is_a_400_naming_them(client: Any) -> None:
    """A request whose every identifier is blank or a placeholder is refused, naming each one and why."""
    status, err = await send(client, "POST", "/api/v1/contact/", {
        "externalCustomerId": "", "channels": [{"type": "email", "value": "null"}, {"type": "sms", "value": " "}]})
    assert status == 400, err
    assert err["status"] == 400 and err["error"] == "validation_failed"
    assert [e["field"] for e in err["errors"]] == ["externalCustomerId", "channels[0].value", "channels[1].value"]
    assert "ignored" in err["errors"][0]["message"]


async def test_a_malformed_email_is_still_a_400_naming_it(client: Any) -> None:
    """Not blank, not a placeholder, but not an address: a 400 naming the field, as before."""
    status, err = await send(client, "POST", "/api/v1/contact/", woo_contact(18, "ann@@shop"))
    assert status == 400 and err["status"] == 400
    assert [e["field"] for e in err["errors"]] == ["channels[0].value"]


async def test_php_client_add_with_group_objects_and_platform_fields(client: Any) -> None:
    """``Contact`` as JMS serialises it — group objects with ``type``/``types``, ``addressBookId``,
    ``contactKey``, custom ``fields`` by id — is accepted; the contact joins the groups (created)."""
    status, body = await send(client, "POST", "/api/v1/contact/", {
        "firstName": "Bohdan", "lastName": "K",
        "channels": [{"type": "email", "value": "bohdan@example.com"}, {"type": "sms", "value": "380671234567"}],
        "address": {"region": "Kyivska", "town": "Kyiv", "address": "Khreshchatyk 1", "postcode": "01001"},
        "fields": [{"id": 12345, "value": "writer"}],
        "addressBookId": 1, "contactKey": "bohdan@example.com",
        "groups": [{"name": "Newsletter", "type": "Static", "types": ["Static", "Dynamic", "Combined"]},
                   {"id": 7, "name": "VIP", "type": "Static"}],
    }, headers=OPENCART)
    assert status == 200, body
    status, contact = await send(client, "GET", f"/api/v1/contact/{body['id']}", headers=OPENCART)
    assert [g["name"] for g in contact["groups"]] == ["Newsletter", "VIP"]
    assert contact["fields"] == [{"id": 12345, "value": "writer"}]
    assert {"type": "sms", "value": "+380671234567"} in contact["channels"]


async def test_groups_and_channels_as_a_single_object(client: Any) -> None:
    """``channels`` and ``groups`` sent as one object instead of a list are read as a list of one."""
    status, body = await send(client, "POST", "/api/v1/contact/", {
        "externalCustomerId": "S-1", "channels": {"type": "email", "value": "single@example.com"},
        "groups": {"name": "Solo"}})
    assert status == 200, body
    status, contact = await send(client, "GET", f"/api/v1/contact/{body['id']}/")
    assert contact["channels"] == [{"type": "email", "value": "single@example.com"}]
    assert [g["name"] for g in contact["groups"]] == ["Solo"]


async def test_a_group_object_with_only_an_id_joins_that_group_or_is_ignored_not_refused(client: Any) -> None:
    """``{"id": n}`` without a name joins the group with that id (add/update, PUT and subscribe, top-level
    groups too); an id no group has, or no usable id, is named under ``ignored`` and the rest lands."""
    status, body = await send(client, "POST", "/api/v1/contact/", {"externalCustomerId": "G-0",
                                                                   "groups": ["Real", "Other"]})
    assert status == 200, body
    real, other = [g["id"] for g in (await send(client, "GET", f"/api/v1/contact/{body['id']}"))[1]["groups"]]
    status, body = await send(client, "POST", "/api/v1/contact/", {
        "externalCustomerId": "G-1", "groups": [{"id": real}, {"id": 987654}, {"id": "x"}, {"type": "Static"}]})
    assert status == 200, body
    assert body["ignored"] == [{"field": "groups[2].id", "reason": "not a group id"},
                               {"field": "groups[3].name", "reason": "missing"},
                               {"field": "groups[1].id", "reason": "no group has this id"}]
    contact = (await send(client, "GET", f"/api/v1/contact/{body['id']}"))[1]
    assert contact["groups"] == [{"id": real, "name": "Real"}]
    status, put = await send(client, "PUT", f"/api/v1/contact/{body['id']}/", {"groups": {"id": str(other)}})
    assert status == 200 and put["ignored"] == [], put
    assert [g["name"] for g in (await send(client, "GET", f"/api/v1/contact/{body['id']}"))[1]["groups"]] == \
        ["Real", "Other"]
    status, sub = await send(client, "POST", "/api/v1/contact/subscribe/", {
        "contact": {"channels": [{"type": "email", "value": "gid@example.com"}], "groups": [{"id": other}]},
        "groups": [{"id": real}, {"id": 2**62}, "Named"]})
    assert status == 200, sub
    assert sub["groups"] == ["Other", "Named", "Real"]
    assert sub["ignored"] == [{"field": "groups[1].id", "reason": "no group has this id"}]
    assert await groups_count(client) == 3  # an unknown id creates no group


async def groups_count(client: Any) -> int:
    from stitcher.http_input import DB
    from stitcher.store.models import Group

    async with client.app[DB].reader() as s:
        return len((await s.execute(select(Group))).all())


async def test_php_client_subscribe_with_group_names_fields_and_dedupe_on(client: Any) -> None:
    """``Contact::subscribe`` posts ``contact/subscribe/`` with top-level group names, ``fields`` and
    ``dedupeOn``; the contact's own group objects count too; repeating it changes nothing."""
    body = {"contact": {"firstName": "Iryna", "channels": [{"type": "email", "value": "iryna@example.com"}],
                        "groups": [{"name": "From contact", "type": "Static"}]},
            "groups": ["News", "Offers"], "fields": [], "dedupeOn": "email", "formType": "popup"}
    status, first = await send(client, "POST", "/api/v1/contact/subscribe/", body)
    assert status == 200, first
    assert first["groups"] == ["From contact", "News", "Offers"]
    status, again = await send(client, "POST", "/api/v1/contact/subscribe/", body)
    assert again["id"] == first["id"] and again["status"] == "updated"
    status, contact = await send(client, "GET", f"/api/v1/contact/{first['id']}/")
    assert sorted(g["name"] for g in contact["groups"]) == ["From contact", "News", "Offers"]


async def test_subscribe_top_level_groups_as_objects_or_one_object(client: Any) -> None:
    """Subscribe's top-level ``groups`` takes objects, or one object alone, like the contact's own."""
    for groups, names in (([{"name": "A", "type": "Static"}], ["A"]), ({"name": "B"}, ["B"])):
        status, body = await send(client, "POST", "/api/v1/contact/subscribe/", {
            "contact": {"externalCustomerId": f"T-{names[0]}"}, "groups": groups})
        assert status == 200, body
        assert body["groups"] == names


async def test_mobile_token_with_a_device_object_is_kept_and_shown(client: Any) -> None:
    """A ``mobilepush`` channel's ``device`` object (the token-upload docs) is stored and shown as given."""
    device = {"appId": "83b77a49-fc28-409b-aeaa-68c9d544ab9d", "deviceModel": "iPhone 13", "os": "Android",
              "locale": "ua", "appVersion": "4.1.6"}
    status, body = await send(client, "POST", "/api/v1/contact/", {
        "firstName": "John", "lastName": "Smith", "externalCustomerId": "6add3c31-3ec6-4f34-b20e-8c757fe65270",
        "channels": [{"type": "mobilepush", "value": "8900-7654-6456-9876-0011", "device": device},
                     {"type": "email", "value": "john@example.com"}],
        "fields": [{"id": 12345, "value": "writer"}, {"id": 12346, "value": "1814-03-09"}]})
    assert status == 200, body
    status, contact = await send(client, "GET", f"/api/v1/contact/{body['id']}/")
    assert contact["channels"][0] == {"type": "mobilepush", "value": "8900-7654-6456-9876-0011", "device": device}


async def test_a_device_is_kept_whole_up_to_4_kib_and_a_larger_one_is_ignored_not_refused(client: Any) -> None:
    """A device (object or string) is stored whole up to 4096 characters, 4-byte ones too; a larger one is
    named under ``ignored`` and the token itself is still stored."""
    big = {"note": "😀" * 4080}  # 4,091 characters of JSON, 16 KiB of UTF-8
    status, body = await send(client, "POST", "/api/v1/contact/", {"channels": [
        {"type": "webpush", "value": "wp-token-1", "device": big},
        {"type": "mobilepush", "value": "mp-token-1", "device": "d" * 4096}]})
    assert status == 200 and body["ignored"] == [], body
    status, contact = await send(client, "GET", f"/api/v1/contact/{body['id']}")
    assert [c.get("device") for c in contact["channels"]] == [big, "d" * 4096]
    status, body = await send(client, "POST", "/api/v1/contact/", {"channels": [
        {"type": "webpush", "value": "wp-token-2", "device": {"note": "x" * 4090}},
        {"type": "mobilepush", "value": "mp-token-2", "device": "d" * 4097},
        {"type": "mobilepush", "value": "mp-token-3", "device": ["a"]}]})
    assert status == 200, body
    assert body["ignored"] == [
        {"field": "channels[0].device", "reason": "longer than 4096 characters as JSON"},
        {"field": "channels[1].device", "reason": "longer than 4096 characters"},
        {"field": "channels[2].device", "reason": "neither a string nor an object"}]
    status, contact = await send(client, "GET", f"/api/v1/contact/{body['id']}")
    assert [c["value"] for c in contact["channels"]] == ["wp-token-2", "mp-token-2", "mp-token-3"]
    assert all("device" not in c for c in contact["channels"])


async def test_viber_and_telegram_are_stored_and_shown_but_find_no_one(client: Any) -> None:
    """Messenger channels show on GET like other channels, yet two people with the same Viber id stay two,
    and a Viber id alone does not identify anyone."""
    ids = []
    for ext in ("V-1", "V-2"):
        status, body = await send(client, "POST", "/api/v1/contact/", {"externalCustomerId": ext, "channels": [
            {"type": "viber", "value": "+380671234567"}, {"type": "telegram", "value": "123456789"}]})
        assert status == 200, body
        ids.append(body["id"])
    assert ids[0] != ids[1]
    status, contact = await send(client, "GET", f"/api/v1/contact/{ids[0]}/")
    assert contact["channels"] == [{"type": "viber", "value": "+380671234567"},
                                   {"type": "telegram", "value": "123456789"}]
    status, err = await send(client, "POST", "/api/v1/contact/", {"channels": [
        {"type": "viber", "value": "+380671234567"}]})
    assert status == 400 and [e["field"] for e in err["errors"]] == ["channels"]


async def test_php_client_update_show_search_and_remove_with_and_without_slashes(client: Any) -> None:
    """``PUT contact/{id}``, ``GET contact/{id}``, ``GET contacts/?email=`` and ``DELETE contact/{id}`` answer
    with and without a trailing slash, never with a redirect."""
    status, body = await send(client, "POST", "/api/v1/contact/", woo_contact(21, "olena@example.com"))
    cid = body["id"]
    for path in (f"/api/v1/contact/{cid}", f"/api/v1/contact/{cid}/"):
        status, updated = await send(client, "PUT", path, {"firstName": "Olena", "externalCustomerId": "null",
                                                           "channels": [{"type": "sms", "value": " "}]})
        assert status == 200, updated
        assert updated["externalCustomerId"] == "21"  # the placeholder was ignored, not written
        assert {e["field"] for e in updated["ignored"]} == {"externalCustomerId", "channels[0].value"}
    for path in ("/api/v1/contacts?email=olena@example.com", "/api/v1/contacts/?email=olena@example.com"):
        r = await client.get(path, headers=WOO, allow_redirects=False)
        assert r.status == 200 and r.headers["TotalCount"] == "1", await r.text()
        assert (await r.json())[0]["firstName"] == "Olena"
    status, deleted = await send(client, "DELETE", f"/api/v1/contact/{cid}/")
    assert status == 200 and deleted == {"id": cid, "status": "deleted"}
    status, gone = await send(client, "GET", f"/api/v1/contact/{cid}/")
    assert status == 404 and gone["status"] == 404


async def test_account_info_and_version_check_a_key(client: Any) -> None:
    """What plugins call to check an API key: both answer behind Basic auth (empty user name works), with
    and without a trailing slash; a wrong key is a 401 whose body carries the status."""
    for path in ("/api/v1/account/info", "/api/v1/account/info/"):
        status, info = await send(client, "GET", path)
        assert status == 200, info
        assert info == {"organisationName": "Stitcher", "userEmail": None, "orgId": 1}
    for path in ("/api/v1/version", "/api/v1/version/"):
        status, version = await send(client, "GET", path)
        assert status == 200 and set(version) == {"version", "protocolVersion"}
        assert version["version"] and version["protocolVersion"] == "1.0"  # both strings, as on the platform
    status, err = await send(client, "GET", "/api/v1/account/info/", headers={**WOO, "Authorization": basic("", "x")})
    assert status == 401 and err["status"] == 401 and err["error"] == "unauthorized"


async def test_account_info_comes_from_configuration(aiohttp_client: Any, settings: Any) -> None:
    """``ORGANISATION_NAME``, ``USER_EMAIL`` and ``ORG_ID`` are what account/info answers."""
    from dataclasses import replace

    from stitcher.app import init_app

    client = await aiohttp_client(init_app(replace(settings, organisation_name="Shop Ltd",
                                                   user_email="ops@shop.example", org_id=4242)))
    status, info = await send(client, "GET", "/api/v1/account/info")
    assert status == 200
    assert info == {"organisationName": "Shop Ltd", "userEmail": "ops@shop.example", "orgId": 4242}


async def test_every_error_body_carries_its_status(client: Any) -> None:
    """400, 401, 404 (unknown contact and unknown path), 405 and 415 bodies all say ``status``."""
    cases = [
        ("POST", "/api/v1/contact/", {"channels": "x"}, WOO, 400),
        ("GET", "/api/v1/contact/1/", None, {**WOO, "Authorization": basic("", "wrong")}, 401),
        ("GET", "/api/v1/contact/999/", None, WOO, 404),
        ("GET", "/api/v1/nothing-here/", None, WOO, 404),
        ("PATCH", "/api/v1/contact/", {}, WOO, 405),
        ("POST", "/api/v1/contact/", {}, {**WOO, "Content-Type": "application/xml"}, 415),
    ]
    for method, path, body, headers, expected in cases:
        status, err = await send(client, method, path, body, headers)
        assert status == expected, (method, path, err)
        assert err["status"] == expected and err["error"] and err["message"], err


async def test_every_api_route_has_a_trailing_slash_twin_with_the_same_handler(client: Any) -> None:
    """Walking the started app's router: each /api route answers at path + "/" through the same handler."""
    routes = {(r.method, r.resource.canonical): r.handler for r in client.app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/api/")}
    plain = {key: handler for key, handler in routes.items() if not key[1].endswith("/")}
    assert len(plain) >= 12
    for (method, path), handler in plain.items():
        assert routes.get((method, path + "/")) is handler, (method, path)


async def test_a_route_added_after_init_app_answers_with_a_trailing_slash_too(aiohttp_client: Any,
                                                                             settings: Any) -> None:
    """An endpoint another package registers later (before start-up) gets its twin without doing anything:
    a POST to it with a slash reaches the handler as a POST, no redirect."""
    from stitcher.app import init_app

    async def later(request: web.Request) -> web.Response:
        return web.json_response({"method": request.method, "body": await request.json()})

    app = init_app(settings)
    app.router.add_post("/api/v1/later-endpoint", later)
    client = await aiohttp_client(app)
    for path in ("/api/v1/later-endpoint", "/api/v1/later-endpoint/"):
        status, body = await send(client, "POST", path, {"orders": []})
        assert status == 200, body
        assert body == {"method": "POST", "body": {"orders": []}}


async def test_concurrent_shoppers_with_blank_phones_into_one_new_group(client: Any) -> None:
    """16 different shoppers at once, each with sms ``' '`` and the same new group object: 16 contacts
    (the blank phone locks and finds no one), one group holding all of them."""
    import asyncio

    async def one(i: int) -> tuple[int, Any]:
        body = {**woo_contact(1000 + i, f"shopper{i}@example.com"), "groups": [{"name": "Checkout", "type": "Static"}]}
        return await send(client, "POST", "/api/v1/contact/", body)

    results = await asyncio.gather(*(one(i) for i in range(16)))
    assert all(status == 200 for status, _ in results), results
    ids = {body["id"] for _, body in results}
    assert len(ids) == 16
    group_ids = set()
    for cid in ids:
        status, contact = await send(client, "GET", f"/api/v1/contact/{cid}/")
        assert status == 200 and [g["name"] for g in contact["groups"]] == ["Checkout"]
        group_ids.add(contact["groups"][0]["id"])
    assert len(group_ids) == 1


def yespo_order(order_id: int, user_id: int | None, email: str, phone: str = "") -> dict[str, Any]:
    """``Yespo_Order_Mapping::order_woo_to_yes`` (github.com/Yespo-CDP/yespo-woocommerce): an integer order and
    customer ID (the customer left out for a guest), money as strings, ``''`` for absent shipping, discount and
    taxes, the phone as bare digits or ``''``, ``additionalInfo.comment``, items with integer product ids."""
    order: dict[str, Any] = {"status": "IN_PROGRESS", "externalOrderId": order_id}
    if user_id:
        order["externalCustomerId"] = user_id
    order.update({"totalCost": "1249.50", "email": email, "date": "2026-12-01T10:15:30.000000+02:00",
                  "currency": "UAH", "firstName": "Ann", "deliveryAddress": "Khreshchatyk 1 Kyiv 01001 Ukraine ",
                  "phone": phone, "shipping": "", "discount": "", "taxes": "", "source": "checkout",
                  "paymentMethod": "cod", "additionalInfo": {"comment": "leave at the door"},
                  "items": [{"externalItemId": 42, "name": "Kettle", "category": "no category", "quantity": 1,
                             "cost": "1249.5", "url": "https://shop.example/kettle", "imageUrl": "",
                             "description": ""}]})
    return order


async def test_woocommerce_order_export_as_the_plugin_builds_it(client: Any) -> None:
    """The plugin's order call — trailing slash, string body, empty Basic user — lands, creates the buyer with
    the order's identifiers, and repeating it changes nothing; a guest order without a phone lands too."""
    body = {"orders": [yespo_order(5001, 17, "ann@shop.example", "380501234567"),
                       yespo_order(5002, None, "guest@shop.example")]}
    status, answer = await send(client, "POST", "/api/v1/orders/", body)
    assert status == 200, answer
    assert answer.get("failed") == [], answer
    status, again = await send(client, "POST", "/api/v1/orders/", body)
    assert status == 200 and again.get("failed") == [], again
    status, found = await send(client, "GET", "/api/v1/contacts/?externalCustomerId=17")
    assert status == 200 and len(found) == 1, found
    status, orders = await send(client, "GET", f"/api/v1/contact/{found[0]['id']}/orders/")
    assert status == 200, orders
    assert [o["externalOrderId"] for o in orders["orders"]] == ["5001"]


async def test_events_and_import_as_platform_clients_send_them(client: Any) -> None:
    """``POST /api/v1/event/`` with ``keyValue`` an email and string params (the platform's event docs), and a
    bulk import ``POST /api/v1/contacts/`` with ``dedupeOn``, ``contactFields``, ``groupNames`` and
    ``restoreDeleted`` (the PHP client's ``Contacts::import``), both through trailing slashes."""
    event = {"eventTypeKey": "cartUpdated", "keyValue": "bob@shop.example",
             "params": [{"name": "EmailAddress", "value": "bob@shop.example"}, {"name": "total", "value": "10"}]}
    status, answer = await send(client, "POST", "/api/v1/event/", event)
    assert status == 200 and answer["status"] == "held", answer
    body = {"contacts": [{"channels": [{"type": "email", "value": "bob@shop.example"}], "firstName": "Bob",
                          "externalCustomerId": 18, "groups": [{"name": "Customers", "type": "Static"}]}],
            "dedupeOn": "email", "contactFields": ["firstName", "email"], "customFieldsIDs": [],
            "groupNames": ["Imported"], "restoreDeleted": False}
    status, started = await send(client, "POST", "/api/v1/contacts/", body)
    assert status == 200 and started["id"] == 0, started
    import asyncio
    for _ in range(200):
        status, report = await send(client, "GET", f"/api/v1/importstatus/{started['asyncSessionId']}/")
        if report.get("status") in ("FINISHED", "ERROR"):
            break
        await asyncio.sleep(0.05)
    assert report["status"] == "FINISHED", report
    contact_id = report["mapping"][0]["contactId"]
    status, events = await send(client, "GET", f"/api/v1/contact/{contact_id}/events/")
    assert [e["type"] for e in events["events"]] == ["cartUpdated"]


async def test_hostile_group_ids_devices_and_held_queries_never_answer_500(client: Any) -> None:
    """Wrong types, huge numbers, nesting and NUL in the new shapes: a 200 with ``ignored`` or a 4xx with a
    JSON body naming the place, never a 500."""
    junk: list[Any] = [None, True, -1, 0, 1.5, 2**63 - 1, "", " ", "12\u0000", "٣", "1e3", [], [1], {}, {"id": 1},
                       "x" * 5000, [[[[[[1]]]]]]]
    for value in junk:
        for body in ({"externalCustomerId": "H-1", "groups": [{"id": value}]},
                     {"externalCustomerId": "H-1", "groups": {"id": value, "name": value}},
                     {"externalCustomerId": "H-1",
                      "channels": [{"type": "mobilepush", "value": "t", "device": value}]}):
            status, answer = await send(client, "POST", "/api/v1/contact/", body)
            assert status in (200, 400) and isinstance(answer, dict), (body, answer)
            if status == 400:
                assert answer["status"] == 400 and answer["errors"], answer
        status, answer = await send(client, "POST", "/api/v1/contact/subscribe", {
            "contact": {"channels": [{"type": "email", "value": "h@example.com"}]}, "groups": [{"id": value}]})
        assert status in (200, 400) and isinstance(answer, dict), answer
        status, answer = await send(client, "POST", "/api/v2/event", {
            "eventTypeKey": "t", "keyValue": "h@example.com", "occurred": value})
        assert status in (200, 400) and isinstance(answer, dict), (value, answer)
    for identifier in ("\u0000", "email:", "ext:", "ext:" + "x" * 300, "mobilepush:" + "😀" * 300, "sms:abc",
                       ":", "webpush:", "%", "x" * 60_000):
        r = await client.get("/api/v1/events/held", params={"identifier": identifier}, headers=WOO)
        assert r.status in (200, 400), (identifier, r.status)
        assert isinstance(await r.json(), dict)
