"""End to end in a real browser: `bench dashboard` serves a real store and headless Chromium (Debian's
chromium and chromium-driver, driven by Selenium) opens every page at 1280x800: the leaderboard's Pareto chart and
the first rows of its table must be above the fold; a URL with filters opens with them applied (and keeps
them through a reload); a job page opens from its URL. Screenshots go to $SPARSEBENCH_SCREENSHOTS
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
WIDTH, HEIGHT = 1280, 800


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
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
    # The window is a laptop's: the question the leaderboard answers must be above its fold.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--window-size={WIDTH},{HEIGHT}",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium') / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    # the page's own viewport is 1280x800 (the window's size would include the browser's frame)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(request, tmp_path_factory):
    given = os.environ.get("SPARSEBENCH_BROWSER_DB")
    store = Path(given).resolve() if given else request.getfixturevalue("dashboard_store")
    port = _free_port()
    folder = tmp_path_factory.mktemp("streamlit")
    log = open(folder / "streamlit.log", "w")
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
        assert proc.poll() is None and time.monotonic() < deadline, (folder / "streamlit.log").read_text()
        time.sleep(0.3)
    yield url, store
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = Path(os.environ.get("SPARSEBENCH_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait(driver, condition, what: str, timeout: float = 90):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition, message=f"timed out waiting for {what}")


def _css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _open(driver, url: str, title: str) -> None:
    driver.get(url)
    _wait(driver, lambda d: any(h.text == title for h in _css(d, "h1")), f"the {title} page")
    _wait(driver, lambda d: _css(d, ".js-plotly-plot .legendtext") or _css(d, '[data-testid="stDataFrame"] canvas'),
          f"a chart or a table on the {title} page")
    time.sleep(1.0)  # let the charts finish drawing before the screenshot
    assert not _css(driver, '[data-testid="stException"]'), f"{title}: an exception is shown"


def _top(element) -> float:
    return element.rect["y"]


def _legend(driver) -> set[str]:
    """The entries of every legend of the page's charts (Plotly names the texts of `legendN` `legendNtext`)."""
    return {e.text for e in _css(driver, ", ".join(f".js-plotly-plot .{n}text" for n in ("legend", "legend2", "legend3")))}


def test_the_leaderboard_answers_above_the_fold(served, browser, shots):
    url, _ = served
    _open(browser, url, "Leaderboard")
    _wait(browser, lambda d: _css(d, '[data-testid="stDataFrame"] canvas') and _css(d, ".js-plotly-plot .legendtext"),
          "the leaderboard table and the Pareto chart")
    browser.save_screenshot(str(shots / "leaderboard.png"))
    chart = _css(browser, ".js-plotly-plot")[0]
    table = _css(browser, '[data-testid="stDataFrame"]')[0]
    # at 1280x800 the front chart is in view, and the table's header and first rows start above the fold
    assert _top(chart) + chart.size["height"] <= HEIGHT, (_top(chart), chart.size)
    assert _top(table) < HEIGHT - 100, (_top(table), chart.size)
    assert table.size["width"] > 400
    legend = _legend(browser)
    assert {"dense", "magnitude", "wanda", "Pareto front"} <= legend, legend
    assert {"50%", "2:4"} <= legend
    assert len(_css(browser, ".js-plotly-plot .scatterlayer .point")) >= 5  # the pruned models, every kernel


@pytest.mark.parametrize("path, title", [("tradeoffs", "Trade-offs"), ("kernels", "Kernels"), ("runs", "Runs"),
                                         ("compare", "Compare")])
def test_every_page_renders(served, browser, shots, path, title):
    url, _ = served
    _open(browser, f"{url}/{path}", title)
    browser.save_screenshot(str(shots / f"{title.lower()}.png"))
    body = _css(browser, '[data-testid="stMain"]')[0].text
    assert "None" not in body.split() and '{"' not in body  # no raw JSON, no "None"


def test_a_url_with_filters_opens_the_same_view(served, browser, shots):
    url, _ = served
    _open(browser, f"{url}/?method=wanda&pattern=2:4", "Leaderboard")
    _wait(browser, lambda d: "wanda" in _legend(d), "the filtered chart")
    sidebar = _css(browser, '[data-testid="stSidebar"]')[0].text.split("\n")
    assert "wanda" in sidebar and "2:4" in sidebar, sidebar  # the multiselects show the URL's selection
    legend = _legend(browser)
    assert "wanda" in legend and "magnitude" not in legend and "50%" not in legend
    browser.save_screenshot(str(shots / "leaderboard-filtered.png"))
    # the filters follow to another page through the URL (the navigation keeps them), and a reload keeps them
    links = [a for a in _css(browser, "a") if "Trade-offs" in a.text]
    assert links, [a.text for a in _css(browser, "a")]
    link = links[0]
    link.click()
    _wait(browser, lambda d: any(h.text == "Trade-offs" for h in _css(d, "h1")) and "wanda" in _legend(d),
          "the filtered trade-offs")
    assert "method=wanda" in browser.current_url and "pattern=2" in browser.current_url, browser.current_url
    browser.refresh()
    _wait(browser, lambda d: "wanda" in _legend(d) and "magnitude" not in _legend(d), "the same view after a reload")
    assert "method=wanda" in browser.current_url


def test_a_job_page_opens_from_its_url(served, browser, shots):
    import duckdb

    url, store = served
    con = duckdb.connect(str(store), read_only=True)
    key = con.execute("SELECT job_key FROM jobs WHERE status = 'done' AND kernel = 'native' AND method != 'dense' "
                      "ORDER BY job_key LIMIT 1").fetchone()[0]
    con.close()
    _open(browser, f"{url}/job?job={key}", "Job")
    _wait(browser, lambda d: any(h.text.startswith("Sparsity of the") for h in _css(d, "h3")), "the per-layer table")
    browser.save_screenshot(str(shots / "job.png"))
    assert key in _css(browser, '[data-testid="stMain"]')[0].text
