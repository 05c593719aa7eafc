"""The memory panel driven in a real headless Chromium against ``learnloop up``.

One ``learnloop up`` (with an API key, so the page has to send it) and one
browser per module. Events are seeded through ``POST /v1/events``; every check
is made twice: on the page and through the HTTP API. Screenshots of each main
view go to ``artifacts/screenshots/`` for a person to look at.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.select import Select

from tests.conftest import wait_until
from tests.e2e.test_up import Up
from tests.e2e.web_helpers import (
    ADMIN_KEY,
    API_KEYS,
    ORG_USERS,
    Api,
    Page,
    css,
    script_errors,
    seed,
    seed_crowd,
    start_chromium,
)

pytestmark = pytest.mark.e2e
SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
CROWD = 120


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    tmp = tmp_path_factory.mktemp("web")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEARNLOOP_API_KEYS", orjson.dumps(API_KEYS).decode())
        up = Up(tmp)  # the child process takes the environment as it is now
    try:
        up.wait_ready()
        api = Api(up.url)
        try:
            seed(api)
            seed_crowd(api, CROWD)
            api.wait_item("user:alice", "v2 API")
            api.wait_item("org:acme", "ticket number", status="proposed")
            wait_until(lambda: api.get("/v1/groups", q="crowd", limit=1)["total"] >= CROWD, 30)
        finally:
            api.close()
        yield up
    finally:
        if up.process.poll() is None:
            up.process.send_signal(signal.SIGTERM)
            up.process.wait(60)
        up.log.close()


@pytest.fixture(scope="module")
def api(stack: Up) -> Iterator[Api]:
    client = Api(stack.url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def browser(stack: Up, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield Page(driver, stack.url, SHOTS)
    finally:
        driver.quit()


@pytest.fixture
def page(browser: Page) -> Iterator[Page]:
    """The page with the key entered once for this browser session."""
    browser.open()
    if not browser.driver.execute_script("return sessionStorage.getItem('learnloop.apiKey')"):
        browser.type_into(css("api-key"), ADMIN_KEY)
        browser.click(css("api-key-save"))
    browser.wait(lambda: browser.all(css("group-row")), 20, "the group list")
    yield browser
    assert script_errors(browser.driver) == []


def rule(snapshot: dict[str, Any], status: str = "active") -> dict[str, Any]:
    return next(i for i in snapshot["items"] if i["kind"] == "rule" and i["status"] == status)


def test_key_is_asked_once_per_session_and_api_errors_are_shown(browser: Page, api: Api) -> None:
    browser.open()
    browser.driver.execute_script("sessionStorage.clear()")
    browser.driver.refresh()
    # the API's own message, not a generic one
    browser.wait(
        lambda: "send Authorization: Bearer <key>" in browser.text(css("error-message")),
        what="the 401 message",
    )
    assert "needs a key" in browser.text(css("connection"))
    browser.screenshot("needs-key")
    browser.type_into(css("api-key"), "not-the-key-0123456789")
    browser.click(css("api-key-save"))
    browser.wait(lambda: browser.text(css("error-message")) == "unknown API key", what="bad key")
    browser.type_into(css("api-key"), ADMIN_KEY)
    browser.click(css("api-key-save"))
    browser.wait(lambda: browser.all(css("group-row")), what="the group list")
    assert not browser.all(css("error"))
    total = api.get("/v1/groups")["total"]
    browser.wait(lambda: browser.text(css("groups-summary")) == f"{total} groups")
    browser.screenshot("groups")
    browser.driver.refresh()  # kept for the session: no second prompt
    browser.wait(lambda: browser.text(css("connection")) == "connected with key")
    assert browser.driver.find_element("id", "api-key").get_attribute("value") == ""
    assert script_errors(browser.driver) == []


def test_groups_search_and_server_side_pagination(page: Page, api: Api) -> None:
    expected = api.get("/v1/groups", limit=25, offset=0)
    assert expected["total"] > CROWD
    Select(page.find(css("page-size"))).select_by_visible_text("25")
    page.wait(lambda: page.text(css("page-info")) == f"1\N{EN DASH}25 of {expected['total']}")
    shown = [e.get_attribute("data-group") for e in page.all(css("group-row"))]
    assert shown == [g["group"] for g in expected["groups"]]
    page.click(css("page-next"))
    second = api.get("/v1/groups", limit=25, offset=25)
    page.wait(lambda: page.text(css("page-info")) == f"26\N{EN DASH}50 of {expected['total']}")
    page.wait(
        lambda: (
            [e.get_attribute("data-group") for e in page.all(css("group-row"))]
            == [g["group"] for g in second["groups"]]
        )
    )
    page.type_into(css("group-search"), "crowd001")
    wanted = api.get("/v1/groups", q="crowd001")
    page.wait(
        lambda: (
            [e.get_attribute("data-group") for e in page.all(css("group-row"))]
            == [g["group"] for g in wanted["groups"]]
        )
    )
    assert len(wanted["groups"]) == 10 and page.text(css("page-info")) == "1\N{EN DASH}10 of 10"


def test_a_group_shows_its_rule_with_provenance(page: Page, api: Api) -> None:
    snapshot = api.memory("user:alice")
    learned = rule(snapshot)
    assert "v2" in learned["text"]
    page.type_into(css("group-search"), "user:alice")
    page.wait(lambda: len(page.all(css("group-row"))) == 1)
    row = page.visible(f'{css("group-row")}[data-group="user:alice"]')
    assert f"v{snapshot['version']}" in row.text
    row.send_keys(Keys.ENTER)  # keyboard works: rows are buttons
    page.wait(lambda: page.text(css("group-title")) == "user:alice")
    card = page.item(learned["item_id"])
    assert page.find(css("item-text"), card).text == learned["text"]
    assert page.find(css("status"), card).text == "active"
    provenance = page.find(css("provenance"), card).text
    assert page.find(css("prov-events"), card).text.split() == learned["provenance"]["event_ids"]
    assert page.find(css("prov-users"), card).text.split() == ["alice"]
    assert "1 event from 1 distinct user" in provenance
    assert "synthesizer offline" in provenance and "explanation_cluster" in provenance
    active = sum(i["tokens"] for i in snapshot["items"] if i["status"] == "active")
    share = 100 * learned["tokens"] / active
    shown_share = page.find(css("token-share"), card).text
    assert f"{learned['tokens']} tokens" in shown_share
    assert (f"{share:.1f}%" if share < 10 else f"{share:.0f}%") in shown_share
    assert learned["provenance"]["event_ids"] == ["web-alice-x"]  # the explanation we sent
    page.screenshot("memory")


def test_edit_then_roll_back_through_the_page(page: Page, api: Api) -> None:
    before = api.memory("user:alice")
    learned = rule(before)
    versions_before = len(api.versions("user:alice")["versions"])
    page.open_group("user:alice")
    card = page.item(learned["item_id"])
    page.find(css("item-edit"), card).click()
    page.type_into(css("item-edit-text"), "Always call the v2 billing API.")
    page.click(css("item-save"))
    page.visible(css("confirm-ok"))
    page.find(css("confirm-cancel")).send_keys(Keys.ESCAPE)  # cancelling changes nothing
    page.wait(lambda: not page.find(css("confirm-dialog")).is_displayed())
    assert api.memory("user:alice")["version"] == before["version"]
    page.click(css("item-save"))
    assert page.confirm(shot="confirm") == "Change this rule?"
    notice = page.notice("applied")
    edited_version = before["version"] + 1
    assert f"now at v{edited_version}" in notice.text
    assert f"roll back to v{before['version']}" in page.text(css("undo"))
    page.wait(
        lambda: (
            page.find(css("item-text"), page.item(learned["item_id"])).text
            == "Always call the v2 billing API."
        )
    )
    after = api.memory("user:alice")
    assert after["version"] == edited_version and after["reason"] == "edit"
    assert rule(after)["text"] == "Always call the v2 billing API."
    assert len(api.versions("user:alice")["versions"]) == versions_before + 1

    page.click(css("tab-history"))
    page.wait(lambda: len(page.all(css("version"))) == versions_before + 1)
    Select(page.find(css("diff-from"))).select_by_visible_text(f"v{before['version']}")
    Select(page.find(css("diff-to"))).select_by_visible_text(f"v{edited_version}")
    page.click(css("diff-show"))
    changed = page.visible(f'{css("diff-changed")}[data-item-id="{learned["item_id"]}"]')
    assert "Always call the v2 billing API." in changed.text and learned["text"] in changed.text
    diff = api.get(
        "/v1/groups/user:alice/diff", **{"from": before["version"], "to": edited_version}
    )
    assert [c["item_id"] for c in diff["changed"]] == [learned["item_id"]]
    page.screenshot("history")

    page.click(css(f"rollback-v{before['version']}"))
    assert page.confirm() == f"Roll user:alice back to v{before['version']}?"
    page.notice(f"Rollback to v{before['version']}: applied")
    restored = api.memory("user:alice")
    assert restored["reason"] == f"rollback:{before['version']}"
    assert restored["items"] == before["items"]
    assert len(api.versions("user:alice")["versions"]) == versions_before + 2
    page.wait(lambda: page.text(css("current-version")) == f"v{restored['version']}")
    page.wait(lambda: "rollback to v" in page.all(css("version-reason"))[0].text)
    page.click(css("tab-memory"))
    assert page.find(css("item-text"), page.item(learned["item_id"])).text == learned["text"]


def test_undo_after_a_change_rolls_back(page: Page, api: Api) -> None:
    before = api.memory("user:alice")
    example = next(i for i in before["items"] if i["kind"] != "rule" and i["status"] == "active")
    page.open_group("user:alice")
    page.find(css("item-retire"), page.item(example["item_id"])).click()
    page.confirm()
    page.notice("Retire: applied")
    assert page.find(css("status"), page.item(example["item_id"])).text == "retired"
    retired = api.memory("user:alice")
    assert next(i for i in retired["items"] if i["item_id"] == example["item_id"])["status"] == (
        "retired"
    )
    page.click(css("undo"))
    page.confirm()
    page.notice(f"Rollback to v{before['version']}: applied")
    page.wait(lambda: page.find(css("status"), page.item(example["item_id"])).text == "active")
    assert api.memory("user:alice")["items"] == before["items"]


def test_approve_a_proposed_org_rule(page: Page, api: Api) -> None:
    before = api.memory("org:acme")
    proposed = rule(before, "proposed")
    assert proposed["provenance"]["distinct_users"] == len(ORG_USERS)
    pending = next(g for g in api.get("/v1/groups", q="org:acme")["groups"])["pending_approvals"]
    page.type_into(css("group-search"), "org:acme")
    page.wait(lambda: len(page.all(css("group-row"))) == 1, what="only org:acme listed")
    row = page.visible(f'{css("group-row")}[data-group="org:acme"]')
    assert page.find(css("group-pending"), row).text == f"{pending} to approve"
    row.click()
    card = page.item(proposed["item_id"])
    assert page.find(css("status"), card).text == "proposed"
    assert sorted(page.find(css("prov-users"), card).text.split()) == sorted(ORG_USERS)
    page.screenshot("approvals")
    page.find(css("item-approve"), card).click()
    assert page.confirm() == "Approve this proposed item?"
    page.notice("Approve: applied")
    page.wait(lambda: page.find(css("status"), page.item(proposed["item_id"])).text == "active")
    after = api.memory("org:acme")
    approved = next(i for i in after["items"] if i["item_id"] == proposed["item_id"])
    assert approved["status"] == "active" and after["reason"] == "approve"
    assert after["version"] == before["version"] + 1
    left = next(g for g in api.get("/v1/groups", q="org:acme")["groups"])["pending_approvals"]
    assert left == pending - 1

    def badge() -> str:
        row = page.find(f'{css("group-row")}[data-group="org:acme"]')
        return " ".join(e.text for e in page.all(css("group-pending"), row))

    page.wait(lambda: badge() == (f"{left} to approve" if left else ""), what="pending count")


def test_context_box_shows_exactly_what_the_api_returns(page: Page, api: Api) -> None:
    request = {
        "user_id": "alice",
        "team_id": "search",
        "org_id": "acme",
        "query": "how do I call the billing API?",
    }
    page.open_group("user:alice", "context")
    for field in ("user_id", "team_id", "org_id", "query"):
        page.type_into(css(f"ctx-{field}"), request[field])
    page.click(css("context-submit"))
    page.visible(css("context-prefix"))
    expected = api.context(**request, max_tokens=800)
    assert "v2 API" in expected["prefix"]  # alice's rule, as the synthesizer phrased it
    assert page.raw_text(css("context-prefix")) == expected["prefix"]
    shown_ids = [
        e.get_attribute("data-item-id") for e in page.all(f"{css('context-items')} tbody tr")
    ]
    assert shown_ids == [i["item_id"] for i in expected["items"]]
    versions = page.text(css("context-versions"))
    for group, version in expected["versions"].items():
        assert f"{group} v{version}" in versions
    assert orjson.loads(page.raw_text(css("context-raw")))["prefix"] == expected["prefix"]
    page.screenshot("context")


def test_signals_charts_match_the_stats(page: Page, api: Api) -> None:
    stats = api.get("/v1/groups/user:alice/stats")
    page.open_group("user:alice", "signals")
    page.visible(css("signals-view"))
    assert page.text(css("stat-events")).split("\n")[0] == str(stats["events"])
    rate = f"{100 * stats['downvote_rate']:.0f}%"
    assert page.text(css("stat-downvote-rate")).split("\n")[0] == rate
    assert page.text(css("stat-triggers")).split("\n")[0] == str(stats["triggers_fired"])
    busy_hours = [w for w in stats["windows"] if w["events"]]
    bars = page.all(f"{css('chart-signals')} svg rect")
    assert len(bars) == len(busy_hours)
    tools = page.text(css("chart-tools"))
    for name, tool in stats["tools"].items():
        assert name in tools and f"{tool['failures']} of {tool['calls']} calls" in tools
    assert page.all(f"{css('chart-rates')} svg polyline")
    page.screenshot("signals")


def test_a_refused_change_shows_the_api_message(page: Page, api: Api) -> None:
    before = api.memory("org:acme")
    stale = next(i for i in before["items"] if i["status"] == "proposed" and i["kind"] != "rule")
    page.open_group("org:acme")
    page.item(stale["item_id"])
    # someone else rejects it meanwhile; the page still offers to approve it
    path = f"/v1/groups/org:acme/items/{stale['item_id']}"
    assert api.http.post(f"{path}/reject").status_code == 200
    page.find(css("item-approve"), page.item(stale["item_id"])).click()
    page.confirm()
    shown = page.text(css("error-message"))
    answer = api.http.post(f"{path}/approve")
    assert answer.status_code == 409
    assert shown == answer.json()["message"]  # the API's words, as they are
    assert "not proposed" in shown
    assert "409 command_rejected" in page.text(css("error"))
    # and the page reloads the group, so it shows what is true now
    page.wait(lambda: page.find(css("status"), page.item(stale["item_id"])).text == "rejected")
    page.screenshot("error")
