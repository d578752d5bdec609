#!/usr/bin/env bash
# Build the JupyterLab sidebar from source (labextension/ -> everest_magic/labextension/).
#
#   bash scripts/build_labextension.sh           install node deps (jlpm), build, check
#   bash scripts/build_labextension.sh --check   also fail if the build differs from the
#                                                committed one (CI: catches a stale build)
#
# Needs Node >= 20 and `jlpm` (pip install "jupyterlab==4.*" provides it). yarn.lock pins
# every package; see docs/sidebar.md for the registry-gap resolutions in package.json.
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
[[ "${1:-}" == "--check" ]] && check=1

command -v node >/dev/null || { echo "build_labextension: node is missing (apt-get install -y nodejs)" >&2; exit 1; }
command -v jlpm >/dev/null || { echo "build_labextension: jlpm is missing (pip install 'jupyterlab==4.*')" >&2; exit 1; }

out=everest_magic/labextension
before=""
if [[ $check == 1 ]]; then
  before=$(mktemp -d)
  [[ -d $out ]] && cp -a "$out/." "$before/"
fi

t0=$SECONDS
# --immutable: the lockfile must already describe package.json (CI must not rewrite it)
if [[ $check == 1 ]]; then jlpm install --immutable; else jlpm install; fi
jlpm build:prod
echo "build_labextension: built $out in $((SECONDS - t0)) s"

test -f "$out/package.json" -a -f "$out/static/style.js" || { echo "build_labextension: $out is incomplete" >&2; exit 1; }

if [[ $check == 1 ]]; then
  if ! diff -r "$before" "$out" >/dev/null; then
    diff -r "$before" "$out" | head -20 >&2 || true
    echo "build_labextension: the committed $out differs from a fresh build of labextension/;" \
         "run scripts/build_labextension.sh and commit $out" >&2
    rm -rf "$before"
    exit 1
  fi
  rm -rf "$before"
  echo "build_labextension: the committed build matches the sources"
fi
