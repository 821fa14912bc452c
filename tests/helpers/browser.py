"""The report page in Debian's headless Chromium, driven by Playwright (no browser download:
Playwright starts the system's chromium)."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from playwright.sync_api import Page, sync_playwright

# --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
TIMEOUT_MS = 60_000


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageLog:
    """What the page did while it was open."""

    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)  # alert/confirm/prompt: must stay empty
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    failed_requests: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)


class ReportPage:
    """One page whose console, errors, dialogs and requests are logged."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.log = PageLog()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.log.exceptions.append(str(error)))
        page.on("dialog", self._dialog)
        page.on("request", lambda request: self.log.requests.append(request.url[:200]))
        page.on("requestfailed", lambda request: self.log.failed_requests.append(f"{request.url[:200]} {request.failure}"))

    def _console(self, message: Any) -> None:
        if message.type in ("error", "assert"):
            self.log.console_errors.append(message.text)
        if "Content Security Policy" in message.text:
            self.log.csp_violations.append(message.text)

    def _dialog(self, dialog: Any) -> None:
        self.log.dialogs.append(dialog.message)
        dialog.accept()

    def open(self, path: Path) -> None:
        self.page.goto(path.resolve().as_uri(), wait_until="load")
        # Let late console messages and events arrive before anyone reads the log.
        self.page.wait_for_timeout(200)

    def evaluate(self, expression: str) -> Any:
        """Run script in the page; the value of its last expression."""
        return self.page.evaluate(expression)

    def download(self, expression: str, folder: Path) -> Path:
        """Run script that starts a download (a click); the downloaded file, saved under its own name in folder."""
        with self.page.expect_download() as started:
            self.evaluate(expression)
        target = folder / started.value.suggested_filename
        started.value.save_as(target)
        return target


@contextmanager
def open_browser(executable: str) -> Iterator[ReportPage]:
    """Headless Chromium at executable with one page."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield ReportPage(browser.new_page(accept_downloads=True))
        finally:
            browser.close()
