"""Small file-system helpers shared across the tool: one way to replace a file atomically, one
way to append durably, one way to lock a file.

Durability rules are easy to get subtly wrong (a missing fsync of the file or of its folder, a
short write, a torn last line), so every module uses these instead of its own copy.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# Polling a lock with a timeout: start short (a lock held for a moment is common), back off to
# this ceiling so a long wait costs little CPU.
_POLL_MIN_SECONDS = 0.001
_POLL_MAX_SECONDS = 0.05


def private_dir(path: Path) -> Path:
    """A folder only its owner can enter (0700), made with its parents if missing.

    The data layer's own files (outbox, phase, locks) name logins and customer ids.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)  # mkdir's mode is filtered by the umask, and the folder may predate us
    return path


def fsync_dir(path: Path) -> None:
    """fsync a folder: a file's creation, rename or removal is durable only once its folder is."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked (a signal, a full disk): loop until all is written."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def pwrite_all(fd: int, data: bytes | memoryview, offset: int = 0) -> None:
    """os.pwrite may write less than asked: loop until all of `data` is at `offset`."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def grow_with_zeros(fd: int, needed: int) -> None:
    """Make the file at least `needed` bytes long (a quarter more, at least 64 KiB more) by
    writing zeros: real blocks, so that later writes within them overwrite blocks the file
    has and their fdatasync needs no journal commit (posix_fallocate leaves unwritten extents,
    whose first write is a metadata change again)."""
    size = os.fstat(fd).st_size
    if size >= needed:
        return
    target = needed + needed // 4 + (64 << 10)
    chunk = bytes(min(target - size, 1 << 20))
    while size < target:
        size += os.pwrite(fd, chunk[: target - size], size)


def open_or_create(
    path: Path,
    flags: int,
    mode: int = 0o600,
    make_folder: Callable[[Path], object] = private_dir,
) -> tuple[int, bool]:
    """An fd of `path` opened with `flags`, the file created (`mode`, its folder made with
    `make_folder`) when missing; and whether it was created, so that the caller fsyncs the
    folder once the file holds something (else the new file itself may be lost)."""
    try:
        return os.open(path, flags), False
    except FileNotFoundError:
        make_folder(path.parent)
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, mode), True
    except FileExistsError:  # another writer created it meanwhile
        return os.open(path, flags), False


def _as_bytes(content: str | bytes) -> bytes:
    return content.encode("utf-8") if isinstance(content, str) else content


def _write_temp(
    path: Path, data: bytes, mode: int, prepare: Callable[[int], None] | None
) -> tuple[str, os.stat_result]:
    """A synced temp file beside `path` holding `data` with `mode`; its name and final stat.

    The name starts with a dot and ends in `.tmp`, so globs for the real files (`*.json`)
    never pick it up. The stat is taken from the temp file's own fd before the rename, so it
    describes what was written even if someone replaces the file right after.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            _write_all(fd, data)
            if prepare is not None:
                prepare(fd)
            os.fchmod(fd, mode)
            os.fsync(fd)
            return tmp, os.fstat(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_atomically(
    path: Path,
    content: str | bytes,
    mode: int = 0o644,
    *,
    prepare: Callable[[int], None] | None = None,
) -> os.stat_result:
    """Replace `path` with `content` so that readers, and the disk after a crash, see the old
    file or the new one, never a mix or an empty file.

    Temp file in the same folder (a rename is atomic only within one file system), write,
    `mode` (not filtered by the umask), fsync, rename over `path`, fsync of the folder (else the
    rename itself may be lost). On any error `path` is untouched and the temp file is gone.
    `prepare(fd)`, when given, runs on the written temp file before its mode is set and it is
    synced (e.g. to give it an owner). Returns the new file's stat. A str is written as UTF-8.
    """
    tmp, st = _write_temp(path, _as_bytes(content), mode, prepare)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return st


def create_atomically(
    path: Path,
    content: str | bytes,
    mode: int = 0o644,
    *,
    prepare: Callable[[int], None] | None = None,
) -> os.stat_result | None:
    """Create `path` holding `content` unless it exists (then None, nothing written): never an
    empty or half-written file on disk, and never over someone else's new file.

    As `write_atomically`, but the temp file is hard-linked to `path` (which fails when `path`
    exists) instead of renamed over it. On a file system without hard links it falls back to
    a rename, which is not exclusive: there the caller must keep other creators out (e.g.
    with `file_lock` on the folder) and check that `path` is missing first.
    """
    tmp, st = _write_temp(path, _as_bytes(content), mode, prepare)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            os.replace(tmp, path)
        fsync_dir(path.parent)
        return st
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def append_durably(path: Path, data: bytes, *, mode: int = 0o600, own_line: bool = False) -> None:
    """Append `data` to `path` and return only once it is on disk.

    O_APPEND puts each write at the end even with other appenders; the loop writes all of
    `data` (a short write would otherwise drop its tail); fsync of the file, and of the folder
    when the file was created (else the new file itself may be lost). A new file gets `mode`
    (filtered by the umask, as with any O_CREAT). The folder must exist.

    `own_line`: for line-based files (JSON lines). A process killed mid-append leaves a torn
    last line; with `own_line`, when the file is not empty and does not end in a newline, one
    is written first, in the same write, so the new record never continues the torn one and
    a reader skipping bad lines loses only the torn record. Checking the last byte and
    writing are two steps: processes appending to one file must hold a lock to rely on it.
    """
    # Reading the last byte needs a readable fd.
    flags = (os.O_RDWR if own_line else os.O_WRONLY) | os.O_APPEND | os.O_CLOEXEC
    created = False
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
            created = True
        except FileExistsError:  # another appender created it meanwhile
            fd = os.open(path, flags)
    try:
        if own_line and not created:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


# --------------------------------------------------------------------------------------------
# File locks
# --------------------------------------------------------------------------------------------


class LockBusy(RuntimeError):
    """The lock was still held by someone else when the wait ran out.

    A RuntimeError, not an OSError, on purpose: file code often treats OSError as "missing or
    unreadable, carry on", which must never happen to "someone else holds the lock".
    """

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__(f"{path} is locked by another holder; waited {timeout:g} s")
        self.path = path
        self.timeout = timeout


def _open_lock_file(path: Path, create: bool) -> int:
    """An fd for flock on `path`. Creating: a 0600 file, its folder made (0700) if missing,
    never through a symlink. Not creating: `path` must exist and may be a folder."""
    if not create:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except FileNotFoundError:
        private_dir(path.parent)
        return os.open(path, flags, 0o600)


def _flock(fd: int, operation: int, timeout: float | None, path: Path) -> None:
    """flock `fd` with `operation` (LOCK_EX or LOCK_SH), waiting at most `timeout` seconds
    (None: as long as it takes, in the kernel); LockBusy when the wait runs out."""
    if timeout is None:
        fcntl.flock(fd, operation)
        return
    deadline = time.monotonic() + timeout
    pause = _POLL_MIN_SECONDS
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockBusy(path, timeout) from None
            time.sleep(min(pause, left))
            pause = min(pause * 2, _POLL_MAX_SECONDS)


@contextlib.contextmanager
def file_lock(
    path: Path,
    *,
    exclusive: bool = True,
    timeout: float | None = None,
    create: bool = True,
) -> Iterator[int]:
    """Hold `flock` on `path` for the `with` block; yields the locked fd.

    flock rather than lockf/fcntl locks: it belongs to the open file description, so a thread
    or a second open in the same process is excluded too, and PHP's `flock()` is the same lock.
    The kernel drops it when the holder dies: a killed process never leaves a stale lock.
    `exclusive=False` takes a shared lock (many readers, no writer). `timeout`: seconds to wait
    at most, then LockBusy; None waits as long as it takes. `create`: make the lock file (0600,
    its folder 0700) when missing, never through a symlink; with `create=False` the path must
    exist and may be a folder or a data file, locked as it is.
    """
    fd = _open_lock_file(path, create)
    try:
        _flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, timeout, path)
        try:
            yield fd
        finally:
            # Explicit: a forked child sharing the open file description would otherwise keep
            # the lock after our close.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class FileLock:
    """An exclusive `flock` on a lock file, held across calls (e.g. for a whole run).

    The context manager `file_lock` is the usual way; this is for a lock taken in one place and
    released in another. `fd` is the locked file's fd while held (None otherwise): the holder
    may write its name into the file with it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, timeout: float | None = None) -> None:
        """Take the lock, waiting at most `timeout` seconds (None: as long as it takes, 0: a
        single try); LockBusy when it stays held elsewhere."""
        if self.fd is not None:
            raise RuntimeError(f"{self.path} is already held by this FileLock")
        fd = _open_lock_file(self.path, create=True)
        try:
            _flock(fd, fcntl.LOCK_EX, timeout, self.path)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def release(self) -> None:
        """Drop the lock; nothing happens when it is not held."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def held_elsewhere(self) -> bool:
        """True when another holder (another process, or another open of the file in this one)
        has the lock now; False when nobody does, or only this FileLock."""
        if self.fd is not None:
            return False
        try:
            with file_lock(self.path, create=False, timeout=0):
                return False
        except FileNotFoundError:
            return False
        except LockBusy:
            return True


def lock_current_inode(path: Path, *, exclusive: bool = True, writable: bool = False) -> int | None:
    """An fd of the file now at `path`, held under flock (LOCK_EX, or LOCK_SH); None when the
    file does not exist. The caller closes the fd, which releases the lock. `writable` opens
    it read-write (to rewrite it in place); PermissionError when it cannot be written. A
    symlink is followed: the lock and any write are on the file it points to.

    For files that are replaced by rename while others lock the file itself (not a separate
    lock file, e.g. to share the lock with another program): a waiter that gets the lock after
    a writer's rename holds it on the *old* inode, which is no longer the file. So after each
    flock the fd's inode is compared with the path's, and on a mismatch the fd is dropped and
    the new file locked instead.
    """
    operation = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
    while True:
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, operation)
            mine = os.fstat(fd)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            if current is not None and (mine.st_dev, mine.st_ino) == (
                current.st_dev,
                current.st_ino,
            ):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
