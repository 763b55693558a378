"""The AEIMS file catalog, AeimsJsonStore, and the AEIMS timestamp formats."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.storage.aeims.catalog import CATALOG, NOT_ENTITY_FILES
from provisioner.storage.aeims.store import AeimsJsonStore
from provisioner.storage.jsonvalues import json_equal
from provisioner.storage.logins import normalize_login
from provisioner.storage.model import ENTITIES, PLAINTEXT_PASSWORD_FIELDS, StoredRecord
from provisioner.storage.phpjson.errors import JsonFileError
from provisioner.storage.phpjson.read import read_json
from provisioner.storage.timestamps import (
    TimestampFormat,
    detect_format,
    format_as,
    format_like,
    now_php,
    parse_timestamp,
)

FIXTURE = Path(__file__).resolve().parent / "fixtures/aeims"
SHARED_AEIMS = Path(__file__).resolve().parents[2] / "shared/aeims/data"
needs_shared = pytest.mark.skipif(
    not SHARED_AEIMS.is_dir(), reason="../shared/aeims/data (the real AEIMS files) is not here"
)
NAIVE_FORMAT = "%Y-%m-%d %H:%M:%S"


def copy_app(source: Path, tmp_path: Path) -> Path:
    root = tmp_path / "app"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("*.md", "*.txt"))
    return root


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return copy_app(FIXTURE, tmp_path)


@pytest.fixture
def real_app(tmp_path: Path) -> Path:
    if not SHARED_AEIMS.is_dir():
        pytest.skip("../shared/aeims/data (the real AEIMS files) is not here")
    return copy_app(SHARED_AEIMS, tmp_path)


def json_files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*.json"))}


def without_last_updated(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "last_updated"}
    return value


def record(entity: str, key: str, data: dict[str, Any]) -> StoredRecord:
    return StoredRecord(entity, key, data)


# ---------------------------------------------------------------------------------------------
# Catalog
# ---------------------------------------------------------------------------------------------


def test_every_entity_has_its_files_and_operators_have_two(app: Path) -> None:
    store = AeimsJsonStore(app)
    assert set(CATALOG) == set(ENTITIES)
    for entity in ENTITIES:
        paths = store.file_paths(entity)
        assert paths and all(p.is_relative_to(app) for p in paths)
    assert [p.relative_to(app).as_posix() for p in store.file_paths("operators")] == [
        "data/operators.json",
        "agents/data/operators.json",
    ]
    assert "data/test_operator_credentials.json" in NOT_ENTITY_FILES


def test_a_folder_that_is_not_an_aeims_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PROVISION_DATA_DIR"):
        AeimsJsonStore(tmp_path)


def test_an_unknown_entity_is_refused(app: Path) -> None:
    with pytest.raises(ValueError, match="unknown entity 'users'"):
        AeimsJsonStore(app).load("users")


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


def assert_round_trips(root: Path) -> None:
    """load every entity, replace_all it back: unchanged files stay byte-identical; then empty
    every entity and refill it from its records: same values and key order (last_updated
    restamped in its own format), same top-level shape."""
    store = AeimsJsonStore(root)
    originals = json_files(root)
    everything = store.load_all()
    for entity, records in everything.items():
        store.replace_all(entity, records)
    assert json_files(root) == originals

    for entity in ENTITIES:
        store.replace_all(entity, [])
        assert store.load(entity) == []
    for entity, records in everything.items():
        store.replace_all(entity, records)
    for path, raw in originals.items():
        before = json.loads(raw)
        after = read_json(path)
        assert type(after) is type(before), path
        assert json_equal(without_last_updated(after), without_last_updated(before)), path
        if isinstance(before, dict):
            assert list(after) == list(before), path
            if "last_updated" in before:
                assert detect_format(after["last_updated"]) is detect_format(before["last_updated"])
    reloaded = store.load_all()
    for entity, records in everything.items():
        assert [(r.key, r.data) for r in reloaded[entity]] == [(r.key, r.data) for r in records]


def test_every_fixture_file_round_trips(app: Path) -> None:
    assert_round_trips(app)


def test_every_real_aeims_file_round_trips(real_app: Path) -> None:
    assert_round_trips(real_app)


def test_php_written_files_come_back_byte_identical_after_a_full_rewrite(real_app: Path) -> None:
    store = AeimsJsonStore(real_app)
    operators = store.load("operators")
    accounts = store.load("accounts")
    data_ops = (real_app / "data/operators.json").read_bytes()
    accounts_raw = (real_app / "data/accounts.json").read_bytes()
    store.replace_all("operators", [])
    store.replace_all("accounts", [])
    store.replace_all("operators", operators)
    store.replace_all("accounts", accounts)
    assert (real_app / "data/operators.json").read_bytes() == data_ops
    assert (real_app / "data/accounts.json").read_bytes() == accounts_raw


def test_credentials_file_is_never_read(app: Path) -> None:
    credentials = app / "data/test_operator_credentials.json"
    credentials.write_text('{"broken": ')  # would fail loudly if anything read it
    store = AeimsJsonStore(app)
    everything = store.load_all()
    for entity, records in everything.items():
        store.replace_all(entity, records)
    assert credentials.read_text() == '{"broken": '
    dumped = json.dumps({e: [r.data for r in rs] for e, rs in everything.items()})
    assert "fixture-operator-password" not in dumped


# ---------------------------------------------------------------------------------------------
# Reading: keys, quirks kept as they are
# ---------------------------------------------------------------------------------------------


def test_records_keep_every_field_reference_and_type(app: Path) -> None:
    store = AeimsJsonStore(app)
    bob = store.get("customers", "cust_bob")
    assert bob is not None
    assert bob.data["username"] == 12345 and bob.data["legacy_flag"] == "kept as is"
    alice = store.get("customers", "cust_alice")
    assert alice is not None
    assert alice.data["sites"] == ["alpha.example.test", "orphan.example.test"]
    assert alice.data["profile"]["avatar_url"] == "https://cdn.example.test/alice.png"
    assert alice.data["password_plaintext_for_testing"] == "fixture-password-1"
    assert set(alice.without_plaintext().data) == set(alice.data) - PLAINTEXT_PASSWORD_FIELDS
    zero = store.get("operators", "op_zero")
    assert zero is not None
    assert zero.data["username"] == 0
    assert "ghost.example.test" in zero.data["domains"]
    rooms = store.load("chat_rooms")
    assert [type(r.data["entry_fee"]) for r in rooms] == [int, float]


def test_keys_and_placements_follow_the_file_shapes(app: Path) -> None:
    store = AeimsJsonStore(app)
    accounts = store.load("accounts")
    assert [r.key for r in accounts] == ["admin", "carol@example.test"]
    assert accounts[0].placement == {"file_key": "admin", "position": 1}
    assert store.load("sites")[0].placement == {
        "wrapper": "sites",
        "file_key": "alpha_example_test",
        "position": 0,
    }
    activity = store.load("customer_activity")
    assert [r.key for r in activity] == ["act_001", "act_002", "#0", "#1"]
    assert activity[0].placement == {"wrapper": "activities", "list_index": 0}
    assert activity[2].placement == {"file_key": "0", "position": 2}
    assert [r.placement for r in store.load("chat_rooms")] == [
        {"list_index": 0},
        {"list_index": 1},
    ]
    favorites = {r.key: r.data for r in store.load("favorites")}
    assert favorites == {
        "cust_alice": {"customer_id": "cust_alice", "operator_ids": ["op_zero", "op_jade_001"]},
        "cust_bob": {"customer_id": "cust_bob", "operator_ids": {"1": "op_test_001"}},
    }
    assert store.load("transactions") == []  # absent file
    assert store.load("conversations") == []  # {"conversations": []}


def test_junk_keys_are_not_records(app: Path) -> None:
    store = AeimsJsonStore(app)
    keys = {r.key for entity in ("accounts", "customers", "sites") for r in store.load(entity)}
    assert "_CREDENTIALS_DOCUMENTATION" not in keys
    assert "last_updated" not in keys


def test_get_and_load_hand_out_copies(app: Path) -> None:
    store = AeimsJsonStore(app)
    alice = store.get("customers", "cust_alice")
    assert alice is not None
    alice.data["username"] = "mallory"
    store.load("customers")[0].data["email"] = "x"
    again = store.get("customers", "cust_alice")
    assert again is not None
    assert again.data["username"] == "alice" and again.data["email"] == "Alice@Example.test"
    assert store.get("customers", "cust_nobody") is None


def test_a_malformed_file_is_reported_and_left_alone(app: Path) -> None:
    path = app / "data/customers.json"
    path.write_bytes(path.read_bytes()[:300])
    store = AeimsJsonStore(app)
    with pytest.raises(JsonFileError, match=r"customers\.json") as caught:
        store.load("customers")
    assert caught.value.line is not None and caught.value.column is not None
    truncated = path.read_bytes()
    with pytest.raises(JsonFileError):
        store.upsert("customers", [record("customers", "cust_new", {"customer_id": "cust_new"})])
    assert path.read_bytes() == truncated


@pytest.mark.parametrize(("content", "says"), [(b"", "empty"), (b'{"a": "\xff"}', "UTF-8")])
def test_empty_and_non_utf8_files_are_reported(app: Path, content: bytes, says: str) -> None:
    path = app / "data/sites.json"
    path.write_bytes(content)
    with pytest.raises(JsonFileError, match=says):
        AeimsJsonStore(app).load("sites")
    assert path.read_bytes() == content


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def test_upsert_replaces_in_place_appends_new_and_keeps_file_keys(app: Path) -> None:
    store = AeimsJsonStore(app)
    alice = store.get("customers", "cust_alice")
    assert alice is not None
    alice.data["billing"]["credits"] = 30
    new = record("customers", "cust_carl", {"customer_id": "cust_carl", "username": "carl"})
    store.upsert("customers", [alice, new])
    doc = read_json(app / "data/customers.json")
    assert list(doc) == ["_CREDENTIALS_DOCUMENTATION", "customers", "last_updated"]
    assert doc["_CREDENTIALS_DOCUMENTATION"]["NOTE"].startswith("Fixture accounts")
    assert list(doc["customers"]) == ["cust_alice", "cust_bob", "cust_carl"]
    assert doc["customers"]["cust_alice"]["billing"]["credits"] == 30
    assert new.placement == {"wrapper": "customers", "file_key": "cust_carl", "position": 2}
    stamped = datetime.strptime(doc["last_updated"], NAIVE_FORMAT).replace(tzinfo=UTC)
    assert abs(stamped - datetime.now(UTC)) < timedelta(minutes=5)
    assert "\\/" in (app / "data/customers.json").read_text()  # its escaped slashes stay


def test_an_unchanged_upsert_writes_nothing(app: Path) -> None:
    store = AeimsJsonStore(app)
    before = (app / "data/customers.json").read_bytes()
    store.upsert("customers", store.load("customers"))
    assert (app / "data/customers.json").read_bytes() == before


def test_a_key_that_does_not_match_the_id_is_refused(app: Path) -> None:
    store = AeimsJsonStore(app)
    before = json_files(app)
    wrong = record("customers", "cust_alice", {"customer_id": "cust_other"})
    with pytest.raises(ValueError, match="customer_id is 'cust_other'"):
        store.upsert("customers", [wrong])
    with pytest.raises(ValueError, match="belongs to 'sites'"):
        store.upsert("customers", [record("sites", "x", {})])
    with pytest.raises(ValueError, match="file-level key"):
        store.upsert("accounts", [record("accounts", "last_updated", {})])
    assert json_files(app) == before


def test_customer_activity_keeps_its_hybrid_shape(app: Path) -> None:
    store = AeimsJsonStore(app)
    first_shape = record(
        "customer_activity",
        "act_003",
        {"id": "act_003", "customer_id": "cust_bob", "activity_type": "login", "data": {}},
    )
    second_shape = record(
        "customer_activity",
        "#2",
        {"timestamp": "2025-01-04T00:00:00+00:00", "customer_id": "cust_bob", "data": []},
    )
    changed = store.get("customer_activity", "#0")
    assert changed is not None
    changed.data["ip"] = "127.0.0.1"
    store.upsert("customer_activity", [first_shape, second_shape, changed])
    doc = read_json(app / "data/customer_activity.json")
    assert list(doc) == ["activities", "last_updated", "0", "1", "2"]
    assert [a["id"] for a in doc["activities"]] == ["act_001", "act_002", "act_003"]
    assert doc["2"]["data"] == [] and doc["0"]["ip"] == "127.0.0.1"
    assert detect_format(doc["last_updated"]) is TimestampFormat.NAIVE
    assert first_shape.placement == {"wrapper": "activities", "list_index": 2}
    assert second_shape.placement == {"file_key": "2", "position": 4}
    assert [r.key for r in store.load("customer_activity")][-1] == "#2"


def test_empty_array_files_get_the_datalayer_wrapper_on_first_write(app: Path) -> None:
    store = AeimsJsonStore(app)
    store.upsert(
        "notifications",
        [record("notifications", "notif_1", {"notification_id": "notif_1", "read": False})],
    )
    assert read_json(app / "data/notifications.json") == {
        "notifications": {"notif_1": {"notification_id": "notif_1", "read": False}}
    }
    store.upsert("rate_limits", [record("rate_limits", "login:1.2.3.4", {"attempts": [1]})])
    assert read_json(app / "data/rate_limits.json") == {"login:1.2.3.4": {"attempts": [1]}}
    store.upsert("room_invites", [record("room_invites", "inv_1", {"invite_id": "inv_1"})])
    assert read_json(app / "data/room_invites.json") == [{"invite_id": "inv_1"}]
    store.upsert(
        "conversations",
        [record("conversations", "conv_1", {"conversation_id": "conv_1"})],
    )
    conversations = read_json(app / "data/conversations.json")
    assert conversations["conversations"] == {"conv_1": {"conversation_id": "conv_1"}}
    assert (app / "data/conversations.json").read_text().count("\n") == 1  # still compact


def test_an_absent_file_is_created_on_first_write(app: Path) -> None:
    path = app / "data/transactions.json"
    assert not path.exists()
    store = AeimsJsonStore(app)
    assert not store.delete("transactions", "txn_1")
    assert not path.exists()
    store.upsert(
        "transactions",
        [record("transactions", "txn_1", {"transaction_id": "txn_1", "amount": 5.0})],
    )
    assert path.read_text() == (
        '{\n    "transactions": {\n        "txn_1": {\n            "transaction_id": "txn_1",\n'
        '            "amount": 5.0\n        }\n    }\n}'
    )


def test_a_list_file_stays_a_list(app: Path) -> None:
    store = AeimsJsonStore(app)
    store.upsert("chat_rooms", [record("chat_rooms", "room_new", {"room_id": "room_new"})])
    rooms = read_json(app / "data/chat_rooms.json")
    assert isinstance(rooms, list) and rooms[-1] == {"room_id": "room_new"}
    assert rooms[1]["entry_fee"] == 5.0 and isinstance(rooms[1]["entry_fee"], float)


def test_delete_removes_one_record_and_keeps_the_shape(app: Path) -> None:
    store = AeimsJsonStore(app)
    assert store.delete("accounts", "carol@example.test")
    assert not store.delete("accounts", "carol@example.test")
    doc = read_json(app / "data/accounts.json")
    assert list(doc) == ["_CREDENTIALS_DOCUMENTATION", "admin"]
    assert store.delete("chat_rooms", "room_fixture_001")
    assert [r["room_id"] for r in read_json(app / "data/chat_rooms.json")] == ["room_fixture_002"]


def test_replace_all_keeps_file_level_keys_and_stamps_last_updated(app: Path) -> None:
    store = AeimsJsonStore(app)
    customers = store.load("customers")
    customers[1].data["active"] = True
    store.replace_all("customers", list(reversed(customers)))
    doc = read_json(app / "data/customers.json")
    assert list(doc["customers"]) == ["cust_alice", "cust_bob"]  # placements keep the order
    assert doc["customers"]["cust_bob"]["active"] is True
    assert "_CREDENTIALS_DOCUMENTATION" in doc
    assert doc["last_updated"] != "2025-01-03 09:30:00"


def test_a_file_written_by_a_user_keeps_its_owner_and_mode(app: Path) -> None:
    path = app / "data/sites.json"
    os.chmod(path, 0o664)
    if os.geteuid() == 0:
        os.chown(path, 33, 33)  # www-data
    store = AeimsJsonStore(app)
    site = store.load("sites")[0]
    site.data["active"] = False
    store.upsert("sites", [site])
    after = os.stat(path)
    assert oct(after.st_mode & 0o777) == oct(0o664)
    if os.geteuid() == 0:
        assert (after.st_uid, after.st_gid) == (33, 33)


def test_records_without_placements_go_back_in_the_files_shape(app: Path) -> None:
    store = AeimsJsonStore(app)
    activity = [StoredRecord(r.entity, r.key, r.data) for r in store.load("customer_activity")]
    store.replace_all("customer_activity", [])
    store.replace_all("customer_activity", activity)
    doc = read_json(app / "data/customer_activity.json")
    assert list(doc) == ["activities", "last_updated", "0", "1"]
    assert [a["id"] for a in doc["activities"]] == ["act_001", "act_002"]
    assert [r.key for r in store.load("customer_activity")] == [r.key for r in activity]


def test_a_file_of_the_wrong_shape_is_reported_and_left_alone(app: Path) -> None:
    path = app / "data/customers.json"
    path.write_text('{"customers": "oops", "last_updated": "2025-01-01 00:00:00"}')
    store = AeimsJsonStore(app)
    assert store.load("customers") == []
    with pytest.raises(JsonFileError, match="'customers' holds a str"):
        store.upsert("customers", [record("customers", "c1", {"customer_id": "c1"})])
    assert path.read_text() == '{"customers": "oops", "last_updated": "2025-01-01 00:00:00"}'


# ---------------------------------------------------------------------------------------------
# Operators: two files, one entity
# ---------------------------------------------------------------------------------------------


def test_real_operators_merge_to_26_of_which_16_differ(real_app: Path) -> None:
    store = AeimsJsonStore(real_app)
    operators = store.load("operators")
    assert len(operators) == 26
    assert len({r.key for r in operators}) == 26
    differences = store.operator_file_differences()
    assert len(differences) == 16
    assert {d.fields for d in differences} == {("username",)}
    zero = store.get("operators", "op_001")
    assert zero is not None
    assert zero.placement["data_key"] == "0" and zero.placement["agents_absent"] == ["username"]
    assert sum(1 for r in operators if r.placement["data_key"] != r.key) == 16


def test_saving_a_real_operator_writes_both_files_in_their_shapes(real_app: Path) -> None:
    store = AeimsJsonStore(real_app)
    data_before = read_json(real_app / "data/operators.json")
    agents_before = read_json(real_app / "agents/data/operators.json")
    sarah = store.get("operators", "op_001")
    assert sarah is not None
    sarah.data["name"] = "Sarah J."
    store.upsert("operators", [sarah])
    data_after = read_json(real_app / "data/operators.json")
    agents_after = read_json(real_app / "agents/data/operators.json")
    assert list(data_after) == ["operators"]
    assert list(data_after["operators"]) == list(data_before["operators"])
    assert list(agents_after) == list(agents_before)
    assert data_after["operators"]["0"]["name"] == "Sarah J."
    assert data_after["operators"]["0"]["username"] == 0
    assert agents_after["0"]["name"] == "Sarah J."
    assert "username" not in agents_after["0"]
    data_before["operators"]["0"]["name"] = agents_before["0"]["name"] = "Sarah J."
    assert json_equal(data_after, data_before) and json_equal(agents_after, agents_before)
    assert len(store.operator_file_differences()) == 16


def test_operator_copies_keep_their_own_differences_on_save(app: Path) -> None:
    store = AeimsJsonStore(app)
    differences = {d.operator_id: d for d in store.operator_file_differences()}
    assert set(differences) == {"op_zero", "op_jade_001", "op_test_001", "op_agents_only"}
    assert differences["op_test_001"].fields == ("status",)
    assert differences["op_agents_only"].data_key is None

    test_op = store.get("operators", "op_test_001")
    assert test_op is not None and test_op.data["status"] == "active"  # data/ wins
    test_op.data["name"] = "Renamed"
    store.upsert("operators", [test_op])
    data_copy = read_json(app / "data/operators.json")["operators"]["op_test_001"]
    agents_copy = read_json(app / "agents/data/operators.json")["op_test_001"]
    assert data_copy["name"] == agents_copy["name"] == "Renamed"
    assert (data_copy["status"], agents_copy["status"]) == ("active", "inactive")
    assert test_op.placement["agents_values"] == {"status": "inactive"}

    test_op.data["status"] = "suspended"  # a field the save changes goes to both copies
    store.upsert("operators", [test_op])
    assert read_json(app / "agents/data/operators.json")["op_test_001"]["status"] == "suspended"
    assert "agents_values" not in test_op.placement


def test_an_operator_in_one_file_stays_in_that_file(app: Path) -> None:
    store = AeimsJsonStore(app)
    agnes = store.get("operators", "op_agents_only")
    assert agnes is not None
    assert agnes.placement["data_key"] is None and agnes.placement["agents_key"] == "agnes"
    agnes.data["status"] = "suspended"
    store.upsert("operators", [agnes])
    assert "op_agents_only" not in json.dumps(read_json(app / "data/operators.json"))
    assert read_json(app / "agents/data/operators.json")["agnes"]["status"] == "suspended"


def test_a_new_operator_goes_into_both_files_under_its_id(app: Path) -> None:
    store = AeimsJsonStore(app)
    new = record("operators", "op_new", {"id": "op_new", "username": "newbie", "name": "New"})
    store.upsert("operators", [new])
    assert read_json(app / "data/operators.json")["operators"]["op_new"]["username"] == "newbie"
    assert read_json(app / "agents/data/operators.json")["op_new"]["name"] == "New"
    assert new.placement["data_key"] == "op_new" and new.placement["agents_key"] == "op_new"
    assert store.delete("operators", "op_new")
    assert store.get("operators", "op_new") is None
    assert "op_new" not in read_json(app / "agents/data/operators.json")


# ---------------------------------------------------------------------------------------------
# Logins: THE rule
# ---------------------------------------------------------------------------------------------


def test_customers_are_found_by_username_or_email_ignoring_case_and_spaces(app: Path) -> None:
    store = AeimsJsonStore(app)
    for login in ("alice", " ALICE ", "alice@example.test", "Alice@Example.TEST\n"):
        found = store.find_by_login("customers", login)
        assert found is not None and found.key == "cust_alice", login
    bob = store.find_by_login("customers", "12345")
    assert bob is not None and bob.key == "cust_bob"
    assert store.find_by_login("customers", "nobody") is None
    assert store.find_by_login("customers", "") is None


def test_operators_are_found_by_id_username_or_email(app: Path) -> None:
    store = AeimsJsonStore(app)
    for login in (0, "0", " 0 ", "op_zero", "ZERO@example.test"):
        found = store.find_by_login("operators", login)
        assert found is not None and found.key == "op_zero", login
    assert store.find_by_login("operators", "OP_ZERO") is None  # ids are case-sensitive
    jade = store.find_by_login("operators", "jade@example.test")
    assert jade is not None and jade.key == "op_jade_001"


def test_accounts_are_found_by_login_key_or_email(app: Path) -> None:
    store = AeimsJsonStore(app)
    admin = store.find_by_login("accounts", "Admin")
    assert admin is not None and admin.key == "admin"
    by_email = store.find_by_login("accounts", "admin@example.test")
    assert by_email is not None and by_email.key == "admin"
    with pytest.raises(ValueError, match="find_by_login works on"):
        store.find_by_login("sites", "alpha")


def test_a_username_match_wins_over_an_email_match(app: Path) -> None:
    store = AeimsJsonStore(app)
    store.upsert(
        "customers",
        [
            record("customers", "cust_x", {"customer_id": "cust_x", "email": "dana"}),
            record("customers", "cust_y", {"customer_id": "cust_y", "username": "Dana"}),
        ],
    )
    found = store.find_by_login("customers", "dana")
    assert found is not None and found.key == "cust_y"


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        (" Alice@Example.COM\t", "alice@example.com"),
        (0, "0"),
        ("ÉLodie", "Élodie"),  # only ASCII letters fold
        ("   ", None),
        (True, None),
        (None, None),
        (["a"], None),
    ],
)
def test_normalize_login(raw: object, normalized: str | None) -> None:
    assert normalize_login(raw) == normalized


# ---------------------------------------------------------------------------------------------
# Timestamps
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fmt", "expected"),
    [
        ("2023-08-15T10:30:00Z", TimestampFormat.ISO_Z, datetime(2023, 8, 15, 10, 30, tzinfo=UTC)),
        (
            "2025-10-04T10:13:32+00:00",
            TimestampFormat.ISO_OFFSET,
            datetime(2025, 10, 4, 10, 13, 32, tzinfo=UTC),
        ),
        (
            "2025-10-12 09:33:57",
            TimestampFormat.NAIVE,
            datetime(2025, 10, 12, 9, 33, 57, tzinfo=UTC),
        ),
        ("2025-06-15", TimestampFormat.DATE, datetime(2025, 6, 15, tzinfo=UTC)),
        (1760349850, TimestampFormat.EPOCH, datetime(2025, 10, 13, 10, 4, 10, tzinfo=UTC)),
    ],
)
def test_the_five_formats_parse(value: str | int, fmt: TimestampFormat, expected: datetime) -> None:
    assert detect_format(value) is fmt
    assert parse_timestamp(value) == expected
    assert format_like(expected, value) == value


def test_naive_values_are_server_local_time() -> None:
    new_york = ZoneInfo("America/New_York")
    parsed = parse_timestamp("2025-01-15 12:00:00", local_tz=new_york)
    assert parsed == datetime(2025, 1, 15, 17, 0, tzinfo=UTC)
    assert format_like(parsed, "2000-01-01 00:00:00", local_tz=new_york) == "2025-01-15 12:00:00"


def test_offsets_are_kept_when_writing_like_an_original() -> None:
    dt = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert format_like(dt, "2024-06-01T00:00:00-05:00") == "2025-01-01T07:00:00-05:00"
    assert format_like(dt, "2024-06-01T00:00:00Z") == "2025-01-01T12:00:00Z"


@pytest.mark.parametrize("bad", ["", "yesterday", "2025-13-45", "2025-02-30 10:00:00", True, 1.5])
def test_invalid_timestamps_name_the_value(bad: object) -> None:
    with pytest.raises(ValueError, match="timestamp"):
        parse_timestamp(bad)  # type: ignore[arg-type]


def test_naive_datetimes_cannot_be_written() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        format_as(datetime(2025, 1, 1), TimestampFormat.ISO_Z)


def test_now_php_is_a_naive_php_date() -> None:
    stamped = datetime.strptime(now_php(), NAIVE_FORMAT).replace(tzinfo=UTC)
    assert abs(stamped - datetime.now(UTC)) < timedelta(minutes=5)


ORIGINALS = {
    TimestampFormat.ISO_Z: "2023-08-15T10:30:00Z",
    TimestampFormat.ISO_OFFSET: "2025-10-04T10:13:32+02:00",
    TimestampFormat.NAIVE: "2025-10-12 09:33:57",
    TimestampFormat.DATE: "2025-06-15",
    TimestampFormat.EPOCH: 1760349850,
}
local_zones = st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=9))])


@settings(max_examples=200, deadline=None)
@given(
    fmt=st.sampled_from(list(TimestampFormat)),
    moment=st.datetimes(
        min_value=datetime(1900, 1, 2), max_value=datetime(2200, 12, 30), timezones=local_zones
    ),
    local_tz=local_zones,
)
def test_formatting_like_an_original_parses_back_to_the_same_moment(
    fmt: TimestampFormat, moment: datetime, local_tz: timezone
) -> None:
    # Each format keeps whole seconds (ISO also microseconds); a date keeps the local day.
    if fmt is TimestampFormat.DATE:
        local = moment.astimezone(local_tz)
        moment = datetime(local.year, local.month, local.day, tzinfo=local_tz)
    elif fmt is not TimestampFormat.ISO_Z and fmt is not TimestampFormat.ISO_OFFSET:
        moment = moment.replace(microsecond=0)
    written = format_like(moment, ORIGINALS[fmt], local_tz=local_tz)
    assert detect_format(written) is fmt
    assert parse_timestamp(written, local_tz=local_tz) == moment
