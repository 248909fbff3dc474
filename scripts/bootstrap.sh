#!/usr/bin/env bash
# Installs everything the project needs on a fresh machine: system packages (PostgreSQL server
# binaries, Chromium for the browser test) and a virtualenv with the package and its test extra,
# at the versions and hashes of the lockfile (requirements-test.txt).
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# Debian's Chromium for the browser test (Playwright drives it; its own browser download is not used).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ "${#need_apt[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "bootstrap: installing ${need_apt[*]} with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check --upgrade pip
# The locked versions, checked against their hashes (requirements-test.txt, `make lock`), then
# the package itself on top of them without resolving anything again.
.venv/bin/pip install -q --disable-pip-version-check --require-hashes -r requirements-test.txt
.venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
