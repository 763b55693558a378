#!/usr/bin/env bash
# Sets up a fresh machine for provisioner: the system packages the local stack needs (nginx,
# PostgreSQL 15), pebble 2.10 (ACME profiles and ARI) unpacked from Debian's package into
# .tools/, the PHP interpreter the tests run beside the data layer (php-cli) and
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
[ -x "$PGBIN/initdb" ] || need_apt+=(postgresql-15)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v curl >/dev/null || need_apt+=(curl)
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

# pebble 2.10 (profiles, ARI with `replaces` checked): bookworm's pebble 2.4 has neither. The
# Debian package (a static Go binary, needing only libc) is fetched at a pinned URL, checked
# against its sha256 and unpacked into .tools/pebble-<version>/ without installing it, so the
# system's packages stay as they are. The devstack runs the binaries from there.
PEBBLE_VERSION=2.10.0
PEBBLE_DEB=pebble_2.10.0+ds1-2_amd64.deb
PEBBLE_SHA256=b9a3a3920143f1a6fc568dfa88247be22cafa96c845fe62938c08982a15df315
PEBBLE_URL=http://deb.debian.org/debian/pool/main/p/pebble/$PEBBLE_DEB
pebble_dir=.tools/pebble-$PEBBLE_VERSION
if [ ! -x "$pebble_dir/usr/bin/pebble" ] || [ ! -x "$pebble_dir/usr/bin/pebble-challtestsrv" ]; then
  if [ "$(dpkg --print-architecture 2>/dev/null || echo unknown)" != amd64 ]; then
    echo "[setup] pebble $PEBBLE_VERSION is pinned for amd64 only; see scripts/bootstrap.sh" >&2
    exit 2
  fi
  say "fetching pebble $PEBBLE_VERSION ($PEBBLE_DEB)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  curl -fsSL --retry 3 -o "$work/$PEBBLE_DEB" "$PEBBLE_URL"
  echo "$PEBBLE_SHA256  $work/$PEBBLE_DEB" | sha256sum -c --quiet - || {
    echo "[setup] $PEBBLE_DEB does not match its pinned sha256; not unpacked" >&2
    exit 2
  }
  dpkg -x "$work/$PEBBLE_DEB" "$work/unpacked"
  rm -rf "$pebble_dir"
  mkdir -p .tools
  mv "$work/unpacked" "$pebble_dir"
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
