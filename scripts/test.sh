#!/usr/bin/env bash
# Install what the tests need and run the whole suite: lint, types, unit,
# integration (real embedded broker and store) and end-to-end tests.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: kcat (a Kafka client we did not write, for interop
# tests), chromium and chromium-driver (the web page tests); installed when missing.
DEBIAN_PACKAGES=(kcat chromium chromium-driver)
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

echo "== ruff"; .venv/bin/ruff check .
echo "== mypy (strict on processors/ and schemas/)"; .venv/bin/mypy
echo "== pytest"; .venv/bin/python -m pytest "$@"
