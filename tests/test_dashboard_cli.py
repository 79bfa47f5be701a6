"""`bench dashboard`: bad input is one line and exit 2; the Streamlit command it runs."""

import subprocess
import sys

from bench.cli.run import dashboard_command


def bench(*args):
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_bad_port_and_db_are_one_line(tmp_path):
    for args, message in ((("--port", "0"), "--port: 0 is not a port number"),
                          (("--port", "70000"), "--port: 70000 is not a port number"),
                          (("--db", tmp_path), f"--db: {tmp_path} is not a file")):
        proc = bench("dashboard", *args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr


def test_command_serves_the_packaged_app_read_only_on_the_store(tmp_path):
    argv, env = dashboard_command(tmp_path / "x.duckdb", 8600, "localhost")
    assert argv[1:4] == ["-m", "streamlit", "run"] and argv[4].endswith("dashboard/app.py")
    assert argv[argv.index("--server.port") + 1] == "8600"
    assert argv[argv.index("--browser.gatherUsageStats") + 1] == "false"
    assert env["SPARSEBENCH_DB"] == str((tmp_path / "x.duckdb").resolve())
    assert not (tmp_path / "x.duckdb").exists()
