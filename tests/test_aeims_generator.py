"""The AEIMS data generator: the same bytes for a seed, every file the layer knows, the real
files' quirks, counts and logins as the data layer reads them (json_only, no database)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.devdata.aeims_generator import (
    PHP_COMPACT,
    PHP_PRETTY,
    Dataset,
    Scale,
    generate,
    password_for,
)
from provisioner.storage.aeims.catalog import CATALOG, NOT_ENTITY_FILES
from provisioner.storage.layer.datalayer import DataLayer
from provisioner.storage.model import ENTITIES
from provisioner.storage.passwords import verify_password
from provisioner.storage.phpjson.encode import dump_json
from provisioner.storage.timestamps import TimestampFormat, detect_format

CUSTOMERS = 3000
PROVISION = str(Path(sys.executable).parent / "provision")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return generate(tmp_path_factory.mktemp("gen") / "aeims", CUSTOMERS, seed=11, bcrypt_rounds=4)


def files_of(root: Path) -> dict[str, bytes]:
    """The AEIMS files under `root` (not the layer's own state in data/.provision)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*.json"))
        if ".provision" not in p.parts
    }


def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_data(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", 500, seed=3, bcrypt_rounds=4)
    second = generate(tmp_path / "b", 500, seed=3, bcrypt_rounds=4)
    other = generate(tmp_path / "c", 500, seed=4, bcrypt_rounds=4)

    assert files_of(first.root) == files_of(second.root)
    assert files_of(first.root) != files_of(other.root)
    assert first.counts == other.counts


def test_every_file_of_the_catalog_is_written_and_the_plaintext_credentials_file(
    dataset: Dataset,
) -> None:
    expected = {fs.relpath for spec in CATALOG.values() for fs in spec.files}
    expected |= set(NOT_ENTITY_FILES)

    assert set(files_of(dataset.root)) == expected
    assert len(expected) == 24  # 22 entities in 23 files, and the test credentials


def test_the_data_layer_reads_the_counts_asked_for(dataset: Dataset) -> None:
    layer = DataLayer(dataset.root)  # no database: json_only
    asked = Scale.for_customers(CUSTOMERS).counts()

    read = {entity: len(layer.list(entity)) for entity in ENTITIES}

    assert read == {entity: asked[entity] for entity in ENTITIES}
    assert read["messages"] == 2 * CUSTOMERS and read["operators"] == CUSTOMERS // 20
    assert layer.json.file_problems() == []


def test_generated_customers_and_operators_log_in_with_their_documented_password(
    dataset: Dataset,
) -> None:
    layer = DataLayer(dataset.root)
    customers = dataset.customer_logins(5, start=1000)
    operators = [(dataset.names.operator_login(j), password_for(j)) for j in range(0, 150, 15)]

    for login, password in customers + operators:
        result = layer.authenticate(login, password)
        assert result.ok, (login, result.reason)
        assert not layer.authenticate(login, password + "x").ok


def test_usernames_differing_only_by_case_or_a_trailing_space_are_refused_as_ambiguous(
    dataset: Dataset,
) -> None:
    layer = DataLayer(dataset.root)
    names = dataset.names

    by_case = names.customer_username(1500)
    by_space = names.customer_username(1900)

    assert by_case == str(names.customer_username(1499)).capitalize()
    assert by_space == f"{names.customer_username(1899)} "
    for login in (by_case, by_space):
        result = layer.authenticate(str(login), password_for(1500))
        assert not result.ok and result.reason == "ambiguous"


def test_the_two_operator_files_overlap_and_differ_as_in_aeims(dataset: Dataset) -> None:
    data = json.loads((dataset.root / "data/operators.json").read_text())["operators"]
    agents_text = (dataset.root / "agents/data/operators.json").read_text()
    agents = json.loads(agents_text)

    assert list(data)[:3] == ["0", "1", "2"] and data["0"]["username"] == 0
    assert all("username" not in agents[k] for k in ("0", "1", "2"))
    keyed_by_username = [k for k, r in data.items() if k == r.get("username")]
    assert keyed_by_username and all("username" not in agents[k] for k in keyed_by_username)
    assert list(data[keyed_by_username[0]])[-1] == "username"  # data/ appended it
    tests = [k for k in data if k.startswith("op_test_")]
    assert tests
    assert all({**data[k], "status": ""} == {**agents[k], "status": ""} for k in tests)
    assert set(agents) - set(data), "some operators exist only in the agents copy"
    assert any(agents[k]["status"] != data[k]["status"] for k in data)
    # Slashes: escaped throughout data/, only in the older records of the agents copy.
    assert "\\/" in agents_text and '"/assets/' in agents_text
    assert '"/assets/' not in (dataset.root / "data/operators.json").read_text()


def test_the_files_are_spelled_as_php_and_people_wrote_them(dataset: Dataset) -> None:
    root = dataset.root / "data"
    customers = (root / "customers.json").read_text()
    messages = (root / "messages.json").read_text()
    accounts = (root / "accounts.json").read_text()

    assert dump_json(json.loads(customers), PHP_PRETTY) == customers
    assert dump_json(json.loads(messages), PHP_COMPACT) == messages
    assert "\\/" in customers and "\\/" not in accounts and "$2y$04$" in accounts
    assert '"categories": ["' in (root / "sites.json").read_text()  # hand-written lists
    assert re.search(r'"entry_fee": \d+\.00,', (root / "chat_rooms.json").read_text())
    assert (root / "domains.json").read_text().startswith('{\n  "')  # 2-space indent
    assert "💋" in (root / "chat_rooms.json").read_text()


def test_the_records_carry_the_real_files_quirks(dataset: Dataset) -> None:
    root = dataset.root / "data"
    doc = json.loads((root / "customers.json").read_text())
    records = list(doc["customers"].values())
    activity = json.loads((root / "customer_activity.json").read_text())
    favorites = json.loads((root / "favorites.json").read_text())

    assert "_CREDENTIALS_DOCUMENTATION" in doc and "last_updated" in doc
    plaintext = [r for r in records if "password_plaintext_for_testing" in r]
    assert len(plaintext) == CUSTOMERS // 100
    assert any(r["customer_id"].isdigit() for r in records)
    assert any(isinstance(r["username"], int) for r in records)
    assert any("demo.example.com" in r["sites"] for r in records)
    assert {type(r["billing"]["credits"]) for r in records} == {int, float}
    assert activity["activities"] and "0" in activity and activity["0"]["data"] == []
    assert {type(v) for v in favorites.values()} == {list, dict}
    formats = {
        detect_format(value)
        for value in (
            records[0]["created_at"],
            json.loads((root / "domains.json").read_text())["nycflirts.com"]["created_at"],
            activity["0"]["timestamp"],
            json.loads((root / "domains.json").read_text())["nycflirts.com"]["ssl_expires"],
            next(iter(json.loads((root / "account_locks.json").read_text()).values()))[
                "first_attempt"
            ],
        )
    }
    assert formats == set(TimestampFormat)


def test_the_plaintext_credentials_file_holds_real_passwords_under_other_case(
    dataset: Dataset,
) -> None:
    layer = DataLayer(dataset.root)
    path = dataset.root / "data/test_operator_credentials.json"
    creds = json.loads(path.read_text())["operators"]

    assert len(creds) == 5
    for cred in creds:
        operator = layer.json.get("operators", cred["operator_id"])
        assert operator is not None
        assert cred["username"] != operator.data["username"]
        assert cred["username"].lower() == operator.data["username"]
        assert verify_password(cred["password"], operator.data["password_hash"])


def test_an_empty_platform_is_written_with_php_empty_arrays(tmp_path: Path) -> None:
    empty = generate(tmp_path / "aeims", 0, seed=1, bcrypt_rounds=4)
    layer = DataLayer(empty.root)

    assert json.loads((empty.root / "data/customers.json").read_text())["customers"] == []
    assert layer.list("customers") == [] and len(layer.list("operators")) == 4


@pytest.mark.skipif(shutil.which("php") is None, reason="php-cli is not installed")
def test_php_reads_every_generated_file(dataset: Dataset) -> None:
    script = (
        "foreach (array_slice($argv, 1) as $f) { json_decode(file_get_contents($f), true);"
        " if (json_last_error()) { echo $f, ': ', json_last_error_msg(), PHP_EOL; exit(1); } }"
    )
    paths = [str(dataset.root / relpath) for relpath in files_of(dataset.root)]

    done = subprocess.run(["php", "-r", script, *paths], capture_output=True, text=True)

    assert done.returncode == 0, done.stdout + done.stderr


def test_the_command_writes_a_dataset_and_refuses_an_existing_one(tmp_path: Path) -> None:
    out = tmp_path / "aeims"
    args = [PROVISION, "dev", "generate-data", "--customers", "200", "--seed", "2"]
    made = subprocess.run(
        [*args, "--out", str(out), "--bcrypt-cost", "4", "--json"],
        capture_output=True,
        text=True,
    )
    again = subprocess.run([*args, "--out", str(out)], capture_output=True, text=True)

    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["counts"]["customers"] == 200
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"error: {out / 'data'} already exists: generate into a new or empty folder "
        "(existing AEIMS files are never overwritten)"
    ]
