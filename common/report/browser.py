"""Open a page in headless Chromium and say what a reader would see: how many images it has, how many
did not decode, what the page printed to its console, and (optionally) a screenshot.

Why a real browser: a report can be valid HTML and still show broken pictures (a truncated data
URI, a wrong MIME type) or throw in its script; only rendering tells. Debian's `chromium` is enough,
nothing is downloaded. The page must mark itself on load (`common.report.html.CHECK`).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# no background traffic: this machine (and a Kaggle kernel) has no network, and Chromium would retry
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]\s*(.*)")


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


@dataclass
class PageCheck:
    images: int
    broken_images: int
    console: list[str] = field(default_factory=list)  # every console message (the report prints none)
    screenshot: Path | None = None

    @property
    def ok(self) -> bool:
        return self.images > 0 and self.broken_images == 0 and not self.console


def _run(browser: str, profile: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def check_page(page: Path, screenshot: Path | None = None, *, width: int = 1300, height: int = 2400,
               timeout: float = 120.0) -> PageCheck:
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found (Debian: apt-get install chromium)")
    url = Path(page).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="report-browser-") as profile:
        dom = _run(browser, profile, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
                   "--dump-dom", url, timeout=timeout)
        images = re.search(r'data-images="(\d+)"', dom.stdout)
        broken = re.search(r'data-broken-images="(\d+)"', dom.stdout)
        if images is None or broken is None:
            raise RuntimeError(f"{page}: the page did not finish loading in Chromium (no load marks); "
                               f"exit {dom.returncode}: {dom.stderr[-500:]}")
        console = [m.group(1) for line in dom.stderr.splitlines() if (m := CONSOLE.search(line))]
        if screenshot is not None:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            shot = _run(browser, profile, f"--window-size={width},{height}", f"--screenshot={screenshot}", url,
                        timeout=timeout)
            if not Path(screenshot).is_file():
                raise RuntimeError(f"{page}: no screenshot written (exit {shot.returncode}): {shot.stderr[-500:]}")
    return PageCheck(int(images.group(1)), int(broken.group(1)), console, screenshot)
