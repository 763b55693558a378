"""`provision site destroy`, in real processes on the real local stack, the AEIMS data in a
dual-write phase (PostgreSQL too): afterwards nothing of the site is left in any place the
tool writes (but the archive of its folder, the journal and its checkpoints); its certificate
is revoked at the CA (pebble's management API says so); `runs rollback` of a destroy made
with `--keep-certificate` brings the site back, answering over verified HTTPS, converged."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from provisioner.site.cert_store import CertStore
from provisioner.storage.layer.phase import Phase
from tests.datalayer_support import FIXTURE_AEIMS, copy_root, layer_in, migrate
from tests.lifecycle_e2e import NAME, a_records, billing, env, json_of, layer_of, site_made
from tests.site_e2e_support import provision
from tests.test_site_create import https_get

__all__ = ["env"]  # a fixture

# Where the tool writes but a destroyed site may still be named: its journal and checkpoints
# (what `runs rollback` needs), the engine's lock files, and the data layer's own journal.
KEPT = ("/journal/", "/checkpoints/", "/locks/", "/.provision/", "/_archived/")


@pytest.fixture
def dual_env(env: dict[str, str], fresh_pg_dsn: str, tmp_path: Path) -> dict[str, str]:
    migrate(fresh_pg_dsn)
    root = copy_root(FIXTURE_AEIMS, tmp_path / "aeims-dual")
    with layer_in(root, fresh_pg_dsn, Phase.DUAL_WRITE_READ_JSON):
        pass
    return {**env, "PROVISION_DATA_DIR": str(root), "PROVISION_PG_DSN": fresh_pg_dsn}


@pytest.fixture
def site(dual_env: dict[str, str]) -> Iterator[str]:
    with site_made(dual_env) as domain:
        yield domain


def files_naming(folder: Path, domain: str) -> list[str]:
    """Paths under `folder` whose name or content holds `domain` (but the kept places)."""
    found = []
    if not folder.exists():
        return found
    for path in folder.rglob("*"):
        text = str(path)
        if any(kept in text + "/" for kept in KEPT) or path.name == "ledger.json":
            continue  # the ACME rate-limit ledger keeps past orders: the CA still counts them
        if domain in path.name:
            found.append(text)
        elif path.is_file() and not path.is_symlink():
            try:
                if domain.encode() in path.read_bytes():
                    found.append(text)
            except OSError:
                continue
    return found


def pg_rows_naming(dsn: str, domain: str) -> list[str]:
    found = []
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
            "AND table_type = 'BASE TABLE'"
        ).fetchall()
        for (table,) in tables:
            query = sql.SQL("SELECT count(*) FROM {} t WHERE t::text LIKE %s").format(
                sql.Identifier(table)
            )
            row = conn.execute(query, (f"%{domain}%",)).fetchone()
            if row and row[0]:
                found.append(f"{table}: {row[0]} row(s)")
    return found


def residue(env: dict[str, str], domain: str) -> dict[str, Any]:
    """Every place the tool writes, searched for the domain."""
    with layer_of(env) as layer:
        from provisioner.storage.model import ENTITIES

        records = [e for e in ENTITIES if domain in json.dumps(layer.list(e))]
    places = [
        Path(env["PROVISION_SITES_ROOT"]),
        Path(env["PROVISION_NGINX_VHOST_DIR"]),
        Path(env["PROVISION_NGINX_ENABLED_DIR"]),
        Path(env["PROVISION_CERT_DIR"]),
        Path(env["PROVISION_ACME_WEBROOT"]),
        Path(env["PROVISION_DATA_DIR"]),
        Path(env["PROVISION_STATE_DIR"]),
    ]
    return {
        "files": [f for place in places for f in files_naming(place, domain)],
        "data layer": records,
        "postgresql": pg_rows_naming(env["PROVISION_PG_DSN"], domain),
        "route53": a_records(env, domain),
        "billing": billing(env, "GET", domain).status_code,
    }


NOTHING = {"files": [], "data layer": [], "postgresql": [], "route53": [], "billing": 404}


def cert_status(env: dict[str, str], serial: int) -> str:
    """What pebble's management API says of a certificate (Valid or Revoked)."""
    folder = Path(env["PROVISION_DEV_STATE"]) / "pebble"
    config = json.loads((folder / "pebble-config.json").read_text())
    port = config["pebble"]["managementListenAddress"].rsplit(":", 1)[1]
    tls = ssl.create_default_context(cafile=str(folder / "tls-ca.pem"))
    url = f"https://127.0.0.1:{port}/cert-status-by-serial/{serial:x}"
    answer = httpx.get(url, verify=tls, trust_env=False, timeout=10)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["Status"])


def test_destroy_leaves_nothing_and_revokes_the_certificate(
    dual_env: dict[str, str], site: str
) -> None:
    live = CertStore(Path(dual_env["PROVISION_CERT_DIR"]), site).current()
    assert live is not None and cert_status(dual_env, live.serial) == "Valid"
    assert residue(dual_env, site) != NOTHING

    done = json_of(dual_env, "site", "destroy", "--site", site, expect=0)

    assert [s["name"] for s in done["steps"]] == [
        "archive",
        "vhost",
        "certificate",
        "dns",
        "operators",
        "billing",
        "record",
    ]
    assert residue(dual_env, site) == NOTHING
    assert cert_status(dual_env, live.serial) == "Revoked"
    archived = list((Path(dual_env["PROVISION_SITES_ROOT"]) / "_archived").glob(f"{site}_*"))
    assert [p.name for p in archived] == [f"{site}_{done['run_id']}"]
    assert (archived[0] / "index.html").is_file()
    again = json_of(dual_env, "site", "destroy", "--site", site, expect=2)
    assert "no site" in again["msg"]


def test_rollback_of_a_destroy_brings_the_site_back(dual_env: dict[str, str], site: str) -> None:
    live = CertStore(Path(dual_env["PROVISION_CERT_DIR"]), site).current()
    assert live is not None

    done = json_of(dual_env, "site", "destroy", "--site", site, "--keep-certificate", expect=0)
    assert residue(dual_env, site) == NOTHING
    assert cert_status(dual_env, live.serial) == "Valid"

    undone = json_of(dual_env, "runs", "rollback", done["run_id"], expect=0)

    assert undone["status"] == "rolled_back"
    answer = https_get(dual_env, site)
    assert answer.status_code == 200 and NAME in answer.text
    json_of(dual_env, "site", "status", "--site", site, expect=0)
    assert not (
        Path(dual_env["PROVISION_SITES_ROOT"]) / "_archived" / f"{site}_{done['run_id']}"
    ).exists()


def test_destroy_of_an_unknown_site_is_refused(env: dict[str, str]) -> None:
    refused = provision(env, "site", "destroy", "--site", "nowhere.aeims.test")
    assert refused.returncode == 2 and "no site 'nowhere.aeims.test'" in refused.stderr
