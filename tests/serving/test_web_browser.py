"""The web console in a real headless browser (Debian's chromium and chromium-driver).

Each test signs in through the form with the keyboard, as a person would, and every
request the browser makes is recorded (Chrome's performance log): none may leave the
server's origin. With ``COUNTYFL_SCREENSHOTS=FOLDER`` the tests save a screenshot of each
page there (``docs/console/`` holds the ones the README shows).

``.ci/run`` installs chromium and chromium-driver; without them these tests are skipped,
saying so.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serving_support import (
    CLINICIAN,
    HEART,
    HEART_PATIENT,
    PASSWORD,
    PRINCIPALS,
    REGULATOR,
    Deployment,
    LiveServer,
    heldout,
    live_server,
    make_deployment,
)
from web_support import ROLE_PAGES, write_run

from countyfl.audit import generate_signing_key, load_private_key
from countyfl.registry import Role
from countyfl.registry.evaluation import to_csv
from countyfl.serving import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="chromium and chromium-driver are not installed (.ci/run installs them: "
    "apt-get install -y chromium chromium-driver)",
)
PHONE = (412, 915)
"""A common phone's CSS viewport: the console must work at a village clinic's screen size."""
TITLES = {
    "home": "Home",
    "clinic": "Patient",
    "models": "Models",
    "runs": "Runs",
    "institutions": "Institutions",
    "audit": "Audit log",
}

if CHROMIUM is not None and DRIVER is not None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import Select


class Browser:
    """A headless chromium on one server, recording every request it makes."""

    def __init__(self, server: LiveServer) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in (
            "--headless=new",
            "--no-sandbox",  # CI runs as root
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
        ):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        self.driver: WebDriver = webdriver.Chrome(
            options=options, service=Service(executable_path=str(DRIVER))
        )
        self.driver.set_window_size(*PHONE)
        self.base = server.base_url
        self.requests: list[str] = []
        self.statuses: list[tuple[str, str, int]] = []

    def record(self) -> None:
        """Read the performance log: every URL requested, and each response's status."""
        methods: dict[str, str] = {}
        for item in self.driver.get_log("performance"):
            message = json.loads(item["message"])["message"]
            params = message.get("params", {})
            if message.get("method") == "Network.requestWillBeSent":
                request = params["request"]
                self.requests.append(request["url"])
                methods[params["requestId"]] = request["method"]
            elif message.get("method") == "Network.responseReceived":
                response = params["response"]
                method = methods.get(params["requestId"], "?")
                self.statuses.append((method, response["url"], int(response["status"])))

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)
        self.record()

    def sign_in(self, username: str) -> None:
        """Sign in with the keyboard only: type, Tab, type, Enter."""
        self.driver.delete_all_cookies()
        self.open("/console/login")
        active = self.driver.switch_to.active_element  # the user name box has autofocus
        assert active.get_attribute("id") == "username"
        active.send_keys(username, Keys.TAB)
        self.driver.switch_to.active_element.send_keys(PASSWORD)
        self.press(Keys.ENTER, ".who")

    def press(self, key: str, wait: str) -> None:
        """Press ``key`` in the focused element and wait for the next page's ``wait``."""
        self.mark_page()
        self.driver.switch_to.active_element.send_keys(key)
        self.next_page(wait)

    def mark_page(self) -> None:
        """Mark the current document's window, so the next one can be told apart."""
        self.driver.execute_script("window.countyflOldPage = true;")

    def next_page(self, wait: str) -> None:
        """Wait until a new document has replaced the marked one, then for ``wait``.

        Selenium's ``staleness_of`` asks the old ``<html>`` element whether it is
        enabled; mid-navigation chromium can answer neither "stale" nor "fine" but
        "Node with given id does not belong to the document", which failed a CI run.
        A flag on the old window is gone in the new one whatever state the old
        element is in, and errors while the page is swapped are retried.
        """
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support.ui import WebDriverWait

        def replaced(driver: WebDriver) -> bool:
            return bool(
                driver.execute_script(
                    "return window.countyflOldPage !== true && document.readyState !== 'loading';"
                )
            )

        WebDriverWait(self.driver, 60, ignored_exceptions=(WebDriverException,)).until(replaced)
        self.wait_for(wait)
        self.record()

    def wait_for(self, css: str) -> Any:
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, 30).until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
        )

    def text(self, css: str) -> str:
        return str(self.driver.find_element(By.CSS_SELECTOR, css).text)

    def submit(self, css: str, wait: str) -> None:
        """Click a button and wait for an element of the page that answers."""
        self.mark_page()
        self.driver.find_element(By.CSS_SELECTOR, css).click()
        self.next_page(wait)

    def screenshot(self, name: str, height: int | None = None) -> None:
        folder = os.environ.get("COUNTYFL_SCREENSHOTS")
        if not folder:
            return
        Path(folder).mkdir(parents=True, exist_ok=True)
        width = self.driver.get_window_size()["width"]
        full = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(width, height or max(int(full) + 140, 600))
        self.driver.save_screenshot(str(Path(folder) / f"{name}.png"))
        self.driver.set_window_size(width, PHONE[1])

    def close(self) -> None:
        self.driver.quit()


@pytest.fixture(scope="module")
def served(shared: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    runs = tmp_path_factory.mktemp("runs")
    write_run(runs / "run-2026-11-30")
    write_run(runs / "run-live", finished=False, rounds=1)
    key, _, _ = generate_signing_key(tmp_path_factory.mktemp("keys") / "audit.key")
    app = create_app(shared.settings(console_runs_dir=runs, audit_signing_key_file=key))
    app.state.runs_dir = runs
    app.state.audit_key = key
    with live_server(app) as server:
        yield server


@pytest.fixture(scope="module")
def browser(served: LiveServer) -> Iterator[Browser]:
    browser = Browser(served)
    yield browser
    browser.close()


def assert_same_origin(browser: Browser) -> None:
    """Every request the browser made went to the server it tested (then forget them)."""
    browser.record()
    assert browser.requests, "the performance log recorded no request at all"
    elsewhere = [url for url in browser.requests if not url.startswith(browser.base + "/")]
    assert not elsewhere, elsewhere
    browser.requests.clear()


@pytest.fixture(autouse=True)
def nothing_leaves_the_origin(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on the module's browser: no request left the server's origin."""
    yield
    if "browser" in request.fixturenames:
        assert_same_origin(request.getfixturevalue("browser"))


@pytest.mark.parametrize("role", list(Role))
def test_each_role_sees_only_its_pages(browser: Browser, role: Role) -> None:
    if role is Role.ADMIN:
        browser.open("/console/login")
        browser.screenshot("login")
    browser.sign_in(PRINCIPALS[role].username)
    links = [a.text for a in browser.driver.find_elements(By.CSS_SELECTOR, "header nav a")]
    assert links == [TITLES[page] for page in TITLES if page in ROLE_PAGES[role]]
    if role is Role.CLINICIAN:
        browser.screenshot("home-clinician")
    hidden = [page for page in TITLES if page not in ROLE_PAGES[role]]
    for page in hidden:  # typing the address does not help either
        browser.open(f"/console/{page}")
        assert browser.text("h1") == "Not allowed"


def test_prediction_and_referral_through_the_form(browser: Browser) -> None:
    browser.sign_in(CLINICIAN.username)
    browser.open(f"/console/clinic/{HEART}")
    driver = browser.driver
    for name, value in HEART_PATIENT.items():
        element = driver.find_element(By.ID, f"f-{name}")
        if element.tag_name == "select":
            text = "yes" if value is True else "no" if value is False else str(value)
            Select(element).select_by_value(text)
        else:
            element.clear()
            element.send_keys(str(value))
    browser.submit("#predict", "#prediction")
    probability = browser.text("#probability")
    assert probability.endswith("%") and 0 <= int(probability[:-1]) <= 100
    assert browser.text("#risk-band")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#contributions tbody tr")) == 3
    browser.screenshot("patient-prediction")

    driver.find_element(By.ID, "f-referral_age").send_keys("63")
    Select(driver.find_element(By.ID, "f-referral_sex")).select_by_value("male")
    Select(driver.find_element(By.ID, "f-symptom_chest-pain")).select_by_value("severe")
    browser.submit("#refer", "#referral")
    assert browser.text("#referral-level") and browser.text("#referral-urgency")
    assert "Specialist" in browser.text("#specialist")
    assert driver.find_elements(By.CSS_SELECTOR, "#reasons li")
    browser.screenshot("patient-referral")


def test_invalid_value_is_explained_in_the_form(browser: Browser) -> None:
    browser.sign_in(CLINICIAN.username)
    browser.open(f"/console/clinic/{HEART}")
    browser.driver.find_element(By.ID, "f-resting_bp").send_keys("999")
    browser.submit("#predict", "#form-errors")
    assert "0 to 250 mmHg" in browser.text("#err-resting_bp")
    assert browser.driver.find_element(By.ID, "f-resting_bp").get_attribute("aria-invalid")
    posts = [status for method, _, status in browser.statuses if method == "POST"]
    assert posts[-1] == 422


def test_post_without_csrf_token_is_refused(browser: Browser) -> None:
    browser.sign_in(CLINICIAN.username)
    browser.open(f"/console/clinic/{HEART}")
    browser.driver.execute_script(
        "document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())"
    )
    browser.submit("#predict", "h1")
    assert browser.text("h1") == "Not allowed"
    posts = [status for method, _, status in browser.statuses if method == "POST"]
    assert posts[-1] == 403


def test_registry_and_audit_pages(browser: Browser, served: LiveServer, shared: Deployment) -> None:
    browser.sign_in("aude")
    browser.open("/console/models")
    assert browser.driver.find_elements(By.CSS_SELECTOR, "#versions tbody tr")
    browser.screenshot("models")
    browser.open(f"/console/models/{HEART}/1")
    assert browser.driver.find_elements(By.CSS_SELECTOR, "#institutions tbody tr")
    browser.screenshot("version-lineage")
    key = served.server.config.app.state.audit_key
    shared.audit.checkpoint(load_private_key(key))
    browser.open("/console/audit")
    assert browser.text("#verdict") == "Intact"
    assert browser.text("#checkpoint-status").endswith("verified")
    assert "signature verified" in browser.text("#checkpoints")
    browser.driver.find_element(By.ID, "action").send_keys("model.predict")
    browser.press(Keys.ENTER, "#entries")
    rows = browser.driver.find_elements(By.CSS_SELECTOR, "#entries tbody tr")
    assert rows and all("model.predict" in row.text for row in rows)
    browser.screenshot("audit")


@pytest.fixture
def own_browser(tmp_path: Path) -> Iterator[Browser]:
    """A deployment with a candidate the researcher registered, its server and a browser."""
    deployment = make_deployment(tmp_path / "promotion")
    deployment.release()
    deployment.register(seed=1)
    with live_server(create_app(deployment.settings())) as server:
        browser = Browser(server)
        try:
            yield browser
            assert_same_origin(browser)
        finally:
            browser.close()
    deployment.engine.dispose()


def test_regulator_promotes_as_second_person(own_browser: Browser) -> None:
    browser = own_browser
    browser.sign_in(REGULATOR.username)
    browser.open(f"/console/models/{HEART}/2")
    assert browser.text("#stage") == "candidate"
    browser.screenshot("version-promote")
    data = heldout("fed-heart-disease")
    browser.driver.execute_script(
        "document.getElementById('evaluation_csv').value = arguments[0]",
        to_csv(data.names, data.features, data.labels),
    )
    browser.driver.find_element(By.ID, "reason").send_keys("second reviewer")
    browser.submit("#promote", "#stage")
    assert browser.text("#stage") == "production"
    assert "now in production" in browser.text("#notice")
    assert "by reg" in browser.text("#history")


def test_run_page_draws_the_privacy_chart(browser: Browser) -> None:
    browser.sign_in(REGULATOR.username)
    browser.open("/console/runs")
    browser.driver.find_element(By.LINK_TEXT, "run-2026-11-30").click()
    browser.wait_for("svg.chart")
    chart = browser.driver.find_element(By.CSS_SELECTOR, "svg.chart")
    assert chart.size["width"] <= PHONE[0]  # fits a phone's width
    assert len(chart.find_elements(By.TAG_NAME, "polyline")) == 2
    assert "reply rejected" in browser.text("#failures")
    browser.screenshot("run-privacy")
    browser.open("/console/institutions")
    assert browser.driver.find_elements(By.CSS_SELECTOR, "#institutions-table svg.sparkline")
    assert browser.driver.find_elements(By.CSS_SELECTOR, "#approvals .tasks code")
    browser.screenshot("institutions")


def test_live_run_progress_updates(browser: Browser, served: LiveServer) -> None:
    """A run still going: its page reloads itself and shows each new round."""
    runs = served.server.config.app.state.runs_dir
    browser.sign_in(REGULATOR.username)
    browser.open("/console/runs/run-live")
    assert browser.text("#run-status").startswith("running")
    assert browser.text("#run-rounds") == "1"
    write_run(runs / "run-live", finished=False, rounds=2)  # the next round comes in

    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    reloading = (NoSuchElementException, StaleElementReferenceException)
    WebDriverWait(browser.driver, 60, ignored_exceptions=reloading).until(
        lambda driver: driver.find_element(By.ID, "run-rounds").text == "2"
    )
    assert "reply rejected" in browser.text("#failures")
    browser.record()
