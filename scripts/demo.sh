#!/usr/bin/env bash
# Set up and run the demo: train the quickstart CNN on the real MNIST, index two layers and
# run exact queries (printed), then execute notebooks/01-quickstart.ipynb into demo_out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-browser
python -m everest_magic.demo --workdir demo_out
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python - <<'PY'
from pathlib import Path
import nbformat
from nbclient import NotebookClient

out = Path("demo_out")   # the notebook reuses the weights the demo trained there
nb = nbformat.read("notebooks/01-quickstart.ipynb", as_version=4)
NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(out)}}).execute()
nbformat.write(nb, out / "01-quickstart.ipynb")
print(f"executed the quickstart notebook: {out / '01-quickstart.ipynb'} "
      "(open it with: jupyter lab demo_out/01-quickstart.ipynb)")
PY
