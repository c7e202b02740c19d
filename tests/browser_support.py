"""A real headless Chromium for the browser tests: Debian's `chromium`, driven by Playwright for Python with
the system executable (never a downloaded browser). Installed with apt-get when missing and allowed (CI=true
or DYNASEAL_INSTALL_BROWSER=1, as root); otherwise the tests skip with the reason."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def chromium_or_reason() -> tuple[Path | None, str]:
    """The Chromium executable, installing it when allowed; else None and why."""
    if CHROMIUM.exists():
        return CHROMIUM, ""
    allowed = os.environ.get("CI") == "true" or os.environ.get("DYNASEAL_INSTALL_BROWSER") == "1"
    if not allowed:
        return None, f"{CHROMIUM} is not installed (set DYNASEAL_INSTALL_BROWSER=1 to apt-get install chromium)"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, f"{CHROMIUM} is not installed and apt-get cannot run here (needs root and apt)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        run = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False, env=env)
        if run.returncode != 0:
            return None, f"{' '.join(command)} failed: {run.stderr[-300:]}"
    return (CHROMIUM, "") if CHROMIUM.exists() else (None, "apt-get installed no /usr/bin/chromium")


def artifacts_dir() -> Path:
    """Where screenshots go: $DYNASEAL_ARTIFACTS, else .dynaseal/artifacts/browser in the repository."""
    base = os.environ.get("DYNASEAL_ARTIFACTS")
    path = Path(base) if base else Path(__file__).resolve().parent.parent / ".dynaseal" / "artifacts" / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def launched_chromium() -> Iterator[Any]:
    """Debian's Chromium under Playwright, headless, closed after; skips the test where it cannot run."""
    executable, reason = chromium_or_reason()
    if executable is None:
        pytest.skip(reason)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(executable), args=ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@contextlib.contextmanager
def recorded_page(browser: Any, shot_name: str, timeout_ms: int, **context_options: Any) -> Iterator[Any]:
    """A page in a fresh context; afterwards its full-page screenshot (`shot_name`.png in the artifacts
    directory) and its last console messages are printed for whoever reads a failure."""
    context = browser.new_context(**context_options)
    opened = context.new_page()
    opened.set_default_timeout(timeout_ms)
    messages: list[str] = []
    opened.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
    try:
        yield opened
        shot = artifacts_dir() / f"{shot_name}.png"
        opened.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}\nconsole: {messages[-10:]}")
    finally:
        context.close()
