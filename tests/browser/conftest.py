"""The FiftyOne App in a real browser: a server, a chromium, and what a user does.

Fixtures (they build on the private FiftyOne home of `tests/conftest.py`):

- `app_server` (session): the FiftyOne App server as a subprocess on a free
  loopback port, sharing this process's database and plugins folder (the
  plugin is installed first).
- `browser` (module): Debian's chromium driven by Playwright. A missing
  browser or Playwright fails the run with what to install; it never skips.
- `app_dataset` (function): a factory for a fresh shapes dataset of one flow.
- `app` (function): a new browser page wrapped in `App`, the steps users take
  (open a dataset, find an operator, run its form, read the sidebar and the
  grid, open a sample) and `app.screenshot(name)`.

A flow is one test module, `tests/browser/test_app_<flow>.py`; see
`test_app_caption.py`.

While Playwright's sync API is open, the test process has a running asyncio
loop, and FiftyOne's `execute_operator` then returns a task instead of running
the operator. So the browser lives only as long as one module, the browser
tests run after all others, and a flow prepares its data with SDK calls.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("FIFTYONE_BLIP_CHROMIUM", "/usr/bin/chromium")
# Headless chromium on a closed network: the background-networking flags stop
# connections the network would refuse (updates, sync, safe browsing); the App is
# on loopback, so no proxy.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--no-proxy-server",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
# The machines that run these tests are small and shared: wait for page content,
# never for fixed times, and allow long waits.
TIMEOUT_MS = 60_000
SERVER_START_S = 180
# Every run writes its screenshots here afresh; `make screenshots` copies the README's ones.
SCREENSHOTS = REPO / "build" / "screenshots"
FAILURES = SCREENSHOTS / "failures"


def pytest_collection_modifyitems(items):
    """Marks the browser tests `browser` and runs them last (see above)."""
    here = Path(__file__).parent
    in_browser = {id(item) for item in items if here in Path(item.fspath).parents}
    for item in items:
        if id(item) in in_browser:
            item.add_marker(pytest.mark.browser)
    items.sort(key=lambda item: id(item) in in_browser)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppServer:
    """A FiftyOne App server process on loopback."""

    def __init__(self, fo, log_path: Path):
        # The server must use this session's database (tests/conftest.py puts its
        # address in the environment), not look for another one.
        if not fo.config.database_uri:
            raise RuntimeError("FIFTYONE_DATABASE_URI is not set: the App server would not share the tests' database")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = dict(os.environ)
        # The plugin imports fiftyone_blip: the server must import this checkout's copy.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        # as `fiftyone-blip app` runs it: "Schedule" in the operators' menus (see the README)
        env["FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS"] = "true"
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fiftyone.server.main", "--port", str(self.port), "--address", "127.0.0.1"],
            env=env,
            cwd=log_path.parent,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_until_ready(self, timeout_s: float = SERVER_START_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the App server exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                with _NO_PROXY.open(self.url, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the App server did not answer on {self.url} in {timeout_s} s:\n{self.log_tail()}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._log.close()


@pytest.fixture(scope="session")
def app_server(fo, plugin_installed, tmp_path_factory):
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)  # a run's screenshots are that run's only
    server = AppServer(fo, tmp_path_factory.mktemp("app-server") / "server.log")
    try:
        server.wait_until_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: the browser tests need Debian's chromium "
            "(`make test` installs it as root; or run `apt-get install -y chromium`, "
            "or set FIFTYONE_BLIP_CHROMIUM to another chromium).",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "Playwright is not installed: `pip install -e '.[test]'` (or `make test`) installs it.", pytrace=False
        )
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        except Exception as error:
            pytest.fail(f"Chromium at {CHROMIUM} did not start under Playwright: {error}", pytrace=False)
        yield chromium
        chromium.close()


@pytest.fixture
def app_dataset(fo):
    """Makes `name`: a fresh copy of `count` held-out shapes images, with saved views.

    `views` maps a saved view's name to a function of the dataset that returns
    the view. Prepare a dataset fully (fields, runs, saved views) before the App
    first opens it: the server keeps the datasets it has loaded.
    """
    import fiftyone_blip

    made = []

    def make(name: str, count: int = 24, views: dict | None = None):
        base = fiftyone_blip.load_shapes_dataset("tests-shapes", count=48, split="test")
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
        dataset = base.limit(count).clone(name, persistent=True)
        made.append(name)
        for view_name, build in (views or {}).items():
            dataset.save_view(view_name, build(dataset))
        return dataset

    yield make
    for name in made:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


class App:
    """One browser page on the App, with the steps a user takes.

    Selectors are what the App shows (roles, labels, text) or the `data-cy`
    attributes FiftyOne's own end-to-end tests use; nothing depends on CSS classes.
    """

    def __init__(self, page, base_url: str, name: str):
        from playwright.sync_api import expect

        # Playwright's retrying assertions: `app.expect(locator).to_have_count(12)`.
        self.expect = expect
        self.page = page
        self.base_url = base_url
        self.name = name
        self.console_errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.console_errors.append(message.text))

    def cy(self, value: str):
        return self.page.locator(f'[data-cy="{value}"]')

    # Opening things

    def open(self, dataset: str, view: str | None = None) -> App:
        """Opens `dataset` (optionally one of its saved views) and waits for the grid and sidebar."""
        url = f"{self.base_url}/datasets/{dataset}"
        if view:
            url += f"?view={view}"
        self.page.goto(url)
        self.sidebar_field("filepath").wait_for()
        self.cy("looker").first.wait_for()
        if view:
            self.page.get_by_text(view, exact=True).first.wait_for()
        return self

    def operator_browser(self, query: str):
        """Opens the operator browser from the grid's "Browse operations" button and searches it."""
        self.cy("action-browse-operations").first.click()
        search = self.page.get_by_placeholder("Search operations by name...")
        search.wait_for()
        search.fill(query)
        return search

    def operator_choice(self, label: str):
        """The entry of the operator browser with this label."""
        return self.page.get_by_text(label, exact=True)

    def open_operator(self, name: str, label: str):
        """Finds the operator `name` in the operator browser by name and opens its form."""
        self.operator_browser(name)
        choice = self.operator_choice(label)
        choice.wait_for()
        choice.click()
        form = self.operator_form(label)
        form.wait_for()
        return form

    def run_operator(self, name: str, label: str, done, values: dict | None = None, **execute):
        """Opens the operator's form, fills `values` ({label: text}), runs it now, waits for `done`."""
        form = self.open_operator(name, label)
        self.fill(form, values or {})
        return self.execute(done, **execute)

    def operator_form(self, label: str):
        """The operator's dialog, found by its title."""
        return self.page.get_by_role("dialog").filter(has_text=label).last

    def form_input(self, form, label: str):
        """The input of the form field shown as `label` (the App does not tie labels to inputs)."""
        return form.get_by_text(label, exact=True).locator("xpath=following::input[1]")

    def fill(self, form, values: dict) -> None:
        """Types into the form's text and number fields, by label (opening "Advanced settings" for its inputs)."""
        for label, value in values.items():
            if self.collapsed(form.get_by_text(label, exact=True)):
                self.expand_advanced(form)
            self.form_input(form, label).fill(str(value))

    def collapsed(self, locator) -> bool:
        """Whether the element sits in a closed collapsible section (mounted, but clipped to no height)."""
        return locator.first.evaluate(
            """(element) => {
                for (let node = element.parentElement; node; node = node.parentElement) {
                    const style = getComputedStyle(node);
                    if (style.overflow === "hidden" && node.getBoundingClientRect().height < 1) return true;
                }
                return false;
            }"""
        )

    def advanced_toggle(self, form):
        """The header of the form's collapsed "Advanced settings" section."""
        return form.get_by_role("button", name="Advanced settings", exact=True)

    def expand_advanced(self, form) -> None:
        """Opens the form's "Advanced settings" section (batch size, device, precision, shard, limits)."""
        toggle = self.advanced_toggle(form)
        if toggle.get_attribute("aria-expanded") != "true":
            toggle.click()
        self.expect(toggle).to_have_attribute("aria-expanded", "true")
        # the section grows open (a short transition): wait until its content has a height
        self.page.wait_for_function(
            "(toggle) => toggle.parentElement.lastElementChild.getBoundingClientRect().height > 0",
            arg=toggle.element_handle(),
        )

    def execute_button(self):
        """The form's "Execute" button (run now; its arrow offers scheduling)."""
        return self.page.get_by_role("button", name="Execute", exact=True)

    def execute(self, done, timeout_ms: int = 240_000):
        """Runs the open form now and waits for the notification `done` (returned).

        An operator that reported progress leaves its progress dialog open at the
        end, with a "Done" button: that is clicked; otherwise the dialog closes itself.
        """
        button = self.execute_button()
        self.expect(button).to_be_enabled()
        button.click()
        message = self.notification(done)
        message.wait_for(timeout=timeout_ms)
        ending = self.page.wait_for_function(
            """() => {
                const done = [...document.querySelectorAll('[role="dialog"] button')]
                    .some((b) => b.textContent.trim() === "Done");
                return done ? "progress" : document.querySelector('[role="dialog"]') ? false : "closed";
            }"""
        ).json_value()
        if ending == "progress":
            self.page.get_by_role("button", name="Done", exact=True).click()
        self.expect(self.page.get_by_role("dialog")).to_have_count(0)
        return message

    def notification(self, text: str | re.Pattern):
        """A message the App shows (operators' `notify`), found by its text."""
        return self.page.get_by_text(text)

    def close_notifications(self) -> None:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        close = self.page.get_by_role("button", name="Close notification")
        for button in close.all():
            try:
                button.click(timeout=5_000)
            except PlaywrightTimeout:  # it went by itself
                pass
        self.expect(close).to_have_count(0)

    # The sidebar and the grid

    def sidebar_field(self, field: str):
        return self.cy(f"sidebar-field-{field}")

    def show_field(self, field: str) -> None:
        """Ticks the field in the sidebar so that the grid shows it on every tile."""
        self.cy(f"checkbox-{field}").click()

    def grid_tags(self, field: str):
        """The values of `field` shown on the grid's tiles (`title` is "field: value")."""
        return self.cy(f"tag-{field}")

    def open_sample(self, index: int = 0):
        """Opens the sample at `index` of the grid in the sample modal; returns the modal's sidebar."""
        self.cy("looker").nth(index).click()
        modal = self.cy("modal")
        modal.wait_for()
        return modal

    def modal_value(self, field: str):
        """A field's value in the open sample's sidebar."""
        return self.cy(f"sidebar-entry-{field}")

    # Records

    def screenshot(self, name: str) -> Path:
        """Writes the page as build/screenshots/`name`.png."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), animations="disabled")
        return path


@pytest.fixture
def app(browser, app_server, app_dataset, request):
    # (app_dataset is set up first so that its datasets outlive the page.)
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    # FiftyOne's switch for automated browsers: no analytics, upgrade pop-overs or toasts.
    context.add_init_script("window.IS_PLAYWRIGHT = true")
    # Only loopback: the App's links to fonts and images elsewhere fail at once instead of hanging.
    context.route(
        re.compile(r"^(?!(http://127\.0\.0\.1[:/]|data:|blob:)).*"),
        lambda route: route.abort(),
    )
    page = context.new_page()
    session = App(page, app_server.url, request.node.name)
    yield session
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        FAILURES.mkdir(parents=True, exist_ok=True)
        try:
            page.screenshot(path=str(FAILURES / f"{request.node.name}.png"))
            (FAILURES / f"{request.node.name}.html").write_text(page.content())
        except Exception:  # the page may be gone; the failure itself is what matters
            pass
        print(f"App server log (tail):\n{app_server.log_tail()}")
        print("Browser console errors:\n" + "\n".join(session.console_errors[-20:]))
    context.close()
