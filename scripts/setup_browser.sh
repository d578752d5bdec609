#!/usr/bin/env bash
# What the real-browser test (tests/test_e2e_lab.py) needs beyond the Python packages of the
# `test` extra (JupyterLab 4, Playwright's Python driver): Debian's chromium. No browser
# download: the test drives /usr/bin/chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x /usr/bin/chromium ]]; then
  export DEBIAN_FRONTEND=noninteractive
  sudo=""
  [[ $(id -u) != 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq chromium >/dev/null
fi
test -x /usr/bin/chromium || { echo "setup_browser: /usr/bin/chromium is still missing" >&2; exit 1; }
python -c "import playwright, jupyterlab" || { echo "setup_browser: playwright/jupyterlab not importable (pip install -e '.[test]')" >&2; exit 1; }
