"""End to end in a real browser: `bench dashboard` serves a real store and headless Chromium (Debian's
chromium and chromium-driver, driven by Selenium) opens every page; the leaderboard's table and Pareto
chart must render with every method in the chart's legend. Screenshots go to $SPARSEBENCH_SCREENSHOTS
(default: the test's temporary folder). $SPARSEBENCH_BROWSER_DB points the test at an existing store (the
quickstart's, say) instead of the small grid it otherwise runs:

    SPARSEBENCH_BROWSER_DB=results/bench.duckdb SPARSEBENCH_SCREENSHOTS=shots pytest tests/test_dashboard_browser.py

Without Chromium the test is skipped, unless SPARSEBENCH_REQUIRE_BROWSER=1 (set by CI), where it fails.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PAGES = {"": "Leaderboard", "tradeoffs": "Trade-offs", "kernels": "Kernels", "runs": "Runs", "compare": "Compare"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def browser(tmp_path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("SPARSEBENCH_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is required here (SPARSEBENCH_REQUIRE_BROWSER=1): apt-get install chromium "
                        "chromium-driver")
        pytest.skip("no Chromium: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    # No GPU, no sandbox (CI runs as root), and none of Chromium's own network traffic (the machine is offline).
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1400,2000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture()
def served(request, tmp_path):
    given = os.environ.get("SPARSEBENCH_BROWSER_DB")
    store = Path(given).resolve() if given else request.getfixturevalue("dashboard_store")
    port = _free_port()
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "dashboard", "--db", str(store),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "streamlit.log").read_text()
        time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def _wait(driver, condition, what: str, timeout: float = 90):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition, message=f"timed out waiting for {what}")


def _css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def test_every_page_renders_in_chromium(served, browser, tmp_path):
    shots = Path(os.environ.get("SPARSEBENCH_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)

    browser.get(served)
    _wait(browser, lambda d: _css(d, '[data-testid="stDataFrame"] canvas') and _css(d, ".js-plotly-plot .legendtext"),
          "the leaderboard table and the Pareto chart")
    table = _css(browser, '[data-testid="stDataFrame"]')[0]
    assert table.size["height"] > 100 and table.size["width"] > 400
    legend = {e.text for e in _css(browser, ".js-plotly-plot .legendtext")}
    assert {"dense", "magnitude", "wanda", "Pareto front"} <= legend
    points = _css(browser, ".js-plotly-plot .scatterlayer .point")
    assert len(points) >= 10  # every finished job is a point
    browser.save_screenshot(str(shots / "leaderboard.png"))

    for path, title in PAGES.items():
        browser.get(f"{served}/{path}")
        _wait(browser, lambda d: any(h.text == title for h in _css(d, "h1")), f"the {title} page")
        _wait(browser, lambda d: _css(d, ".js-plotly-plot") or _css(d, '[data-testid="stDataFrame"]'),
              f"a chart or a table on the {title} page")
        time.sleep(1.0)  # let the charts finish drawing before the screenshot
        assert not _css(browser, '[data-testid="stException"]'), f"{title}: an exception is shown"
        browser.save_screenshot(str(shots / f"{title.lower()}.png"))
    assert sorted(p.name for p in shots.glob("*.png")) == sorted(f"{t.lower()}.png" for t in PAGES.values())
