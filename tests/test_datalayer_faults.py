"""The data layer under faults (issue 7, found-items 3 to 7 and 10), on real files and a real
PostgreSQL: values no side can store, PostgreSQL halves that fail or are killed half-way, the
quarantine, synchronous commit, a damaged outbox; the PHP application's login rule on both
stores, ambiguous logins refused, the lockout under parallel guessing by threads and processes,
logins with one data file unreadable."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from provisioner.storage.layer.datalayer import DataLayer
from provisioner.storage.layer.phase import Phase
from provisioner.storage.passwords import hash_password
from provisioner.storage.values import UnstorableValue
from tests.datalayer_support import (
    FIXTURE_AEIMS,
    copy_root,
    layer_in,
    layers_closed_after,
    migrate,
    pg_record,
)

PROVISION = str(Path(sys.executable).parent / "provision")
CUSTOMER_PASSWORD = "fixture-password-1"
OPERATOR_PASSWORD = "fixture-operator-password"
ADMIN_PASSWORD = "fixture-admin-password"
# The JSON side, and the PostgreSQL side (read from PostgreSQL, and PostgreSQL alone).
SIDES = [Phase.JSON_ONLY, Phase.DUAL_WRITE_READ_PG, Phase.PG_ONLY]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return copy_root(FIXTURE_AEIMS, tmp_path / "aeims")


@pytest.fixture
def dsn(fresh_pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    migrate(fresh_pg_dsn)
    with layers_closed_after(monkeypatch):
        yield fresh_pg_dsn


def alice_with(layer: DataLayer, **changes: Any) -> dict[str, Any]:
    alice = layer.get_customer("alice")
    assert alice is not None
    for dotted, value in changes.items():
        *parents, name = dotted.split("__")
        node = alice
        for parent in parents:
            node = node[parent]
        node[name] = value
    return alice


def json_alice(root: Path) -> dict[str, Any]:
    return json.loads((root / "data/customers.json").read_text())["customers"]["cust_alice"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every data file's bytes (the layer's own files aside)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*.json"))
        if ".provision" not in p.parts
    }


def layer_in_place(root: Path, dsn: str) -> DataLayer:
    """Another process's layer on the same folder and database (phase as persisted)."""
    return DataLayer(root, dsn)


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"n": value}
    return value


# ------------------------------------------------------------------ 3. values no side can store
UNSTORABLE = {
    "lone surrogate": ("profile__bio", "x\ud800", "profile.bio", "lone surrogate"),
    "NUL": ("username", "al\x00ice", "username", "NUL"),
    "1e20 in a money column": ("billing__credits", 1e20, "billing.credits", "1e+20"),
    "NaN": ("stats__total_calls", float("nan"), "stats.total_calls", "NaN"),
    "Infinity": ("billing__total_spent", float("inf"), "billing.total_spent", "Infinity"),
    "int past 64 bits": ("stats__total_messages", 2**70, "stats.total_messages", "64 bits"),
    "surrogate in a field name": ("profile__x\udc00", 1, "profile", "field name"),
    "nested past PHP's depth": ("profile__deep", nested(600), "profile.deep", "nested deeper"),
}


@pytest.mark.parametrize("case", list(UNSTORABLE), ids=list(UNSTORABLE))
@pytest.mark.parametrize(
    "phase", [Phase.JSON_ONLY, Phase.DUAL_WRITE_READ_PG, Phase.PG_ONLY], ids=lambda p: p.value
)
def test_a_value_no_side_can_store_is_refused_before_anything_is_written(
    root: Path, dsn: str, phase: Phase, case: str
) -> None:
    field, value, path, reason = UNSTORABLE[case]
    layer = layer_in(root, dsn, phase)
    files, before_pg = snapshot(root), pg_record(dsn, "customers", "cust_alice")
    content = {field.split("__")[-1]: value}
    writes = {
        "save": lambda: layer.save_customer(alice_with(layer, **{field: value})),
        "save_many": lambda: layer.save_many("customers", [alice_with(layer, **{field: value})]),
        "helper": lambda: layer.save_message({"conversation_id": "c", "content": content}),
    }

    for name, write in writes.items():
        with pytest.raises(UnstorableValue) as caught:
            write()
        message = str(caught.value)
        assert isinstance(caught.value, ValueError), name
        assert reason in message and "nothing was written" in message, (name, message)
        if name != "helper":
            assert caught.value.entity == "customers", message
            assert caught.value.path.startswith(path), message

    assert snapshot(root) == files
    assert pg_record(dsn, "customers", "cust_alice") == before_pg
    assert layer.outbox.depth() == 0 and not layer.intents.entities()
    assert layer.health()["degraded"] is False


def test_a_key_no_side_can_store_is_refused_too(root: Path) -> None:
    layer = DataLayer(root)
    files = snapshot(root)

    with pytest.raises(UnstorableValue, match="the key holds a NUL"):
        layer.save("accounts", {"name": "Nul", "type": "admin"}, "adm\x00in")
    assert snapshot(root) == files


@pytest.mark.skipif(shutil.which("php") is None, reason="php-cli is not installed")
def test_php_still_decodes_the_file_after_a_refused_surrogate(root: Path) -> None:
    """PHP's json_decode gives NULL for a whole file holding one lone surrogate: every PHP login
    would fail. The refused write leaves a file PHP decodes, and logs alice in from."""
    layer = DataLayer(root)
    with pytest.raises(UnstorableValue):
        layer.save_customer(alice_with(layer, profile__bio="x\ud800"))

    script = (
        "$d = json_decode(file_get_contents($argv[1]), true); if ($d === null) exit(1); "
        '$hash = $d["customers"]["cust_alice"]["password_hash"]; '
        'echo password_verify($argv[2], $hash) ? "ok" : "no";'
    )
    php = subprocess.run(
        ["php", "-r", script, str(root / "data/customers.json"), CUSTOMER_PASSWORD],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert php.returncode == 0 and php.stdout == "ok", php.stderr


# ------------------------------------------------------- 5. PostgreSQL halves that fail for good
REFUSALS = {
    # A constraint PostgreSQL enforces and the layer does not know (IntegrityError).
    "constraint": "ALTER TABLE customers ADD CONSTRAINT no_forbidden "
    "CHECK (display_name IS DISTINCT FROM 'Forbidden name')",
    # A column narrower than the value (DataError: string data right truncation).
    "data error": "ALTER TABLE customers ALTER COLUMN display_name TYPE varchar(5)",
}


@pytest.mark.parametrize("refusal", list(REFUSALS), ids=list(REFUSALS))
def test_a_record_postgresql_refuses_is_quarantined_read_from_json_and_retried(
    root: Path, dsn: str, refusal: str, caplog: pytest.LogCaptureFixture
) -> None:
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_PG)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(REFUSALS[refusal])
        conn.execute("UPDATE customers SET email = 'pg@b.test' WHERE customer_id = 'cust_bob'")
    caplog.set_level("INFO", logger="provisioner.storage")

    layer.save_customer(alice_with(layer, profile__display_name="Forbidden name"))

    # Acknowledged: JSON has it, PostgreSQL does not, and the record is in the quarantine,
    # not in the outbox (where it would hold up every later write) and not lost.
    assert json_alice(root)["profile"]["display_name"] == "Forbidden name"
    assert pg_record(dsn, "customers", "cust_alice")["profile"]["display_name"] == "Alice"
    assert layer.outbox.depth() == 0 and not layer.intents.entities()
    report = layer.health()
    assert report["degraded"] is True
    assert report["quarantine"]["count"] == 1
    assert report["quarantine"]["by_entity"] == {"customers": 1}
    [quarantined] = report["quarantine"]["records"]
    assert quarantined["key"] == "cust_alice" and "SQLSTATE" in quarantined["error"]
    assert "Forbidden" not in json.dumps(report) and "$2y$" not in json.dumps(report)
    assert any('"outbox_quarantined"' in r.getMessage() for r in caplog.records)
    # Reads of that record come from JSON; the others still from PostgreSQL.
    assert layer.get_customer("alice")["profile"]["display_name"] == "Forbidden name"
    assert layer.get("customers", "cust_bob")["email"] == "pg@b.test"
    # Other writes go straight through meanwhile.
    layer.save_message({"conversation_id": "c", "content": "still flowing"})
    assert layer.outbox.depth() == 0

    assert layer.reconcile() == 0  # still refused: kept
    assert layer.health()["quarantine"]["records"][0]["attempts"] == 2
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE customers DROP CONSTRAINT IF EXISTS no_forbidden")
        conn.execute("ALTER TABLE customers ALTER COLUMN display_name TYPE text")

    assert layer.reconcile() == 1
    assert pg_record(dsn, "customers", "cust_alice")["profile"]["display_name"] == "Forbidden name"
    assert layer.health()["degraded"] is False


def test_a_newer_write_postgresql_takes_settles_a_quarantined_record(root: Path, dsn: str) -> None:
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_JSON)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(REFUSALS["constraint"])
    layer.save_customer(alice_with(layer, profile__display_name="Forbidden name"))
    assert layer.quarantine.keys("customers") == {"cust_alice"}

    layer.save_customer(alice_with(layer, profile__display_name="Allowed"))

    assert layer.quarantine.keys("customers") == frozenset()
    assert pg_record(dsn, "customers", "cust_alice")["profile"]["display_name"] == "Allowed"


def test_health_json_lists_the_quarantine_without_secrets_and_exits_1(
    root: Path, dsn: str, tmp_path: Path
) -> None:
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_JSON)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(REFUSALS["constraint"])
    layer.save_customer(alice_with(layer, profile__display_name="Forbidden name"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    env.update(PROVISION_DATA_DIR=str(root), PROVISION_PG_DSN=dsn)
    env["PROVISION_STATE_DIR"] = str(tmp_path / "state")

    as_json = subprocess.run(
        [PROVISION, "data", "health", "--json"], env=env, capture_output=True, text=True
    )
    text = subprocess.run([PROVISION, "data", "health"], env=env, capture_output=True, text=True)

    assert as_json.returncode == 1 and text.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["quarantine"]["by_entity"] == {"customers": 1}
    assert report["quarantine"]["records"][0]["key"] == "cust_alice"
    assert "quarantine:   1 record(s) PostgreSQL refuses (customers 1)" in text.stdout
    reconcile = subprocess.run(
        [PROVISION, "data", "reconcile", "--json"], env=env, capture_output=True, text=True
    )
    assert reconcile.returncode == 1 and json.loads(reconcile.stdout)["quarantined"] == 1
    for output in (as_json.stdout, as_json.stderr, text.stdout, text.stderr, reconcile.stdout):
        for secret in ("Forbidden", "$2y$", CUSTOMER_PASSWORD):
            assert secret not in output


# ------------------------------------------- 5. a writer killed between JSON and PostgreSQL
def _killed_between_json_and_postgresql(root: str, dsn: str, credits: int) -> None:
    """In a child process: the PostgreSQL half kills the process (SIGKILL, no cleanup)."""
    from provisioner.storage.layer import writes

    def die(*_args: object, **_kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    writes.pg_apply = die  # type: ignore[assignment]
    layer = DataLayer(Path(root), dsn)
    layer.save_customer(alice_with(layer, billing__credits=credits))


def run_killed_writer(root: Path, dsn: str, credits: int) -> None:
    child = multiprocessing.get_context("spawn").Process(
        target=_killed_between_json_and_postgresql, args=(str(root), dsn, credits)
    )
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL


def test_a_writer_killed_between_json_and_postgresql_leaves_an_intent_replay_settles(
    root: Path, dsn: str
) -> None:
    layer_in(root, dsn, Phase.DUAL_WRITE_READ_PG).close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE customers SET email = 'pg@b.test' WHERE customer_id = 'cust_bob'")

    run_killed_writer(root, dsn, 4242)

    assert json_alice(root)["billing"]["credits"] == 4242
    assert pg_record(dsn, "customers", "cust_alice")["billing"]["credits"] == 25
    after = layer_in_place(root, dsn)
    assert after.intents.pending_keys("customers") == {"cust_alice"}
    report = after.health()
    assert report["degraded"] is True and report["intents"]["abandoned"] == 1
    # While the intent is pending, that record is read from JSON (PostgreSQL is behind for
    # it); the others still from PostgreSQL. Here no replay may run yet.
    after._leftovers_checked, after._last_drain_try = True, float("inf")
    assert after.get_customer("alice")["billing"]["credits"] == 4242
    assert pg_record(dsn, "customers", "cust_alice")["billing"]["credits"] == 25
    assert after.get("customers", "cust_bob")["email"] == "pg@b.test"

    after.reconcile()

    assert pg_record(dsn, "customers", "cust_alice")["billing"]["credits"] == 4242
    assert not after.intents.entities() and after.outbox.depth() == 0
    assert after.health()["degraded"] is False
    after.close()
    # A fresh process's first read settles what a dead writer left, on its own.
    run_killed_writer(root, dsn, 4343)
    with layer_in_place(root, dsn) as fresh:
        assert fresh.get_customer("alice")["billing"]["credits"] == 4343
    assert pg_record(dsn, "customers", "cust_alice")["billing"]["credits"] == 4343


def test_the_next_write_of_the_entity_settles_a_killed_writers_intent(root: Path, dsn: str) -> None:
    layer_in(root, dsn, Phase.DUAL_WRITE_READ_JSON).close()
    run_killed_writer(root, dsn, 77)
    other = layer_in_place(root, dsn)

    other.save_customer({**other.get("customers", "cust_bob"), "email": "bob@new.test"})
    other.close()

    assert pg_record(dsn, "customers", "cust_alice")["billing"]["credits"] == 77
    assert pg_record(dsn, "customers", "cust_bob")["email"] == "bob@new.test"
    assert other.outbox.depth() == 0 and not other.intents.entities()


def test_intents_ride_the_group_commit(root: Path, dsn: str) -> None:
    """One intents append (one fsync) per batch, not per record."""
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_JSON)
    begin = layer.intents.begin
    batches: list[int] = []

    def counting(entity: str, items: list[tuple[str, str]]) -> Any:
        batches.append(len(items))
        return begin(entity, items)

    layer.intents.begin = counting  # type: ignore[method-assign]
    start = threading.Barrier(8)

    def writer(w: int) -> None:
        start.wait()
        for i in range(25):
            layer.save_message({"conversation_id": f"c{w}", "content": f"m{i}"})

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sum(batches) == 200 and len(batches) < 200
    saved = {r.key for r in layer.json.load("messages")}
    with psycopg.connect(dsn) as conn:
        in_pg = {row[0] for row in conn.execute("SELECT message_id FROM messages")}
    assert len(saved) == len(in_pg) >= 200 and saved == in_pg


# ------------------------------------------------------------------- 6. synchronous commit
def test_the_layers_connections_commit_synchronously_whatever_the_server_default(
    root: Path, dsn: str
) -> None:
    with psycopg.connect(dsn) as raw:
        server_default = raw.execute("SHOW synchronous_commit").fetchone()[0]
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_PG)

    with layer._pg() as conn:
        pooled = conn.execute("SHOW synchronous_commit").fetchone()[0]

    assert pooled == "on"
    if server_default == "on":
        pytest.skip("this server already commits synchronously: the test proves nothing more")
    assert server_default == "off"  # the local stack's setting, which the layer overrides


# -------------------------------------------------------------------- 7. a damaged outbox
def _damage(outbox: Path, how: str) -> None:
    entry = {"id": "e1", "entity": "customers", "key": "cust_bob", "op": "upsert", "at": "x"}
    good = json.dumps(entry) + "\n"
    outbox.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if how == "garbage line":
        outbox.write_text("this is not json\n" + good)
    elif how == "torn last line":
        outbox.write_text(good + '{"id": "e2", "entity": "cust')
    elif how == "invalid UTF-8":
        outbox.write_bytes(b"\xff\xfe\x00garbage\n" + good.encode())
    else:  # unreadable: a folder where the file should be
        outbox.mkdir()


@pytest.mark.parametrize("how", ["garbage line", "torn last line", "invalid UTF-8", "unreadable"])
def test_a_damaged_outbox_does_not_block_logins_and_is_reported(
    root: Path, dsn: str, how: str
) -> None:
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_PG, retry_seconds=0.0)
    _damage(layer.outbox.path, how)

    assert layer.authenticate("alice", CUSTOMER_PASSWORD).ok
    assert layer.authenticate("jade", "wrong").reason == "invalid"
    assert layer.authenticate("admin", "fixture-admin-password").ok
    assert json.loads((root / "data/account_locks.json").read_text())["jade"]["attempts"] == 1

    report = layer.health()
    if how == "unreadable":
        assert report["degraded"] is True
        assert "cannot be read" in report["outbox"]["error"]
        return
    layer.reconcile()
    report = layer.health()
    assert layer.outbox.depth() == 0  # the good entry was replayed
    if how == "torn last line":  # an append cut short: never acknowledged, safely dropped
        assert report["degraded"] is False and not layer.outbox.corrupt_path.exists()
    else:  # a damaged line is kept aside for a human, and reported until then
        assert report["degraded"] is True and report["outbox"]["corrupt_lines"] == 1
        assert layer.outbox.corrupt_path.exists()


PW_HASH = hash_password("pw", 4)


def customer(username: str | int, email: str) -> dict[str, Any]:
    """A new active account whose password is "pw"."""
    return {
        "username": username,
        "email": email,
        "password_hash": PW_HASH,
        "active": True,
    }


# ------------------------------------------------------------------- 10. the PHP login rule
@pytest.mark.parametrize("phase", SIDES, ids=lambda p: p.value)
def test_usernames_match_exactly_emails_ignore_case(root: Path, dsn: str, phase: Phase) -> None:
    layer = layer_in(root, dsn, phase)

    assert layer.authenticate("alice", CUSTOMER_PASSWORD).ok
    assert layer.authenticate(" alice\t", CUSTOMER_PASSWORD).ok  # PHP trims the form input
    assert layer.authenticate("ALICE", CUSTOMER_PASSWORD).reason == "invalid"  # PHP: ===
    assert layer.authenticate("Alice", CUSTOMER_PASSWORD).reason == "invalid"
    assert layer.authenticate("ALICE@EXAMPLE.TEST", CUSTOMER_PASSWORD).ok
    assert layer.authenticate("JADE", OPERATOR_PASSWORD).reason == "invalid"
    assert layer.authenticate("jade@example.TEST", OPERATOR_PASSWORD).ok
    assert layer.authenticate("op_jade_001", OPERATOR_PASSWORD).ok  # an operator's id, exactly
    assert layer.authenticate("OP_JADE_001", OPERATOR_PASSWORD).reason == "invalid"
    assert layer.authenticate("admin", ADMIN_PASSWORD).ok  # accounts.json's key, exactly
    assert layer.authenticate("Admin", ADMIN_PASSWORD).reason == "invalid"
    # An int username is the int, as PHP's === sees it, not the text a login form sends.
    assert layer.find_login("0") is None
    assert layer.find_login(0) == ("operator", layer.find_login("zero@example.test")[1])


@pytest.mark.parametrize("phase", SIDES, ids=lambda p: p.value)
def test_a_login_that_could_name_two_accounts_is_refused(
    root: Path, dsn: str, phase: Phase, caplog: pytest.LogCaptureFixture
) -> None:
    layer = layer_in(root, dsn, phase)
    layer.save_customer(customer("Dana", "dana.upper@example.test"))
    layer.save_customer(customer("dana", "dana.lower@example.test"))
    layer.save_customer(customer("erin@example.test", "erin.one@example.test"))
    layer.save_customer(customer("erin", "Erin@Example.test"))
    layer.save_operator({**customer("fay", "fay@example.test"), "name": "Fay"})
    layer.save_customer(customer("Fay", "fay.customer@example.test"))
    caplog.set_level(logging.INFO, logger="provisioner.storage")

    for login in ("dana", "Dana", "erin@example.test", "fay"):  # each could be two accounts
        result = layer.authenticate(login, "pw")
        assert (result.ok, result.reason) == (False, "ambiguous"), login
    assert layer.authenticate("dana.lower@example.test", "pw").ok  # unambiguous: fine

    events = [json.loads(r.getMessage()) for r in caplog.records]
    ambiguous = [e for e in events if e["event"] == "login_ambiguous"]
    assert [e["matches"] for e in ambiguous] == [2, 2, 2, 2]
    assert ambiguous[-1]["kinds"] == ["customer", "operator"]
    assert "pw" not in json.dumps(events)
    assert layer.get("account_locks", "dana") is None  # no password was checked: not a failure


# --------------------------------------------------------- 7. one unreadable login file
def _break(path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "malformed":
        path.write_bytes(path.read_bytes()[:-30])
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)
    else:  # too big: over a size limit every other file is under
        others = [p.stat().st_size for p in path.parent.parent.rglob("*.json") if p != path]
        limit = max(others) + 1024
        monkeypatch.setenv("PROVISION_JSON_MAX_BYTES", str(limit))
        path.write_bytes(path.read_bytes().rstrip() + b" " * limit + b"\n")


@pytest.mark.parametrize("how", ["malformed", "fifo", "too big"])
@pytest.mark.parametrize(
    "phase", [Phase.JSON_ONLY, Phase.DUAL_WRITE_READ_JSON], ids=lambda p: p.value
)
def test_operator_and_admin_logins_work_with_customers_json_unreadable(
    root: Path, dsn: str, phase: Phase, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = layer_in(root, dsn, phase)
    _break(root / "data/customers.json", how, monkeypatch)

    assert layer.authenticate("jade", OPERATOR_PASSWORD).ok
    assert layer.authenticate("admin", ADMIN_PASSWORD).ok
    assert layer.authenticate("jade", "wrong").reason == "invalid"
    # A customer's login cannot be decided: refused, and not counted against the person.
    assert layer.authenticate("alice", CUSTOMER_PASSWORD).reason == "unavailable"
    assert layer.get("account_locks", "alice") is None
    # Every other entity stays readable.
    assert layer.get_operator("jade")["id"] == "op_jade_001"
    assert [s["site_id"] for s in layer.list_sites()]
    assert layer.get("accounts", "admin") is not None
    assert layer.health()["degraded"] is True


def test_an_unreadable_account_locks_file_refuses_logins_rather_than_stop_counting(
    root: Path,
) -> None:
    layer = DataLayer(root)
    (root / "data/account_locks.json").write_text("{ not json")

    assert layer.authenticate("alice", CUSTOMER_PASSWORD).reason == "unavailable"
    assert layer.authenticate("alice", "wrong").reason == "unavailable"
    assert layer.get_customer("alice") is not None  # reads go on


# ------------------------------------------------------------- 4. parallel guessing
def _guesser(
    root: str,
    dsn: str | None,
    login: str,
    threads: int,
    guesses: int,
    checks: str,
    start: Any,
    results: Any,
) -> None:
    """In a child process: `threads` threads guessing `login`'s password `guesses` times each;
    every check against the account's real hash is appended to the file `checks`."""
    from provisioner.storage.layer import auth

    real = auth.verify_password

    def counted(password: str, stored_hash: str | None) -> bool:
        if stored_hash != auth._DUMMY_HASH:
            fd = os.open(checks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, b"x")
            finally:
                os.close(fd)
        return real(password, stored_hash)

    auth.verify_password = counted  # type: ignore[assignment]
    layer = DataLayer(Path(root), dsn)
    layer.phase()
    reasons: list[str | None] = []

    def guess() -> None:
        for i in range(guesses):
            reasons.append(layer.authenticate(login, f"guess-{i}").reason)

    workers = [threading.Thread(target=guess) for _ in range(threads)]
    start.wait()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put(reasons)


@pytest.mark.parametrize(
    "phase",
    [Phase.JSON_ONLY, Phase.DUAL_WRITE_READ_JSON, Phase.DUAL_WRITE_READ_PG, Phase.PG_ONLY],
    ids=lambda p: p.value,
)
def test_eight_parallel_guessers_get_at_most_five_password_checks(
    root: Path, dsn: str, tmp_path: Path, phase: Phase
) -> None:
    """8 guessers (4 processes of 2 threads) at one login: at most 5 checks of its password
    before the login locks, then every attempt is refused without a check."""
    layer_in(root, dsn, phase).close()
    checks = tmp_path / "checks"
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(4), ctx.Queue()
    processes = [
        ctx.Process(
            target=_guesser,
            args=(str(root), dsn, "alice", 2, 4, str(checks), start, results),
        )
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    reasons = [r for _ in processes for r in results.get(timeout=120)]
    for process in processes:
        process.join(30)
        assert process.exitcode == 0

    assert len(reasons) == 32
    assert checks.stat().st_size == reasons.count("invalid") == 5
    assert reasons.count("locked") == 27
    with DataLayer(root, dsn) as layer:
        assert layer.authenticate("alice", CUSTOMER_PASSWORD).reason == "locked"
