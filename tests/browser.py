"""A real browser for the console's tests: Debian's chromium driven by Selenium through Debian's
chromium-driver (no download: the driver's path is given, so Selenium Manager never runs), and
axe-core, the accessibility engine, run inside the page.

axe-core comes from npm (``npm pack``, a pinned version) into a cache folder the first time and
is read from there afterwards; without npm the tests that need it skip locally and fail in CI.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from .peers import missing_peer, require_tool

AXE_VERSION = "4.10.2"  # pinned: a new axe release adds rules, and a test should not change under us
AXE_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dicom-chain" / f"axe-core-{AXE_VERSION}"
)
PAGE_LOAD_S = 30  # a page of the console renders in well under a second; a hung server fails fast
# WCAG 2.1 A and AA rules: labels, names, contrast, landmarks, keyboard focus order among them.
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


def chrome(downloads: Path) -> webdriver.Chrome:
    browser = require_tool("chromium", "chromium")
    driver = require_tool("chromedriver", "chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where chromium's sandbox cannot start
        "--disable-dev-shm-usage",  # containers give /dev/shm 64 MB: chromium would crash on big pages
        "--disable-gpu",
        "--window-size=1280,1000",
        "--ignore-certificate-errors",  # the console's test certificate is self-signed
    ):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.set_page_load_timeout(PAGE_LOAD_S)
    return session


def axe_source() -> str:
    script = AXE_CACHE / "axe.min.js"
    if not script.exists():
        npm = require_tool("npm", "npm")
        AXE_CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run(
                [npm, "pack", f"axe-core@{AXE_VERSION}", "--silent"], cwd=tmp, capture_output=True, text=True,
                timeout=300,
            )  # fmt: skip
            if done.returncode != 0:
                missing_peer(
                    f"axe-core {AXE_VERSION} from npm ({done.stderr.strip()[:200]})", "npm (with network)"
                )
            [packed] = Path(tmp).glob("axe-core-*.tgz")
            with tarfile.open(packed) as tar:
                member = tar.extractfile("package/axe.min.js")
                assert member is not None
                script.write_bytes(member.read())
    return script.read_text(encoding="utf-8")


def axe_violations(session: webdriver.Chrome, source: str) -> list[dict[str, Any]]:
    """axe-core's WCAG A/AA violations on the page now: rule, impact, and the elements."""
    session.execute_script(source)
    found = session.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {runOnly: {type: 'tag', values: arguments[0]}})"
        ".then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.map(n => n.target.join(' '))}))), e => done([{id: 'axe-error', help: String(e)}]));",
        AXE_TAGS,
    )
    return list(found)
