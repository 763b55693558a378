"""`AeimsJsonStore`: the records of every AEIMS entity, read from and written to the files.

A write changes only what it must: records keep every field, file-level keys stay, a record
stays where it was and a file keeps its shape (docs/data-layer.md, "The AEIMS files").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

from provisioner.storage.aeims.catalog import (
    CATALOG,
    JUNK_KEYS,
    LAST_UPDATED,
    OPERATORS_AGENTS,
    EntitySpec,
    FileSpec,
    Layout,
)
from provisioner.storage.aeims.operators import (
    OperatorFiles,
)
from provisioner.storage.aeims.shapes import (
    _copied_for_write,
    _counts_as_record,
    _file_value,
    _Found,
    _hint,
    _insert_new,
    _key_for,
    _rebuild,
    _record_after_wrapper,
    _record_data,
    _remove_value,
    _scan,
    _set_value,
    _Slot,
    _Slots,
    _wrapper_of,
)
from provisioner.storage.jsonvalues import clone_json, json_equal, usable_id
from provisioner.storage.logins import LOGINS, RECORD_KEY, normalize_login, normalize_login_id
from provisioner.storage.model import (
    ENTITIES,
    StoredRecord,
)
from provisioner.storage.phpjson.errors import NO_CHANGE, JsonFileError
from provisioner.storage.phpjson.files import locked_update, locked_update_shared
from provisioner.storage.phpjson.limits import gc_paused
from provisioner.storage.phpjson.read import duplicate_keys, read_json_shared
from provisioner.storage.timestamps import format_like, now_php

# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


@dataclass
class _Index:
    docs: tuple[Any, ...]  # the shared documents this index was built from (identity check)
    records: dict[str, StoredRecord]  # shared data: clone before handing out
    logins: dict[str, list[tuple[int, int, str]]] | None = None
    # With `logins`: each record's rank in file order, and the rank of the next one appended.
    orders: dict[str, int] | None = None
    next_order: int = 0


def _login_entries(entity: str, record: StoredRecord) -> list[tuple[str, int]]:
    """The (normalized login, priority) pairs `record` is found by (logins.LOGINS, in rule
    order); ids under "\\0" + id."""
    out: list[tuple[str, int]] = []
    rule = LOGINS.get(entity)
    if rule is None:
        return out
    if rule.id_field is not None:
        record_id = normalize_login_id(record.data.get(rule.id_field))
        if record_id is not None:
            out.append(("\0" + record_id, 0))
    for priority, field_name in enumerate(rule.fields, start=1):
        raw = record.key if field_name == RECORD_KEY else record.data.get(field_name)
        normalized = normalize_login(raw)
        if normalized is not None:
            out.append((normalized, priority))
    return out


class AeimsJsonStore(OperatorFiles):
    """Records of every AEIMS entity, read from and written to an AEIMS application root.

    `data_dir` is the application root (`PROVISION_DATA_DIR`): it holds `data/*.json` and,
    for operators, `agents/data/operators.json`. A missing entity file reads as empty and is
    created on the first write with the wrapper PHP's DataLayer writes (see CATALOG notes).
    Reads share a parse cache and hand out copies; each write is one locked, atomic
    read-modify-write per file (see files.locked_update). Writes other than the operators'
    change the shared document copy-on-write (files.locked_update_shared), and an upsert
    that replaces records where they sit and appends new ones carries the slots (`_Slots`) and
    the read index (`_Index`, logins included) over to the document it wrote, so neither the
    next write nor the next lookup scans every record again.

    Naive timestamps (`last_updated`) are written in `local_tz`, the PHP server's zone.
    """

    def __init__(self, data_dir: Path | str, *, local_tz: tzinfo = UTC) -> None:
        root = Path(data_dir)
        if not (root / "data").is_dir():
            raise ValueError(
                f"{root} is not an AEIMS application root: it has no data/ folder. Point "
                "PROVISION_DATA_DIR at the folder holding data/*.json and agents/data/."
            )
        self.data_dir = root.absolute()
        self.local_tz = local_tz
        self._indexes: dict[str, _Index] = {}
        self._slots: dict[str, _Slots] = {}  # by FileSpec.relpath

    # -- catalog --------------------------------------------------------------------------

    @staticmethod
    def spec(entity: str) -> EntitySpec:
        try:
            return CATALOG[entity]
        except KeyError:
            raise ValueError(f"unknown entity {entity!r}; known: {', '.join(ENTITIES)}") from None

    def file_paths(self, entity: str) -> list[Path]:
        """The file(s) holding `entity` (they may not exist yet)."""
        return [self.data_dir / fs.relpath for fs in self.spec(entity).files]

    def _path(self, fs: FileSpec) -> Path:
        return self.data_dir / fs.relpath

    def _agents_writable(self) -> bool:
        """The agents copy is kept only where the application has an agents/data folder."""
        return self._path(OPERATORS_AGENTS).parent.is_dir()

    # -- reading --------------------------------------------------------------------------

    def _doc(self, fs: FileSpec) -> Any:
        """One file's shared document (None: no file). Each entity reads only its own files,
        so one unreadable file (malformed, a FIFO, too big or too deep) fails the reads of its
        entity and of no other: logins of the other kinds go on."""
        return read_json_shared(self._path(fs), default=None)

    def file_problems(self) -> list[str]:
        """What is wrong with each entity file, one line each, for `data health`: unreadable
        files (named with the position and a secret-masked excerpt), and files holding
        duplicate keys (readable with PHP's value, the last; writes to them are refused)."""
        problems: list[str] = []
        for entity in ENTITIES:
            for fs in self.spec(entity).files:
                path = self._path(fs)
                try:
                    self._doc(fs)
                    duplicates = duplicate_keys(path)
                except (JsonFileError, OSError) as exc:
                    problems.append(str(exc))
                    continue
                if duplicates:
                    problems.append(
                        f"{path}: duplicate keys: {'; '.join(duplicates)}. Reads get the last "
                        "value of each, as PHP's json_decode does; writes to the file are "
                        "refused until the duplicates are removed"
                    )
        return problems

    def _index(self, entity: str) -> _Index:
        spec = self.spec(entity)
        docs = tuple(self._doc(fs) for fs in spec.files)
        cached = self._indexes.get(entity)
        if cached is not None and all(a is b for a, b in zip(cached.docs, docs, strict=True)):
            return cached
        with gc_paused():  # an index of a big file is millions of new objects
            if entity == "operators":
                records = self._operator_records(docs[0], docs[1])
            else:
                records = self._file_records(entity, spec.file, docs[0])
        index = _Index(docs, records)
        self._indexes[entity] = index
        return index

    def _file_records(self, entity: str, fs: FileSpec, doc: Any) -> dict[str, StoredRecord]:
        """The records of a one-file entity by key, remembering their slots for writes."""
        records = {}
        found_list = _scan(fs, doc)
        for found in found_list:
            records[found.key] = StoredRecord(
                entity,
                found.key,
                _record_data(fs, found.slot, found.value) if fs.value_field else found.value,
                found.slot.placement(),
            )
        self._slots[fs.relpath] = _Slots(
            doc, {f.key: f for f in found_list}, _record_after_wrapper(fs, doc)
        )
        return records

    def _slots_for(self, fs: FileSpec, doc: Any) -> _Slots:
        """The slots of the shared `doc`: kept from the last update or read, else scanned."""
        cached = self._slots.get(fs.relpath)
        if cached is not None and cached.doc is doc:
            return cached
        slots = _Slots(doc, {f.key: f for f in _scan(fs, doc)}, _record_after_wrapper(fs, doc))
        self._slots[fs.relpath] = slots
        return slots

    def _advance_index(
        self,
        entity: str,
        fs: FileSpec,
        old_doc: Any,
        new_doc: Any,
        changes: list[tuple[str, Any, _Slot]],
    ) -> None:
        """Carry the read index of `old_doc` over to `new_doc` after an upsert that replaced
        records where they sat and appended new ones at the end of the file order: what a
        full rebuild would give, without one. The old index is not changed (readers may be
        using it)."""
        index = self._indexes.get(entity)
        if index is None or len(index.docs) != 1 or index.docs[0] is not old_doc:
            return
        records = dict(index.records)
        logins = dict(index.logins) if index.logins is not None else None
        orders = dict(index.orders) if index.orders is not None else None
        next_order = index.next_order
        if logins is None or orders is None:
            logins = orders = None  # built on the next find_by_login
        copied: set[str] = set()

        def entries(login: str) -> list[tuple[int, int, str]]:
            assert logins is not None
            if login not in copied:
                logins[login] = list(logins.get(login, ()))
                copied.add(login)
            return logins[login]

        for key, value, slot in changes:
            data = _record_data(fs, slot, value) if fs.value_field else value
            record = StoredRecord(entity, key, data, slot.placement())
            previous = records.get(key)
            records[key] = record
            if logins is None or orders is None:
                continue
            if previous is not None:
                order = orders[key]
                for login, _ in _login_entries(entity, previous):
                    kept = [e for e in entries(login) if e[2] != key]
                    logins[login] = kept
            else:
                order = next_order
                next_order += 1
                orders[key] = order
            for login, priority in _login_entries(entity, record):
                entries(login).append((priority, order, key))
        if logins is not None:
            for login in copied:
                if not logins[login]:
                    del logins[login]
        self._indexes[entity] = _Index((new_doc,), records, logins, orders, next_order)

    @staticmethod
    def _copy(record: StoredRecord) -> StoredRecord:
        return StoredRecord(
            record.entity, record.key, clone_json(record.data), clone_json(record.placement)
        )

    def load(self, entity: str) -> list[StoredRecord]:
        """Every record of `entity`, in file order (private copies)."""
        return [self._copy(r) for r in self._index(entity).records.values()]

    def load_all(self) -> dict[str, list[StoredRecord]]:
        return {entity: self.load(entity) for entity in ENTITIES}

    def get(self, entity: str, key: str) -> StoredRecord | None:
        record = self._index(entity).records.get(key)
        return None if record is None else self._copy(record)

    def find_by_login(self, entity: str, login: str | int) -> StoredRecord | None:
        """The record a person logging in as `login` is, for customers, operators and accounts.

        THE rule (the PostgreSQL side implements the same):
        - customers match on username or email; operators on id, username or email; accounts on
          the file key (the login) or email.
        - usernames, emails and logins compare after `normalize_login` (ASCII whitespace
          stripped, ASCII letters lowercased, ints as decimal strings: operator username 0
          matches "0"); ids compare exactly after stripping whitespace.
        - several matches: an id match wins, then a username (or login key) match, then an
          email match; among equals, the first in file order (for operators, data/ order).
        """
        found = self.login_candidates(entity, login)
        return found[0] if found else None

    def login_candidates(self, entity: str, login: str | int) -> list[StoredRecord]:
        """Every record `login` matches by find_by_login's rule, each once, in rule order (the
        first is find_by_login's answer): a login may then refuse to guess between several."""
        if entity not in LOGINS:
            raise ValueError(f"find_by_login works on {', '.join(LOGINS)}, not {entity!r}")
        index = self._index(entity)
        logins = self._logins(entity, index)
        candidates: list[tuple[int, int, str]] = []
        wanted_id = normalize_login_id(login) if LOGINS[entity].id_field else None
        if wanted_id is not None:
            candidates.extend(logins.get("\0" + wanted_id, ()))
        wanted = normalize_login(login)
        if wanted is not None:
            candidates.extend(logins.get(wanted, ()))
        keys = dict.fromkeys(key for _, _, key in sorted(candidates))
        return [self._copy(index.records[key]) for key in keys]

    @staticmethod
    def _logins(entity: str, index: _Index) -> dict[str, list[tuple[int, int, str]]]:
        """normalized login -> [(priority, file order, key)]; ids under "\\0" + id."""
        if index.logins is None:
            logins: dict[str, list[tuple[int, int, str]]] = {}
            orders: dict[str, int] = {}
            with gc_paused():  # a million customers are millions of new objects
                for order, record in enumerate(index.records.values()):
                    orders[record.key] = order
                    for login, priority in _login_entries(entity, record):
                        logins.setdefault(login, []).append((priority, order, record.key))
            index.orders = orders
            index.next_order = len(orders)
            index.logins = logins
        return index.logins

    # -- writing --------------------------------------------------------------------------

    def _check(self, entity: str, records: Iterable[StoredRecord]) -> list[StoredRecord]:
        """Records fit for writing, or ValueError naming the first that is not."""
        spec = self.spec(entity)
        fs = spec.file
        checked: list[StoredRecord] = []
        seen: set[str] = set()
        for record in records:
            label = f"{entity} record {record.key!r}"
            if record.entity != entity:
                raise ValueError(f"{label} belongs to {record.entity!r}, not {entity!r}")
            if not isinstance(record.key, str) or not record.key:
                raise ValueError(f"{entity} record has no key ({record.key!r})")
            if record.key in seen:
                raise ValueError(f"{label} appears twice in one write")
            seen.add(record.key)
            if not isinstance(record.data, dict):
                raise ValueError(
                    f"{label}: data must be an object, not {type(record.data).__name__}"
                )
            if fs.layout is Layout.FLAT and record.key in JUNK_KEYS:
                raise ValueError(f"{label}: {record.key!r} is a file-level key, not a login")
            if fs.value_field is not None and not isinstance(
                record.data.get(fs.value_field), list | dict
            ):
                raise ValueError(
                    f"{label}: {fs.value_field!r} must hold the list of the file's value"
                )
            if fs.id_field is not None and fs.layout is not Layout.FLAT:
                record_id = usable_id(record.data.get(fs.id_field))
                if record_id is not None and not (
                    record.key == record_id or record.key.startswith(record_id + "@")
                ):
                    raise ValueError(
                        f"{label}: its {fs.id_field} is {record_id!r}; the key must match it"
                    )
            checked.append(record)
        return checked

    def _touch(self, doc: Any) -> None:
        """PHP's writers stamp `last_updated`; keep doing it, in the value's own format."""
        if isinstance(doc, dict) and LAST_UPDATED in doc:
            old = doc[LAST_UPDATED]
            try:
                doc[LAST_UPDATED] = format_like(datetime.now(UTC), old, local_tz=self.local_tz)
            except ValueError:
                doc[LAST_UPDATED] = now_php(self.local_tz)

    def _update(self, fs: FileSpec, fn: Callable[[Any], Any]) -> Any:
        """A locked update where `fn` gets a private copy of the document."""
        return locked_update(self._path(fs), fn, default=fs.new_document())

    def _update_shared(self, fs: FileSpec, fn: Callable[[Any], Any]) -> Any:
        """A locked update where `fn` gets the shared document and changes it copy-on-write
        (files.locked_update_shared): for changes to a few records of a big file."""
        return locked_update_shared(self._path(fs), fn, default=fs.new_document())

    def upsert(self, entity: str, records: list[StoredRecord]) -> None:
        """Insert or replace `records` in one locked read-modify-write (per file).

        A record already in the file (same key) is replaced where it sits; a new one goes
        where its placement says if that is free, else at the end in the file's shape. The
        records' placements are updated to where they now are.
        """
        checked = self._check(entity, records)
        if not checked:
            return
        if entity == "operators":
            self._upsert_operators(checked)
            return
        fs = self.spec(entity).file
        path = self._path(fs)
        # Private copies, made once: they become part of the shared cached document.
        wanted = [(r, _file_value(fs, r), _hint(fs, r.placement)) for r in checked]
        placements: dict[str, dict[str, Any]] = {}
        outcome: list[Any] = []  # [old doc, new doc, new slots or None, changes]

        def apply(doc: Any) -> Any:
            placements.clear()
            outcome.clear()
            slots = self._slots_for(fs, doc)
            plan: list[tuple[StoredRecord, Any, _Slot | None, _Found | None]] = []
            for record, value, hint in wanted:
                found = slots.found.get(record.key)
                if found is None:
                    plan.append((record, value, hint, None))
                    continue
                placements[record.key] = found.slot.placement()
                if not json_equal(found.value, value):
                    plan.append((record, value, hint, found))
            if not plan:
                return NO_CHANGE
            new_doc = _copied_for_write(fs, doc)
            found_now = dict(slots.found)
            # Whether found_now is what a scan of new_doc gives: records replaced where they
            # sit, new ones appended at the end of the file order, every key its natural one.
            exact = True
            after_wrapper = slots.record_after_wrapper
            changes: list[tuple[str, Any, _Slot]] = []
            for record, value, hint, found in plan:
                if found is not None:
                    slot = found.slot
                    _set_value(new_doc, slot, value)
                else:
                    before, wrapper = new_doc, _wrapper_of(fs, new_doc)
                    new_doc, slot = _insert_new(fs, path, new_doc, record.key, value, hint)
                    placements[record.key] = slot.placement()
                    if new_doc is not before:
                        exact = False  # PHP's `[]` became the DataLayer's document
                    elif slot.container is None:
                        # Appended to the top level: last in file order, after any wrapper.
                        after_wrapper = after_wrapper or wrapper is not None
                    elif (
                        wrapper is None or _wrapper_of(fs, new_doc) is not wrapper or after_wrapper
                    ):
                        # A new wrapper, or a top-level record follows it: not last in order.
                        exact = False
                if _key_for(fs, value, slot) != record.key or not _counts_as_record(
                    fs, new_doc, slot, value
                ):
                    exact = False
                found_now[record.key] = _Found(record.key, value, slot)
                changes.append((record.key, value, slot))
            self._touch(new_doc)
            slots_now = _Slots(new_doc, found_now, after_wrapper) if exact else None
            outcome[:] = [doc, new_doc, slots_now, changes]
            return new_doc

        self._update_shared(fs, apply)
        for record in checked:
            record.placement = placements[record.key]
        if outcome and outcome[2] is not None:
            old_doc, new_doc, slots_now, changes = outcome
            current = self._slots.get(fs.relpath)
            if current is None or current.doc is old_doc:  # not behind another thread's write
                self._slots[fs.relpath] = slots_now
            self._advance_index(entity, fs, old_doc, new_doc, changes)

    def delete(self, entity: str, key: str) -> bool:
        """Remove the record with `key`; False when there is none."""
        spec = self.spec(entity)
        deleted = False
        for fs in spec.files:
            if fs is OPERATORS_AGENTS and not self._agents_writable():
                continue

            def apply(doc: Any, fs: FileSpec = fs) -> Any:
                found = self._slots_for(fs, doc).found.get(key)
                if found is None:
                    return NO_CHANGE
                new_doc = _copied_for_write(fs, doc)
                _remove_value(new_doc, found.slot)
                self._touch(new_doc)
                return new_doc

            if self._update_shared(fs, apply) is not NO_CHANGE:
                deleted = True
        return deleted

    def replace_all(self, entity: str, records: list[StoredRecord]) -> None:
        """Make the file(s) hold exactly `records` (rolling back from PostgreSQL).

        Records go back to their placements, in order; records without one are appended in
        the file's shape. File-level keys stay; `last_updated` is stamped when something
        changed. A file whose records already equal `records` is not written at all.
        """
        checked = self._check(entity, records)
        if entity == "operators":
            self._replace_operators(checked)
            return
        fs = self.spec(entity).file
        path = self._path(fs)
        items = [(r.key, _file_value(fs, r), _hint(fs, r.placement)) for r in checked]

        def apply(doc: Any) -> Any:
            rebuilt = _rebuild(fs, path, clone_json(doc), items)  # doc itself stays unchanged
            if json_equal(rebuilt, doc):
                return NO_CHANGE
            self._touch(rebuilt)
            return rebuilt

        self._update_shared(fs, apply)
