"""Driving the host's nginx safely: a vhost's files, `nginx -t`, a reload proven live, and the
previous files put back when anything fails, so the other sites on the host never stop.

`nginx -s reload` exits 0 even when the master rejected the new config (certbot #7555), so a
reload counts only once nginx answers the new vhost's marker: every rendered vhost answers
`/.well-known/provision-vhost` with a digest of itself. One nginx serves many sites, so every
write-test-reload-confirm sequence holds one file lock per host (beside the vhosts).
"""

from __future__ import annotations

import base64
import contextlib
import glob
import http.client
import ipaddress
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.config import Settings
from provisioner.fsutil import LockBusy, file_lock, fsync_dir, write_atomically

MARKER_PATH = "/.well-known/provision-vhost"
_MARKER = re.compile(r"^# provision-marker: ([0-9a-f]{16})$", re.MULTILINE)
_ANSWER_MARKER = re.compile(r"^([0-9a-f]{16})\n?$")
NGINX_TIMEOUT = 30.0
CONFIRM_SECONDS = 10.0
PROBE_TIMEOUT = 2.0
# How long every new connection must get the new answer before a reload counts as done.
STABLE_SECONDS = 0.15
# Longest an old worker keeps accepting after a reload (nginx's 100 ms, and margin).
HANDOVER_SECONDS = 0.5
PROBE_PAUSE = 0.01

FileState = dict[str, Any]  # JSON-able: what a path held (see read_path)


class NginxError(RuntimeError):
    """nginx refused a config, failed to reload, or never served the new vhost."""


def marker_of(content: str | None) -> str | None:
    """The marker a rendered vhost answers with (None: absent, or not one of ours)."""
    found = _MARKER.search(content or "")
    return found.group(1) if found else None


# --------------------------------------------------------------------------------------------
# The vhost's two paths, as JSON-able states
# --------------------------------------------------------------------------------------------


def read_path(path: Path) -> FileState:
    """What `path` holds: absent, a link (its target), or a file (content and mode)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return {"kind": "absent"}
    if path.is_symlink():
        return {"kind": "link", "target": os.readlink(path)}
    data = path.read_bytes()
    state: FileState = {"kind": "file", "mode": info.st_mode & 0o7777}
    try:
        state["content"] = data.decode("utf-8")
    except UnicodeDecodeError:  # a foreign file: kept exactly, whatever it holds
        state["content_b64"] = base64.b64encode(data).decode("ascii")
    return state


def file_content(state: FileState) -> str | None:
    if "content_b64" in state:
        return base64.b64decode(state["content_b64"]).decode("utf-8", "replace")
    return state.get("content")


def write_path(path: Path, state: FileState) -> None:
    """Make `path` hold `state`, atomically (a rename), or remove it when absent."""
    kind = state["kind"]
    if kind == "absent":
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            fsync_dir(path.parent)
        return
    if kind == "link":
        temp = path.with_name(f".{path.name}.{os.getpid()}.link.tmp")
        temp.unlink(missing_ok=True)
        os.symlink(state["target"], temp)
        os.replace(temp, path)
        fsync_dir(path.parent)
        return
    data = (
        base64.b64decode(state["content_b64"])
        if "content_b64" in state
        else state["content"].encode("utf-8")
    )
    # A rename replaces a link itself, never the file it points to.
    write_atomically(path, data, state.get("mode", 0o644))


def remove_torn_writes(path: Path) -> None:
    """Temp files a write killed half-way left beside `path` (never matched by `*.conf`)."""
    if path.parent.is_dir():
        for torn in path.parent.glob(f".{glob.escape(path.name)}.*tmp"):
            torn.unlink(missing_ok=True)


@dataclass(frozen=True)
class VhostFiles:
    """A site's vhost file and the link that enables it (none when both folders are one)."""

    vhost: Path
    enabled: Path | None

    @classmethod
    def for_domain(cls, domain: str, settings: Settings) -> VhostFiles:
        vhost = settings.nginx_vhost_dir / f"{domain}.conf"
        enabled = settings.nginx_enabled_dir / f"{domain}.conf"
        return cls(vhost, None if enabled == vhost else enabled)

    def read(self) -> dict[str, FileState]:
        states = {"vhost": read_path(self.vhost)}
        if self.enabled is not None:
            states["enabled"] = read_path(self.enabled)
        return states

    def wanted(self, content: str, mode: int = 0o644) -> dict[str, FileState]:
        states: dict[str, FileState] = {"vhost": {"kind": "file", "content": content, "mode": mode}}
        if self.enabled is not None:
            states["enabled"] = {"kind": "link", "target": str(self.vhost)}
        return states

    def write(self, states: dict[str, FileState]) -> None:
        """The vhost first, then its link (so the link never points at nothing), and the
        reverse order when removing."""
        order = ["vhost", "enabled"]
        if states.get("vhost", {}).get("kind") == "absent":
            order.reverse()
        for key in order:
            path = self.vhost if key == "vhost" else self.enabled
            if path is not None and key in states:
                path.parent.mkdir(parents=True, exist_ok=True)
                remove_torn_writes(path)
                write_path(path, states[key])

    def live_content(self, states: dict[str, FileState]) -> str | None:
        """The vhost text nginx loads from these states (None: not enabled)."""
        enabled = states.get("enabled")
        if enabled is not None and enabled["kind"] == "file":
            return file_content(enabled)
        if enabled is not None and enabled["kind"] != "link":
            return None
        vhost = states["vhost"]
        return file_content(vhost) if vhost["kind"] == "file" else None


# --------------------------------------------------------------------------------------------
# The nginx process
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What nginx said at the marker path for a Host (status None: no answer at all)."""

    status: int | None
    text: str

    @property
    def marker(self) -> str | None:
        found = _ANSWER_MARKER.match(self.text) if self.status == 200 else None
        return found.group(1) if found else None

    def describe(self) -> str:
        if self.status is None:
            return f"no answer ({self.text})"
        return f"{self.status} {self.text.strip()[:80]!r}"


class Nginx:
    """The host's nginx, run as `settings.nginx_cmd` (split like a shell, never run by one)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def argv(self, *args: str) -> list[str]:
        return [*shlex.split(self.settings.nginx_cmd), *args]

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = self.argv(*args)
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=NGINX_TIMEOUT, cwd="/", check=False
            )
        except FileNotFoundError:
            raise NginxError(
                f"{argv[0]} not found; install nginx or set PROVISION_NGINX_CMD"
            ) from None
        except subprocess.TimeoutExpired:
            raise NginxError(
                f"`{shlex.join(argv)}` did not finish in {NGINX_TIMEOUT:g} s"
            ) from None

    def test(self) -> str | None:
        """None when `nginx -t` accepts the whole config; else what it said."""
        done = self._run("-t")
        if done.returncode == 0:
            return None
        lines = [ln for ln in done.stderr.splitlines() if "test failed" not in ln]
        said = " ".join(" ".join(lines).split())[-600:] or f"exit {done.returncode}"
        if "server_names_hash" in said:
            said += (
                " (a long site name: set `server_names_hash_bucket_size 128;` in the http "
                "block of nginx.conf)"
            )
        return said

    def test_in_turn(self) -> str | None:
        """`nginx -t` inside the reload lock, as a preflight runs it: between another run's
        write and its reload (or its put-back) the whole config may be briefly broken, and a
        test then would blame this run's host. NginxError when the lock stays busy."""
        with self.reload_lock():
            return self.test()

    def reload(self) -> None:
        done = self._run("-s", "reload")
        if done.returncode != 0:
            said = " ".join(done.stderr.split())[-400:]
            raise NginxError(f"`nginx -s reload` failed (exit {done.returncode}): {said}")

    @property
    def probe_address(self) -> str:
        """Where to ask nginx: its first listen address (loopback for a wildcard)."""
        listen = self.settings.nginx_listen
        if not listen:
            return "127.0.0.1"
        address = ipaddress.ip_address(listen[0])
        if address.is_unspecified:
            return "::1" if address.version == 6 else "127.0.0.1"
        return str(address)

    def url(self) -> str:
        host = self.probe_address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.settings.nginx_http_port}{MARKER_PATH}"

    def probe(self, domain: str) -> Answer:
        """The marker path asked with the site's Host, on a new connection (a kept-alive one
        would stay with an old worker)."""
        conn = http.client.HTTPConnection(
            self.probe_address, self.settings.nginx_http_port, timeout=PROBE_TIMEOUT
        )
        try:
            conn.request("GET", MARKER_PATH, headers={"Host": domain, "Connection": "close"})
            response = conn.getresponse()
            return Answer(response.status, response.read(200).decode("utf-8", "replace"))
        except (OSError, http.client.HTTPException) as exc:
            return Answer(None, str(exc) or type(exc).__name__)
        finally:
            conn.close()

    def settle(self, domain: str, before: Answer, seconds: float = HANDOVER_SECONDS) -> None:
        """After reloading to files that carry no marker of ours (a vhost written by hand, or
        none): wait until nginx answers `domain` otherwise than `before` did, steadily, or until
        the workers' hand-over is surely over (the new configuration may answer the same)."""
        deadline = time.monotonic() + seconds
        since: float | None = None
        while time.monotonic() < deadline:
            now = time.monotonic()
            if self.probe(domain) == before:
                since = None
            elif since is None:
                since = now
            elif now - since >= STABLE_SECONDS:
                return
            time.sleep(PROBE_PAUSE)

    def wait_for(
        self, domain: str, wanted: Callable[[Answer], bool], what: str, seconds: float
    ) -> Answer:
        """Poll until nginx answers `domain` as `wanted` on every new connection for
        STABLE_SECONDS; NginxError naming the last answer when `seconds` run out.

        One good answer is not enough: after a reload the master lets the old workers accept
        for another 100 ms (`ngx_msleep(100)` before it tells them to quit), so answers from
        both configs alternate for a while.
        """
        deadline = time.monotonic() + seconds
        since: float | None = None
        while True:
            answer = self.probe(domain)
            now = time.monotonic()
            if not wanted(answer):
                since = None
            elif since is None:
                since = now
            elif now - since >= STABLE_SECONDS:
                return answer
            if now >= deadline:
                raise NginxError(
                    f"nginx reloaded without error, but {self.url()} (Host {domain}) still "
                    f"answers {answer.describe()} after {seconds:g} s instead of {what}: the "
                    "new configuration is not live; see nginx's error log"
                )
            time.sleep(PROBE_PAUSE)

    @property
    def reload_lock_path(self) -> Path:
        """Beside the vhosts, not in the state folder: every run that writes this nginx's vhosts
        shares it whatever its PROVISION_STATE_DIR (nginx globs `sites-enabled/*.conf` and then
        opens each file, so a vhost removed by an unserialized run fails another's `nginx -t`;
        the crash drill caught it). nginx includes only `*.conf`, never this file."""
        return self.settings.nginx_vhost_dir / ".provision-nginx-reload.lock"

    @contextlib.contextmanager
    def reload_lock(self) -> Iterator[None]:
        """One write-test-reload-confirm at a time on this host."""
        path = self.reload_lock_path
        path.parent.mkdir(parents=True, exist_ok=True)
        timeout = self.settings.lock_timeout
        try:
            with file_lock(path, timeout=timeout):
                yield
        except LockBusy:
            raise NginxError(
                f"another run has been reloading nginx for {timeout:g} s (lock {path}); "
                "wait for it, or raise --lock-timeout"
            ) from None


# --------------------------------------------------------------------------------------------
# Put files in place, prove them live, or put the previous ones back
# --------------------------------------------------------------------------------------------


def expectation(
    files: VhostFiles, states: dict[str, FileState], replaced: str | None
) -> tuple[Callable[[Answer], bool], str]:
    """What nginx must answer once `states` are live: their marker, or (a vhost that is not
    ours, or none) at least no longer the marker `replaced` of the vhost they replace."""
    marker = marker_of(files.live_content(states))
    if marker is not None:
        return (lambda answer: answer.marker == marker), f"the vhost's marker {marker}"
    if replaced is None:
        return (lambda answer: answer.status is not None), "any answer"
    return (
        lambda answer: answer.status is not None and answer.marker != replaced
    ), f"anything but the replaced vhost's marker {replaced}"


def converge(
    nginx: Nginx, domain: str, files: VhostFiles, wanted: dict[str, FileState]
) -> dict[str, FileState]:
    """Make `files` hold `wanted` and nginx run them; returns what the files held before.

    Already on disk and live: nothing is done. Otherwise the files are written, `nginx -t`
    tests the whole config, nginx reloads and the marker is polled; when the test, the reload
    or the confirmation fails, the previous files are put back (and reloaded when they pass
    the test) and NginxError says what happened.
    """
    return _make_live(nginx, domain, files, wanted, put_back=True)


def restore(nginx: Nginx, domain: str, files: VhostFiles, before: dict[str, FileState]) -> None:
    """Rollback: the files as they were `before`, whatever nginx thinks of them, then tested,
    reloaded and confirmed; NginxError when nginx cannot run them (the files stay restored)."""
    _make_live(nginx, domain, files, before, put_back=False)


def _make_live(
    nginx: Nginx,
    domain: str,
    files: VhostFiles,
    wanted: dict[str, FileState],
    *,
    put_back: bool,
) -> dict[str, FileState]:
    with nginx.reload_lock():
        for path in (files.vhost, files.enabled):
            if path is not None:
                remove_torn_writes(path)
        previous = files.read()
        replaced = marker_of(files.live_content(previous))
        live, what = expectation(files, wanted, replaced)
        if previous == wanted and live(nginx.probe(domain)):
            return previous
        ours = marker_of(files.live_content(wanted)) is not None
        answered_before = None if ours else nginx.probe(domain)
        if previous != wanted:
            files.write(wanted)
        try:
            rejected = nginx.test()
            if rejected is not None:
                raise NginxError(f"nginx -t rejects the config with {files.vhost}: {rejected}")
            nginx.reload()
            if answered_before is not None:
                nginx.settle(domain, answered_before)
            nginx.wait_for(domain, live, what, CONFIRM_SECONDS)
        except NginxError as exc:
            if previous == wanted or not put_back:
                raise
            raise NginxError(
                f"{exc}; {_put_back(nginx, domain, files, previous, wanted)}"
            ) from None
        return previous


def _put_back(
    nginx: Nginx,
    domain: str,
    files: VhostFiles,
    previous: dict[str, FileState],
    failed: dict[str, FileState],
) -> str:
    """Restore the previous files after a failure; the sentence saying how that went."""
    files.write(previous)
    still = nginx.test()
    if still is not None:
        return (
            f"the previous files are back, but nginx -t still fails ({still}), so nginx keeps "
            "running the config it had; fix that before retrying"
        )
    try:
        nginx.reload()
        live, what = expectation(files, previous, marker_of(files.live_content(failed)))
        nginx.wait_for(domain, live, what, CONFIRM_SECONDS)
    except NginxError as again:
        return f"the previous files are back, but reloading them failed too: {again}"
    return "the previous files are back and nginx runs them"
