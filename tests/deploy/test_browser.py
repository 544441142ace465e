"""The Buildbot UI in a real headless Chromium, after the demo's three commits (issue 13).

One ``easeml demo`` (real master, worker, GitPoller, gpg; the process runner for speed) is
kept up with ``--wait``; Debian's chromium, driven through chromium-driver by Selenium,
opens the builder page and each build page. They must tell pass, fail and model error
apart, each with its summary line, and the red step must be the one that failed: the
``outcome`` step for a failed condition, ``evaluate`` for a crashed model. Screenshots go
to the test's tmp dir; their paths are printed (pytest shows them on failure).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
EASEML = [sys.executable, "-m", "easeml_buildbot"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _need_browser():
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/setup.sh installs "
                    "them when run as root)")
    pytest.importorskip("selenium", reason="selenium is a test dependency (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def demo_ui(tmp_path_factory):
    """The demo, run to the end of its three commits and kept up: (ui url, stdout so far)."""
    _need_browser()
    root = tmp_path_factory.mktemp("browser-demo")
    proc = subprocess.Popen([*EASEML, "demo", "--dir", str(root / "demo"), "--wait", "--port", "0",
                             "--runner", "process"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, stdin=subprocess.DEVNULL)
    lines: list[str] = []
    url = None
    deadline = time.monotonic() + 600
    try:
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"The Buildbot UI stays up at (\S+)", line)
            if m:
                url = m.group(1)
                break
            assert time.monotonic() < deadline, "".join(lines)
        assert url, "".join(lines)
        yield url, "".join(lines)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_text(driver, wanted: list[str], timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = driver.find_element("tag name", "body").text
        if all(w in text for w in wanted):
            return text
        time.sleep(0.3)
    return text


def _shot(driver, tmp_path: Path, name: str, shots: list[str]) -> None:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    shots.append(str(path))
    print(f"screenshot: {path}")


#: (demo commit, the build's summary line, the step that must be red or None)
EXPECTED = [
    ("pass", "pass · n > 0.85 ± 0.05 · use 1 of 8 · 7 left", None),
    ("fail", "fail · n > 0.85 ± 0.05 · use 2 of 8 · 6 left", "outcome"),
    ("model error", "model error · n > 0.85 ± 0.05 · use 3 of 8 · 5 left", "evaluate"),
]


def test_builder_and_build_pages_tell_pass_fail_and_model_error(demo_ui, browser, tmp_path):
    url, out = demo_ui
    for _, summary, _ in EXPECTED:  # the demo printed the same lines (read from the same outcome)
        assert f"build summary: {summary}" in out, out
    shots: list[str] = []
    t0 = time.monotonic()
    try:
        browser.get(f"{url}#/builders/1")
        text = _wait_text(browser, [s for _, s, _ in EXPECTED])
        _shot(browser, tmp_path, "builder", shots)
        for _, summary, _ in EXPECTED:
            assert summary in text, text
        assert "'mkdir" not in text and "finished (failure)" not in text, text

        for number, (what, summary, red) in enumerate(EXPECTED, 1):
            browser.get(f"{url}#/builders/1/builds/{number}")
            text = _wait_text(browser, [summary, "outcome"])
            _shot(browser, tmp_path, f"build-{number}-{what.replace(' ', '-')}", shots)
            assert summary in text, text
            steps = _steps(browser)
            lines = {name: line for _, name, _, line in steps}
            assert not [ln for ln in lines.values() if "mkdir" in ln or "easeml worker" in ln], steps
            failed = [name for _, name, res, _ in steps if res in ("FAILURE", "EXCEPTION")]
            assert failed == ([red] if red else []), (what, steps)
            numbers = [n for n, _, _, _ in steps]
            assert numbers == list(range(len(numbers))), f"gaps in the step numbers: {steps}"
            assert summary in lines["outcome"], steps
            if what == "model error":
                assert "the model failed" in lines["evaluate"], steps  # the evaluate step's own line
            else:
                assert "scored" in lines["evaluate"], steps
        took = time.monotonic() - t0
        print(f"browser part took {took:.1f}s")
        assert took < 60
    except BaseException:
        print("screenshots:\n  " + "\n  ".join(shots))
        raise


STEPS_JS = """
    const out = [];
    for (const li of document.querySelectorAll('li.bb-build-summary-step-line')) {
        const row = li.querySelector(':scope > div');
        const badge = row && row.querySelector(':scope > .bb-badge-round');
        if (!badge) continue;
        let name = '';
        for (const n of row.childNodes) if (n.nodeType === 3) name += n.textContent;
        const results = [...badge.classList].find(c => c.startsWith('results_')) || '';
        const details = row.querySelector(':scope > .bb-build-summary-step-details');
        out.push([badge.textContent.trim(), name.replace(/\\u00a0/g, ' ').trim(), results.slice(8),
                  details ? details.innerText.trim() : '']);
    }
    return out;
"""


def _steps(driver) -> list[tuple[int, str, str, str]]:
    """(number, name, result, summary line) of every step row the build page shows."""
    return [(int(n), name, res, line) for n, name, res, line in driver.execute_script(STEPS_JS)]
