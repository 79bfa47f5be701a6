"""How long the Leaderboard takes to appear in a real browser: from navigation start to the moment its Pareto
chart (with its legend) and its table are drawn, in headless Chromium at 1280x800 (target: under 2 s on the
quickstart's store, on an idle machine).

    python benchmarks/dashboard_render.py --db results/bench.duckdb [--repeats 7] [--save benchmarks/results]

`bench dashboard` serves the store; each repeat opens the page in a fresh tab of one Chromium (so the
browser's HTTP cache is warm after the first, as for a returning user) and reads `performance.now()` in the
page when both are present (`performance.now()` counts from the navigation's start). The first repeat is
the server's cold start (its query cache empty); the others find the queries cached, as after a reload.
Reported: every repeat in milliseconds, and the median of the warm ones with its range.

    python benchmarks/dashboard_render.py --floor {plotly,table,title} [--repeats 7]

times, in the same way, the least pages that hold part of it (FLOORS below): `plotly` a title, one Plotly
chart of three points with a legend and a three-row table; `table` the title and the table; `title` the title
alone. What they take is the cost of Streamlit, its table and Plotly themselves in this browser on this
machine, which no change to the Leaderboard can go under; the steps between them say where the time goes.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _results import save  # noqa: E402



_FLOOR_HEAD = """
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

st.set_page_config(layout="wide")
st.title("Floor")
"""
_FLOOR_CHART = """st.plotly_chart(go.Figure(go.Scatter(x=[1, 2, 3], y=[1, 3, 2], mode="markers", name="a"))
                .update_layout(showlegend=True))
"""
_FLOOR_TABLE = """st.dataframe(pd.DataFrame({"a": [1, 2, 3]}))
"""
_CHART_DRAWN = "document.querySelector('.js-plotly-plot .legendtext')"
_TABLE_DRAWN = "document.querySelector('[data-testid=\"stDataFrame\"] canvas')"
# name -> (page, what must be drawn); the Leaderboard's own condition is that of `plotly`.
FLOORS = {
    "plotly": (_FLOOR_HEAD + _FLOOR_CHART + _FLOOR_TABLE, f"{_CHART_DRAWN} && {_TABLE_DRAWN}"),
    "table": (_FLOOR_HEAD + _FLOOR_TABLE, _TABLE_DRAWN),
    "title": (_FLOOR_HEAD, "document.querySelector('h1')"),
}


def wait_for(condition: str) -> str:
    """A script for `execute_async_script` that answers `performance.now()` once `condition` holds."""
    return ("const done = arguments[arguments.length - 1];\n"
            f"function ready() {{ return {condition}; }}\n"
            "function poll() { if (ready()) { done(performance.now()); } else { requestAnimationFrame(poll); } }\n"
            "poll();\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(db: Path | None, log, page: Path | None = None) -> tuple[subprocess.Popen, str]:
    """`bench dashboard` on `db`, or `streamlit run page`; the URL once its health check answers."""
    port = _free_port()
    if page is None:
        command = [sys.executable, "-m", "bench.cli", "dashboard", "--db", str(db), "--port", str(port)]
    else:
        command = [sys.executable, "-m", "streamlit", "run", str(page), "--server.headless", "true",
                   "--server.port", str(port), "--browser.gatherUsageStats", "false"]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the dashboard did not start")
        time.sleep(0.2)


def browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,800", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    driver.set_script_timeout(120)
    return driver


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--db", type=Path, help="the store to render (e.g. the quickstart's)")
    what.add_argument("--floor", choices=sorted(FLOORS), help="time the least page with a Plotly chart and a table "
                      "(plotly), with the table alone (table) or with the title alone (title)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--save", type=Path, help="write the figures as JSON into this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = open(Path(tmp) / "streamlit.log", "w")
        page = None
        if args.floor:
            page = Path(tmp) / "floor.py"
            page.write_text(FLOORS[args.floor][0])
        proc, url = serve(None if args.floor else args.db.resolve(), log, page)
        driver = browser(Path(tmp) / "profile")
        script = wait_for(FLOORS["plotly" if args.floor is None else args.floor][1])
        times = []
        try:
            for _ in range(args.repeats):
                driver.switch_to.new_window("tab")
                driver.get(url)
                times.append(float(driver.execute_async_script(script)))
                driver.close()
                driver.switch_to.window(driver.window_handles[0])
        finally:
            driver.quit()
            proc.terminate()
            proc.wait(timeout=30)
            log.close()
    warm = times[1:] or times
    subject = f"the floor page ({args.floor})" if args.floor else f"the Leaderboard, {args.db.name}"
    print(f"first render of {subject} (ms from navigation start):")
    print(f"  cold server cache: {times[0]:.0f}")
    print(f"  warm: median {statistics.median(warm):.0f} (min {min(warm):.0f}, max {max(warm):.0f}, n={len(warm)})")
    if args.save:
        from bench.provenance import git_state, hardware_fingerprint, package_versions

        record = {"benchmark": "dashboard_render", "page": f"floor-{args.floor}" if args.floor else "leaderboard",
                  "store": None if args.floor else args.db.name, "repeats_ms": times,
                  "cold_ms": times[0], "warm_median_ms": statistics.median(warm), "warm_min_ms": min(warm),
                  "warm_max_ms": max(warm), "window": "1280x800", "finished_at": datetime.now(timezone.utc).isoformat()}
        record.update(git_state())
        record["versions"], record["hardware"] = package_versions(), hardware_fingerprint()
        print("saved", save(args.save, f"dashboard-render-floor-{args.floor}" if args.floor else "dashboard-render", record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
