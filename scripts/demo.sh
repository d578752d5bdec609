#!/usr/bin/env bash
# Set up and run the demo (trains a CNN on MNIST, indexes two layers, runs exact queries).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-browser
python -m everest_magic.demo --workdir demo_out
