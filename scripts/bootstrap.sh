#!/usr/bin/env bash
# Sets up a fresh machine for provisioner: the system packages the local stack needs (nginx,
# pebble, PostgreSQL 15), the PHP interpreter the tests run beside the data layer (php-cli) and
# the browser the site tests drive (chromium, with libnss3-tools' certutil) when absent, then
# .venv with the package and its dev extras pinned by constraints.txt.
# Idempotent and quick when nothing changed (a stamp holds the inputs' hash).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PGBIN=${PROVISION_PG_BIN:-/usr/lib/postgresql/15/bin}

say() { printf '[setup] %s\n' "$*"; }

need_apt=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
{ command -v pebble >/dev/null && command -v pebble-challtestsrv >/dev/null; } || need_apt+=(pebble)
[ -x "$PGBIN/initdb" ] || need_apt+=(postgresql-15)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v php >/dev/null || need_apt+=(php-cli)
# The browser tests and `site status --screenshot`: Debian's Chromium, driven by Playwright, and
# certutil for the private NSS database that trusts the local CA's root.
command -v chromium >/dev/null || need_apt+=(chromium)
command -v certutil >/dev/null || need_apt+=(libnss3-tools)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then SUDO=(sudo); else
      echo "[setup] missing system packages: ${need_apt[*]}; run as root or install them with apt-get" >&2
      exit 2
    fi
  else SUDO=(); fi
  say "installing system packages: ${need_apt[*]}"
  # Keep postgresql-common from creating and starting a system cluster on 5432.
  "${SUDO[@]}" mkdir -p /etc/postgresql-common/createcluster.d
  echo 'create_main_cluster = false' | "${SUDO[@]}" tee /etc/postgresql-common/createcluster.d/provision.conf >/dev/null
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -q
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

stamp=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PYTHON" -m venv .venv
fi
if [ "$(cat .venv/.provision-stamp 2>/dev/null)" != "$stamp" ]; then
  say "installing the package into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  # Playwright drives the system's chromium: it never downloads a browser of its own.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
  echo "$stamp" > .venv/.provision-stamp
fi
say "ready"
