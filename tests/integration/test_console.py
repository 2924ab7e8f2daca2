"""The operator's console (the Django admin) and the interactive API docs, driven in a real browser (Debian's
headless Chromium through Selenium) on the real stack: what a person sees, not just status codes.

One browser for the module. On a failure the test's screenshot is kept under COLTSFOOT_TEST_ARTIFACTS (default:
<tmp>/coltsfoot-browser-artifacts) and its path is in the failure message."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from collections.abc import Generator
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from devstack.services import Platform
from tests.integration.helpers import deploy_archive
from tests.integration.helpers import hello_archive
from tests.integration.helpers import hello_files
from tests.integration.helpers import tar_gz
from tests.integration.helpers import wait_for_deployment

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-proxy-server",
    # Apps are http://<app>-<tenant>.localhost:<edge>/; the edge listens on 127.0.0.1 only.
    "--host-resolver-rules=MAP *.localhost 127.0.0.1",
    "--window-size=1400,1000",
]
CHANGELISTS = [
    "/admin/tenants/tenant/",
    "/admin/tenants/apitoken/",
    "/admin/platform_apps/app/",
    "/admin/platform_apps/deployment/",
    "/admin/platform_apps/configvar/",
    "/admin/platform_apps/addon/",
    "/admin/platform_apps/webhookdelivery/",
]
TRANSPARENT = "rgba(0, 0, 0, 0)"
HASHED_ASSET = re.compile(r"/static/.+\.[0-9a-f]{12}\.(css|js)$")
RELEASE_LINES = 300
ARTIFACTS = Path(
    os.environ.get("COLTSFOOT_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "coltsfoot-browser-artifacts"
)


class Console:
    """The browser, where the platform is, and the few gestures the tests make."""

    def __init__(self, driver: WebDriver, platform: Platform) -> None:
        self.driver = driver
        self.platform = platform

    def open(self, path: str) -> None:
        self.driver.get(f"{self.platform.api_base}{path}")

    def css(self, selector: str, *, timeout: float = 30.0) -> WebElement:
        wait = WebDriverWait(self.driver, timeout, poll_frequency=0.2)
        return wait.until(lambda d: d.find_element(By.CSS_SELECTOR, selector), f"no {selector} on the page")

    def until(self, what: str, predicate: Callable[[WebDriver], Any], *, timeout: float = 30.0) -> Any:
        return WebDriverWait(self.driver, timeout, poll_frequency=0.3).until(predicate, f"timed out: {what}")

    def style(self, element: WebElement, prop: str) -> str:
        return str(self.driver.execute_script("return getComputedStyle(arguments[0])[arguments[1]];", element, prop))

    def stylesheets(self) -> list[dict[str, Any]]:
        """Every stylesheet of the page, with how many rules the browser parsed from it (0: not loaded)."""
        script = """return Array.from(document.styleSheets).map(s => {
            let rules = 0; try { rules = s.cssRules.length; } catch (e) { rules = -1; }
            return {href: s.href, rules: rules}; });"""
        return list(self.driver.execute_script(script))

    def run_action(self, changelist: str, query: str, action: str) -> str:
        """Select the one row `query` finds in the changelist, run `action`, return the admin's message."""
        self.open(f"{changelist}?q={query}")
        rows = self.driver.find_elements(By.CSS_SELECTOR, "#result_list input.action-select")
        assert len(rows) == 1, f"{query!r} matched {len(rows)} rows"
        rows[0].click()
        Select(self.css("select[name=action]")).select_by_value(action)
        self.css("button[name=index]").click()
        return self.css("ul.messagelist li").text

    @contextlib.contextmanager
    def screenshot_on_failure(self, name: str) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}-{time.strftime('%Y%m%d-%H%M%S')}.png"
            try:
                self.driver.save_screenshot(str(path))
                exc.add_note(f"screenshot of the browser at {self.driver.current_url}: {path}")
            except WebDriverException as shot_error:
                exc.add_note(f"no screenshot: {shot_error.msg}")
            raise


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Generator[WebDriver]:
    for binary in (CHROMIUM, CHROMEDRIVER):
        assert Path(binary).is_file(), f"{binary} is missing: apt-get install chromium chromium-driver"
    profile = tmp_path_factory.mktemp("chromium")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile / 'profile'}"]:
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(profile / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def operator(platform: Platform) -> dict[str, str]:
    """The first admin user, made as the README tells an operator to (createsuperuser, here --noinput)."""
    user = {"username": f"operator-{uuid.uuid4().hex[:6]}", "password": secrets.token_urlsafe(18)}
    platform.manage(
        "createsuperuser",
        "--noinput",
        "--username",
        user["username"],
        "--email",
        "operator@example.com",
        env={"DJANGO_SUPERUSER_PASSWORD": user["password"]},
    )
    return user


@pytest.fixture(scope="module")
def console(browser: WebDriver, platform: Platform, operator: dict[str, str]) -> Console:
    """The browser, logged into the admin through its login form."""
    page = Console(browser, platform)
    with page.screenshot_on_failure("login"):
        page.open("/admin/login/?next=/admin/")
        page.css("#id_username").send_keys(operator["username"])
        page.css("#id_password").send_keys(operator["password"])
        page.css("#login-form [type=submit]").click()
        page.css("#user-tools")
    return page


@pytest.fixture(scope="module")
def tenant(platform: Platform) -> dict[str, Any]:
    slug = f"c{uuid.uuid4().hex[:8]}"
    created = platform.create_tenant(slug)
    return {**created, "slug": slug, "client": platform.client(created["token"])}


@pytest.fixture(scope="module")
def live_app(tenant: dict[str, Any]) -> dict[str, Any]:
    client = tenant["client"]
    app: dict[str, Any] = client.post("/apps", json={"name": "hello"}).json()
    deployment = deploy_archive(client, app["id"], hello_archive())
    done = wait_for_deployment(client, deployment["id"], {"live", "failed"})
    assert done["state"] == "live", client.get(f"/deployments/{deployment['id']}/log").text
    return app


@pytest.fixture(scope="module")
def failed_deployment(tenant: dict[str, Any], live_app: dict[str, Any]) -> dict[str, Any]:
    """A deployment whose release command prints a long output and fails: the log is longer than its box."""
    release = f"python3 -c \"[print('migrating step', i) for i in range({RELEASE_LINES})]\" && exit 3"
    files = hello_files()
    files["Procfile"] = f"web: gunicorn --bind 0.0.0.0:$PORT app:app\nrelease: {release}\n"
    client = tenant["client"]
    deployment = deploy_archive(client, live_app["id"], tar_gz(files))
    done = wait_for_deployment(client, deployment["id"], {"live", "failed"})
    assert (done["state"], done["error"]["code"]) == ("failed", "release.failed"), done
    return done


def test_an_operator_logs_into_a_styled_admin(console: Console, operator: dict[str, str]):
    with console.screenshot_on_failure("login_styled"):
        console.open("/admin/")
        assert operator["username"].upper() in console.css("#user-tools").text.upper()
        assert console.css("#site-name").text == "Coltsfoot administration"
        assert console.style(console.css("#header"), "backgroundColor") != TRANSPARENT


@pytest.mark.parametrize("path", CHANGELISTS)
def test_each_changelist_renders_with_its_stylesheets(console: Console, failed_deployment: Any, path: str):
    with console.screenshot_on_failure(f"changelist{path}"):
        console.open(path)
        console.css("#changelist")
        sheets = console.stylesheets()
        assert sheets, "no stylesheet on the page"
        assert [s for s in sheets if s["rules"] <= 0] == [], "a stylesheet did not load"
        assert all(HASHED_ASSET.search(s["href"]) for s in sheets if s["href"]), sheets  # cache-busting names
        assert console.style(console.css("#header"), "backgroundColor") != TRANSPARENT
        assert "sans-serif" in console.style(console.css("body"), "fontFamily")
        # The changelist's own layout (the admin's changelists.css): the filter sidebar sits beside the table.
        if console.driver.find_elements(By.CSS_SELECTOR, "#changelist-filter"):
            assert console.style(console.css("#changelist .changelist-form-container"), "display") == "flex"


def test_the_apps_changelist_shows_status_replicas_and_the_url(console: Console, live_app: dict[str, Any]):
    with console.screenshot_on_failure("apps_changelist"):
        console.open(f"/admin/platform_apps/app/?q={live_app['id']}")
        row = console.css("#result_list tbody tr")
        badge = row.find_element(By.CSS_SELECTOR, ".cf-badge")
        assert badge.text in {"Running", "Degraded", "Deploying"}
        assert console.style(badge, "backgroundColor") != TRANSPARENT  # our console.css loaded too
        assert live_app["url"] in row.text
        assert "1 / 1" in row.text or badge.text == "Deploying"


def test_a_failed_deployments_page_shows_its_log_scrolled_to_the_error(
    console: Console, failed_deployment: dict[str, Any]
):
    with console.screenshot_on_failure("failed_deployment"):
        console.open(f"/admin/platform_apps/deployment/?q={failed_deployment['id']}")
        console.css("#result_list tbody tr th a").click()
        box = console.css(".cf-log")
        text = box.find_element(By.TAG_NAME, "pre").text
        assert "Failed: release.failed: The release command exited with code 3" in text
        assert f"migrating step {RELEASE_LINES - 1}" in text
        assert "monospace" in console.style(box.find_element(By.TAG_NAME, "pre"), "fontFamily")
        geometry = console.driver.execute_script(
            "const b = arguments[0]; return [b.scrollTop, b.clientHeight, b.scrollHeight];", box
        )
        top, height, total = geometry
        assert total > 2 * height, f"the log should overflow its box: {geometry}"
        assert top + height >= total - 2, f"not scrolled to the end: {geometry}"
        assert "release.failed" in console.css(".field-error_summary").text


def _signed_webhook(platform: Platform, app_id: str, secret: str, body: bytes) -> Any:
    timestamp = str(int(time.time()))
    signature = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-Coltsfoot-Timestamp": timestamp,
        "X-Coltsfoot-Signature": f"sha256={signature}",
        "X-Coltsfoot-Delivery": str(uuid.uuid4()),
    }
    return platform.client().post(f"/hooks/apps/{app_id}/deploy", content=body, headers=headers)


def test_the_api_docs_list_the_operations_and_run_one_with_a_token(
    console: Console, tenant: dict[str, Any], live_app: dict[str, Any]
):
    with console.screenshot_on_failure("api_docs"):
        console.driver.get(f"{console.platform.api_url}/docs")
        operation = console.css("#operations-apps-platform_apps_api_app_list")
        paths = [e.get_attribute("data-path") for e in console.driver.find_elements(By.CSS_SELECTOR, "[data-path]")]
        assert {"/api/v1/apps", "/api/v1/apps/{app_id}/deployments", "/api/v1/deployments/{deployment_id}/log"} <= set(
            paths
        )
        assert console.style(operation, "backgroundColor") != TRANSPARENT  # swagger-ui.css loaded

        console.css(".auth-wrapper .authorize").click()
        console.css(".modal-ux input[type=text]").send_keys(tenant["token"])
        console.css(".modal-ux .auth-btn-wrapper button[type=submit]").click()
        console.css(".modal-ux .btn-done").click()

        operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
        console.css("#operations-apps-platform_apps_api_app_list .try-out__btn").click()
        console.css("#operations-apps-platform_apps_api_app_list .execute").click()
        response = "#operations-apps-platform_apps_api_app_list .live-responses-table tbody"
        assert console.css(f"{response} .response-col_status").text.strip().startswith("200")
        listed = json.loads(console.css(f"{response} .response-col_description pre").text)
        assert [item["id"] for item in listed["items"]] == [live_app["id"]]


def test_suspending_a_tenant_shows_the_suspended_page_and_reactivating_serves_again(
    console: Console, platform: Platform, tenant: dict[str, Any], live_app: dict[str, Any]
):
    client, slug = tenant["client"], tenant["slug"]
    webhook_secret = client.post(f"/apps/{live_app['id']}/webhook-secret").json()["secret"]
    with console.screenshot_on_failure("suspend"):
        assert "Suspended 1 tenant" in console.run_action("/admin/tenants/tenant/", slug, "suspend")

        def shows(text: str) -> Callable[[WebDriver], bool]:
            def check(driver: WebDriver) -> bool:
                driver.get(live_app["url"])
                return text in driver.find_element(By.TAG_NAME, "body").text

            return check

        console.until("the suspended page", shows("This app is suspended"), timeout=60)
        assert platform.edge_get(live_app["url"]).status_code == 403
        refused = client.post(f"/apps/{live_app['id']}/deployments", json={"image": "docker.io/library/python:3"})
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "tenant.suspended")
        hook = _signed_webhook(platform, live_app["id"], webhook_secret, b'{"image": "docker.io/library/python:3"}')
        assert (hook.status_code, hook.json()["error"]["code"]) == (403, "tenant.suspended")

        assert "Reactivated 1 tenant" in console.run_action("/admin/tenants/tenant/", slug, "reactivate")
        console.until("the app serving again", shows("Hello from Coltsfoot!"), timeout=60)
        assert client.get("/apps").status_code == 200
