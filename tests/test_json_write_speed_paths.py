"""The fast write path: updates of the shared document made copy-on-write, files encoded in
pieces, slot and read indexes carried over from one write to the next. Each is checked
against what it replaces: the whole-document encoder and a full scan of the file."""

from __future__ import annotations

import copy
import fcntl
import json
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.storage.aeims import operators as aeims_operators
from provisioner.storage.aeims import store as aeims_store
from provisioner.storage.aeims.store import AeimsJsonStore
from provisioner.storage.jsonvalues import json_equal
from provisioner.storage.model import StoredRecord
from provisioner.storage.phpjson import files as phpjson_files
from provisioner.storage.phpjson import pieces as phpjson_pieces
from provisioner.storage.phpjson import read as phpjson_read
from provisioner.storage.phpjson.encode import dump_json
from provisioner.storage.phpjson.errors import NO_CHANGE
from provisioner.storage.phpjson.files import locked_update_shared
from provisioner.storage.phpjson.read import read_json, read_json_shared
from provisioner.storage.phpjson.style import JsonStyle, detect_style

FIXTURE = Path(__file__).resolve().parent / "fixtures/aeims"


@pytest.fixture
def app(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("*.md", "*.txt"))
    return root


@pytest.fixture(autouse=True)
def no_cache_between_tests() -> Iterator[None]:
    phpjson_read.forget_cached()
    yield
    phpjson_read.forget_cached()


def message(key: str, content: str = "hi https://a.test/x 💋") -> StoredRecord:
    return StoredRecord("messages", key, {"message_id": key, "content": content})


def customer(key: str, username: Any = None, email: Any = None) -> StoredRecord:
    data: dict[str, Any] = {"customer_id": key}
    if username is not None:
        data["username"] = username
    if email is not None:
        data["email"] = email
    return StoredRecord("customers", key, data)


# ---------------------------------------------------------------------------------------------
# Encoding in pieces is the whole encoding
# ---------------------------------------------------------------------------------------------

strings = st.sampled_from(["a/b", "\u2028", "é💋", "\ud800", "1e5", "x\\/y", ""]) | st.text(
    max_size=6
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | strings
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(strings, inner, max_size=3),
    max_leaves=6,
)
records = st.dictionaries(strings, values, min_size=1, max_size=4)
documents = st.one_of(
    st.fixed_dictionaries(
        {"items": st.dictionaries(strings, records, max_size=12), "last_updated": strings}
    ),
    st.lists(records, max_size=14),
    st.dictionaries(strings, records | scalars, max_size=8),
    scalars,
)
styles = st.builds(
    JsonStyle,
    indent=st.sampled_from([None, 2, 4]),
    escape_slashes=st.booleans(),
    escape_unicode=st.booleans(),
    trailing_newline=st.booleans(),
)


def edited(data: st.DataObject, doc: Any) -> Any:
    """A new version of `doc` built copy-on-write, as locked_update_shared asks: new
    containers along the path of the change, everything else shared with `doc`."""
    if isinstance(doc, dict):
        new = dict(doc)
        keys = list(new)
        kind = data.draw(st.sampled_from(["set", "delete", "move", "inner"])) if keys else "set"
        if kind == "set":
            new[data.draw(strings | st.sampled_from(keys or ["k"]))] = data.draw(records | values)
        elif kind == "delete":
            del new[data.draw(st.sampled_from(keys))]
        elif kind == "move":
            key = data.draw(st.sampled_from(keys))
            new[key] = new.pop(key)
        else:
            key = data.draw(st.sampled_from(keys))
            new[key] = edited(data, new[key])
        return new
    if isinstance(doc, list):
        new_list = list(doc)
        kind = (
            data.draw(st.sampled_from(["append", "set", "delete", "first", "twice", "inner"]))
            if new_list
            else "append"
        )
        if kind == "append":
            new_list.extend(data.draw(st.lists(records | values, min_size=1, max_size=3)))
        elif kind == "first":
            del new_list[0]  # every later member moves
        elif kind == "twice":
            new_list.append(new_list[0])  # one object twice
        else:
            index = data.draw(st.integers(min_value=0, max_value=len(new_list) - 1))
            if kind == "set":
                new_list[index] = data.draw(records | values)
            elif kind == "delete":
                del new_list[index]
            else:
                new_list[index] = edited(data, new_list[index])
        return new_list
    return data.draw(documents)


@settings(max_examples=80, deadline=None)
@given(doc=documents, style=styles, data=st.data(), node_min_members=st.sampled_from([1, 3, 16]))
def test_a_file_updated_in_pieces_is_byte_for_byte_the_whole_encoding(
    doc: Any, style: JsonStyle, data: st.DataObject, node_min_members: int
) -> None:
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        # Small documents too get containers encoded as nodes of their own.
        patch.setattr(phpjson_pieces, "_NODE_MIN_MEMBERS", node_min_members)
        path = Path(folder) / "items.json"
        text = dump_json(doc, style)
        path.write_text(text, encoding="utf-8")
        file_style = detect_style(text)  # what every rewrite keeps
        current = json.loads(text)
        for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
            new = edited(data, current)
            before = copy.deepcopy(current)

            def change(doc: Any, new: Any = new) -> Any:
                return new

            locked_update_shared(path, change)
            assert json_equal(current, before)  # the shared version was left alone
            assert path.read_bytes() == dump_json(new, file_style).encode("utf-8")
            current = new


def test_big_containers_with_deletions_and_moves_encode_exactly(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    items = {f"k{i}": {"n": i, "url": "https://x.test/a"} for i in range(60)}
    rows = [{"row": i, "f": 1e-7 if i == 3 else 0.5} for i in range(40)]
    path.write_text(json.dumps({"items": items, "rows": rows, "last_updated": "x"}, indent=4))
    style = detect_style(path.read_text())

    def write(transform: Any) -> None:
        def change(doc: Any) -> Any:
            new = transform(doc)
            assert new is not doc
            return new

        new = locked_update_shared(path, change)
        assert path.read_bytes() == dump_json(new, style).encode("utf-8")

    def drop_middle(doc: Any) -> Any:
        inner = {k: v for k, v in doc["items"].items() if k != "k30"}
        return {**doc, "items": inner, "last_updated": "y"}

    def drop_first_rows(doc: Any) -> Any:
        return {**doc, "rows": doc["rows"][5:]}

    def reorder(doc: Any) -> Any:
        return {
            "rows": doc["rows"],
            "last_updated": "z",
            "items": dict(reversed(doc["items"].items())),
        }

    def append_and_replace(doc: Any) -> Any:
        inner = dict(doc["items"])
        inner["k1"] = {"n": "replaced"}
        inner["new"] = {"n": "appended/é"}
        return {**doc, "items": inner}

    for transform in (drop_middle, drop_first_rows, reorder, append_and_replace):
        write(transform)
    assert locked_update_shared(path, lambda doc: NO_CHANGE) is NO_CHANGE


def test_a_non_string_key_falls_back_to_the_whole_encoding(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"items": {"a": {"n": 1}}}')
    locked_update_shared(path, lambda doc: {"items": {**doc["items"], 7: {"n": 2}}})
    assert read_json(path) == {"items": {"a": {"n": 1}, "7": {"n": 2}}}


def test_a_value_json_would_read_back_otherwise_is_not_cached_as_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"items": {"a": [1]}}')
    locked_update_shared(path, lambda doc: {"items": {**doc["items"], "b": (1, 2)}})
    assert read_json_shared(path) == {"items": {"a": [1], "b": [1, 2]}}


def test_an_unencodable_value_writes_nothing_and_keeps_the_cached_document(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"items": {"a": 1}}')
    shared = read_json_shared(path)
    with pytest.raises(TypeError, match="cannot write a object"):
        locked_update_shared(path, lambda doc: {"items": {**doc["items"], "b": object()}})
    assert path.read_text() == '{"items": {"a": 1}}'
    assert read_json_shared(path) is shared


# ---------------------------------------------------------------------------------------------
# The store: what it wrote is neither parsed nor scanned again
# ---------------------------------------------------------------------------------------------


def test_after_its_own_writes_the_store_neither_parses_nor_scans(
    app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = AeimsJsonStore(app)
    store.load("messages")
    assert store.find_by_login("customers", "alice") is not None
    store.upsert("messages", [message("msg_warm")])
    store.upsert("customers", [customer("cust_warm", "warm")])

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("parsed or scanned again")

    monkeypatch.setattr(phpjson_read, "_parse", refuse)
    monkeypatch.setattr(phpjson_files, "_parse", refuse)
    monkeypatch.setattr(aeims_store, "_scan", refuse)
    monkeypatch.setattr(aeims_operators, "_scan", refuse)

    for batch in range(3):
        store.upsert("messages", [message(f"msg_{batch}_{i}") for i in range(8)])
    edited_message = store.get("messages", "msg_1_3")
    assert edited_message is not None
    edited_message.data["content"] = "edited"
    store.upsert("messages", [edited_message, message("msg_last")])
    assert edited_message.placement["file_key"] == "msg_1_3"
    got = store.get("messages", "msg_1_3")
    assert got is not None and got.data["content"] == "edited"
    keys = [r.key for r in store.load("messages")]
    assert keys[:2] == ["msg_fixture1", "msg_warm"] and keys[-1] == "msg_last"
    assert len(keys) == 2 + 24 + 1

    store.upsert("customers", [customer("cust_dana", "Dana", "dana@example.test")])
    dana = store.find_by_login("customers", " DANA ")
    assert dana is not None and dana.key == "cust_dana"
    alice = store.get("customers", "cust_alice")
    assert alice is not None
    alice.data["email"] = "new@example.test"
    store.upsert("customers", [alice])
    assert store.find_by_login("customers", "alice@example.test") is None
    found = store.find_by_login("customers", "NEW@example.test")
    assert found is not None and found.key == "cust_alice"
    warm = store.find_by_login("customers", "warm")
    assert warm is not None and warm.key == "cust_warm"


def test_writes_never_change_a_document_readers_hold(app: Path) -> None:
    store = AeimsJsonStore(app)
    paths = {e: store.file_paths(e)[0] for e in ("messages", "customers", "customer_activity")}
    held = {e: read_json_shared(p) for e, p in paths.items()}
    snapshots = copy.deepcopy(held)

    store.upsert("messages", [message("msg_new")])
    fixture_message = store.get("messages", "msg_fixture1")
    assert fixture_message is not None
    fixture_message.data["content"] = "changed"
    store.upsert("messages", [fixture_message])
    alice = store.get("customers", "cust_alice")
    assert alice is not None
    alice.data["billing"]["credits"] = 99
    store.upsert("customers", [alice, customer("cust_new", "newbie")])
    store.delete("customers", "cust_bob")
    store.replace_all("customer_activity", store.load("customer_activity")[:1])

    for entity, doc in held.items():
        assert json_equal(doc, snapshots[entity]), entity
        assert read_json_shared(paths[entity]) is not doc, entity


# ---------------------------------------------------------------------------------------------
# The store: indexes carried over equal a full scan
# ---------------------------------------------------------------------------------------------

LOGINS = ["alice", "bob", "Dana", "dana@example.test", "12345", "admin", "carol@example.test"]
ENTITIES = ["customers", "customer_activity", "accounts", "favorites", "room_invites", "messages"]


def new_record(entity: str, n: int, data: st.DataObject) -> StoredRecord:
    login = data.draw(st.sampled_from(LOGINS))
    if entity == "customers":
        kind = data.draw(st.sampled_from(["plain", "taken slot", "second copy"]))
        if kind == "second copy":  # the same id again: its key names where it sits
            return customer(f"cust_alice@gen{n}", login)
        record = customer(f"cust_gen_{n}", login, data.draw(st.sampled_from(LOGINS)))
        if kind == "taken slot":
            record.placement = {"wrapper": "customers", "file_key": "cust_alice", "position": 0}
        return record
    if entity == "customer_activity":
        kind = data.draw(st.sampled_from(["with id", "top level", "placed elsewhere"]))
        if kind == "with id":  # into the list, before the top-level records
            key = f"act_gen_{n}"
            return StoredRecord(entity, key, {"id": key, "customer_id": "cust_alice"})
        record = StoredRecord(entity, f"#{50 + n}", {"customer_id": "cust_bob", "data": []})
        if kind == "placed elsewhere":  # its key will follow where it lands
            record.placement = {"file_key": str(20 + n), "position": 9}
        return record
    if entity == "accounts":
        return StoredRecord(entity, f"user{n}@example.test", {"email": login, "name": "N/A"})
    if entity == "favorites":
        key = f"cust_gen_{n}"
        return StoredRecord(entity, key, {"customer_id": key, "operator_ids": ["op_zero"]})
    if entity == "room_invites":
        return StoredRecord(entity, f"inv_{n}", {"invite_id": f"inv_{n}", "room": "r/1"})
    return message(f"msg_gen_{n}")


def changed_record(record: StoredRecord, n: int, data: st.DataObject) -> StoredRecord:
    if record.entity in ("customers", "accounts"):
        record.data["email"] = data.draw(st.sampled_from(LOGINS))
        if record.entity == "customers":
            record.data["username"] = data.draw(st.sampled_from([*LOGINS, 7]))
    elif record.entity == "favorites":
        record.data["operator_ids"] = [f"op_{n}"]
    else:
        record.data["note"] = f"edit {n} é/"
    return record


def assert_like_a_full_scan(store: AeimsJsonStore, root: Path, entity: str) -> None:
    fresh = AeimsJsonStore(root)  # builds its indexes by scanning the same document
    assert store.load(entity) == fresh.load(entity)
    for record in fresh.load(entity):
        assert store.get(entity, record.key) == record
    if entity in ("customers", "accounts"):
        for login in [*LOGINS, "7", "user1@example.test"]:
            assert store.find_by_login(entity, login) == fresh.find_by_login(entity, login)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_indexes_carried_across_writes_equal_a_full_scan(data: st.DataObject) -> None:
    phpjson_read.forget_cached()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "app"
        shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("*.md", "*.txt"))
        store = AeimsJsonStore(root)
        styles = {}
        for entity in ENTITIES:
            path = store.file_paths(entity)[0]
            styles[entity] = detect_style(path.read_text(encoding="utf-8"))
            store.load(entity)
            if entity in ("customers", "accounts"):
                store.find_by_login(entity, "alice")
        for n in range(data.draw(st.integers(min_value=1, max_value=6))):
            entity = data.draw(st.sampled_from(ENTITIES))
            existing = store.load(entity)
            action = data.draw(st.sampled_from(["new", "change", "delete", "replace_all"]))
            if action == "new" or not existing:
                count = data.draw(st.integers(min_value=1, max_value=3))
                store.upsert(entity, [new_record(entity, n * 10 + i, data) for i in range(count)])
            elif action == "change":
                picked = data.draw(st.sampled_from(existing))
                store.upsert(
                    entity, [changed_record(picked, n, data), new_record(entity, n * 10 + 9, data)]
                )
            elif action == "delete":
                assert store.delete(entity, data.draw(st.sampled_from(existing)).key)
            else:
                store.replace_all(entity, existing[1:])
            assert_like_a_full_scan(store, root, entity)
            raw = store.file_paths(entity)[0].read_bytes()
            assert raw == dump_json(json.loads(raw), styles[entity]).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Interplay with other readers and writers
# ---------------------------------------------------------------------------------------------


def blocked_flock_waiters(inode: int) -> int:
    with open("/proc/locks") as locks:
        return sum(1 for line in locks if "->" in line and f":{inode} " in line)


def test_a_reader_that_waited_on_a_replaced_file_reads_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"n": 1}')
    assert read_json(path) == {"n": 1}
    old_inode = os.stat(path).st_ino
    got: list[Any] = []
    with open(path) as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)  # a writer in the middle of its update
        reader = threading.Thread(target=lambda: got.append(read_json(path)))
        reader.start()
        deadline = time.monotonic() + 30
        while blocked_flock_waiters(old_inode) == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert blocked_flock_waiters(old_inode) == 1
        replacement = tmp_path / "a.json.new"
        replacement.write_text('{"n": 2}')
        os.replace(replacement, path)
    reader.join(30)
    assert got == [{"n": 2}]


def test_threads_writing_and_reading_through_one_store_see_every_write(app: Path) -> None:
    store = AeimsJsonStore(app)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(15):
                batch = [message(f"t{n}-{i}-{j}") for j in range(3)]
                store.upsert("messages", batch)
                for record in batch:
                    got = store.get("messages", record.key)
                    assert got is not None and got.data == record.data
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.load("messages")) == 1 + 8 * 15 * 3
    assert store.load("messages") == AeimsJsonStore(app).load("messages")


def store_writer(root: str, name: str, count: int) -> None:
    """A writer process: `count` upserts of two messages each, through its own store."""
    store = AeimsJsonStore(root)
    for i in range(count):
        store.upsert("messages", [message(f"{name}-{i}-{j}") for j in range(2)])
        assert store.get("messages", f"{name}-{i}-0") is not None


def php_like_message_writer(root: str, name: str, count: int) -> None:
    """PHP's safeFileWrite: flock, inode re-check, read, rewrite in place, compact JSON."""
    path = Path(root) / "data/messages.json"
    done = 0
    while done < count:
        with open(path, "r+", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            if os.fstat(f.fileno()).st_ino != os.stat(path).st_ino:
                continue
            doc = json.loads(f.read())
            key = f"{name}-{done}"
            doc["messages"][key] = {"message_id": key, "content": "from php"}
            f.seek(0)
            f.truncate()
            f.write(json.dumps(doc, separators=(",", ":"), ensure_ascii=False))
            f.flush()
        done += 1


def test_store_processes_and_a_php_writer_lose_no_message(app: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    targets = [(store_writer, f"w{n}") for n in range(3)] + [(php_like_message_writer, "php")]
    procs = [ctx.Process(target=fn, args=(str(app), name, 30)) for fn, name in targets]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    store = AeimsJsonStore(app)
    keys = {r.key for r in store.load("messages")}
    expected = {f"w{n}-{i}-{j}" for n in range(3) for i in range(30) for j in range(2)}
    assert expected <= keys
    assert {f"php-{i}" for i in range(30)} <= keys
    assert len(keys) == len(expected) + 30 + 1
    raw = (app / "data/messages.json").read_bytes()
    assert raw.count(b"\n") <= 1  # still compact
