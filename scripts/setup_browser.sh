#!/usr/bin/env bash
# What the real-browser test (tests/test_e2e_lab.py) needs: Debian's chromium, the Python
# Playwright driver (no browser download: the test uses /usr/bin/chromium) and JupyterLab 4.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x /usr/bin/chromium ]]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium
fi
# torch is already installed (scripts/setup.sh): nothing here may pull another one
python -m pip install --quiet --disable-pip-version-check "jupyterlab==4.*" playwright
test -x /usr/bin/chromium || { echo "setup_browser: /usr/bin/chromium is still missing" >&2; exit 1; }
python -c "import playwright, jupyterlab" || { echo "setup_browser: playwright/jupyterlab not importable" >&2; exit 1; }
