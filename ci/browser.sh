#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver, for the dashboard's end-to-end test in a real headless browser
# (tests/test_dashboard_browser.py). Installs nothing when both are present; needs root or sudo otherwise.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
install() { DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium chromium-driver >/dev/null; }
install || { $sudo apt-get update -q >/dev/null && install; }
chromium --version
