"""The console in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`,
`make chromium`) driven by Selenium against a real `berth serve` whose controller moves a canary.

One scenario, as an operator would go: sign in with an admin key, find a model and its version,
watch the canary move from step to step without reloading, press Promote (and confirm) and see
the endpoint serve the candidate, sign out; then a `read` key sees no buttons and its POST is
refused. Also: the sign-in form and Promote are reachable with Tab, a phone-width page does not
overflow sideways, and the dark system theme changes the background.

Each page visited is saved as a PNG into $BERTH_CONSOLE_SHOTS (a temporary folder when unset);
`make console-shots` writes them to docs/console.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from berth.config import Settings
from berth.registry.endpoints import EndpointService
from berth.registry.service import Registry
from berth.rollouts.canary_analysis import CanaryCriteria
from berth.rollouts.service import RolloutService
from berth.rollouts.strategies import RolloutConfig
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from tests.conftest import register_iris, require_service, serving

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

pytestmark = pytest.mark.server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
WAIT = 20.0
"""Seconds to wait for anything the page shows (the live fragments are polled every 5 s)."""


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install -e '.[dev]')"
    for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)):
        if shutil.which(name) is None and not os.access(path, os.X_OK):
            return f"{name} is not installed (make chromium)"
    return None


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    """Headless Chromium at 1280x900; Selenium Manager stays offline (Debian's driver)."""
    missing = _browser_missing()
    if missing is not None:
        require_service("a browser for the console tests", missing)
    monkeypatch.setenv("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(argument)
    service = Service(executable_path=shutil.which("chromedriver") or CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_window_size(1280, 900)
    try:
        yield driver
    finally:
        driver.quit()


# Read now: the `settings` fixture drops BERTH_* variables and changes the working directory.
SHOTS = os.environ.get("BERTH_CONSOLE_SHOTS")
SHOTS_FOLDER = Path(SHOTS).resolve() if SHOTS else None


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = SHOTS_FOLDER or tmp_path / "shots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class Console:
    driver: WebDriver
    base: str
    shots: Path

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def shot(self, name: str) -> None:
        path = self.shots / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        assert path.stat().st_size > 1000

    def text(self) -> str:
        return str(self.driver.find_element("tag name", "body").text)

    def until(self, check: Callable[[], Any], what: str, seconds: float = WAIT) -> Any:
        from selenium.common.exceptions import StaleElementReferenceException

        deadline = time.monotonic() + seconds
        while True:
            try:
                found = check()
            except StaleElementReferenceException:
                found = None  # the live fragment was swapped under it: look again
            if found:
                return found
            assert time.monotonic() < deadline, f"the page never showed {what}: {self.text()}"
            time.sleep(0.1)

    def sign_in(self, key: str) -> None:
        self.open("/console/sign-in")
        self.driver.find_element("id", "credential").send_keys(key)
        self.driver.find_element("css selector", "form.card button[type=submit]").click()
        self.until(lambda: self.driver.current_url == self.base + "/console", "the overview")

    def sign_out(self) -> None:
        self.driver.find_element("css selector", ".who button").click()
        self.until(lambda: "/console/sign-in" in self.driver.current_url, "the sign-in form")

    def current_step(self) -> str:
        # Read in the page: the live fragment replaces these elements every few seconds.
        return str(
            self.driver.execute_script(
                "const s = document.querySelector('.steps [aria-current=step]');"
                "return s ? s.firstChild.textContent.trim() : ''"
            )
        )

    def press(self, key: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.driver).send_keys(key).perform()

    def tab_to(self, focused: str, presses: int = 40) -> list[str]:
        """Press Tab from the top of the page until the focused element is `focused` (its id
        or its text); what got focus on the way."""
        from selenium.webdriver.common.keys import Keys

        self.driver.execute_script("document.activeElement && document.activeElement.blur()")
        seen: list[str] = []
        for _ in range(presses):
            self.press(Keys.TAB)
            seen.append(
                str(
                    self.driver.execute_script(
                        "const e = document.activeElement;"
                        "return e.id || e.textContent.trim() || e.tagName"
                    )
                )
            )
            if seen[-1] == focused:
                return seen
        raise AssertionError(f"Tab never reached {focused}; focus went {seen}")

    def no_sideways_overflow(self) -> None:
        widths = self.driver.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert widths[0] <= widths[1], f"{self.driver.current_url} is {widths} wide"

    def chart_drawn(self) -> bool:
        return bool(
            self.driver.execute_script(
                "const s = document.querySelector('.chart-status');"
                "return document.querySelector('.uplot') !== null && s && s.textContent === ''"
            )
        )

    def background(self) -> str:
        return str(
            self.driver.execute_script("return getComputedStyle(document.body).backgroundColor")
        )


class Traffic:
    """Predictions to the endpoint until stopped, so the routes have live numbers."""

    def __init__(self, base: str, key: str) -> None:
        self.base, self.key = base, key
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, headers={"X-API-Key": self.key}) as client:
            while not self.stop.is_set():
                client.post("/api/v1/endpoints/iris/predict", json={"features": IRIS_ROW})
                self.stop.wait(0.05)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def test_operator_signs_in_watches_a_canary_promotes_it_and_a_reader_cannot(
    settings: Settings, iris_files: tuple[Path, Path], browser: WebDriver, shots: Path
) -> None:
    from selenium.webdriver.common.keys import Keys

    registry = Registry.from_settings(settings)
    register_iris(registry, iris_files, aliases=("production",))
    register_iris(registry, iris_files, metrics={"accuracy": 0.97})
    EndpointService(registry).create("iris", "iris@production")
    keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
    admin = keys.create("ops", ("admin",))[1]
    reader = keys.create("auditor", ("read",))[1]
    rollouts = RolloutService(registry)
    # Ten steps of 3 s: the canary climbs for about 30 s before the controller would promote
    # it on its own, time enough to watch one step change and press Promote first.
    criteria = CanaryCriteria(min_requests=0, max_p99_ratio=0, max_error_rate=0.01)
    steps = (5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 100.0)
    rollouts.start("iris", "iris:2", "canary", RolloutConfig(steps, 3.0, criteria))
    env = {**os.environ, "BERTH_CONTROLLER_INTERVAL_SECONDS": "0.2", "BERTH_LOG_LEVEL": "warning"}
    with serving(env) as (base, _port), Traffic(base, admin):
        ui = Console(browser, base, shots)

        # Sign-in: reachable with Tab (the skip link first, then the key, then the button).
        ui.open("/console/sign-in")
        ui.shot("sign-in")
        assert ui.tab_to("credential")[0] == "Skip to content"
        ui.tab_to("Sign in")
        ui.sign_in(admin)
        assert "ops" in ui.text()
        assert admin not in browser.page_source
        ui.until(lambda: "Active rollouts" in ui.text(), "the active rollout")

        # Find the model: list → model → version.
        browser.find_element("link text", "Models").click()
        ui.until(lambda: browser.find_elements("link text", "iris"), "iris in the list")
        assert "2" in browser.find_element("css selector", "tbody tr").text  # two versions
        ui.shot("models")
        browser.find_element("link text", "iris").click()
        ui.until(lambda: "Model iris" in ui.text(), "the model page")
        assert "production → 1" in ui.text()
        ui.shot("model")
        browser.find_element("css selector", 'a[href="/console/models/iris/versions/2"]').click()
        ui.until(lambda: "iris:2" in browser.find_element("tag name", "h1").text, "version 2")
        assert "sklearn" in ui.text()
        ui.shot("version")

        # Its monitoring page draws the hourly accuracy chart (empty until feedback arrives).
        ui.open("/console/models/iris/versions/2/monitoring")
        ui.until(
            lambda: browser.execute_script(
                "return document.querySelector('figure.chart .uplot canvas') !== null"
            ),
            "the accuracy chart",
        )
        assert "No feedback in this span yet." in ui.text()
        ui.shot("monitoring")

        # The endpoint splits traffic between the stable version and the canary.
        ui.open("/console/endpoints/iris")
        ui.until(lambda: "iris:2" in ui.text(), "the canary route")
        ui.shot("endpoint")

        # The rollout: the step shown moves on without a reload (the page polls its fragment).
        rollout = ui.until(
            lambda: browser.find_elements("css selector", 'a[href^="/console/rollouts/"]'),
            "a link to the rollout",
        )[0]
        rollout_path = str(rollout.get_attribute("href")).removeprefix(base)
        ui.open(rollout_path)
        first = ui.until(ui.current_step, "a current step")
        browser.execute_script("window.berthNotReloaded = true")
        ui.until(lambda: ui.current_step() not in ("", first), f"a step after {first}", 15)
        assert browser.execute_script("return window.berthNotReloaded") is True
        ui.shot("rollout")

        # The overview, once its live chart has readings to draw.
        ui.open("/console")
        ui.until(ui.chart_drawn, "the chart drawn", 12)
        ui.shot("overview")
        ui.open(rollout_path)

        # Promote: reached with Tab, pressed with Enter, then confirmed.
        ui.tab_to("act-promote")
        ui.press(Keys.ENTER)
        ui.until(lambda: "/confirm/promote" in browser.current_url, "the confirmation")
        ui.shot("confirm")
        browser.find_element("css selector", "main form button.action-promote").click()
        ui.until(lambda: "promoted" in ui.text(), "the rollout promoted")

        # The endpoint now sends everything to the candidate.
        ui.open("/console/endpoints/iris")
        legend = ui.until(
            lambda: browser.find_element("css selector", ".legend").text, "the legend"
        )
        assert "iris:2 100%" in legend
        assert "iris:1" not in legend
        ui.sign_out()

        # A reader: sees a running rollout, has no buttons, and its POST is refused.
        rollouts.start("iris", "iris:1", "canary", RolloutConfig(interval_seconds=600.0))
        ui.sign_in(reader)
        assert "view only" in ui.text()
        ui.open("/console/rollouts")
        links = browser.find_elements("css selector", 'main a[href^="/console/rollouts/"]')
        newest = max(str(a.get_attribute("href")).removeprefix(base) for a in links)
        ui.open(newest)
        ui.until(lambda: "Acting needs an admin key." in ui.text(), "the reader's hint")
        assert not browser.find_elements("css selector", ".actions button")
        ui.shot("rollout-read-only")
        refused = browser.execute_async_script(
            """const done = arguments[arguments.length - 1];
            const csrf = document.querySelector('input[name=csrf]').value;
            fetch(arguments[0], {method: 'POST', body: new URLSearchParams({csrf})})
              .then(r => done(r.status), e => done(String(e)));""",
            newest + "/promote",
        )
        assert refused == 403
        browser.refresh()
        state = ui.until(lambda: browser.find_element("css selector", "#state-h + p").text, "state")
        assert state.startswith("running"), state  # not promoted

        # A phone-width screen: nothing but the tables scrolls sideways.
        browser.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 375, "height": 800, "deviceScaleFactor": 1, "mobile": True},
        )
        for path in (newest, "/console/endpoints/iris", "/console/models/iris/versions/2",
                     "/console"):  # fmt: skip
            ui.open(path)
            ui.no_sideways_overflow()
        ui.shot("overview-phone")
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

        # The dark system theme.
        light = ui.background()
        browser.execute_cdp_cmd(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
        )
        ui.open("/console")
        dark = ui.background()
        assert dark != light, (light, dark)
        ui.shot("overview-dark")
        ui.sign_out()
    registry.db.dispose()
    names = {p.stem for p in shots.glob("*.png")}
    assert {"sign-in", "overview", "rollout", "confirm", "overview-dark"} <= names
