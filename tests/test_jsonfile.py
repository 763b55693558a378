"""storage/phpjson: strict reads, PHP-compatible encoding, atomic locked writes, group commit."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.storage.jsonvalues import json_equal
from provisioner.storage.phpjson import write_ahead
from provisioner.storage.phpjson.encode import dump_json, encode_php_json
from provisioner.storage.phpjson.errors import NO_CHANGE, JsonFileError, JsonFileMissingError
from provisioner.storage.phpjson.files import locked_update, locked_update_many, write_json
from provisioner.storage.phpjson.group_commit import GroupCommitter
from provisioner.storage.phpjson.read import read_json, read_json_shared
from provisioner.storage.phpjson.style import JsonStyle, detect_style

SHARED_AEIMS = Path(__file__).resolve().parents[2] / "shared/aeims/data"
needs_shared = pytest.mark.skipif(
    not SHARED_AEIMS.is_dir(), reason="../shared/aeims/data (the real AEIMS files) is not here"
)
# Files of the real application written by PHP's json_encode (the others are hand-written).
PHP_WRITTEN = [
    "data/account_locks.json",
    "data/accounts.json",
    "data/content_items.json",
    "data/conversations.json",
    "data/customer_activity.json",
    "data/customers.json",
    "data/favorites.json",
    "data/id_verifications.json",
    "data/messages.json",
    "data/operators.json",
    "data/rate_limits.json",
    "data/test_operator_credentials.json",
    "data/username_reservations.json",
    "data/verification_codes.json",
]


def real_files() -> list[Path]:
    if not SHARED_AEIMS.is_dir():
        return []
    return [*sorted(SHARED_AEIMS.glob("data/*.json")), SHARED_AEIMS / "agents/data/operators.json"]


def temp_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def test_encoding_follows_php_pretty_print() -> None:
    value = {"a": 1, "list": [1, "x"], "empty_list": [], "empty_obj": {}, "nested": {"b": None}}
    assert encode_php_json(value, escape_slashes=False) == (
        "{\n"
        '    "a": 1,\n'
        '    "list": [\n'
        "        1,\n"
        '        "x"\n'
        "    ],\n"
        '    "empty_list": [],\n'
        '    "empty_obj": {},\n'
        '    "nested": {\n'
        '        "b": null\n'
        "    }\n"
        "}"
    )


def test_encoding_keeps_emoji_raw_and_escapes_slashes_on_request() -> None:
    value = {"url": "https://a.test/x", "bio": "hi 💋 ✨"}
    assert encode_php_json(value, escape_slashes=True, indent=None) == (
        '{"url":"https:\\/\\/a.test\\/x","bio":"hi 💋 ✨"}'
    )
    assert encode_php_json(value, escape_slashes=False, indent=None) == (
        '{"url":"https://a.test/x","bio":"hi 💋 ✨"}'
    )


@pytest.mark.parametrize(
    ("number", "php"),
    [
        (5.0, "5.0"),
        (0.1, "0.1"),
        (2.99, "2.99"),
        (-0.0, "-0.0"),
        (0.0001, "0.0001"),
        (1e-5, "1.0e-5"),
        (2.5e-7, "2.5e-7"),
        (1e16, "10000000000000000.0"),
        (1.5e16, "15000000000000000.0"),
        (1e17, "1.0e+17"),
        (1e25, "1.0e+25"),
        (123456789012345678.0, "1.2345678901234568e+17"),
    ],
)
def test_floats_are_written_as_php_7_1_writes_them(number: float, php: str) -> None:
    assert encode_php_json(number, escape_slashes=False) == php
    assert encode_php_json([number], escape_slashes=False, indent=None) == f"[{php}]"
    assert json.loads(php) == number


def test_nan_and_infinity_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot be written as JSON"):
        encode_php_json({"x": float("nan")}, escape_slashes=False)


def test_line_separators_and_lone_surrogates_stay_escaped() -> None:
    value = json.loads('["a\\u2028b", "\\ud800", "tab\\there", "\\u0001"]')
    text = encode_php_json(value, escape_slashes=False, indent=None)
    assert text == '["a\\u2028b","\\ud800","tab\\there","\\u0001"]'
    assert json.loads(text) == value


def test_unicode_can_be_escaped_like_php_without_unescaped_unicode() -> None:
    text = encode_php_json(["é💋"], escape_slashes=False, indent=None, escape_unicode=True)
    assert text == '["\\u00e9\\ud83d\\udc8b"]'


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(
    value=json_values,
    escape_slashes=st.booleans(),
    indent=st.sampled_from([None, 2, 4]),
    escape_unicode=st.booleans(),
)
def test_every_encoding_reads_back_as_the_same_value(
    value: Any, escape_slashes: bool, indent: int | None, escape_unicode: bool
) -> None:
    text = encode_php_json(
        value, escape_slashes=escape_slashes, indent=indent, escape_unicode=escape_unicode
    )
    assert json_equal(json.loads(text), value)
    text.encode("utf-8")  # always writable as UTF-8


def test_json_equal_tells_ints_floats_and_booleans_apart() -> None:
    assert json_equal({"a": [1, 2.5]}, {"a": [1, 2.5]})
    assert not json_equal({"fee": 0}, {"fee": 0.0})
    assert not json_equal([1], [True])
    assert not json_equal({"a": 1}, {"a": 1, "b": 2})


@needs_shared
@pytest.mark.parametrize("relpath", PHP_WRITTEN)
def test_php_written_aeims_files_are_reproduced_byte_for_byte(relpath: str) -> None:
    raw = (SHARED_AEIMS / relpath).read_bytes()
    text = raw.decode("utf-8")
    assert dump_json(json.loads(text), detect_style(text)).encode("utf-8") == raw


@needs_shared
def test_every_aeims_file_reencodes_to_an_equal_value() -> None:
    for path in real_files():
        text = path.read_text(encoding="utf-8")
        value = json.loads(text)
        assert json_equal(json.loads(dump_json(value, detect_style(text))), value), path


# ---------------------------------------------------------------------------------------------
# Style detection
# ---------------------------------------------------------------------------------------------


def test_style_of_php_pretty_print_with_escaped_slashes() -> None:
    text = '{\n    "a": "x\\/y",\n    "b": "\\/z"\n}'
    assert detect_style(text) == JsonStyle(indent=4, escape_slashes=True, trailing_newline=False)


def test_style_of_hand_written_two_space_file_with_newline() -> None:
    text = '{\n  "a": [1, 2]\n}\n'
    assert detect_style(text) == JsonStyle(indent=2, escape_slashes=False, trailing_newline=True)


def test_style_of_compact_and_empty_files() -> None:
    assert detect_style('{"messages":{},"last_updated":"x"}\n').indent is None
    assert detect_style("[]\n") == JsonStyle(indent=4, trailing_newline=True)
    assert detect_style("{}") == JsonStyle(indent=4, trailing_newline=False)


def test_escaped_slashes_follow_the_majority() -> None:
    assert not detect_style('{\n    "a": "\\/x", "b": "/y", "c": "/z"\n}').escape_slashes
    assert detect_style('{\n    "a": "\\\\/x"\n}').escape_slashes is False  # \\ then /


@needs_shared
def test_style_of_the_real_files() -> None:
    data = SHARED_AEIMS / "data"
    assert detect_style((data / "domains.json").read_text()).indent == 2
    assert detect_style((data / "operators.json").read_text()).escape_slashes
    agents = (SHARED_AEIMS / "agents/data/operators.json").read_text()
    assert not detect_style(agents).escape_slashes  # 4 escaped, 50 not
    assert detect_style((data / "messages.json").read_text()).indent is None


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def test_truncated_file_names_file_line_column_and_excerpt(tmp_path: Path) -> None:
    path = tmp_path / "customers.json"
    path.write_text('{\n    "customers": {\n        "c1": {"name": "Ann"')
    with pytest.raises(JsonFileError) as caught:
        read_json(path)
    error = caught.value
    assert error.path == path
    assert (error.line, error.column) == (3, 29)  # just past the end
    assert str(path) in str(error)
    assert "line 3" in str(error) and "column 29" in str(error)
    assert "truncated" in str(error)
    assert '"name": "Ann"' in str(error)


def test_bad_utf8_is_reported_with_its_position(tmp_path: Path) -> None:
    path = tmp_path / "sites.json"
    path.write_bytes(b'{\n    "name": "caf\xe9"\n}')
    with pytest.raises(JsonFileError, match="invalid UTF-8") as caught:
        read_json(path)
    assert (caught.value.line, caught.value.column) == (2, 17)
    assert "sites.json" in str(caught.value)


@pytest.mark.parametrize(("content", "says"), [(b"", "empty"), (b"  \n", "only whitespace")])
def test_an_empty_file_says_so(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "messages.json"
    path.write_bytes(content)
    with pytest.raises(JsonFileError, match=says) as caught:
        read_json(path)
    assert "messages.json" in str(caught.value)
    assert "PHP writer" in str(caught.value)


def test_excerpts_mask_passwords_and_hashes(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    path.write_text(
        '{"a": {"password_plaintext_for_testing": "hunter22", '
        '"password": "$2y$12$abcdefghijklmnopqrstuv", "x": }}'
    )
    with pytest.raises(JsonFileError) as caught:
        read_json(path)
    message = str(caught.value)
    assert "hunter22" not in message
    assert "abcdefghijklmnop" not in message


def test_nan_literals_are_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"a": NaN}')
    with pytest.raises(JsonFileError, match="NaN"):
        read_json(path)


def test_a_missing_file_is_its_own_error_or_the_default(tmp_path: Path) -> None:
    path = tmp_path / "transactions.json"
    with pytest.raises(JsonFileMissingError, match="does not exist"):
        read_json(path)
    default = {"transactions": {}}
    got = read_json(path, default=default)
    assert got == default and got is not default


def test_reads_are_private_copies_and_unchanged_files_are_not_parsed_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"items": {"a": {"n": 1}}}')
    first = read_json(path)
    first["items"]["a"]["n"] = 99
    assert read_json(path) == {"items": {"a": {"n": 1}}}
    assert read_json_shared(path) is read_json_shared(path)


def test_a_same_size_rewrite_within_one_clock_tick_is_not_missed(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"n": 1}')
    before = os.stat(path)
    assert read_json(path) == {"n": 1}
    with open(path, "r+") as f:  # in place, same size, like PHP's safeFileWrite
        f.write('{"n": 2}')
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns
    assert read_json(path) == {"n": 2}


# ---------------------------------------------------------------------------------------------
# Locked read-modify-write
# ---------------------------------------------------------------------------------------------


def add_item(key: str, value: Any) -> Any:
    def fn(doc: Any) -> Any:
        doc["items"][key] = value
        return doc

    return fn


def test_update_rewrites_the_same_inode_in_the_files_own_style(tmp_path: Path) -> None:
    """In place, as PHP writes (a rename would strand a PHP writer waiting for the lock on
    the old inode), and the durable copy is emptied once the rewrite is durable."""
    path = tmp_path / "domains.json"
    path.write_text('{\n  "items": {\n    "a": "x/y"\n  }\n}\n')
    inode = os.stat(path).st_ino
    locked_update(path, add_item("b", [1, 2]))
    assert path.read_text() == (
        '{\n  "items": {\n    "a": "x/y",\n    "b": [\n      1,\n      2\n    ]\n  }\n}\n'
    )
    assert os.stat(path).st_ino == inode
    assert temp_leftovers(tmp_path) == []
    assert not write_ahead.pending(path)


def test_update_keeps_mode_and_owner(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"items": {}}')
    os.chmod(path, 0o640)
    if os.geteuid() == 0:
        os.chown(path, 12345, 23456)
    locked_update(path, add_item("a", 1))
    after = os.stat(path)
    assert stat.S_IMODE(after.st_mode) == 0o640
    if os.geteuid() == 0:
        assert (after.st_uid, after.st_gid) == (12345, 23456)


def test_a_function_that_raises_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"items": {"a": 1}}')
    before = path.read_bytes()
    inode = os.stat(path).st_ino

    def broken(doc: Any) -> Any:
        doc["items"]["a"] = "changed"
        raise RuntimeError("validation failed")

    with pytest.raises(RuntimeError, match="validation failed"):
        locked_update(path, broken)
    assert path.read_bytes() == before
    assert os.stat(path).st_ino == inode
    assert read_json(path) == {"items": {"a": 1}}
    assert temp_leftovers(tmp_path) == []


def test_no_change_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"items":{}}')
    inode = os.stat(path).st_ino
    assert locked_update(path, lambda doc: NO_CHANGE) is NO_CHANGE
    assert locked_update(path, lambda doc: doc) == {"items": {}}  # same bytes: not rewritten
    assert os.stat(path).st_ino == inode


def test_a_malformed_file_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"items": {"a": 1}')
    with pytest.raises(JsonFileError, match=r"a\.json"):
        locked_update(path, add_item("b", 2), default={"items": {}})
    assert path.read_text() == '{"items": {"a": 1}'


def test_an_unencodable_value_leaves_the_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"items": {}}')
    with pytest.raises(TypeError, match="cannot write a object"):
        locked_update(path, add_item("a", object()))
    assert path.read_text() == '{"items": {}}'
    assert temp_leftovers(tmp_path) == []


def test_a_rewrite_cut_short_by_a_full_disk_puts_the_old_content_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"items": {}}')
    real_pwrite_all = write_ahead.pwrite_all
    failures = iter([True])

    def half_then_full(fd: int, data: Any, offset: int = 0) -> None:
        data_file = os.fstat(fd).st_ino == os.stat(path).st_ino
        if data_file and len(data) > 1 and next(failures, False):
            real_pwrite_all(fd, data[: len(data) // 2], offset)
            raise OSError(28, "No space left on device")
        real_pwrite_all(fd, data, offset)

    monkeypatch.setattr(write_ahead, "pwrite_all", half_then_full)
    with pytest.raises(JsonFileError, match=r"No space left.*old content was put back"):
        locked_update(path, add_item("a", 1))
    monkeypatch.undo()
    assert path.read_text() == '{"items": {}}'
    assert temp_leftovers(tmp_path) == []
    assert not write_ahead.pending(path)


def test_a_missing_file_is_created_only_when_something_is_written(tmp_path: Path) -> None:
    path = tmp_path / "transactions.json"
    with pytest.raises(JsonFileMissingError):
        locked_update(path, add_item("a", 1))
    assert locked_update(path, lambda doc: NO_CHANGE, default={"items": {}}) is NO_CHANGE
    assert not path.exists()
    locked_update(path, add_item("t1", {"amount": 5.0}), default={"items": {}})
    assert read_json(path) == {"items": {"t1": {"amount": 5.0}}}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_a_new_file_belongs_to_the_folder_s_owner(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    os.chown(folder, 33, 33)  # www-data, as the PHP application's data folder
    path = folder / "transactions.json"
    locked_update(path, add_item("t1", 1), default={"items": {}})
    assert (os.stat(path).st_uid, os.stat(path).st_gid) == (33, 33)


def test_write_json_replaces_the_value(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    write_json(path, [1, 2], style=JsonStyle(indent=None, trailing_newline=True))
    assert path.read_text() == "[1,2]\n"
    write_json(path, {"a": 1})
    assert path.read_text() == '{"a":1}\n'  # the file's own style is kept


def test_a_batch_is_one_write_and_a_failing_change_is_left_out(tmp_path: Path) -> None:
    path = tmp_path / "messages.json"
    path.write_text('{"items": {}}')

    def broken(doc: Any) -> Any:
        doc["items"]["bad"] = 1  # changed, then fails: must not leak into the file
        raise ValueError("bad message")

    fns = [add_item(f"m{i}", i) for i in range(50)]
    fns.insert(10, broken)
    outcomes = locked_update_many(path, fns)
    assert [o.ok for o in outcomes].count(False) == 1
    assert isinstance(outcomes[10].error, ValueError)
    assert read_json(path)["items"] == {f"m{i}": i for i in range(50)}


def test_group_commit_from_many_threads(tmp_path: Path) -> None:
    path = tmp_path / "messages.json"
    committer = GroupCommitter(path, default={"items": {}})
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(25):
                committer.submit(add_item(f"t{n}-{i}", i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(read_json(path)["items"]) == 200
    assert 1 <= committer.batches <= 200


def test_group_commit_reports_each_change_s_own_error(tmp_path: Path) -> None:
    path = tmp_path / "messages.json"
    path.write_text('{"items": {}}')
    committer = GroupCommitter(path)

    def broken(doc: Any) -> Any:
        raise KeyError("no such conversation")

    with pytest.raises(KeyError, match="no such conversation"):
        committer.submit(broken)
    committer.submit(add_item("ok", 1))
    assert read_json(path) == {"items": {"ok": 1}}


# ---------------------------------------------------------------------------------------------
# Concurrency with real processes
# ---------------------------------------------------------------------------------------------


def upsert_writer(path: str, name: str, count: int) -> None:
    """A writer process: `count` separate read-modify-writes through locked_update."""
    for i in range(count):
        locked_update(path, add_item(f"{name}-{i}", {"writer": name, "n": i}))


def php_like_writer(path: str, name: str, count: int) -> None:
    """A writer that behaves like PHP's safeFileWrite: plain flock on the data file, then
    read, truncate and rewrite in place, checking after flock that it locked the file that is
    at the path now (the check PHP code must make against writers that rename)."""
    done = 0
    while done < count:
        with open(path, "r+", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            if os.fstat(f.fileno()).st_ino != os.stat(path).st_ino:
                continue  # replaced while we waited: lock the new file
            doc = json.loads(f.read())
            doc["items"][f"{name}-{done}"] = {"writer": name, "n": done}
            f.seek(0)
            f.truncate()
            f.write(json.dumps(doc, indent=4))
            f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)
        done += 1


def run_processes(targets: list[tuple[Any, str]], path: Path, count: int) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=fn, args=(str(path), name, count)) for fn, name in targets]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * len(procs)


def test_four_processes_upserting_the_same_file_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "customers.json"
    path.write_text('{"items": {}}')
    run_processes([(upsert_writer, f"w{n}") for n in range(4)], path, 100)
    items = read_json(path)["items"]
    assert len(items) == 400
    assert {f"w{n}-{i}" for n in range(4) for i in range(100)} == set(items)


def test_processes_interleaved_with_a_php_style_flock_writer_lose_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "customers.json"
    path.write_text('{"items": {}}')
    writers = [(upsert_writer, f"w{n}") for n in range(3)] + [(php_like_writer, "php")]
    run_processes(writers, path, 100)
    items = read_json(path)["items"]
    assert len(items) == 400
    assert sum(1 for k in items if k.startswith("php-")) == 100


def hold_lock_then_write(path: str, locked: Any, go: Any) -> None:
    with open(path, "r+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        locked.set()
        go.wait(30)
        doc = json.loads(f.read())
        doc["items"]["from_php"] = True
        f.seek(0)
        f.truncate()
        f.write(json.dumps(doc))
        f.flush()


def test_an_update_waits_for_a_php_lock_on_the_data_file(tmp_path: Path) -> None:
    path = tmp_path / "customers.json"
    path.write_text('{"items": {}}')
    ctx = multiprocessing.get_context("spawn")
    locked, go = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=hold_lock_then_write, args=(str(path), locked, go))
    holder.start()
    assert locked.wait(60)
    updater = threading.Thread(target=locked_update, args=(path, add_item("from_us", True)))
    updater.start()
    go.set()
    updater.join(60)
    holder.join(60)
    assert holder.exitcode == 0
    assert read_json(path)["items"] == {"from_php": True, "from_us": True}
