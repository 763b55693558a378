"""What a data file may be (issue 7, found-items 7 and 8), on copies of the fixture application:
only regular files of bounded size, documents no deeper than PHP reads, duplicate keys found
and never rewritten away, symlinks read through, one bad file isolated from the rest, and no
secret in an error excerpt. Anything that could hang runs under a timeout."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from provisioner.storage.aeims.store import AeimsJsonStore
from provisioner.storage.layer.datalayer import DataLayer
from provisioner.storage.model import ENTITIES, StoredRecord
from provisioner.storage.phpjson.errors import JsonFileError
from provisioner.storage.phpjson.files import locked_update
from provisioner.storage.phpjson.limits import MAX_BYTES_SETTING, PHP_MAX_DEPTH
from provisioner.storage.phpjson.read import duplicate_keys, file_style, forget_cached, read_json
from tests.datalayer_support import FIXTURE_AEIMS, copy_root
from tests.test_data_cli import provision

T = TypeVar("T")
SECONDS = 20.0
PASSWORD = "Zq7-Xv9w-Kp3m-Rt8y-Hn2b-Lc6d-Fj4g-Vs5t-Wb1n"
HASH = "$2y$10$Qm9vT2xkU2FsdFZhbHVlM.eXqYbGzHcWdJfKpLrNsTuVwXyZ0a1b2"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    forget_cached()
    return copy_root(FIXTURE_AEIMS, tmp_path / "aeims")


def customers_path(root: Path) -> Path:
    return root / "data" / "customers.json"


def within(fn: Callable[[], T], seconds: float = SECONDS, fifo: Path | None = None) -> T:
    """`fn()` in a daemon thread: a hang fails the test instead of blocking the suite (a reader
    stuck on `fifo` is released by opening its other end)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if fifo is not None:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"still running after {seconds} s: it hangs")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def raises_file_error(fn: Callable[[], Any], fifo: Path | None = None) -> JsonFileError:
    def call() -> JsonFileError:
        try:
            fn()
        except JsonFileError as exc:
            return exc
        raise AssertionError("no JsonFileError")

    return within(call, fifo=fifo)


def other_entities_readable(root: Path, bad: str) -> None:
    """Every entity but `bad` loads, and operators and admins are found by login."""
    store = AeimsJsonStore(root)
    for entity in ENTITIES:
        if entity != bad:
            store.load(entity)
    jade = store.find_by_login("operators", "jade")
    assert jade is not None and jade.key == "op_jade_001"
    admin = store.find_by_login("accounts", "admin")
    assert admin is not None and admin.key == "admin"


def nested(depth: int) -> Any:
    """`depth` arrays and objects nested in each other (built without recursion)."""
    value: Any = []
    for level in range(depth - 1):
        value = {"a": value} if level % 2 else [value]
    return value


def with_profile_field(root: Path, name: str, value: Any) -> None:
    path = customers_path(root)
    doc = json.loads(path.read_text())
    doc["customers"]["cust_alice"]["profile"][name] = value
    path.write_text(json.dumps(doc))


# --------------------------------------------------------------------------------------------
# Regular files of bounded size
# --------------------------------------------------------------------------------------------


def test_a_fifo_in_place_of_a_data_file_is_refused_without_waiting(root: Path) -> None:
    path = customers_path(root)
    path.unlink()
    os.mkfifo(path)

    error = raises_file_error(lambda: read_json(path), fifo=path)

    assert error.path == path and "FIFO" in str(error) and "not a regular file" in str(error)
    problems = within(lambda: AeimsJsonStore(root).file_problems(), fifo=path)
    assert any("customers.json" in p and "FIFO" in p for p in problems)
    within(lambda: other_entities_readable(root, "customers"), fifo=path)


def test_a_symlink_to_dev_zero_is_refused_without_reading(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # If the device were read, the size limit stops it at 1 MB instead of exhausting memory.
    monkeypatch.setenv(MAX_BYTES_SETTING, str(1 << 20))
    path = customers_path(root)
    path.unlink()
    path.symlink_to("/dev/zero")

    error = raises_file_error(lambda: read_json(path))
    assert error.path == path and "character device" in str(error)

    store = AeimsJsonStore(root)
    record = StoredRecord("customers", "cust_new", {"customer_id": "cust_new"})
    written = raises_file_error(lambda: store.upsert("customers", [record]))
    assert "customers.json" in str(written) and "character device" in str(written)
    within(lambda: other_entities_readable(root, "customers"))


def test_a_write_to_a_fifo_is_refused_without_waiting(root: Path) -> None:
    path = customers_path(root)
    path.unlink()
    os.mkfifo(path)
    record = StoredRecord("customers", "cust_new", {"customer_id": "cust_new"})

    error = raises_file_error(lambda: AeimsJsonStore(root).upsert("customers", [record]), path)

    assert "FIFO" in str(error)


def test_a_folder_in_place_of_a_data_file_is_named(root: Path) -> None:
    path = customers_path(root)
    path.unlink()
    path.mkdir()
    assert "folder" in str(raises_file_error(lambda: read_json(path)))


def test_a_file_over_the_size_limit_names_the_file_its_size_and_the_setting(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = customers_path(root)
    size = path.stat().st_size
    monkeypatch.setenv(MAX_BYTES_SETTING, "1000")

    error = raises_file_error(lambda: read_json(path))

    message = str(error)
    assert str(path) in message and f"{size} bytes" in message and "1000-byte" in message
    assert MAX_BYTES_SETTING in message
    monkeypatch.setenv(MAX_BYTES_SETTING, str(size))
    assert read_json(path)["customers"]["cust_alice"]["username"] == "alice"
    monkeypatch.setenv(MAX_BYTES_SETTING, "lots")
    assert MAX_BYTES_SETTING in str(raises_file_error(lambda: read_json(path)))


# --------------------------------------------------------------------------------------------
# Depth: PHP's json_decode limit
# --------------------------------------------------------------------------------------------


def test_a_record_nested_900_deep_is_refused_and_health_reports_it(root: Path) -> None:
    with_profile_field(root, "deep", nested(900))
    path = customers_path(root)

    error = raises_file_error(lambda: read_json(path))

    assert "nested 904 levels deep" in str(error)  # the file, the wrapper, alice, profile
    assert "customers/cust_alice/profile/deep" in str(error)
    assert f"at most {PHP_MAX_DEPTH - 1}" in str(error)
    report = within(lambda: DataLayer(root).health())
    assert report["degraded"] is True
    assert any("customers.json" in e and "904" in e for e in report["json_file_errors"])
    other_entities_readable(root, "customers")


def test_provision_data_health_reports_a_900_deep_record_as_unreadable(
    root: Path, tmp_path: Path
) -> None:
    with_profile_field(root, "deep", nested(900))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    env.update(PROVISION_DATA_DIR=str(root), PROVISION_STATE_DIR=str(tmp_path / "state"))

    result = provision(env, "data", "health", "--json")

    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["degraded"] is True
    [error] = report["json_file_errors"]
    assert str(customers_path(root)) in error and "nested 904 levels deep" in error
    assert "RecursionError" not in result.stderr


def test_the_deepest_document_php_reads_is_read(root: Path) -> None:
    """PHP's depth 512 counts the innermost values: 511 nested arrays and objects are read
    (and copied and compared without a RecursionError), 512 are not."""
    with_profile_field(root, "deep", nested(PHP_MAX_DEPTH - 1 - 4))

    alice = DataLayer(root).get_customer("alice")

    assert alice is not None and alice["profile"]["deep"] == nested(PHP_MAX_DEPTH - 5)
    with_profile_field(root, "deep", nested(PHP_MAX_DEPTH - 4))
    error = raises_file_error(lambda: read_json(customers_path(root)))
    assert f"nested {PHP_MAX_DEPTH} levels deep" in str(error)


def test_a_deep_record_is_written_and_read_back(root: Path) -> None:
    with_profile_field(root, "deep", nested(490))
    layer = DataLayer(root)
    alice = layer.get_customer("alice")
    assert alice is not None

    alice["billing"]["credits"] = 99
    layer.save_customer(alice)

    again = DataLayer(root).get_customer("alice")
    assert again is not None and again["billing"]["credits"] == 99
    assert again["profile"]["deep"] == nested(490)


def test_thousands_of_levels_are_refused_without_a_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert "thousands of levels" in str(raises_file_error(lambda: read_json(path)))


# --------------------------------------------------------------------------------------------
# Duplicate keys
# --------------------------------------------------------------------------------------------


def with_duplicate_credits(root: Path) -> bytes:
    """alice's billing holds `credits` twice (25, then 7), as a hand edit leaves it."""
    path = customers_path(root)
    text = path.read_text()
    edited = text.replace('"credits": 25,', '"credits": 25,\n"credits": 7,', 1)
    assert edited != text
    path.write_text(edited)
    return edited.encode()


def test_duplicate_keys_read_as_php_reads_them_and_are_reported(root: Path) -> None:
    with_duplicate_credits(root)
    path = customers_path(root)

    alice = DataLayer(root).get_customer("alice")

    assert alice is not None and alice["billing"]["credits"] == 7  # PHP: the last one wins
    assert next(iter(alice["billing"])) == "credits"  # in the place of the first
    found = duplicate_keys(path)
    assert found == ("'credits' in the object at customers/cust_alice/billing",)
    problems = AeimsJsonStore(root).file_problems()
    assert len(problems) == 1 and "customers.json" in problems[0] and "credits" in problems[0]
    assert "writes to the file are refused" in problems[0]


def test_a_file_with_duplicate_keys_is_never_rewritten(root: Path) -> None:
    before = with_duplicate_credits(root)
    path = customers_path(root)
    store = AeimsJsonStore(root)
    assert store.get("customers", "cust_alice") is not None  # a read caches the document

    record = StoredRecord("customers", "cust_new", {"customer_id": "cust_new"})
    with pytest.raises(JsonFileError, match="duplicate keys: 'credits'"):
        store.upsert("customers", [record])
    with pytest.raises(JsonFileError, match="rewriting the file would drop the others"):
        locked_update(path, lambda doc: {**doc, "x": 1})

    assert path.read_bytes() == before


def test_two_records_under_one_key_read_as_the_last(root: Path) -> None:
    path = customers_path(root)
    doc = json.loads(path.read_text())
    bob = json.dumps(doc["customers"]["cust_bob"])
    text = path.read_text().replace('"cust_bob": {', f'"cust_alice": {bob},\n"cust_bob": {{', 1)
    path.write_text(text)

    assert read_json(path)["customers"]["cust_alice"]["customer_id"] == "cust_bob"
    assert duplicate_keys(path) == ("'cust_alice' in the object at customers",)


def test_spacing_and_quoted_colons_are_not_taken_for_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "notes.json"
    path.write_text('{"a" : {"b"\t:\n"x\\": 1, \\"y\\": 2", "c": "12:00:00"}, "d": {}}')

    assert read_json(path)["a"]["b"] == 'x": 1, "y": 2'
    assert duplicate_keys(path) == ()
    locked_update(path, lambda doc: {**doc, "e": 1})
    assert read_json(path)["e"] == 1


# --------------------------------------------------------------------------------------------
# Symlinks, and one bad file among good ones
# --------------------------------------------------------------------------------------------


def test_reads_follow_a_symlinked_data_file(root: Path, tmp_path: Path) -> None:
    path = customers_path(root)
    target = tmp_path / "elsewhere" / "customers.json"
    target.parent.mkdir()
    path.rename(target)
    path.symlink_to(target)
    layer = DataLayer(root)

    alice = layer.get_customer("alice")
    assert alice is not None and alice["username"] == "alice"
    assert file_style(path).indent == 4
    with open(target, "r+") as f:  # PHP rewrites the target in place
        text = f.read().replace('"username": "alice"', '"username": "alicia"')
        f.seek(0)
        f.write(text)
        f.truncate()

    assert layer.get_customer("alicia") is not None and layer.get_customer("alice") is None


BAD_CONTENT: dict[str, Callable[[Path], None]] = {
    "malformed": lambda p: p.write_text('{"customers": {"cust_alice": {"username": "alice"'),
    "empty": lambda p: p.write_bytes(b""),
    "not UTF-8": lambda p: p.write_bytes(b'{"customers": {"\xff": {}}}'),
    "too deep": lambda p: p.write_text(json.dumps({"customers": nested(700)})),
    "a FIFO": lambda p: (p.unlink(), os.mkfifo(p)),
    "/dev/zero": lambda p: (p.unlink(), p.symlink_to("/dev/zero")),
}


@pytest.mark.parametrize("bad", list(BAD_CONTENT))
def test_one_unreadable_file_leaves_every_other_entity_readable(root: Path, bad: str) -> None:
    path = customers_path(root)
    BAD_CONTENT[bad](path)

    within(lambda: other_entities_readable(root, "customers"), fifo=path)
    problems = within(lambda: AeimsJsonStore(root).file_problems(), fifo=path)
    assert len(problems) == 1 and str(path) in problems[0]


# --------------------------------------------------------------------------------------------
# No secret in an excerpt
# --------------------------------------------------------------------------------------------


def fragments(secret: str, size: int = 5) -> set[str]:
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


def assert_no_fragment(text: str, *secrets: str) -> None:
    for secret in secrets:
        leaked = [f for f in fragments(secret) if f in text]
        assert not leaked, f"fragments of a secret in: {text}"


def broken_inside(value: str, at: int) -> str:
    """`value` with an invalid escape at `at`: json.loads stops in the middle of it."""
    return value[:at] + "\\q" + value[at:]


SECRET_BREAKS: dict[str, Callable[[str], str]] = {
    "in the plaintext password": lambda text: text.replace(
        '"password_plaintext_for_testing": "fixture-password-1"',
        f'"password_plaintext_for_testing": "{broken_inside(PASSWORD, 30)}"',
        1,
    ),
    "in the bcrypt hash": lambda text: re.sub(
        r'"password_hash": "[^"]*"',
        lambda _: f'"password_hash": "{broken_inside(HASH, 40)}"',
        text,
        count=1,
    ),
    "in the credentials documentation": lambda text: text.replace(
        '"alice": "fixture-password-1 - works on alpha.example.test"',
        f'"alice": "{broken_inside(PASSWORD, 20)}"',
        1,
    ),
    "next to a password": lambda text: text.replace(
        '"password_plaintext_for_testing": "fixture-password-1",',
        f'"password_plaintext_for_testing": "{PASSWORD}",,',
        1,
    ),
}


@pytest.mark.parametrize("where", list(SECRET_BREAKS))
def test_no_secret_fragment_in_the_excerpt_health_shows(root: Path, where: str) -> None:
    path = customers_path(root)
    text = path.read_text()
    path.write_text(SECRET_BREAKS[where](text))

    report = DataLayer(root).health()

    errors = report["json_file_errors"]
    assert len(errors) == 1 and "customers.json" in errors[0] and "near: " in errors[0]
    assert "***" in errors[0] and "fixture-password" not in errors[0]
    assert_no_fragment(errors[0], PASSWORD, HASH[7:])


def test_no_secret_fragment_when_the_bad_byte_is_inside_a_password(root: Path) -> None:
    path = customers_path(root)
    broken = PASSWORD[:25] + "\udcff" + PASSWORD[25:]
    text = path.read_text().replace("fixture-password-1", broken, 1)
    path.write_bytes(text.encode("utf-8", "surrogateescape"))

    error = raises_file_error(lambda: read_json(path))

    assert "invalid UTF-8" in str(error) and error.excerpt is not None
    assert_no_fragment(str(error), PASSWORD)
