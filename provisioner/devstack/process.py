"""Detached processes tracked by PID files, checked against /proc.

`kill -0` is not trusted here: on these machines PID 1 reaps orphans late, so an exited process
lingers as a zombie, and a recycled PID may belong to someone else. A process counts as ours and
alive only when /proc/PID/stat is not a zombie and /proc/PID/cmdline holds what we started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from provisioner.devstack.errors import DevStackError
from provisioner.fsutil import write_atomically

# Children this process spawned, kept so they are reaped (no zombies, no ResourceWarning).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def read_pid(pidfile: Path) -> int | None:
    """The PID on the first line of `pidfile`, or None when absent or malformed."""
    try:
        first = pidfile.read_text(encoding="ascii", errors="replace").split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() and int(first) > 0 else None


def reap(pid: int) -> None:
    """Collect `pid` if it is a child of ours that has exited, so it stops being a zombie."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _CHILDREN[pid]
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def proc_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, Z, ...), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[0] if fields else None


def has_exited(pid: int) -> bool:
    """Gone, or a zombie whose threads have all ended: either way its sockets are closed.

    The main thread of a killed multi-threaded server turns zombie before its other threads
    finish exiting, and those still hold the process's files (its listening sockets).
    """
    reap(pid)
    state = proc_state(pid)
    if state is None:
        return True
    if state not in {"Z", "X", "x"}:
        return False
    try:
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except OSError:
        return True


def is_exiting(pid: int) -> bool:
    """Still in /proc and not a zombie, but its memory (so its cmdline) is already released.

    A process killed a moment ago looks like this while the kernel still holds its sockets.
    """
    if has_exited(pid):
        return False
    try:
        return not Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def wait_exited(pid: int, timeout: float) -> bool:
    """Wait, bounded, until `pid` has exited; True when it did."""
    deadline = time.monotonic() + timeout
    while not has_exited(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def settle(pidfile: Path, timeout: float = 5.0) -> None:
    """If the process named by `pidfile` is half-way through exiting, let it finish first."""
    pid = read_pid(pidfile)
    if pid is not None and is_exiting(pid):
        wait_exited(pid, timeout)


def pid_matches(pid: int, patterns: Sequence[str]) -> bool:
    """True when `pid` runs, is not a zombie, and its command line contains every pattern."""
    if has_exited(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    text = cmdline.replace(b"\0", b" ").decode("utf-8", errors="replace")
    return all(pattern in text for pattern in patterns)


def live_pid(pidfile: Path, patterns: Sequence[str]) -> int | None:
    """The PID recorded in `pidfile` when that process is alive and is the one we started."""
    pid = read_pid(pidfile)
    if pid is None or not pid_matches(pid, patterns):
        return None
    return pid


def alive(pidfile: Path, pattern: str | Sequence[str]) -> bool:
    """True when the PID in `pidfile` is alive and its cmdline holds `pattern` (or all of them)."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return live_pid(pidfile, patterns) is not None


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Write `text` unless the file already holds it; True when it was written."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    write_atomically(path, text, mode)
    return True


def log_tail(log: Path, lines: int = 5) -> str:
    """The last lines of a log, to put the cause of a failure into the error message."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n  ".join(tail)


def spawn(
    argv: Sequence[str],
    pidfile: Path,
    logfile: Path,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start `argv` detached in its own session, output appended to `logfile`; record its PID."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("ab") as log:
        try:
            child = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=dict(env) if env is not None else None,
                cwd="/",
            )
        except OSError as exc:
            raise DevStackError(
                f"cannot start {argv[0]}: {exc.strerror}; is it installed?"
            ) from None
    _CHILDREN[child.pid] = child
    write_atomically(pidfile, f"{child.pid}\n")
    _wait_for_exec(child)
    return child.pid


def _wait_for_exec(child: subprocess.Popen[bytes], timeout: float = 2.0) -> None:
    """Popen returns while execve is still finishing: /proc/PID/cmdline reads empty for a moment.

    Waiting for it keeps the first `alive` check from mistaking a starting process for a dead one.
    """
    deadline = time.monotonic() + timeout
    while child.poll() is None and time.monotonic() < deadline:
        try:
            if Path(f"/proc/{child.pid}/cmdline").read_bytes():
                return
        except OSError:
            return
        time.sleep(0.001)


def wait_until(
    ready: Callable[[], bool],
    timeout: float,
    what: str,
    log: Path | None = None,
    still_alive: Callable[[], bool] | None = None,
) -> None:
    """Poll `ready` until true; fail clearly on timeout or when the process died meanwhile."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if ready():
            return
        if still_alive is not None and not still_alive():
            hint = f"; its log {log} ends with:\n  {log_tail(log)}" if log else ""
            raise DevStackError(f"{what} exited during start-up{hint}")
        if time.monotonic() >= deadline:
            hint = f"; see {log}:\n  {log_tail(log)}" if log else ""
            raise DevStackError(f"timed out after {timeout:g} s waiting for {what}{hint}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def stop_pid(
    pidfile: Path,
    patterns: Sequence[str],
    sig: signal.Signals = signal.SIGTERM,
    timeout: float = 10.0,
    remove_pidfile: bool = True,
) -> int | None:
    """Stop the process named by `pidfile` (signal, bounded wait, then KILL); None if not running.

    A PID file whose process is gone, or belongs to someone else, is stale and removed.
    """
    pid = live_pid(pidfile, patterns)
    if pid is None:
        if remove_pidfile:
            pidfile.unlink(missing_ok=True)
        return None
    kill_and_wait(pid, sig, timeout)
    if remove_pidfile:
        pidfile.unlink(missing_ok=True)
    return pid


def kill_and_wait(pid: int, sig: signal.Signals, timeout: float = 10.0) -> None:
    """Send `sig` to a process known to be ours, wait until it has really exited (its sockets
    closed, not merely its cmdline gone), and KILL it if it ignores the signal."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    if wait_exited(pid, timeout):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if not wait_exited(pid, 5.0):
        raise DevStackError(f"process {pid} survived SIGKILL; check it with `ps -p {pid}`")
