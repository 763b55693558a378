"""The ten defects of AEIMS's PHP DataLayer (REPORT.md section 3), one by one, shown absent here.

Each test is named after what does NOT happen in this data layer, and quotes the defect it
guards against. Everything runs on real files and a real PostgreSQL; outages are a closed port
or a loopback proxy that is cut (or held).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from provisioner.config import load_settings
from provisioner.storage import jsonvalues
from provisioner.storage.aeims.store import AeimsJsonStore
from provisioner.storage.layer.datalayer import DataLayer, DataUnavailable
from provisioner.storage.layer.phase import Phase, phase_file, write_phase
from provisioner.storage.model import ENTITIES
from provisioner.storage.pg import maps as pg_maps
from provisioner.storage.pg import records as pg_records
from provisioner.storage.phpjson.errors import JsonFileError
from tests.datalayer_support import (
    FIXTURE_AEIMS,
    REPO,
    SHARED_AEIMS,
    closed_port_dsn,
    copy_root,
    layer_in,
    layers_closed_after,
    migrate,
    pg_record,
)
from tests.tcp_proxy import TcpProxy

# The plaintext test passwords of the fixture root (tests/fixtures/aeims/README.md).
FIXTURE_PLAINTEXTS = ("fixture-password-1", "fixture-admin-password", "fixture-operator-password")
CUSTOMER_PASSWORD = "fixture-password-1"
OPERATOR_PASSWORD = "fixture-operator-password"
JSON_TRUTH_PHASES = (Phase.JSON_ONLY, Phase.DUAL_WRITE_READ_JSON, Phase.DUAL_WRITE_READ_PG)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return copy_root(FIXTURE_AEIMS, tmp_path / "aeims")


@pytest.fixture
def dsn(fresh_pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A migrated empty database; every DataLayer the test opens is closed before it is dropped
    (a pool left to the garbage collector outlives its database)."""
    migrate(fresh_pg_dsn)
    with layers_closed_after(monkeypatch):
        yield fresh_pg_dsn


class GatedProxy(TcpProxy):
    """A TcpProxy whose client-to-server traffic can be held (`gate.clear()`) and let go.

    Holding it freezes one DataLayer's PostgreSQL statements in flight while the connection
    stays up: a slow database, as one writer sees it, without touching the others.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.gate = threading.Event()
        self.gate.set()
        super().__init__(target_host, target_port)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:  # type: ignore[override]
        try:
            to_server = dst.getpeername()[1] == self.target[1]
            while data := src.recv(65536):
                if to_server:
                    self.gate.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def _proxy_for(dsn: str, proxy_class: type[TcpProxy] = TcpProxy) -> tuple[Any, str]:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    proxy = proxy_class(str(info.get("host", "127.0.0.1")), int(info.get("port", 5432)))
    return proxy, psycopg.conninfo.make_conninfo(dsn, host="127.0.0.1", port=proxy.port)


@pytest.fixture
def proxy(dsn: str) -> Iterator[Any]:
    proxy, proxy.dsn = _proxy_for(dsn)
    yield proxy
    proxy.cut()


def customers_file(root: Path) -> dict[str, Any]:
    return json.loads((root / "data/customers.json").read_text())["customers"]


def pg_row(dsn: str, query: str, *params: Any) -> tuple[Any, ...] | None:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params or None).fetchone()


def with_credits(layer: DataLayer, login: str, credits: int) -> dict[str, Any]:
    customer = layer.get_customer(login)
    assert customer is not None
    customer["billing"]["credits"] = credits
    return customer


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """The file (or folder) refuses writes, even to root (whom a 0444/0555 mode does not
    stop)."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("running as root without chattr: cannot make a file read-only")
    if subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem has no immutable flag")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


# ============================================================================================
# 1. "isAvailable() crashes when the DB is down ... so auth breaks"
# ============================================================================================
@pytest.mark.parametrize("phase", JSON_TRUTH_PHASES, ids=lambda p: p.value)
def test_auth_does_not_break_when_the_database_port_is_closed(root: Path, phase: Phase) -> None:
    """PHP: `isConnected()` calls `->query()` on a null connection and the uncaught Error breaks
    every login. Here a dead database is a fallback: logins work, failures are still counted,
    and health() reports the outage without revealing the DSN's password."""
    write_phase(root, phase)
    layer = DataLayer(root, closed_port_dsn() + " password=never-shown-secret", retry_seconds=60)

    assert layer.authenticate("alice", CUSTOMER_PASSWORD).ok
    assert layer.authenticate("jade", OPERATOR_PASSWORD).ok
    assert layer.authenticate("alice", "wrong").reason == "invalid"
    assert layer.get("account_locks", "alice")["attempts"] == 1
    report = layer.health()

    uses_pg = phase is not Phase.JSON_ONLY
    assert report["database"]["reachable"] is False
    assert report["degraded"] is uses_pg
    assert report["phase"] == phase.value
    assert "never-shown-secret" not in json.dumps(report)
    if uses_pg:  # jade's expired lock cleared, alice's failure counted: both wait in the outbox
        assert report["outbox_depth"] == 2


def test_auth_does_not_break_when_the_database_goes_away(root: Path, proxy: Any) -> None:
    """PHP: the outage Phase 1 was meant to survive took auth down. Here the database dies
    under a running layer (dual_write_read_json) and logins, lockout counting and health()
    keep working; the counter reaches PostgreSQL once the database is back."""
    layer = layer_in(root, proxy.dsn, Phase.DUAL_WRITE_READ_JSON, retry_seconds=0.0)
    assert layer.authenticate("alice", CUSTOMER_PASSWORD).ok
    proxy.cut()

    assert layer.authenticate("jade", OPERATOR_PASSWORD).ok
    assert layer.authenticate("jade", "wrong").reason == "invalid"
    down = layer.health()
    assert down["database"]["reachable"] is False and down["degraded"] is True

    proxy.restore()
    assert layer.reconcile() == 2  # jade's expired lock cleared, then a new failure counted
    assert layer.health()["degraded"] is False
    assert pg_record(proxy.dsn, "account_locks", "jade")["attempts"] == 1


def test_pg_only_outage_is_a_clear_error_not_a_crash(root: Path, proxy: Any) -> None:
    """In pg_only JSON is no longer written, so there is nothing current to fall back to:
    a login during an outage is a DataUnavailable naming the phase and the way out."""
    layer = layer_in(root, proxy.dsn, Phase.PG_ONLY)
    proxy.cut()

    with pytest.raises(DataUnavailable, match=r"pg_only.*USE_DATABASE=false"):
        layer.authenticate("alice", CUSTOMER_PASSWORD)
    assert layer.health()["database"]["reachable"] is False


# ============================================================================================
# 2. "USE_DATABASE=true with DUAL_WRITE=false gives stale reads"
# ============================================================================================
@pytest.mark.parametrize("phase", [Phase.DUAL_WRITE_READ_PG, Phase.PG_ONLY], ids=lambda p: p.value)
def test_reads_from_postgresql_are_never_stale(root: Path, dsn: str, phase: Phase) -> None:
    """PHP: reads switched to the DB while writes stayed JSON-only. Here every phase that reads
    PostgreSQL writes it too: a write is read back at once, by the writing layer and by another
    one (what another process sees)."""
    writer = layer_in(root, dsn, phase)
    other_process = DataLayer(root, dsn)

    writer.save_customer(with_credits(writer, "alice", 71))
    new_key = writer.save_message({"conversation_id": "conv_1", "content": "fresh"})

    for layer in (writer, other_process):
        assert layer.get_customer("alice")["billing"]["credits"] == 71
        assert layer.get("messages", new_key)["content"] == "fresh"
    assert pg_record(dsn, "customers", "cust_alice")["billing"]["credits"] == 71


@pytest.mark.parametrize("persisted", list(Phase), ids=lambda p: p.value)
def test_no_flag_combination_reads_postgresql_without_writing_it(
    root: Path, persisted: Phase
) -> None:
    """The PHP flags allowed "read the DB, write JSON only". Here, for every persisted phase and
    every value of USE_DATABASE and USE_JSON (unset, true, false), with or without a DSN, the
    phase in force never reads PostgreSQL without writing it."""
    write_phase(root, persisted)
    for dsn in (closed_port_dsn(), None):
        for use_database in (None, True, False):
            for use_json in (None, True, False):
                layer = DataLayer(root, dsn, use_database=use_database, use_json=use_json)
                phase = layer.phase().phase
                assert phase.writes_pg or not phase.reads_pg, (dsn, use_database, use_json)
                assert phase.writes_json or phase.writes_pg
                if use_database is False or dsn is None:
                    assert phase is Phase.JSON_ONLY


def test_php_dual_write_false_cannot_turn_off_postgresql_writes(root: Path, tmp_path: Path) -> None:
    """The PHP stale-read recipe, USE_DATABASE=true with DUAL_WRITE=false, in the environment:
    DUAL_WRITE is not a setting here, so the persisted phase alone decides and still writes
    PostgreSQL whenever it reads it."""
    env = {
        "PROVISION_DATA_DIR": str(root),
        "PROVISION_PG_DSN": closed_port_dsn(),
        "USE_DATABASE": "true",
        "DUAL_WRITE": "false",
    }
    for persisted in Phase:
        write_phase(root, persisted)
        layer = DataLayer.from_settings(load_settings(env, config_file=tmp_path / "none.toml"))
        assert layer.phase().phase is persisted
        assert layer.phase().phase.writes_pg or not layer.phase().phase.reads_pg


# ============================================================================================
# 3. "No reconciliation. There is no outbox or retry; check-then-insert runs without a
#    transaction or ON CONFLICT; a failed JSON write still triggers the DB write."
# ============================================================================================
def test_inserts_and_deletes_made_during_an_outage_are_not_lost(
    root: Path, dsn: str, proxy: Any
) -> None:
    """PHP: DB errors were only logged, so the DB silently missed writes. Here a new record and
    a deletion made while PostgreSQL is down reach it once it is back (dual_write_read_pg)."""
    layer = layer_in(root, proxy.dsn, Phase.DUAL_WRITE_READ_PG, retry_seconds=0.0)
    proxy.cut()

    message = layer.save_message({"conversation_id": "conv_1", "content": "while down"})
    assert layer.delete("messages", "msg_fixture1")
    assert layer.outbox.depth() == 2
    assert layer.get("messages", message)["content"] == "while down"  # JSON is the truth
    proxy.restore()

    assert layer.reconcile() == 2
    assert pg_record(dsn, "messages", message)["content"] == "while down"
    assert pg_record(dsn, "messages", "msg_fixture1") is None
    assert [m["content"] for m in layer.get_messages("conv_1")] == ["while down"]


def test_concurrent_first_inserts_of_one_key_neither_fail_nor_duplicate(
    root: Path, dsn: str
) -> None:
    """PHP: check-then-insert with no transaction and no ON CONFLICT, so two first saves of a
    new record raced into a failure or a duplicate. Here 8 threads over 4 layers (as 4
    processes would) insert the same new customer at once: no error, one record in JSON, one
    row in PostgreSQL, holding one of the values written."""
    layer_in(root, dsn, Phase.DUAL_WRITE_READ_JSON).close()
    layers = [DataLayer(root, dsn) for _ in range(4)]
    for layer in layers:
        layer.get_customer("alice")  # phase and files loaded: the saves start together
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def insert(i: int) -> None:
        try:
            start.wait()
            layers[i % 4].save_customer(
                {"customer_id": "cust_race", "username": "racer", "billing": {"credits": i}}
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=insert, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    in_json = [k for k in customers_file(root) if k.startswith("cust_race")]
    assert in_json == ["cust_race"]
    assert pg_row(dsn, "SELECT count(*) FROM customers WHERE customer_id LIKE 'cust_race%'") == (1,)
    assert pg_record(dsn, "customers", "cust_race")["billing"]["credits"] in range(8)
    assert layers[0].outbox.depth() == 0


def test_a_slow_writer_does_not_leave_postgresql_behind_json(root: Path, dsn: str) -> None:
    """Two processes save the same customer; A's PostgreSQL statement is held in flight while
    B saves after it. B waits for A's PostgreSQL half, so JSON and PostgreSQL both end with
    B's state."""
    gated, gated_dsn = _proxy_for(dsn, GatedProxy)
    layer_in(root, dsn, Phase.DUAL_WRITE_READ_JSON).close()
    slow = DataLayer(root, gated_dsn, connect_timeout=5.0)
    fast = DataLayer(root, dsn)
    try:
        slow.set_phase(Phase.DUAL_WRITE_READ_JSON)  # its pool is open, through the gate
        gated.gate.clear()
        slow_save = threading.Thread(
            target=slow.save_customer, args=(with_credits(slow, "alice", 111),)
        )
        slow_save.start()
        wait_until(
            lambda: customers_file(root)["cust_alice"]["billing"]["credits"] == 111,
            "the slow writer's JSON half",
        )

        # The later writer queues behind the slow one (JSON and PostgreSQL halves together)...
        fast_save = threading.Thread(
            target=fast.save_customer, args=(with_credits(fast, "alice", 222),)
        )
        fast_save.start()
        fast_save.join(timeout=0.3)
        assert fast_save.is_alive(), "the later write did not wait for the slow one"
        gated.gate.set()  # ...and goes on once the slow writer's PostgreSQL half is done.
        slow_save.join()
        fast_save.join()
        slow.reconcile()
        fast.reconcile()

        assert customers_file(root)["cust_alice"]["billing"]["credits"] == 222
        assert pg_record(dsn, "customers", "cust_alice")["billing"]["credits"] == 222
    finally:
        gated.gate.set()
        fast.close()
        slow.close()
        gated.cut()


@pytest.mark.parametrize("breakage", ["bad_file", "read_only_file"])
def test_a_failed_json_write_does_not_reach_postgresql(root: Path, dsn: str, breakage: str) -> None:
    """PHP: a failed JSON write still triggered the DB write, so the DB held what JSON never
    did. Here the JSON half failing (a malformed file, a file of the wrong shape, a file
    that refuses writes) is a clear error naming the file, and nothing reaches
    PostgreSQL, directly or through the outbox."""
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_JSON)
    alice = with_credits(layer, "alice", 999)
    path = root / "data/customers.json"
    if breakage == "read_only_file":  # files are rewritten in place: the folder may be read-only
        attempts = [(path.read_bytes(), read_only(path))]
    else:
        truncated = path.read_bytes()[:-40]
        attempts = [
            (truncated, contextlib.nullcontext()),
            (b'{"customers": "not records"}', contextlib.nullcontext()),
        ]

    for content, condition in attempts:
        path.write_bytes(content)
        with condition, pytest.raises(JsonFileError) as caught:
            layer.save_customer(alice)

        assert "customers.json" in str(caught.value)
        assert "nothing was changed" in str(caught.value).lower()
        assert path.read_bytes() == content
    assert pg_record(dsn, "customers", "cust_alice")["billing"]["credits"] == 25
    assert layer.outbox.depth() == 0


# ============================================================================================
# 4. "ids diverge. DB inserts omit the JSON ids."
# ============================================================================================
def _write_one_of_everything(layer: DataLayer) -> None:
    """New records of every kind through the public API, most without an id of their own."""
    layer.save_customer({"username": "newbie", "email": "newbie@example.test"})
    layer.save_operator({"name": "New Operator", "email": "newop@example.test"})
    layer.save_operator({**layer.get_operator("jade"), "status": "busy"})
    layer.save_site({"site_id": "gamma_example_test", "domain": "gamma.example.test"})
    conversation = layer.save_conversation({"customer_id": "cust_alice", "operator_id": "op_zero"})
    layer.save_message({"conversation_id": conversation, "content": "hi"})
    room = layer.save_chat_room({"operator_id": "op_zero", "room_name": "New room"})
    layer.save("room_messages", {"room_id": room, "content": "welcome"})
    layer.save("room_invites", {"room_id": room, "customer_id": "cust_bob"})
    layer.save("accounts", {"name": "Second Admin", "type": "admin"}, "admin2")
    layer.add_favorite("cust_bob", "op_jade_001")
    item = layer.save_content_item({"operator_id": "op_zero", "title": "pic", "price": 2})
    layer.purchase_content("cust_alice", item)
    layer.create_notification({"user_id": "cust_alice", "message": "hello"})
    layer.create_operator_request({"operator_id": "op_zero", "customer_id": "cust_alice"})
    layer.save("customer_activity", {"customer_id": "cust_alice", "action": "login"})
    layer.save("id_verifications", {"operator_id": "op_zero", "status": "pending"})
    layer.save("verification_codes", {"code": "VERIFY-NEW", "used": False})
    layer.save("username_reservations", {"user_id": "cust_new"}, "newbie")
    layer.save("rate_limits", {"attempts": 1}, "login:127.0.0.1")
    layer.save("domains", {"status": "active"}, "delta.example.test")
    layer.authenticate("nobody-at-all", "wrong")  # an account_locks record


def test_keys_never_diverge_between_json_and_postgresql(root: Path, dsn: str) -> None:
    """PHP: DB inserts omitted the JSON ids, so the same record had two identities. Here, after
    writes of every kind (new records given generated ids), both stores hold the same keys for
    every entity, each record's id field is its key, and the records are equal."""
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_JSON)
    _write_one_of_everything(layer)

    with psycopg.connect(dsn) as conn:
        for entity in ENTITIES:
            in_json = {r.key: r for r in layer.json.load(entity)}
            in_pg = {r.key: r for r in pg_records.list_records(conn, entity)}
            assert sorted(in_pg) == sorted(in_json), entity
            id_field = pg_maps.ENTITY_MAPS[entity].key_field
            for key, record in in_json.items():
                assert jsonvalues.json_equal(in_pg[key].data, record.without_plaintext().data), key
                if id_field and id_field in record.data:
                    assert str(record.data[id_field]) == key == str(in_pg[key].data[id_field])
    assert layer.outbox.depth() == 0


# ============================================================================================
# 5. "Every customer save zeroes DB credits ... It also puts hashes and the plaintext
#    password into metadata."
# ============================================================================================
@pytest.mark.parametrize(
    "phase", [Phase.DUAL_WRITE_READ_JSON, Phase.PG_ONLY], ids=lambda p: p.value
)
def test_a_customer_save_does_not_zero_credits(root: Path, dsn: str, phase: Phase) -> None:
    """PHP read a top-level `credits` that JSON keeps under billing, so every save wrote 0.
    Here billing.credits lands in the `credits` column and in the record, and a save that does
    not touch billing keeps them."""
    layer = layer_in(root, dsn, phase)
    credits = "SELECT credits, total_spent FROM customers WHERE customer_id = 'cust_alice'"
    assert pg_row(dsn, credits) == (25, 15.5)

    layer.save_customer({**layer.get_customer("alice"), "email": "alice@new.example.test"})
    assert pg_row(dsn, credits) == (25, 15.5)

    layer.save_customer(with_credits(layer, "alice", 37))
    assert pg_row(dsn, credits) == (37, 15.5)
    assert layer.get_customer("alice")["billing"] == {
        "credits": 37,
        "total_spent": 15.5,
        "payment_methods": [],
    }


_HASH = re.compile(r"\$(2[abxy]|argon2i?d?)\$")


def _hash_paths(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _hash_paths(item, (*path, str(name)))
    elif isinstance(value, list):
        for item in value:
            yield from _hash_paths(item, path)
    elif isinstance(value, str) and _HASH.search(value):
        yield path


def test_no_plaintext_or_stray_hash_reaches_postgresql(root: Path, dsn: str) -> None:
    """PHP put the hash and the plaintext password into metadata. Here, after a backfill and
    saves of records still carrying their plaintext (as read from JSON), a text dump of every
    table and view holds none of the fixture's plaintext passwords, and password hashes sit
    only in the columns meant for them."""
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_JSON)
    alice = layer.get_customer("alice")
    assert alice["password_plaintext_for_testing"] == CUSTOMER_PASSWORD  # JSON keeps it
    layer.save_customer(with_credits(layer, "alice", 30))
    layer.save(
        "accounts",
        {**layer.get("accounts", "admin"), "name": "Renamed"},
        "admin",
    )
    layer.save_customer(
        {
            "username": "plain",
            "password_hash": "$2y$04$" + "x" * 53,
            "password_plaintext_for_testing": FIXTURE_PLAINTEXTS[2],
        }
    )

    with psycopg.connect(dsn) as conn:
        relations = [
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
        assert "customers" in relations and "operators" in relations
        for relation in relations:
            rows = conn.execute(
                sql.SQL("SELECT to_jsonb(t) FROM {} AS t").format(sql.Identifier(relation))
            ).fetchall()
            dump = json.dumps([r[0] for r in rows], ensure_ascii=False)
            for plaintext in FIXTURE_PLAINTEXTS:
                assert plaintext not in dump, f"{plaintext!r} in {relation}"
            assert "password_plaintext" not in dump, relation
            for (row,) in rows:
                for where in _hash_paths(row):
                    assert where in {("password_hash",), ("pin_code",)}, (relation, where)


# ============================================================================================
# 6. "Operator inserts fail whenever a boolean is false ... status='active' violates
#    production's CHECK constraint."
# ============================================================================================
@pytest.mark.parametrize("phase", [Phase.DUAL_WRITE_READ_PG, Phase.PG_ONLY], ids=lambda p: p.value)
def test_operator_saves_do_not_fail_on_false_booleans_or_any_status(
    root: Path, dsn: str, phase: Phase
) -> None:
    """PHP bound `false` as '' (rejected for a boolean), and production's status CHECK refused
    'active'. Here a new operator and an existing one save with every boolean false and with
    any status, and both stores keep the real `False`."""
    layer = layer_in(root, dsn, phase)
    new_id = layer.save_operator(
        {
            "name": "Falsy",
            "email": "falsy@example.test",
            "verified": False,
            "status": "pending_review",
            "domains": {"alpha.example.test": {"role": "operator", "active": False}},
            "settings": {"availability": {"online": False}},
        }
    )
    jade = layer.get_operator("jade")
    for status in ("active", "inactive", "suspended", "on_break", "", "Ünïcode ✨"):
        layer.save_operator({**jade, "verified": False, "status": status})
        assert pg_row(
            dsn, "SELECT status, verified FROM operators WHERE operator_id = 'op_jade_001'"
        ) == (status, False)

    assert pg_row(dsn, "SELECT verified FROM operators WHERE operator_id = %s", new_id) == (False,)
    assert pg_row(dsn, "SELECT active FROM operator_sites WHERE operator_id = %s", new_id) == (
        False,
    )
    saved = layer.get_operator_by_id(new_id)
    assert saved["verified"] is False
    assert saved["settings"]["availability"]["online"] is False
    assert saved["domains"]["alpha.example.test"]["active"] is False
    if phase.writes_json:
        assert layer.json.get("operators", new_id).data["verified"] is False


# ============================================================================================
# 7. "JSON writes are not safe ... A failed json_encode leaves an empty file. The read and
#    write locks are taken separately, so updates can be lost."
# ============================================================================================
def test_an_encode_failure_does_not_touch_the_file(root: Path, dsn: str) -> None:
    """PHP truncated the file before encoding, so a failed json_encode left it empty. Here a
    value JSON cannot hold (NaN, infinity, a set, bytes) is an error before anything is
    written: the file is byte-identical, no temp file is left, and PostgreSQL is unchanged."""
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_JSON)
    path = root / "data/customers.json"
    before = path.read_bytes()
    files_before = sorted(p.name for p in path.parent.iterdir())
    alice = layer.get_customer("alice")

    for unencodable in (float("nan"), float("inf"), {"a", "set"}, b"bytes"):
        with pytest.raises((ValueError, TypeError)):
            layer.save_customer({**alice, "profile": {**alice["profile"], "bad": unencodable}})

        assert path.read_bytes() == before, unencodable
        assert sorted(p.name for p in path.parent.iterdir()) == files_before
    assert "bad" not in pg_record(dsn, "customers", "cust_alice")["profile"]
    assert layer.outbox.depth() == 0


def test_concurrent_read_modify_writes_do_not_lose_updates(root: Path) -> None:
    """PHP took its read lock and its write lock separately, so two writers lost one update.
    Here 4 layers (as 4 processes would) rewrite customers.json concurrently, each for its own
    customers: every last write is there."""
    layers = [DataLayer(root) for _ in range(4)]
    for i, layer in enumerate(layers):
        for j in range(3):
            layer.save_customer({"customer_id": f"cust_t{i}_{j}", "billing": {"credits": -1}})
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def update(i: int) -> None:
        try:
            start.wait()
            for n in range(15):
                layers[i].save_customer(
                    {"customer_id": f"cust_t{i}_{n % 3}", "billing": {"credits": n}}
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=update, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    customers = customers_file(root)
    for i in range(4):
        for j in range(3):
            assert customers[f"cust_t{i}_{j}"]["billing"]["credits"] == 12 + j
    assert {"cust_alice", "cust_bob"} <= customers.keys()


# ============================================================================================
# 8. "Rooms are expected under {"rooms"}, but the file is a list. getOperatorByIdFromJSON looks
#    up by key, not by id."
# ============================================================================================
def test_saving_a_chat_room_does_not_change_the_files_shape(root: Path, dsn: str) -> None:
    """PHP expected {"rooms": ...} and rewrote the list file into another shape. Here updating
    a room and adding one keeps chat_rooms.json a list, in order, with the new room last."""
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_JSON)
    room = layer.get_chat_rooms("op_jade_001")[0]
    layer.save_chat_room({**room, "room_name": "Renamed"})
    new_room = layer.save_chat_room({"operator_id": "op_jade_001", "room_name": "Second"})

    rooms = json.loads((root / "data/chat_rooms.json").read_text())
    assert isinstance(rooms, list)
    assert [r["room_id"] for r in rooms] == ["room_fixture_001", "room_fixture_002", new_room]
    assert rooms[0]["room_name"] == "Renamed"
    assert pg_record(dsn, "chat_rooms", new_room)["room_name"] == "Second"


def _operators_by_file_key(root: Path) -> dict[str, str]:
    """file key -> id, over both operator files."""
    data = json.loads((root / "data/operators.json").read_text())["operators"]
    agents = json.loads((root / "agents/data/operators.json").read_text())
    agents_items = agents.items() if isinstance(agents, dict) else enumerate(agents)
    found = {str(k): v["id"] for k, v in agents_items}
    found.update({k: v["id"] for k, v in data.items()})
    return found


@pytest.mark.parametrize("source", ["fixtures", "real"])
def test_operators_are_not_looked_up_by_file_key(tmp_path: Path, dsn: str, source: str) -> None:
    """PHP's getOperatorByIdFromJSON looked the id up as a file key ("0", "jade"), so ids
    never matched. Here get_operator_by_id finds every operator of both files by its `id`,
    from JSON and from PostgreSQL, and a file key that is not an id finds nothing."""
    if source == "real" and not SHARED_AEIMS.is_dir():
        pytest.skip("the real AEIMS files are not here")
    root = copy_root(FIXTURE_AEIMS if source == "fixtures" else SHARED_AEIMS, tmp_path / "a")
    by_key = _operators_by_file_key(root)
    assert any(key != op_id for key, op_id in by_key.items())
    json_side = DataLayer(root)
    pg_side = layer_in(root, dsn, Phase.DUAL_WRITE_READ_PG)

    for layer in (json_side, pg_side):
        for key, op_id in by_key.items():
            assert layer.get_operator_by_id(op_id)["id"] == op_id
            if key not in by_key.values():
                assert layer.get_operator_by_id(key) is None


# ============================================================================================
# 9. "54 DataLayer methods called by 9 service classes do not exist (saveSite,
#    saveTransaction, ...), so those calls are fatal."
# ============================================================================================
PHP_TO_PYTHON: dict[str, str] = {
    "getCustomer": "get_customer",
    "saveCustomer": "save_customer",
    "searchCustomers": "search_customers",
    "getOperator": "get_operator",
    "getOperatorById": "get_operator_by_id",
    "saveOperator": "save_operator",
    "searchOperators": "search_operators",
    "getMessages": "get_messages",
    "saveMessage": "save_message",
    "getSite": "get_site",
    "getAllSites": "list_sites",
    "saveSite": "save_site",
    "getFavorites": "get_favorites",
    "addFavorite": "add_favorite",
    "removeFavorite": "remove_favorite",
    "getContentItems": "get_content_items",
    "saveContentItem": "save_content_item",
    "purchaseContent": "purchase_content",
    "getChatRooms": "get_chat_rooms",
    "saveChatRoom": "save_chat_room",
    "getNotifications": "get_notifications",
    "createNotification": "create_notification",
    "markNotificationRead": "mark_notification_read",
    "getTransactions": "get_transactions",
    "recordTransaction": "record_transaction",
    "saveTransaction": "record_transaction",
    "getOperatorRequests": "get_operator_requests",
    "createOperatorRequest": "create_operator_request",
}


def test_every_php_datalayer_method_has_a_counterpart() -> None:
    """PHP services called methods the DataLayer never had. Here every public method of the
    PHP DataLayer (and the missing saveSite/saveTransaction) exists on DataLayer."""
    missing = [
        php
        for php, python in PHP_TO_PYTHON.items()
        if not callable(getattr(DataLayer, python, None))
    ]
    assert missing == []


def _call_every_php_method(layer: DataLayer) -> set[str]:
    """Each PHP method, by its Python name, with sensible arguments; returns the names called."""
    called: set[str] = set()

    def php(name: str, *args: Any) -> Any:
        called.add(name)
        return getattr(layer, PHP_TO_PYTHON[name])(*args)

    alice = php("getCustomer", "alice")
    assert alice["customer_id"] == "cust_alice"
    assert php("saveCustomer", {**alice, "email": "alice2@example.test"}) == "cust_alice"
    assert [c["customer_id"] for c in php("searchCustomers", "alice2")] == ["cust_alice"]
    jade = php("getOperator", "jade")
    assert jade["id"] == "op_jade_001"
    assert php("getOperatorById", "op_zero")["name"] == "Zoe Zero"
    assert php("saveOperator", {**jade, "status": "busy"}) == "op_jade_001"
    assert [o["id"] for o in php("searchOperators", "jade")] == ["op_jade_001"]
    site = php("saveSite", {"site_id": "gamma_example_test", "domain": "gamma.example.test"})
    assert php("getSite", "gamma.example.test")["site_id"] == site
    assert {s["site_id"] for s in php("getAllSites")} >= {"alpha_example_test", site}
    message = php("saveMessage", {"conversation_id": "conv_1", "content": "hello"})
    assert message in [m["message_id"] for m in php("getMessages", "conv_1")]
    php("addFavorite", "cust_bob", "op_jade_001")
    assert "op_jade_001" in php("getFavorites", "cust_bob")
    php("removeFavorite", "cust_bob", "op_jade_001")
    assert "op_jade_001" not in php("getFavorites", "cust_bob")
    item = php("saveContentItem", {"operator_id": "op_zero", "title": "pic", "price": 5})
    assert [i["content_id"] for i in php("getContentItems", "op_zero")] == [item]
    assert php("purchaseContent", "cust_alice", item)["price"] == 5
    room = php("saveChatRoom", {"operator_id": "op_zero", "room_name": "Zero's"})
    assert [r["room_id"] for r in php("getChatRooms", "op_zero")] == [room]
    note = php("createNotification", {"user_id": "cust_alice", "message": "hi"})
    assert [n["notification_id"] for n in php("getNotifications", "cust_alice", True)] == [note]
    php("markNotificationRead", note)
    assert php("getNotifications", "cust_alice", True) == []
    tx = php("recordTransaction", {"customer_id": "cust_bob", "amount": 3})
    tx2 = php("saveTransaction", {"customer_id": "cust_bob", "amount": 4})
    assert {t["transaction_id"] for t in php("getTransactions", "cust_bob")} == {tx, tx2}
    request = php("createOperatorRequest", {"operator_id": "op_zero", "customer_id": "cust_bob"})
    assert [r["request_id"] for r in php("getOperatorRequests", "op_zero")] == [request]
    assert layer.get_customer("alice")["billing"]["credits"] == 20
    return called


@pytest.mark.parametrize(
    "phase", [Phase.JSON_ONLY, Phase.DUAL_WRITE_READ_PG], ids=lambda p: p.value
)
def test_php_datalayer_calls_are_not_fatal(
    root: Path, request: pytest.FixtureRequest, phase: Phase
) -> None:
    """Calling each PHP method's counterpart with sensible arguments works, whether the layer
    has no database (json_only) or reads PostgreSQL (dual_write_read_pg)."""
    if phase is Phase.JSON_ONLY:
        layer = DataLayer(root)
    else:
        dsn = request.getfixturevalue("dsn")
        layer = layer_in(root, dsn, phase)

    assert _call_every_php_method(layer) == set(PHP_TO_PYTHON)
    assert layer.outbox.depth() == 0


# ============================================================================================
# 10. "The data is in the image and public. data/ is baked into the image ... and the files
#     are served over HTTP with no deny rule."
# ============================================================================================
def _world_bits(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode) & 0o007


def test_the_layers_own_files_are_not_world_readable(root: Path, dsn: str, proxy: Any) -> None:
    """The outbox names records (logins, customer ids) and the phase steers every process:
    under the usual 022 umask, `.provision/`, its phase file, outbox and lock are private to
    the owner, before and after an outbox drain."""
    old_umask = os.umask(0o022)
    try:
        layer = layer_in(root, proxy.dsn, Phase.DUAL_WRITE_READ_JSON, retry_seconds=0.0)
        proxy.cut()
        layer.save_customer(with_credits(layer, "alice", 5))
        private = [
            phase_file(root).parent,
            phase_file(root),
            layer.outbox.path,
            layer.outbox.lock_path,
        ]
        before = {p.name: oct(_world_bits(p)) for p in private}
        proxy.restore()
        assert layer.reconcile() == 1
        after = {p.name: oct(_world_bits(p)) for p in private}
    finally:
        os.umask(old_umask)
    assert before == after == {p.name: "0o0" for p in private}


def test_the_data_folder_is_any_path_outside_the_code_tree(tmp_path: Path, dsn: str) -> None:
    """PHP baked data/ into the image (redeploys discarded writes). Here the data folder is
    whatever PROVISION_DATA_DIR names (a volume: any path, spaces included); the layer keeps
    everything it writes there; it has no default inside the code tree."""
    volume = copy_root(FIXTURE_AEIMS, tmp_path / "mounted volume" / "aeims data")
    env = {"PROVISION_DATA_DIR": str(volume), "PROVISION_PG_DSN": dsn}
    layer = DataLayer.from_settings(load_settings(env, config_file=tmp_path / "none.toml"))
    layer.set_phase(Phase.DUAL_WRITE_READ_JSON)

    layer.save_customer(with_credits(layer, "alice", 8))

    written = [phase_file(volume), layer.outbox.lock_path.parent]
    written += [p for e in ENTITIES for p in AeimsJsonStore(volume).file_paths(e)]
    assert all(p.resolve().is_relative_to(volume.resolve()) for p in written)
    assert not volume.resolve().is_relative_to(REPO)
    assert customers_file(volume)["cust_alice"]["billing"]["credits"] == 8
    with pytest.raises(ValueError, match="PROVISION_DATA_DIR"):
        DataLayer.from_settings(load_settings({}, config_file=tmp_path / "none.toml"))
    assert not list((REPO / "provisioner").rglob("customers.json"))
