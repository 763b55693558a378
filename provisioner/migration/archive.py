"""Archiving the JSON files once PostgreSQL alone is the truth, and putting them back.

`archive` moves every AEIMS JSON file into `<root>/backups/json-archive-YYYYMMDD/` (same
relative paths) with a manifest of sha256 sums written first (`manifest.json`, and `SHA256SUMS`
for `sha256sum -c`); `unarchive` checks each archived file against the manifest, moves it back,
and checks it again where it landed, so the files come back byte for byte (a rename keeps the
inode, owner, mode and times too). A file the manifest does not match, or a file that is back
in place with other content, stops the unarchive with nothing half-moved past it.

Where the archive is stands in `.provision/archive.json` (written before the first move, so an
archive cut short can be finished or undone).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioner.fsutil import fsync_dir, private_dir, write_atomically
from provisioner.migration.storage_access import data_files, state_dir

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"


class ArchiveError(RuntimeError):
    """The archive cannot be made or restored as it is; the message says what to do."""


def state_path(data_dir: Path) -> Path:
    return state_dir(data_dir) / "archive.json"


def archive_state(data_dir: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(state_path(data_dir).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def new_folder(data_dir: Path, day: datetime | None = None) -> Path:
    """`backups/json-archive-YYYYMMDD`, or with `-2`, `-3`... when that day has one already."""
    stamp = (day or datetime.now(UTC)).strftime("%Y%m%d")
    base = data_dir / "backups" / f"json-archive-{stamp}"
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


def archive(
    data_dir: Path, folder: Path | None = None, created_at: str | None = None
) -> dict[str, Any]:
    """Move the JSON files into a new archive folder; what was archived (relative paths).

    `created_at`: the manifest's date when an undone unarchive puts back the archive it took
    apart, so the archive comes back byte for byte."""
    state = archive_state(data_dir)
    if state is not None:
        folder = data_dir / state["folder"]
    folder = folder or new_folder(data_dir)
    rel_folder = str(folder.relative_to(data_dir))
    present = [p for p in data_files(data_dir) if p.exists() and not p.is_symlink()]
    manifest = read_manifest(folder) if (folder / MANIFEST).exists() else None
    if manifest is None:
        entries = [
            {
                "path": str(p.relative_to(data_dir)),
                "sha256": sha256_of(p),
                "size": p.stat().st_size,
                "mode": oct(p.stat().st_mode & 0o7777),
            }
            for p in present
        ]
        made = created_at or datetime.now(UTC).isoformat(timespec="seconds")
        manifest = {"created_at": made, "files": entries}
        private_dir(state_dir(data_dir))
        write_atomically(
            state_path(data_dir), json.dumps({"folder": rel_folder}) + "\n", mode=0o600
        )
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n", mode=0o600)
        sums = "".join(f"{e['sha256']}  {e['path']}\n" for e in entries)
        write_atomically(folder / SUMS, sums, mode=0o600)
    for entry in manifest["files"]:
        source, dest = data_dir / entry["path"], folder / entry["path"]
        if source.exists() and not dest.exists():
            _move(source, dest)
    return {"folder": rel_folder, "files": [e["path"] for e in manifest["files"]]}


def unarchive(data_dir: Path, folder: Path | None = None) -> dict[str, Any]:
    """Check the manifest and move every archived file back; what was restored."""
    if folder is None:
        state = archive_state(data_dir)
        if state is None:
            return {"folder": None, "files": []}
        folder = data_dir / state["folder"]
    if not (folder / MANIFEST).exists():
        _forget(data_dir, folder)
        return {"folder": str(folder.relative_to(data_dir)), "files": []}
    manifest = read_manifest(folder)
    entries = manifest["files"]
    created_at = manifest.get("created_at")
    for entry in entries:  # check everything before moving anything
        source, dest = folder / entry["path"], data_dir / entry["path"]
        if source.exists():
            found = sha256_of(source)
            if found != entry["sha256"]:
                raise ArchiveError(
                    f"{source}: sha256 {found[:12]}… does not match the manifest's "
                    f"{entry['sha256'][:12]}…; the archive was changed, restore it by hand"
                )
            if dest.exists():
                raise ArchiveError(
                    f"{dest} exists again beside its archived copy {source}; move one aside "
                    "and unarchive again"
                )
        elif not dest.exists():
            raise ArchiveError(f"{source} is missing from the archive and from {dest}")
    for entry in entries:
        source, dest = folder / entry["path"], data_dir / entry["path"]
        if source.exists():
            _move(source, dest)
        found = sha256_of(dest)
        if found != entry["sha256"]:
            raise ArchiveError(
                f"{dest}: sha256 {found[:12]}… after unarchiving does not match the "
                f"manifest's {entry['sha256'][:12]}…"
            )
    _forget(data_dir, folder)
    rel_folder = str(folder.relative_to(data_dir))
    return {"folder": rel_folder, "files": [e["path"] for e in entries], "created_at": created_at}


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        assert isinstance(files, list)
        for entry in files:
            assert isinstance(entry["path"], str) and isinstance(entry["sha256"], str)
            assert not Path(entry["path"]).is_absolute() and ".." not in Path(entry["path"]).parts
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
        raise ArchiveError(f"{folder / MANIFEST}: unreadable manifest ({exc})") from None
    return manifest


def _move(source: Path, dest: Path) -> None:
    """A rename (byte for byte, same inode) when both are on one filesystem, else a durable
    copy then the removal of the source."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, dest)
    except OSError:
        partial = dest.with_name(f".{dest.name}.partial")
        shutil.copy2(source, partial)
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, dest)
        source.unlink()
    fsync_dir(dest.parent)
    fsync_dir(source.parent)


def _forget(data_dir: Path, folder: Path) -> None:
    """Remove the emptied archive folder (and backups/ when nothing else is in it)."""
    for name in (MANIFEST, SUMS):
        (folder / name).unlink(missing_ok=True)
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir():
            with contextlib.suppress(OSError):
                path.rmdir()
    for path in (folder, folder.parent):
        with contextlib.suppress(OSError):
            path.rmdir()
    state_path(data_dir).unlink(missing_ok=True)


def archived_paths(data_dir: Path) -> list[str]:
    """The relative paths the current archive's manifest lists ([] without an archive)."""
    state = archive_state(data_dir)
    if state is None:
        return []
    folder = data_dir / state["folder"]
    if not (folder / MANIFEST).exists():
        return []
    return [entry["path"] for entry in read_manifest(folder)["files"]]
