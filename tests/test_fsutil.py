"""fsutil: atomic writes, durable appends and file locks, on real files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from provisioner import fsutil
from provisioner.fsutil import (
    FileLock,
    LockBusy,
    append_durably,
    create_atomically,
    file_lock,
    fsync_dir,
    grow_with_zeros,
    lock_current_inode,
    open_or_create,
    pwrite_all,
    write_atomically,
)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# --------------------------------------------------------------------------------------------
# write_atomically / create_atomically
# --------------------------------------------------------------------------------------------


def test_write_atomically_replaces_the_content_with_the_mode_given(
    tmp_path: Path, umask_022: None
) -> None:
    path = tmp_path / "a.conf"
    path.write_text("old\n")
    st = write_atomically(path, "new ✓\n", mode=0o666)
    assert path.read_bytes() == "new ✓\n".encode()
    assert mode_of(path) == 0o666  # the mode as given, not filtered by the umask
    assert (st.st_ino, st.st_size) == (path.stat().st_ino, path.stat().st_size)
    write_atomically(path, b"\x00bytes", mode=0o600)
    assert path.read_bytes() == b"\x00bytes"
    assert mode_of(path) == 0o600
    assert names(tmp_path) == ["a.conf"]


@pytest.mark.parametrize("failing", ["fsync", "replace", "prepare"])
def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "a.json"
    path.write_text("old")

    def refuse(*args: object) -> None:
        raise OSError(28, "No space left on device")

    prepare = None
    if failing == "prepare":
        prepare = refuse
    else:
        monkeypatch.setattr(fsutil.os, failing, refuse)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(path, "new", prepare=prepare)
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert names(tmp_path) == ["a.json"]


def test_a_missing_file_is_written_atomically_too(tmp_path: Path) -> None:
    path = tmp_path / "new.txt"
    write_atomically(path, "x")
    assert path.read_text() == "x"
    assert mode_of(path) == 0o644


def test_create_atomically_creates_only_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    st = create_atomically(path, "first", mode=0o640)
    assert st is not None and st.st_ino == path.stat().st_ino
    assert path.read_text() == "first"
    assert mode_of(path) == 0o640
    assert create_atomically(path, "second") is None
    assert path.read_text() == "first"
    assert names(tmp_path) == ["a.json"]


def test_fsync_dir_accepts_a_folder_and_refuses_a_file(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "f")


# --------------------------------------------------------------------------------------------
# append_durably
# --------------------------------------------------------------------------------------------


def test_append_durably_creates_a_private_file_and_appends_whole_records(
    tmp_path: Path, umask_022: None
) -> None:
    path = tmp_path / "log.jsonl"
    append_durably(path, b'{"n": 1}\n')
    append_durably(path, b'{"n": 2}\n{"n": 3}\n')
    assert path.read_bytes() == b'{"n": 1}\n{"n": 2}\n{"n": 3}\n'
    assert mode_of(path) == 0o600
    other = tmp_path / "other.log"
    append_durably(other, b"x", mode=0o640)
    assert mode_of(other) == 0o640


def test_append_durably_writes_everything_despite_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def one_byte_at_a_time(fd: int, data: bytes) -> int:
        return real_write(fd, bytes(data[:1]))

    path = tmp_path / "log"
    monkeypatch.setattr(fsutil.os, "write", one_byte_at_a_time)
    append_durably(path, b"a whole record\n")
    monkeypatch.undo()
    assert path.read_bytes() == b"a whole record\n"


def test_pwrite_all_writes_everything_at_its_offset_despite_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pwrite = os.pwrite

    def one_byte_at_a_time(fd: int, data: bytes, offset: int) -> int:
        return real_pwrite(fd, bytes(data[:1]), offset)

    path = tmp_path / "data"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDWR)
    monkeypatch.setattr(fsutil.os, "pwrite", one_byte_at_a_time)
    pwrite_all(fd, memoryview(b"abcd")[1:], 3)
    monkeypatch.undo()
    os.close(fd)
    assert path.read_bytes() == b"012bcd6789"


def test_grow_with_zeros_and_open_or_create(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "private" / "copy"
    fd, created = open_or_create(path, os.O_RDWR, 0o600)
    assert created and mode_of(path) == 0o600 and mode_of(path.parent) == 0o700
    os.write(fd, b"kept")
    grow_with_zeros(fd, 100)
    assert path.read_bytes().startswith(b"kept\0") and path.stat().st_size >= 100
    size = path.stat().st_size
    grow_with_zeros(fd, 10)  # long enough already: unchanged, never shrunk
    os.close(fd)
    assert path.stat().st_size == size
    fd, created = open_or_create(path, os.O_RDWR, 0o600)
    os.close(fd)
    assert not created


def test_own_line_starts_a_new_line_after_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"n": 1}\n{"n": 2, "to')  # killed mid-append
    append_durably(path, b'{"n": 3}\n', own_line=True)
    assert path.read_bytes() == b'{"n": 1}\n{"n": 2, "to\n{"n": 3}\n'
    append_durably(path, b'{"n": 4}\n', own_line=True)  # a whole last line: nothing added
    assert path.read_bytes().endswith(b'{"n": 3}\n{"n": 4}\n')


def test_own_line_adds_nothing_to_an_empty_or_new_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    append_durably(empty, b"a\n", own_line=True)
    assert empty.read_bytes() == b"a\n"
    new = tmp_path / "new.jsonl"
    append_durably(new, b"b\n", own_line=True)
    assert new.read_bytes() == b"b\n"


def test_without_own_line_a_torn_line_is_continued(tmp_path: Path) -> None:
    path = tmp_path / "raw.log"
    path.write_bytes(b"par")
    append_durably(path, b"tial\n")
    assert path.read_bytes() == b"partial\n"


def test_append_durably_needs_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        append_durably(tmp_path / "missing" / "log", b"x")
    assert names(tmp_path) == []


# --------------------------------------------------------------------------------------------
# file_lock / FileLock
# --------------------------------------------------------------------------------------------

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def assert_busy(path: Path, *, exclusive: bool = True, create: bool = True) -> None:
    with pytest.raises(LockBusy), file_lock(path, exclusive=exclusive, timeout=0, create=create):
        pass


@contextmanager
def held_by_another_process(path: Path) -> Iterator[None]:
    """`path` flocked (LOCK_EX) by a child process until the block ends."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        yield
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(30)
        assert child.stdout is not None
        child.stdout.close()


def test_a_lock_held_by_another_process_times_out_quickly_with_lock_busy(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    with held_by_another_process(path):
        started = time.monotonic()
        with pytest.raises(LockBusy) as info, file_lock(path, timeout=0.2):
            pass
        assert 0.2 <= time.monotonic() - started < 2
        assert info.value.path == path
        assert not isinstance(info.value, OSError)
    with file_lock(path, timeout=5):  # the holder exited: the kernel dropped its lock
        pass


def test_file_lock_excludes_a_second_open_in_the_same_process(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    with file_lock(path) as fd:
        assert isinstance(fd, int)
        assert_busy(path)
        assert_busy(path, exclusive=False)
    with file_lock(path, timeout=0):
        pass


def test_shared_locks_coexist_and_keep_an_exclusive_one_out(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    with file_lock(path, exclusive=False), file_lock(path, exclusive=False, timeout=0):
        assert_busy(path)
    with file_lock(path, timeout=0):
        pass


def test_a_waiter_without_timeout_gets_the_lock_once_it_is_released(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    order: list[str] = []
    with file_lock(path):
        waiter = threading.Thread(target=lambda: order.append(take_and_note(path)))
        waiter.start()
        time.sleep(0.1)
        order.append("released")
    waiter.join(30)
    assert order == ["released", "taken"]


def take_and_note(path: Path) -> str:
    with file_lock(path):
        return "taken"


def test_the_lock_file_is_private_and_its_folder_made(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "state" / "locks" / "x.lock"
    with file_lock(path):
        pass
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700


def test_file_lock_never_follows_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "link.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError), file_lock(tmp_path / "link.lock"):
        pass
    assert not (tmp_path / "elsewhere").exists()


def test_without_create_an_existing_folder_is_locked_and_nothing_is_made(tmp_path: Path) -> None:
    with file_lock(tmp_path, create=False):
        assert_busy(tmp_path, create=False)
    with pytest.raises(FileNotFoundError), file_lock(tmp_path / "gone", create=False):
        pass
    assert names(tmp_path) == []


def test_file_lock_releases_when_its_block_raises(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    with pytest.raises(ValueError), file_lock(path):
        raise ValueError("boom")
    with file_lock(path, timeout=0):
        pass


def test_file_lock_object_is_held_across_calls(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    mine, theirs = FileLock(path), FileLock(path)
    assert not mine.held_elsewhere()  # no file yet
    assert not path.exists()
    mine.acquire(timeout=0)
    assert mine.fd is not None
    os.pwrite(mine.fd, b'{"run": 1}', 0)  # the holder may name itself in the file
    assert not mine.held_elsewhere()
    assert theirs.held_elsewhere()
    with pytest.raises(LockBusy):
        theirs.acquire(timeout=0.05)
    assert theirs.fd is None
    with pytest.raises(RuntimeError, match="already held"):
        mine.acquire()
    mine.release()
    mine.release()  # harmless when not held
    assert mine.fd is None
    assert not theirs.held_elsewhere()
    theirs.acquire()
    assert path.read_bytes() == b'{"run": 1}'
    theirs.release()


def test_held_elsewhere_sees_another_process(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    with held_by_another_process(path):
        assert FileLock(path).held_elsewhere()
    assert not FileLock(path).held_elsewhere()


# --------------------------------------------------------------------------------------------
# lock_current_inode
# --------------------------------------------------------------------------------------------


def blocked_flock_waiters(inode: int) -> int:
    with open("/proc/locks") as locks:
        return sum(1 for line in locks if "->" in line and f":{inode} " in line)


def wait_until(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_lock_current_inode_is_none_for_a_missing_file(tmp_path: Path) -> None:
    assert lock_current_inode(tmp_path / "missing.json") is None


def test_a_waiter_on_a_replaced_file_ends_up_holding_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text("old")
    old_inode = path.stat().st_ino
    got: list[int | None] = []
    with file_lock(path, create=False):  # a writer in the middle of its update
        waiter = threading.Thread(target=lambda: got.append(lock_current_inode(path)))
        waiter.start()
        wait_until(lambda: blocked_flock_waiters(old_inode) == 1)
        write_atomically(path, "new")
    waiter.join(30)
    fd = got[0]
    assert fd is not None
    try:
        assert os.fstat(fd).st_ino == path.stat().st_ino != old_inode
        assert_busy(path, create=False)
    finally:
        os.close(fd)


def test_shared_inode_locks_coexist(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text("{}")
    first = lock_current_inode(path, exclusive=False)
    second = lock_current_inode(path, exclusive=False)
    assert first is not None and second is not None
    try:
        assert_busy(path, create=False)
    finally:
        os.close(first)
        os.close(second)
