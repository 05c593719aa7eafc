"""Seeding and browser helpers for the web page tests (``test_web.py``).

Events go in through ``POST /v1/events`` exactly as an agent platform would send
them; the helpers then wait, through the public API, for the pipeline to learn.
"""

from __future__ import annotations

import base64
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from tests.conftest import wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ADMIN_KEY = "ops-web-key-0123456789abcdef"
API_KEYS = {"ops": {"key": ADMIN_KEY, "scopes": ["admin"], "tenant": "*"}}

# five users of org acme explain the same thing in their own words: the org rule
ORG_USERS = ("bea", "carl", "dina", "eli", "fay")
ORG_TEXT = "always cite the ticket number in the answer"
ALICE_TEXT = "that's wrong, you should have used the v2 API"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Api:
    """A small client of the learnloop HTTP API with the admin key."""

    def __init__(self, url: str, key: str = ADMIN_KEY) -> None:
        self.http = httpx.Client(
            base_url=url, timeout=30, headers={"authorization": f"Bearer {key}"}
        )

    def close(self) -> None:
        self.http.close()

    def send(self, events: list[dict[str, Any]]) -> None:
        answer = self.http.post("/v1/events", json=events)
        assert answer.status_code == 202, answer.text
        assert answer.json()["rejected"] == [], answer.text

    def get(self, path: str, **params: Any) -> Any:
        answer = self.http.get(path, params=params)
        assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text}"
        return answer.json()

    def memory(self, group: str, **params: Any) -> dict[str, Any]:
        return self.get(f"/v1/groups/{group}/memory", **params)

    def versions(self, group: str) -> dict[str, Any]:
        return self.get(f"/v1/groups/{group}/versions")

    def context(self, **body: Any) -> dict[str, Any]:
        answer = self.http.post("/v1/context", json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def wait_item(
        self, group: str, needle: str, status: str = "active", timeout_s: float = 45
    ) -> dict[str, Any]:
        """The first rule of ``group`` whose text contains ``needle`` with ``status``."""

        def found() -> dict[str, Any] | None:
            answer = self.http.get(f"/v1/groups/{group}/memory")
            if answer.status_code != 200:
                return None
            return next(
                (
                    item
                    for item in answer.json()["items"]
                    if item["kind"] == "rule"
                    and item["status"] == status
                    and needle.lower() in item["text"].lower()
                ),
                None,
            )

        return wait_until(found, timeout_s, 0.3)


def _event(
    event_id: str, type_: str, user: str, at: datetime, org: str, team: str | None, **fields: Any
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": event_id,
        "type": type_,
        "timestamp": rfc3339(at),
        "user_id": user,
        "org_id": org,
        **fields,
    }
    if team:
        event["team_id"] = team
    return event


def seed(api: Api) -> None:
    """A day in the life of org acme: interactions with tool calls, ratings, explanations.

    ``user:alice`` learns a rule from her one explanation; ``org:acme`` gets a
    proposed rule from five users' similar explanations and a proposed example from
    their five up-votes of one answer (both wait for approval); alice's own ratings
    make examples for her alone.
    Timestamps spread over the last hours so the charts have something to show.
    """
    now = datetime.now(UTC)
    events: list[dict[str, Any]] = []
    for hour in range(6, 0, -1):
        at = now - timedelta(hours=hour)
        for n in range(hour % 3 + 2):
            iid = f"web-h{hour}-{n}"
            failed = (hour + n) % 3 == 0
            events.append(
                _event(
                    iid,
                    "interaction",
                    "alice",
                    at + timedelta(minutes=n),
                    "acme",
                    "search",
                    query=f"how do I page through invoices ({hour}/{n})?",
                    response="call list_invoices with a cursor",
                    tool_calls=[
                        {
                            "name": "search_docs",
                            "arguments": "{}",
                            "status": "ok",
                            "latency_ms": 40,
                        },
                        {
                            "name": "list_invoices",
                            "arguments": '{"cursor": null}',
                            "status": "error" if failed else "ok",
                            "error": "400 bad cursor" if failed else None,
                            "latency_ms": 120,
                        },
                    ],
                )
            )
            events.append(
                _event(
                    f"{iid}-r",
                    "rating",
                    "alice",
                    at + timedelta(minutes=n, seconds=30),
                    "acme",
                    "search",
                    interaction_id=iid,
                    value=-1 if failed else 1,
                )
            )
    at = now - timedelta(minutes=20)
    events += [
        _event(
            "web-alice-i",
            "interaction",
            "alice",
            at,
            "acme",
            "search",
            query="how do I call the billing API?",
            response="use the v1 client",
            tool_calls=[],
        ),
        _event(
            "web-alice-x",
            "explanation",
            "alice",
            at + timedelta(seconds=20),
            "acme",
            "search",
            interaction_id="web-alice-i",
            text=ALICE_TEXT,
        ),
    ]
    variants = ("", "please ", "you should ", "remember to ", "next time ")
    for n, user in enumerate(ORG_USERS):
        at = now - timedelta(minutes=15 - n)
        iid = f"web-org-{user}-i"
        events += [
            _event(
                iid,
                "interaction",
                user,
                at,
                "acme",
                None,
                query="what is the status of my request?",
                response="it is being worked on",
                tool_calls=[],
            ),
            _event(
                f"web-org-{user}-x",
                "explanation",
                user,
                at + timedelta(seconds=10),
                "acme",
                None,
                interaction_id=iid,
                text=variants[n] + ORG_TEXT,
            ),
            # all five up-vote the same answer: an example the whole org may see
            _event(
                f"web-org-{user}-r",
                "rating",
                user,
                at + timedelta(seconds=20),
                "acme",
                None,
                interaction_id=iid,
                value=1,
            ),
        ]
    api.send(events)


def seed_crowd(api: Api, users: int) -> None:
    """One interaction from each of many users: as many ``user:`` groups, nothing learned."""
    at = datetime.now(UTC) - timedelta(minutes=30)
    api.send(
        [
            _event(
                f"web-crowd-{n:04d}",
                "interaction",
                f"crowd{n:04d}",
                at,
                "initech",
                None,
                query="hello",
                response="hi",
                tool_calls=[],
            )
            for n in range(users)
        ]
    )


def chrome_binaries() -> tuple[str, str]:
    """Debian's chromium and chromedriver; their absence is a failure, not a skip."""
    browser = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    driver = shutil.which("chromedriver") or (CHROMEDRIVER if Path(CHROMEDRIVER).exists() else None)
    assert browser and driver, (
        "the web tests need Debian's chromium and chromium-driver "
        "(scripts/test.sh installs them with apt-get)"
    )
    return browser, driver


def start_chromium(profile: Path) -> WebDriver:
    """A real headless Chromium driven through Debian's chromedriver."""
    browser, driver = chrome_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def script_errors(driver: WebDriver) -> list[str]:
    """Uncaught errors in the page's scripts since the last call (HTTP 4xx are expected)."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and entry.get("source") == "javascript"
    ]


def css(testid: str, extra: str = "") -> str:
    return f'[data-testid="{testid}"]{extra}'


class Page:
    """The memory panel in the browser, found by its ``data-testid`` attributes."""

    def __init__(self, driver: WebDriver, url: str, shots: Path) -> None:
        self.driver = driver
        self.url = url
        self.shots = shots

    def wait(self, predicate: Any, timeout_s: float = 20, what: str = "") -> Any:
        """Poll ``predicate()`` (re-finding elements each time) until it is truthy."""
        waiter = WebDriverWait(
            self.driver,
            timeout_s,
            poll_frequency=0.1,
            ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
        )
        try:
            return waiter.until(lambda _: predicate())
        except TimeoutException:
            errors = [e.text for e in self.driver.find_elements(By.CSS_SELECTOR, css("error"))]
            raise AssertionError(
                f"page never showed {what or predicate}; errors: {errors}"
            ) from None

    def find(self, selector: str, root: Any = None) -> WebElement:
        return (root or self.driver).find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str, root: Any = None) -> list[WebElement]:
        return (root or self.driver).find_elements(By.CSS_SELECTOR, selector)

    def visible(self, selector: str, timeout_s: float = 20) -> WebElement:
        return self.wait(
            lambda: next((e for e in self.all(selector) if e.is_displayed()), None),
            timeout_s,
            selector,
        )

    def click(self, selector: str, timeout_s: float = 20) -> None:
        """Click once the element is there; the page re-renders, so retry stale ones."""

        def clicked() -> bool:
            element = next((e for e in self.all(selector) if e.is_displayed()), None)
            if element is None or not element.is_enabled():
                return False
            element.click()
            return True

        self.wait(clicked, timeout_s, f"a clickable {selector}")

    def text(self, selector: str) -> str:
        return self.visible(selector).text

    def raw_text(self, selector: str) -> str:
        """``textContent``, byte for byte (``.text`` normalises whitespace)."""
        return str(
            self.driver.execute_script("return arguments[0].textContent", self.find(selector))
        )

    def type_into(self, selector: str, text: str) -> None:
        field = self.visible(selector)
        field.clear()
        field.send_keys(text)

    def confirm(self, shot: str | None = None) -> str:
        """Accept the confirmation dialog; return its title."""
        self.visible(css("confirm-ok"))
        title = self.text(css("confirm-title"))
        if shot:
            self.screenshot(shot)
        self.click(css("confirm-ok"))
        self.wait(lambda: not self.find(css("confirm-dialog")).is_displayed(), 5, "dialog closed")
        return title

    def notice(self, needle: str, timeout_s: float = 30) -> WebElement:
        return self.wait(
            lambda: next((n for n in self.all(css("notice")) if needle in n.text), None),
            timeout_s,
            f"a notice with {needle!r}",
        )

    def open(self, fragment: str = "") -> None:
        """A fresh load of the page (a hash-only change would not reload it)."""
        self.driver.get("about:blank")
        self.driver.get(f"{self.url}/{fragment}")

    def open_group(self, group: str, tab: str = "memory") -> None:
        self.open(f"#group={quote(group)}&tab={tab}")
        self.wait(lambda: self.find(css("group-title")).text == group, 20, f"group {group}")
        self.wait(
            lambda: self.find(css(f"tab-{tab}")).get_attribute("aria-selected") == "true",
            10,
            f"tab {tab}",
        )

    def item(self, item_id: str) -> WebElement:
        return self.visible(f'{css("item")}[data-item-id="{item_id}"]')

    def screenshot(self, name: str) -> Path:
        """The whole page (up to 3,000 px tall) as ``artifacts/screenshots/NAME.png``."""
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": max(1400, size["width"]),
                    "height": min(3000, size["height"]),
                    "scale": 1,
                },
            },
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
