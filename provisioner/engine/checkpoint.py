"""Checkpoints: copies of big before-states kept beside the journal, as certbot's reverter does.

A step about to change a folder or a large file keeps a copy here before the runner journals
its Change; the journal then holds only a reference (`{"checkpoint": ..., "exists": ...}`).
Copies live in `<checkpoint_root>/<run_id>/<key>`, are made once (the first copy a run made is
the state before the run), and are removed when the run has been rolled back.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from provisioner.fsutil import fsync_dir

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or is missing."""


class Checkpoints:
    """The checkpoints of one run."""

    def __init__(self, root: Path, run_id: str) -> None:
        self.folder = root / run_id

    def _path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise CheckpointError(f"invalid checkpoint key {key!r}")
        return self.folder / key

    def keep(self, key: str, source: Path) -> dict[str, Any]:
        """Copy `source` (a file, a folder, or nothing) once; return the journal's reference."""
        saved = self._path(key)
        marker = saved.with_name(saved.name + ".absent")
        if saved.exists() or saved.is_symlink():
            return {"checkpoint": key, "exists": True}
        if marker.exists():
            return {"checkpoint": key, "exists": False}
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not (source.exists() or source.is_symlink()):
            marker.touch(mode=0o600)
            fsync_dir(self.folder)
            return {"checkpoint": key, "exists": False}
        partial = saved.with_name(saved.name + ".partial")
        _remove(partial)
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, partial, symlinks=True)
        else:
            shutil.copy2(source, partial, follow_symlinks=False)
        _fsync_tree(partial)
        os.replace(partial, saved)
        fsync_dir(self.folder)
        return {"checkpoint": key, "exists": True}

    def restore(self, reference: dict[str, Any], dest: Path) -> None:
        """Put the kept state back at `dest` (removing `dest` if nothing was there)."""
        key = str(reference["checkpoint"])
        saved = self._path(key)
        if not reference.get("exists"):
            _remove(dest)
            return
        if not (saved.exists() or saved.is_symlink()):
            raise CheckpointError(f"checkpoint {saved} is missing; cannot restore {dest}")
        incoming = dest.with_name(f".{dest.name}.restore")
        _remove(incoming)
        if saved.is_dir() and not saved.is_symlink():
            shutil.copytree(saved, incoming, symlinks=True)
        else:
            shutil.copy2(saved, incoming, follow_symlinks=False)
        outgoing = dest.with_name(f".{dest.name}.replaced")
        _remove(outgoing)
        if dest.exists() or dest.is_symlink():
            os.replace(dest, outgoing)
        os.replace(incoming, dest)
        _remove(outgoing)
        fsync_dir(dest.parent)

    def discard(self) -> None:
        """Remove the run's checkpoints (once nothing can be undone from them any more)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fsync_tree(path: Path) -> None:
    if path.is_symlink():
        return
    if path.is_file():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    for child in path.iterdir():
        _fsync_tree(child)
    fsync_dir(path)
