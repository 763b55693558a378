"""The data layer beside the live PHP application (issue 7, items 1, 2 and the symlink of 7).

PHP's SecurityManager writes in place on the inode it opened (`fopen c+`, `flock`, `ftruncate`,
`fwrite`) and reads under a separate `LOCK_SH`: so this layer rewrites the same inode (never a
rename PHP could wait behind), repairs a rewrite a crash cut short from its durable copy, and
writes again what PHP's stale read-modify-write reverted. The last test runs real PHP
(tests/php/writer.php) beside several processes of the layer and prints the figures.
"""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from provisioner.storage.phpjson import recent_writes, write_ahead
from provisioner.storage.phpjson.errors import JsonFileError
from provisioner.storage.phpjson.files import (
    locked_update,
    locked_update_shared,
    recheck_recent_writes,
)
from provisioner.storage.phpjson.read import read_json
from tests import php_interop

SECURITY_MANAGER = Path(__file__).parent / "php" / "security_manager.php"
PROVISION = str(Path(sys.executable).parent / "provision")


# --------------------------------------------------------------------------------------------
# PHP's protocol, for the deterministic cases (real PHP runs in the last tests)
# --------------------------------------------------------------------------------------------


def php_read(path: Path) -> Any:
    """safeJSONRead: `fopen r`, `flock(LOCK_SH)`, read, unlock."""
    with open(path, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        raw = f.read()
        fcntl.flock(f, fcntl.LOCK_UN)
    return json.loads(raw)


def php_write(path: Path, doc: Any) -> None:
    """safeFileWrite: `fopen c+`, `flock(LOCK_EX)`, `ftruncate`, `fwrite`, on whatever inode
    was opened (no re-check)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(doc, indent=4).encode(), 0)
    finally:
        os.close(fd)


def add(wrapper: str, key: str, value: Any) -> Any:
    """A copy-on-write change for locked_update_shared."""

    def change(doc: Any) -> Any:
        return {**doc, wrapper: {**doc[wrapper], key: value}}

    return change


def remove(wrapper: str, key: str) -> Any:
    def change(doc: Any) -> Any:
        return {**doc, wrapper: {k: v for k, v in doc[wrapper].items() if k != key}}

    return change


@pytest.fixture
def customers(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "customers.json"
    path.parent.mkdir()
    doc = {
        "customers": {
            "cust_a": {"customer_id": "cust_a", "billing": {"credits": 25}},
            "cust_b": {"customer_id": "cust_b", "billing": {"credits": 5}},
        },
        "last_updated": "2025-01-02 10:00:00",
    }
    path.write_text(json.dumps(doc, indent=4))
    return path


# --------------------------------------------------------------------------------------------
# 1. In place, never a rename; crash-safe through the durable copy
# --------------------------------------------------------------------------------------------


def test_a_symlinked_data_file_stays_a_symlink_with_its_owner_and_mode(tmp_path: Path) -> None:
    target = tmp_path / "volume" / "customers.json"
    target.parent.mkdir()
    target.write_text('{"customers": {}}')
    os.chmod(target, 0o640)
    if os.geteuid() == 0:
        os.chown(target, 12345, 23456)
    link = tmp_path / "data" / "customers.json"
    link.parent.mkdir()
    link.symlink_to(target)
    inode = target.stat().st_ino

    locked_update_shared(link, add("customers", "cust_x", {"customer_id": "cust_x"}))

    assert link.is_symlink() and os.readlink(link) == str(target)
    assert read_json(target)["customers"] == {"cust_x": {"customer_id": "cust_x"}}
    after = target.stat()
    assert after.st_ino == inode and stat.S_IMODE(after.st_mode) == 0o640
    if os.geteuid() == 0:
        assert (after.st_uid, after.st_gid) == (12345, 23456)


def _blocked_lock_waiters(inode: int) -> int:
    """flock requests waiting for the file with `inode` (/proc/locks marks them `->`)."""
    count = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        waiting = "->" in fields and fields[fields.index("->") + 1] == "FLOCK"
        if waiting and fields[-3].split(":")[-1] == str(inode):
            count += 1
    return count


@pytest.mark.skipif(shutil.which("php") is None, reason="php-cli is installed by bootstrap.sh")
def test_a_php_write_waiting_for_the_lock_lands_in_the_file(customers: Path) -> None:
    """The case that lost 37 to 55 of PHP's 100 messages: PHP opens the file and waits for
    LOCK_EX while this layer writes. PHP then writes the inode it opened: the file itself."""
    stale = php_read(customers)
    stale["customers"]["cust_php"] = {"customer_id": "cust_php", "billing": {"credits": 1}}
    script = (
        f"require {json.dumps(str(SECURITY_MANAGER))};"
        f"exit(safeFileWrite($argv[1], $argv[2]) ? 0 : 1);"
    )
    inode = customers.stat().st_ino
    php: list[subprocess.Popen[bytes]] = []

    def write_while_php_waits(doc: Any) -> Any:
        php.append(subprocess.Popen(["php", "-r", script, str(customers), json.dumps(stale)]))
        deadline = time.monotonic() + 30
        while _blocked_lock_waiters(inode) == 0:
            assert time.monotonic() < deadline, "PHP never waited for the lock"
            time.sleep(0.01)
        return add("customers", "cust_ours", {"customer_id": "cust_ours"})(doc)

    locked_update_shared(customers, write_while_php_waits)
    assert php[0].wait(30) == 0

    assert customers.stat().st_ino == inode
    assert "cust_php" in php_read(customers)["customers"]  # PHP's write is in the file
    assert recheck_recent_writes(customers) == 1  # and ours, which PHP's stale doc reverted
    assert {"cust_php", "cust_ours"} <= php_read(customers)["customers"].keys()


def _write_then_die(path: str) -> None:
    """A writer killed half-way through its in-place rewrite (after the durable copy)."""
    real = write_ahead.pwrite_all

    def half_then_killed(fd: int, data: Any, offset: int = 0) -> None:
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            real(fd, data[: len(data) - 10], offset)
            os.kill(os.getpid(), signal.SIGKILL)
        real(fd, data, offset)

    write_ahead.pwrite_all = half_then_killed  # type: ignore[assignment]
    locked_update_shared(path, add("customers", "cust_new", {"customer_id": "cust_new"}))


def test_a_rewrite_cut_short_by_a_crash_is_completed_on_the_next_access(customers: Path) -> None:
    before = customers.read_bytes()
    ctx = multiprocessing.get_context("spawn")
    writer = ctx.Process(target=_write_then_die, args=(str(customers),))
    writer.start()
    writer.join(60)
    assert writer.exitcode == -signal.SIGKILL

    torn = customers.read_bytes()
    assert torn != before and b"cust_new" in torn  # all but the end of the new content
    root = customers.parent.parent
    assert recent_writes.health_report(root)["interrupted_writes"] == [str(customers)]

    assert recheck_recent_writes(customers) == 0
    assert set(php_read(customers)["customers"]) == {"cust_a", "cust_b", "cust_new"}
    assert not write_ahead.pending(customers)
    assert recent_writes.health_report(root)["degraded"] is False


def test_what_a_cut_short_rewrite_leaves_is_told_from_a_document_php_wrote() -> None:
    """A crash stops a write between pages; a power loss keeps any subset of sectors (or a
    size change without its data): each sector is then the new content's, the old's, or
    zeros. A document PHP wrote since is not, even one that shares most of the bytes."""
    old = json.dumps({"customers": {f"c{i:03}": {"credits": i} for i in range(300)}}).encode()
    new = old.replace(b'"c150": {"credits": 150}', b'"c150": {"credits": 999}') + b"\n"
    at = write_ahead._first_difference(old, new)
    assert 0 < at <= old.index(b'"c150"')
    copy = write_ahead._Copy(0, 0, new, at, old[at:])
    sectors = range(0, len(new), 512)
    mixed = b"".join((new if n % 2 else old)[i : i + 512] for n, i in enumerate(sectors))
    for left in (mixed, new[:-100], old[: at + 1024] + bytes(len(new) - at - 1024), old):
        assert write_ahead._cut_short(left, copy)
    php = json.loads(old)
    php["customers"]["c299"]["credits"] = 1
    for written_since in (json.dumps(php).encode(), b'{"customers": []}'):
        assert not write_ahead._cut_short(written_since, copy)


def test_a_write_that_failed_is_never_written_again(
    customers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its ledger entries are made durable beside its copy, before the file is touched; a
    write that then fails with the file unchanged (a full disk) takes them back."""
    real = write_ahead.pwrite_all
    once = iter([True])

    def full_disk(fd: int, data: Any, offset: int = 0) -> None:
        if os.fstat(fd).st_ino == customers.stat().st_ino and next(once, False):
            real(fd, data[:100], offset)
            raise OSError(28, "No space left on device")
        real(fd, data, offset)

    monkeypatch.setattr(write_ahead, "pwrite_all", full_disk)
    with pytest.raises(JsonFileError, match="old content was put back"):
        locked_update_shared(customers, add("customers", "cust_x", {"customer_id": "cust_x"}))
    monkeypatch.undo()
    php_write(customers, php_read(customers))  # a foreign write: the next access looks

    assert recheck_recent_writes(customers) == 0
    assert "cust_x" not in php_read(customers)["customers"]


def test_a_copy_older_than_the_file_is_dropped_not_applied(customers: Path) -> None:
    """The copy waits, but the file holds a complete document written since (PHP's, after a
    crash of ours): that write was never acknowledged, PHP's was; the file is left alone."""
    st, old = customers.stat(), customers.read_bytes()
    ours = old.replace(b"25", b"99")
    os.close(write_ahead._write_copy(customers, st, ours, zlib.crc32(ours), old, None))
    php_write(customers, {"customers": {"cust_php": {"customer_id": "cust_php"}}})
    before = customers.read_bytes()

    recheck_recent_writes(customers)

    assert customers.read_bytes() == before
    assert not write_ahead.pending(customers)


# --------------------------------------------------------------------------------------------
# 2. What PHP's stale read-modify-write reverts is written again
# --------------------------------------------------------------------------------------------


def test_reverted_writes_are_written_again_by_the_next_write(
    customers: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stale = php_read(customers)  # PHP reads ...
    locked_update_shared(customers, add("customers", "cust_new", {"customer_id": "cust_new"}))
    credited = {"customer_id": "cust_a", "billing": {"credits": 30}}
    locked_update_shared(customers, add("customers", "cust_a", credited))
    stale["customers"]["cust_b"]["billing"]["credits"] = 6  # ... changes its own customer ...
    php_write(customers, stale)  # ... and writes back what it read: both our writes reverted
    assert "cust_new" not in php_read(customers)["customers"]

    with caplog.at_level(logging.INFO, logger="provisioner.storage"):
        locked_update_shared(customers, add("customers", "cust_c", {"customer_id": "cust_c"}))

    now = php_read(customers)["customers"]
    assert now["cust_new"] == {"customer_id": "cust_new"}
    assert now["cust_a"]["billing"]["credits"] == 30
    assert now["cust_b"]["billing"]["credits"] == 6  # PHP's own write is kept
    events = [json.loads(r.getMessage()) for r in caplog.records if "write_reapplied" in r.message]
    assert [e["count"] for e in events] == [2]
    report = recent_writes.health_report(customers.parent.parent)
    assert report["reapplied_writes"] == 2
    assert {tuple(r["record"]) for r in report["recent_reapplied"]} == {
        ("customers", "cust_new"),
        ("customers", "cust_a"),
    }


def test_a_record_changed_into_something_new_is_not_written_again(customers: Path) -> None:
    locked_update_shared(customers, add("customers", "cust_a", {"customer_id": "cust_a", "n": 1}))
    doc = php_read(customers)
    doc["customers"]["cust_a"]["n"] = 2  # a later, legitimate PHP write
    php_write(customers, doc)

    assert recheck_recent_writes(customers) == 0
    assert php_read(customers)["customers"]["cust_a"]["n"] == 2


def test_a_reverted_deletion_and_a_reverted_list_member_are_written_again(
    tmp_path: Path,
) -> None:
    customers = tmp_path / "customers.json"
    customers.write_text('{"customers": {"cust_a": {"n": 1}, "cust_b": {"n": 2}}}')
    rooms = tmp_path / "chat_rooms.json"
    rooms.write_text('[{"room_id": "room_1", "name": "One"}]')
    stale_customers, stale_rooms = php_read(customers), php_read(rooms)

    locked_update_shared(customers, remove("customers", "cust_b"))
    locked_update_shared(rooms, lambda doc: [*doc, {"room_id": "room_2", "name": "Two"}])
    php_write(customers, stale_customers)
    php_write(rooms, stale_rooms)

    assert recheck_recent_writes(customers) == 1
    assert recheck_recent_writes(rooms) == 1
    assert php_read(customers) == {"customers": {"cust_a": {"n": 1}}}
    assert [r["room_id"] for r in php_read(rooms)] == ["room_1", "room_2"]


def set_credits(credits: int) -> Any:
    """A change of a private copy (locked_update), as the operators' writes make."""

    def change(doc: Any) -> Any:
        doc["customers"]["cust_a"]["billing"]["credits"] = credits
        return doc

    return change


def test_several_writes_to_one_record_are_all_protected(customers: Path) -> None:
    """Reverted to the state before any of the layer's writes, or to one between two of them:
    the latest write comes back either way."""
    stale_first = php_read(customers)
    locked_update(customers, set_credits(1))
    stale_between = php_read(customers)
    locked_update(customers, set_credits(2))

    for stale in (stale_first, stale_between):
        php_write(customers, stale)
        assert recheck_recent_writes(customers) == 1
        assert php_read(customers)["customers"]["cust_a"]["billing"]["credits"] == 2


def test_the_ledger_forgets_writes_seen_intact_after_the_window(
    customers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recent_writes, "REVERT_WINDOW_SECONDS", 0.0)
    monkeypatch.setattr(recent_writes, "_COMPACT_SLACK", 0)
    stale = php_read(customers)
    locked_update_shared(customers, add("customers", "cust_new", {"customer_id": "cust_new"}))
    php_write(customers, php_read(customers))  # a foreign write that keeps it
    assert recheck_recent_writes(customers) == 0  # seen intact after the window: forgotten
    assert write_ahead.ledger_file(customers).read_text() == ""

    php_write(customers, stale)  # too late to be a stale read: legitimately gone
    assert recheck_recent_writes(customers) == 0
    assert "cust_new" not in php_read(customers)["customers"]


def test_reconcile_writes_again_what_php_reverted(customers: Path, tmp_path: Path) -> None:
    root = customers.parent.parent
    stale = php_read(customers)
    locked_update_shared(customers, add("customers", "cust_new", {"customer_id": "cust_new"}))
    php_write(customers, stale)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    env.update(PROVISION_DATA_DIR=str(root), PROVISION_STATE_DIR=str(tmp_path / "state"))

    result = subprocess.run(
        [PROVISION, "data", "reconcile", "--json"], env=env, capture_output=True, text=True
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["reapplied"] == 1
    assert "cust_new" in php_read(customers)["customers"]


def test_a_read_of_the_changed_file_writes_again_what_php_reverted(customers: Path) -> None:
    stale = php_read(customers)
    locked_update_shared(customers, add("customers", "cust_new", {"customer_id": "cust_new"}))
    php_write(customers, stale)

    assert "cust_new" in read_json(customers)["customers"]
    assert "cust_new" in php_read(customers)["customers"]


def test_writes_from_several_threads_and_a_stale_writer_are_all_kept(customers: Path) -> None:
    """Group commit keeps working (one rewrite per batch) with the ledger in the loop."""
    stop = threading.Event()

    def stale_writer() -> None:
        while not stop.is_set():
            doc = php_read(customers)
            time.sleep(0.002)
            php_write(customers, doc)

    php = threading.Thread(target=stale_writer)
    php.start()
    try:
        threads = [
            threading.Thread(
                target=lambda n=n: [
                    locked_update_shared(
                        customers, add("customers", f"cust_t{n}_{i}", {"n": n, "i": i})
                    )
                    for i in range(20)
                ]
            )
            for n in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop.set()
        php.join()
    recheck_recent_writes(customers)
    kept = php_read(customers)["customers"]
    assert {f"cust_t{n}_{i}" for n in range(4) for i in range(20)} <= kept.keys()


# --------------------------------------------------------------------------------------------
# 3. Real PHP beside processes of the layer: the figures
# --------------------------------------------------------------------------------------------


def test_real_php_beside_the_layer(tmp_path: Path) -> None:
    """0 of PHP's acknowledged writes lost with one PHP writer; 0 of the layer's with any
    number, once the layer has touched the files again or reconcile has run. Prints the
    figures (`pytest -s`, or `python -m tests.php_interop`)."""
    assert php_interop.php_binary(), "php-cli is missing: scripts/bootstrap.sh installs it"
    figures = [
        php_interop.run_scenario(scenario, tmp_path / str(index))
        for index, scenario in enumerate(php_interop.SCENARIOS)
    ]
    print("\n" + php_interop.table(figures))

    for f in figures:
        assert f.layer.acknowledged == f.layer.attempted, f.scenario.name
        assert f.layer.lost == 0, f.scenario.name
        if f.scenario.php_writers == 1:
            assert f.php.acknowledged == f.php.attempted
            assert f.php.lost == 0, f.scenario.name
    # The race is real: PHP's stale writes reverted the layer's, which were written again.
    assert sum(f.reapplied for f in figures if f.scenario.layer_writers) > 0
