"""Big data files (issue 7, found-item 9): a file of any size is parsed once while it does not
change, and lookups by id or login use the index of the cached document instead of scanning.
These count parses and scans; `make bench` times a million customers (bench/big_file_bench)."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.aeims_data import LAST_UPDATED, SITES, STYLE, customer, customers_text
from provisioner.storage.aeims import store as aeims_store
from provisioner.storage.layer.datalayer import DataLayer
from provisioner.storage.phpjson import read as phpjson_read
from provisioner.storage.phpjson.encode import dump_json
from provisioner.storage.phpjson.read import forget_cached
from tests.datalayer_support import FIXTURE_AEIMS, copy_root

# Bigger than the 64 MB above which files used to be parsed again on every read.
BIG_BYTES = 70 * 1024 * 1024


@pytest.fixture
def big_root(tmp_path: Path) -> Path:
    """The fixture application whose customers.json is over 70 MB: alice's bio is huge."""
    forget_cached()
    root = copy_root(FIXTURE_AEIMS, tmp_path / "aeims")
    path = root / "data" / "customers.json"
    doc = json.loads(path.read_text())
    doc["customers"]["cust_alice"]["profile"]["bio"] = "x" * BIG_BYTES
    path.write_text(json.dumps(doc, indent=4))
    return root


def counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Count the calls of `module.name` from now on."""
    calls: list[int] = []
    real: Callable[..., Any] = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_an_unchanged_big_file_is_parsed_once(
    big_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parses = counting(monkeypatch, phpjson_read, "_parse_checked")
    scans = counting(monkeypatch, aeims_store, "_scan")
    layer = DataLayer(big_root)

    for _ in range(20):
        alice = layer.get_customer("alice")
        assert alice is not None and len(alice["profile"]["bio"]) == BIG_BYTES
        assert layer.get_customer("bob@example.test") is not None
        assert layer.get("customers", "cust_bob") is not None

    assert len(parses) == 1
    assert len(scans) == 1  # the index of the cached document, built once


def test_a_rewrite_of_a_big_file_is_parsed_once_more(
    big_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = DataLayer(big_root)
    assert layer.get_customer("alice") is not None
    parses = counting(monkeypatch, phpjson_read, "_parse_checked")
    path = big_root / "data" / "customers.json"
    with open(path, "r+") as f:  # PHP's in-place rewrite, same size
        text = f.read().replace('"username": "alice"', '"username": "alize"')
        f.seek(0)
        f.write(text)

    for _ in range(5):
        assert layer.get_customer("alize") is not None and layer.get_customer("alice") is None

    assert len(parses) == 1


def test_a_changed_ctime_alone_is_read_again_but_not_parsed(
    big_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stat key holds the ctime: an in-place rewrite whose mtime was put back is read
    again; unchanged bytes then cost no parse."""
    path = big_root / "data" / "customers.json"
    long_ago = os.stat(path).st_mtime_ns - 60 * 10**9  # out of the racily-clean window
    os.utime(path, ns=(long_ago, long_ago))
    layer = DataLayer(big_root)
    assert layer.get_customer("alice") is not None
    reads = counting(monkeypatch, phpjson_read, "_read_current")
    assert layer.get_customer("alice") is not None
    assert len(reads) == 0  # served on the stat key alone
    os.utime(path, ns=(long_ago, long_ago))  # same bytes, same mtime, new ctime
    parses = counting(monkeypatch, phpjson_read, "_parse_checked")

    assert layer.get_customer("alice") is not None

    assert len(reads) == 1 and len(parses) == 0


def test_the_bench_generator_writes_what_the_layer_encoder_writes() -> None:
    """bench/aeims_data repeats one encoded record for speed: the text must be exactly the
    encoding of the records it stands for."""
    rng = random.Random(5)
    text = customers_text(40, "$2y$04$ab/cd", rng)

    rng = random.Random(5)
    records = {}
    for i in range(40):
        home = rng.choice(SITES)
        cid = f"cust_{i:07d}"
        records[cid] = customer(cid, str(i), home, rng.randint(0, 500), "$2y$04$ab/cd")
    assert text == dump_json({"customers": records, "last_updated": LAST_UPDATED}, STYLE)
    assert customers_text(0, "h", rng) == dump_json(
        {"customers": {}, "last_updated": LAST_UPDATED}, STYLE
    )
