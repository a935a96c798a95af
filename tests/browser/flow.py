"""The dashboard in a real browser: headless Chromium, driven by Selenium, against a real
`stackyard serve` (local runtime, services are real processes).

What it proves, end to end, through the pages only (plus two outside nudges a user cannot make
from the page: an env change through the API, and a request through the router):

  1. sign-in exchanges a team token for a session and lands on the stacks list;
  2. "new stack" uploads the example manifest and one tarball per service
     (examples/two-service) and lands on the stack's page;
  3. that page turns `healthy` live, without a reload (a marker set on `window` survives);
  4. the env page sets keys: each save makes the version go up by one and the key's row show;
  5. an edit made on a stale env page (the env changed through the API meanwhile) writes
     nothing, shows the conflict and the current version;
  6. rolling back to the version before MESSAGE was set removes it (and the key set through
     the API after it), as a new version;
  7. the logs page streams a line the web service logs after the page was loaded (a request
     through the router for a path only this run knows), without a reload;
  8. deleting needs the slug typed (the button stays disabled until then) and lands on the
     stacks list without the stack.

Each step saves `NN-<step>.png` in the screenshots directory; a failure saves
`NN-failure.png` (and `NN-failure.html`, the page's source), prints the page URL, the step,
the browser console and where the screenshots are, and exits 1.

Run it alone with `bash .ci/browser` (it installs Chromium, chromedriver and Selenium, builds
and starts the server, and calls this script with everything it needs):

    python tests/browser/flow.py --base-url http://127.0.0.1:PORT --token-file DATA/admin-token \
        --router 127.0.0.1:PORT --screenshots target/browser [--docs-images docs/images]

`--docs-images DIR` also saves `stacks.png`, `stack.png` and `env.png` (1280 wide) in DIR
after the env step, for the README; CI does not pass it.
"""

from __future__ import annotations

import argparse
import json
import re
import os
import secrets
import shutil
import sys
import tarfile
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "two-service"
# Chromium's TMPDIR for this run (its profile, its singleton socket), removed at the end.
BROWSER_TMP = str(ROOT / "target" / "browser-tmp" / str(os.getpid()))
WIDTH, HEIGHT = 1280, 900

# Explicit timeouts (seconds).
PAGE = 15  # a page load or a form's answer
HEALTHY = 60  # a fresh stack's deploy, building → healthy
LIVE = 30  # a live update (SSE) or the list's periodic refresh
POLL = 0.25  # WebDriverWait's poll interval


class FlowError(AssertionError):
    """A check of the flow that did not hold."""


class Flow:
    def __init__(self, args: argparse.Namespace) -> None:
        self.base = args.base_url.rstrip("/")
        self.token = Path(args.token_file).read_text().strip()
        self.router = args.router
        self.shots = Path(args.screenshots)
        self.docs = Path(args.docs_images) if args.docs_images else None
        self.number = 0
        self.step = "start"
        self.slug = ""
        self.marker = f"/browser-flow-{secrets.token_hex(6)}"
        self.driver = self.start_browser(args.chromium, args.chromedriver)

    # ---- browser -------------------------------------------------------------------------

    @staticmethod
    def start_browser(chromium: str, chromedriver: str) -> webdriver.Chrome:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for arg in (
            "--headless=new",
            "--no-sandbox",  # Chromium's own sandbox cannot run as root
            "--disable-dev-shm-usage",
            "--disable-gpu",
            f"--window-size={WIDTH},{HEIGHT}",
            "--lang=en-US",
        ):
            options.add_argument(arg)
        # The console (CSP violations, script errors) is printed on failure.
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # Chromium puts its profile and singleton socket under TMPDIR; a directory of our own,
        # removed after the run, keeps them out of the machine's shared /tmp.
        env = dict(os.environ, TMPDIR=BROWSER_TMP)
        service = Service(executable_path=chromedriver, env=env)
        driver = webdriver.Chrome(service=service, options=options)
        driver.set_window_size(WIDTH, HEIGHT)
        driver.set_page_load_timeout(PAGE * 2)
        return driver

    def wait(self, timeout: float, what: str, condition):
        """Waits up to `timeout` s for `condition(driver)` to be truthy; fails saying `what`."""
        try:
            return WebDriverWait(
                self.driver,
                timeout,
                poll_frequency=POLL,
                ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
            ).until(condition)
        except TimeoutException:
            raise FlowError(f"timed out after {timeout:g} s waiting for {what}") from None

    def find(self, css: str, timeout: float = PAGE):
        return self.wait(timeout, f"`{css}` on the page", lambda d: d.find_element(By.CSS_SELECTOR, css))

    def text(self, css: str) -> str:
        """The element's text now, or "" when it is absent."""
        try:
            return self.driver.find_element(By.CSS_SELECTOR, css).text.strip()
        except (NoSuchElementException, StaleElementReferenceException):
            return ""

    def present(self, css: str) -> bool:
        return bool(self.driver.find_elements(By.CSS_SELECTOR, css))

    def path(self) -> str:
        return urlsplit(self.driver.current_url).path

    def wait_path(self, pattern: str, what: str) -> re.Match:
        regex = re.compile(pattern)
        self.wait(PAGE, f"{what} (URL matching {pattern})", lambda d: regex.fullmatch(self.path()))
        return regex.fullmatch(self.path())

    def go(self, path: str) -> None:
        self.driver.get(self.base + path)

    def click(self, css: str) -> None:
        self.wait(PAGE, f"`{css}` to be clickable", lambda d: self._clickable(css)).click()

    def _clickable(self, css: str):
        el = self.driver.find_element(By.CSS_SELECTOR, css)
        return el if el.is_displayed() and el.is_enabled() else None

    def type_into(self, css: str, text: str) -> None:
        el = self.find(css)
        el.clear()
        el.send_keys(text)

    def env_version(self) -> int:
        self.find("#env-version")
        raw = self.text("#env-version")
        if not re.fullmatch(r"\d+", raw):
            raise FlowError(f"#env-version is {raw!r}, not an integer")
        return int(raw)

    def mark_no_reload(self) -> None:
        self.driver.execute_script("window.__noReload = true")

    def assert_not_reloaded(self, what: str) -> None:
        if self.driver.execute_script("return window.__noReload === true") is not True:
            raise FlowError(f"the page was reloaded (or navigated away) while waiting for {what}")

    def screenshot(self, name: str) -> Path:
        self.number += 1
        path = self.shots / f"{self.number:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def docs_screenshot(self, path: str, name: str) -> None:
        """The page at `path`, 1280 wide and as tall as its content (at least 900)."""
        self.go(path)
        self.find("main")
        # The window's height is the page's plus the browser's own bars (outer - inner).
        height, bars = self.driver.execute_script(
            "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]"
        )
        self.driver.set_window_size(WIDTH, max(HEIGHT, min(int(height) + int(bars), 4000)))
        try:
            self.driver.save_screenshot(str(self.docs / name))
        finally:
            self.driver.set_window_size(WIDTH, HEIGHT)

    # ---- outside the browser -------------------------------------------------------------

    def api(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=PAGE) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            raise FlowError(f"{method} {path} answered {e.code}: {e.read().decode(errors='replace')}") from None

    def through_router(self, path: str) -> int | str:
        """GET `path` on the stack's `web` service through the router; the answer's status."""
        req = urllib.request.Request(f"http://{self.router}{path}")
        req.add_header("Host", f"web-{self.slug}.localhost")
        try:
            with urllib.request.urlopen(req, timeout=PAGE) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError as e:  # refused, reset, timed out: said in the failure, asked again
            return str(e)

    # ---- the steps -----------------------------------------------------------------------

    def sign_in(self) -> None:
        self.go("/ui/sign-in")
        self.type_into("#token", self.token)
        self.driver.find_element(By.CSS_SELECTOR, "#token").find_element(
            By.XPATH, "./ancestor::form//*[@type='submit']"
        ).click()
        self.wait_path(r"/ui/stacks", "the stacks list after signing in")
        self.find("#new-stack")

    def create_stack(self, tmp: Path) -> None:
        tarballs = []
        for service in ("api", "web"):
            path = tmp / f"{service}.tar.gz"
            with tarfile.open(path, "w:gz") as tar:  # like `tar czf web.tar.gz -C web .`
                tar.add(EXAMPLE / service, arcname=".")
            tarballs.append(str(path))
        self.click("#new-stack")
        self.wait_path(r"/ui/stacks/new", "the new-stack page")
        self.type_into("#name", "browser-demo")
        self.find("#manifest").send_keys(str(EXAMPLE / "stackyard.yaml"))
        self.find("#tarballs").send_keys("\n".join(tarballs))
        self.click("#create-stack")
        m = self.wait_path(r"/ui/stacks/(?!new$)([^/]+)", "the new stack's page")
        self.slug = m.group(1)
        # The marker goes on at once: the deploy takes a fraction of a second here.
        self.find("#stack-status")
        self.mark_no_reload()
        self.first_status = self.text("#stack-status")
        print(f"flow: stack {self.slug}, {self.first_status} when its page loaded", flush=True)

    def see_healthy(self) -> None:
        def healthy(d):
            status = self.text("#stack-status")
            if status == "failed":
                raise FlowError(f"the stack failed: {self.text('#stack-error') or '(no #stack-error)'}")
            return status == "healthy"

        self.wait(HEALTHY, "#stack-status to read `healthy` (live, without a reload)", healthy)
        self.assert_not_reloaded("the stack to turn healthy")
        if self.first_status == "healthy":
            # The deploy beat the page load, so the status never changed under the page: prove
            # the live update with another change instead, an env write through the API (an
            # `env.version` event), which the page must show without a reload.
            _, body = self.api("PATCH", f"/stacks/{self.slug}/env", {"env": {"LIVE_CHECK": "1"}})
            shown = f"env version {body['version']}"
            print(f"flow: the stack was healthy at load; waiting for `{shown}` instead", flush=True)
            self.wait(LIVE, f"`{shown}` in #stack-live (live, without a reload)", lambda d: shown in self.text("#stack-live"))
            self.assert_not_reloaded(f"`{shown}`")

    def save_env(self, key: str, value: str) -> int:
        """Sets `key` through the env page's form; the version it made."""
        n = self.env_version()
        self.type_into("#env-key", key)
        self.type_into("#env-value", value)
        self.click("#env-save")
        self.wait(PAGE, f"#env-version to read {n + 1} after saving {key}", lambda d: self.text("#env-version") == str(n + 1))
        self.find(f'tr[data-key="{key}"]')
        if self.present("#env-conflict"):
            raise FlowError(f"saving {key} from a fresh page showed #env-conflict")
        return n + 1

    def set_env(self) -> None:
        self.click("#env-link")
        self.wait_path(rf"/ui/stacks/{re.escape(self.slug)}/env", "the env page")
        # A fresh stack's env is version 0, which has no history row to roll back to: a first
        # key makes the version the rollback step returns to.
        self.before_message = self.save_env("BASELINE", "kept by the rollback")
        self.save_env("MESSAGE", "hello from the browser")

    def docs_images(self) -> None:
        self.docs.mkdir(parents=True, exist_ok=True)
        self.docs_screenshot("/ui/stacks", "stacks.png")
        self.docs_screenshot(f"/ui/stacks/{self.slug}", "stack.png")
        self.docs_screenshot(f"/ui/stacks/{self.slug}/env", "env.png")
        print(f"flow: README images in {self.docs}/", flush=True)

    def stale_edit(self) -> None:
        self.go(f"/ui/stacks/{self.slug}/env")
        v = self.env_version()
        status, _ = self.api("PATCH", f"/stacks/{self.slug}/env", {"env": {"OTHER": "x"}})
        if status != 200:
            raise FlowError(f"PATCH /stacks/{self.slug}/env answered {status}")
        self.type_into("#env-key", "STALE_EDIT")
        self.type_into("#env-value", "written on a stale page")
        self.click("#env-save")
        self.wait(PAGE, "#env-conflict to be displayed", lambda d: d.find_element(By.CSS_SELECTOR, "#env-conflict").is_displayed())
        shown = self.env_version()
        if shown != v + 1:
            raise FlowError(f"after the conflict #env-version reads {shown}, not the current {v + 1}")
        if self.present('tr[data-key="STALE_EDIT"]'):
            raise FlowError("the stale edit was written (a row STALE_EDIT shows)")
        if not self.present('tr[data-key="OTHER"]'):
            raise FlowError("the conflict page does not show the current map (no row OTHER)")

    def roll_back(self) -> None:
        self.go(f"/ui/stacks/{self.slug}/env")
        v = self.env_version()
        target = self.before_message
        if not self.present(f"#rollback-{target}"):
            buttons = [b.get_attribute("id") for b in self.driver.find_elements(By.CSS_SELECTOR, "[id^='rollback-']")]
            raise FlowError(f"no #rollback-{target} (the version before MESSAGE); rollback buttons: {buttons}")
        self.click(f"#rollback-{target}")
        self.wait(PAGE, f"#env-version to read {v + 1}", lambda d: self.text("#env-version") == str(v + 1))
        self.wait(PAGE, 'tr[data-key="MESSAGE"] to be gone', lambda d: not self.present('tr[data-key="MESSAGE"]'))
        for key, there in (("BASELINE", True), ("OTHER", False)):
            if self.present(f'tr[data-key="{key}"]') != there:
                raise FlowError(f"after the rollback to v{target} the row {key} is {'missing' if there else 'still there'}")

    def follow_logs(self) -> None:
        self.go(f"/ui/stacks/{self.slug}/logs?service=web")
        self.wait(LIVE, "#log-lines to show lines", lambda d: self.text("#log-lines") != "")
        self.mark_no_reload()
        deadline = time.monotonic() + LIVE
        asked, next_ask = [], 0.0
        while self.marker not in self.driver.find_element(By.CSS_SELECTOR, "#log-lines").text:
            now = time.monotonic()
            if now > deadline:
                raise FlowError(
                    f"no line with {self.marker} in #log-lines after {LIVE} s "
                    f"(the router answered {asked}; #log-state: {self.text('#log-state')!r})"
                )
            if now >= next_ask:  # the request again every 5 s, in case a line was missed
                asked.append(self.through_router(self.marker))
                next_ask = now + 5
            time.sleep(POLL)  # a short poll of the page's text
        self.assert_not_reloaded("the log line")

    def delete(self) -> None:
        self.go(f"/ui/stacks/{self.slug}")
        button = self.find("#delete-button")
        if button.is_enabled():
            raise FlowError("#delete-button is enabled before the slug was typed")
        self.type_into("#delete-confirm", self.slug)
        self.wait(PAGE, "#delete-button to be enabled once the slug is typed", lambda d: self._clickable("#delete-button"))
        self.click("#delete-button")
        # The delete waits for the teardown (up to --delete-wait, 10 s by default).
        self.wait(LIVE, "the stacks list after deleting", lambda d: self.path() == "/ui/stacks")
        row = f'tr[data-slug="{self.slug}"]'
        self.wait(LIVE, f"no {row} in the list", lambda d: not self.present(row))

    # ---- running -------------------------------------------------------------------------

    def run(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            steps = [
                ("sign-in", self.sign_in),
                ("create-stack", lambda: self.create_stack(Path(tmp))),
                ("healthy", self.see_healthy),
                ("set-env", self.set_env),
                *([("docs-images", self.docs_images)] if self.docs else []),
                ("stale-edit", self.stale_edit),
                ("rollback", self.roll_back),
                ("logs", self.follow_logs),
                ("delete", self.delete),
            ]
            for name, action in steps:
                self.step = name
                started = time.monotonic()
                action()
                shot = self.screenshot(name)
                print(f"flow: {name} ok ({time.monotonic() - started:.1f} s) → {shot}", flush=True)

    def report_failure(self, error: BaseException) -> None:
        print(f"flow: FAILED at step `{self.step}`: {error}", file=sys.stderr, flush=True)
        if not isinstance(error, FlowError):
            traceback.print_exception(error, file=sys.stderr)
        try:
            print(f"flow: page {self.driver.current_url}", file=sys.stderr)
            self.number += 1
            shot = self.shots / f"{self.number:02d}-failure.png"
            self.driver.save_screenshot(str(shot))
            shot.with_suffix(".html").write_text(self.driver.page_source)
            print(f"flow: screenshot {shot} (page source next to it)", file=sys.stderr)
            for entry in self.driver.get_log("browser"):
                print(f"flow: console {entry.get('level')}: {entry.get('message')}", file=sys.stderr)
        except WebDriverException as e:
            print(f"flow: (could not capture the page: {e.msg})", file=sys.stderr)
        print(f"flow: screenshots in {self.shots.resolve()}/", file=sys.stderr, flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True, help="the API listener, e.g. http://127.0.0.1:8700")
    p.add_argument("--token-file", required=True, help="a file holding a team token (the admin-token)")
    p.add_argument("--router", required=True, help="the router's host:port")
    p.add_argument("--screenshots", default=str(ROOT / "target" / "browser"))
    p.add_argument("--docs-images", metavar="DIR", help="also save stacks.png, stack.png, env.png here")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = p.parse_args()
    Path(args.screenshots).mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    Path(BROWSER_TMP).mkdir(parents=True, exist_ok=True)
    try:
        flow = Flow(args)
    except (OSError, WebDriverException) as e:
        print(f"flow: FAILED to start: {e}", file=sys.stderr)
        shutil.rmtree(BROWSER_TMP, ignore_errors=True)
        return 1
    try:
        flow.run()
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - every failure is reported the same way
        flow.report_failure(e)
        return 1
    finally:
        flow.driver.quit()
        shutil.rmtree(BROWSER_TMP, ignore_errors=True)
    print(f"flow: passed in {time.monotonic() - started:.1f} s; screenshots in {flow.shots}/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
