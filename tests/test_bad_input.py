"""Bad input never gives a traceback: every command, a table of bad inputs, real processes.

Each case must exit 2 with exactly one line on stderr (or one JSON object on stdout with
--json) that names the problem, show no traceback and no secret, and write nothing: the state
folder each case points at must not exist afterwards, and the AEIMS data must be unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.cli import main as cli_main
from provisioner.cli.run import MAX_DEPTH, parse_params

REPO = Path(__file__).resolve().parents[1]
PROVISION = str(Path(sys.executable).parent / "provision")
SECRET = "Zq9Secret"
SECRET_PIECES = (SECRET, "Zq9", "Secret")
WORKERS = 6
ROOT = os.geteuid() == 0

# Every leaf command that reads the settings, with arguments that are fine in themselves.
COMMANDS: tuple[tuple[str, ...], ...] = (
    ("run", "engine-test", "-p", "dir={w}/work"),
    ("demo",),
    ("runs", "list"),
    ("runs", "show", "no-such-run"),
    ("runs", "resume", "no-such-run"),
    ("runs", "rollback", "no-such-run"),
    ("data", "health"),
    ("data", "reconcile"),
    ("dev", "env"),
    ("dev", "status"),
)


@dataclass(frozen=True)
class Case:
    """Bad input: arguments, environment, and a piece of the one line that must name it."""

    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    says: str = ""

    def label(self) -> str:
        shown = " ".join(a if len(a) < 40 else a[:20] + "…" for a in self.args)
        return f"provision {shown} {self.env}"


# Settings that are wrong, whichever command loads them.
BAD_SETTINGS: tuple[tuple[dict[str, str], str], ...] = (
    ({"PROVISION_LOCK_TIMEOUT": "nan"}, "PROVISION_LOCK_TIMEOUT='nan' is not a finite"),
    ({"PROVISION_LOCK_TIMEOUT": "-Infinity"}, "not a finite number"),
    ({"PROVISION_LOCK_TIMEOUT": "\udcff"}, "PROVISION_LOCK_TIMEOUT"),
    ({"PROVISION_PG_CONNECT_TIMEOUT": "nan"}, "PROVISION_PG_CONNECT_TIMEOUT"),
    ({"PROVISION_PG_CONNECT_TIMEOUT": "inf"}, "PROVISION_PG_CONNECT_TIMEOUT"),
    ({"PROVISION_BREAKER_RETRY_SECONDS": "nan"}, "PROVISION_BREAKER_RETRY_SECONDS"),
    ({"PROVISION_PG_STATEMENT_TIMEOUT": "0"}, "PROVISION_PG_STATEMENT_TIMEOUT='0' is out of"),
    ({"PROVISION_STEP_STATEMENT_TIMEOUT": "1e12"}, "PROVISION_STEP_STATEMENT_TIMEOUT"),
    ({"PROVISION_STATE_DIR": "{w}/a-file"}, "is a file, not a folder"),
    ({"PROVISION_STATE_DIR": "{w}/a-file/state"}, "cannot be created"),
    ({"PROVISION_DATA_DIR": "{w}/a-file"}, "PROVISION_DATA_DIR"),
    ({"PROVISION_PG_DSN": "host=127.0.0.1 oops"}, "a word without '='"),
    ({"PROVISION_PG_DSN": f"host=127.0.0.1 password={SECRET[:3]} {SECRET[3:]}"}, "PG_DSN"),
    ({"PROVISION_PG_DSN": f"host=127.0.0.1 password='{SECRET}"}, "never closed"),
    ({"PROVISION_PG_DSN": f"hots=127.0.0.1 password={SECRET}"}, "unknown option hots"),
    ({"PROVISION_PG_DSN": f"postgresql://:{SECRET}@127.0.0.1/db?hots=1"}, "unknown option"),
    ({"PROVISION_PG_DSN": f"postgresql://u:{SECRET} x@127.0.0.1/db"}, "PROVISION_PG_DSN"),
    ({"PROVISION_CONFIG": "{w}/missing.toml"}, "does not exist"),
    ({"PROVISION_CONFIG": "{w}/latin1.toml"}, "is not UTF-8 text"),
    ({"PROVISION_CONFIG": "{w}/table.toml"}, "pg_dsn must be a string, not a table"),
    ({"PROVISION_CONFIG": "{w}/number-path.toml"}, "data_dir must be a path"),
    ({"PROVISION_CONFIG": "{w}/unknown.toml"}, "unknown setting(s) 'colour'"),
    ({"PROVISION_CONFIG": "{w}/url-password.toml"}, "keep secrets out of files"),
    ({"PROVISION_CONFIG": "{w}/broken.toml"}, "not valid TOML"),
    ({"PROVISION_CONFIG": "{w}/work"}, "is a folder, not a settings file"),
    ({"PROVISION_JOURNAL": "sqlite"}, "PROVISION_JOURNAL='sqlite'"),
    ({"PROVISION_JOURNAL": "postgres"}, "needs PROVISION_PG_DSN"),
    ({"PROVISION_HOST_NAME": "web 1"}, "not a host name"),
    ({"PROVISION_ACME_PROFILE": "short lived"}, "'short lived' is not an ACME profile name"),
    ({"USE_DATABASE": "maybe"}, "USE_DATABASE='maybe' is not a boolean"),
    *(() if ROOT else (({"PROVISION_CONFIG": "{w}/unreadable.toml"}, "cannot read"),)),
)

DEEP = "[" * 60_000 + "]" * 60_000
RUN = ("run", "engine-test", "-p", "dir={w}/work")
# Arguments that are wrong for one command.
BAD_ARGUMENTS: tuple[Case, ...] = (
    Case((*RUN, "-p", f"x={DEEP}"), says=f"deeper than {MAX_DEPTH} levels"),
    Case((*RUN, "-p", "x=" + "[" * (MAX_DEPTH + 1)), says="deeper than"),
    Case((*RUN, "-p", "message=null"), says="message=null sets nothing"),
    Case((*RUN, "-p", "name=NaN"), says="NaN, Infinity and numbers past 1e308 are not JSON"),
    Case((*RUN, "-p", "name=Infinity"), says="are not JSON numbers"),
    Case((*RUN, "-p", "name=1e999"), says="are not JSON numbers"),
    Case((*RUN, "-p", "name=[1, -Infinity]"), says="are not JSON numbers"),
    Case((*RUN, "-p", "name=\udcff"), says="not valid UTF-8"),
    Case((*RUN, "-p", 'name="\\udcff"'), says="not valid UTF-8"),
    Case((*RUN, "-p", '{"\\ud800": 1}=x'), says="is not a parameter name"),
    Case((*RUN, "-p", 'name={"\\ud800": 1}'), says="not valid UTF-8"),
    Case((*RUN, "-p", "novalue"), says="is not key=value"),
    Case((*RUN, "-p", "=x"), says="is not key=value"),
    Case((*RUN, "-p", "dir=/tmp"), says="dir is given twice"),
    Case((*RUN, "--lock-timeout", "nan"), says="'nan' is not a finite number"),
    Case((*RUN, "--lock-timeout", "inf"), says="'inf' is not a finite number"),
    Case((*RUN, "--lock-timeout", "-1"), says="out of range"),
    Case((*RUN, "--lock-timeout", "1e12"), says="out of range"),
    Case((*RUN, "--lock-timeout", "soon"), says="is not a number"),
    Case(("run", "no-such-pipeline"), says="unknown pipeline 'no-such-pipeline'"),
    Case(("run", ""), says="a pipeline name is required"),
    Case(("run",), says="Missing argument 'PIPELINE_NAME'"),
    Case((*RUN, "--colour"), says="No such option"),
    Case(("demo", "--lock-timeout", "nan"), says="not a finite number"),
    Case(("demo", "--name", "Not A Name"), says="invalid demo name"),
    Case(("demo", "--message", "\udcff"), says="demo message"),
    Case(("demo", "--message", ""), says="demo message"),
    Case(("runs", "list", "--limit", "0"), says="--limit"),
    Case(("runs", "list", "--limit", "nan"), says="--limit"),
    *(
        Case(("runs", verb, run_id), says=says)
        for verb in ("show", "resume", "rollback")
        for run_id, says in (
            ("../../etc/passwd", "is not a run id"),
            ("", "is not a run id"),
            ("\udcff", "is not a run id"),
            ("x" * 300, "is not a run id"),
            ("no-such-run", "no run 'no-such-run'"),
        )
    ),
    Case(("runs", "resume", "x1", "--lock-timeout", "nan"), says="not a finite number"),
    Case(("runs", "rollback", "x1", "--lock-timeout", "inf"), says="not a finite number"),
    Case(("runs", "fly"), says="No such command 'fly'"),
    *(
        Case(("data", verb), env, says)
        for verb in ("health", "reconcile")
        for env, says in (
            ({"PROVISION_DATA_DIR": ""}, "PROVISION_DATA_DIR"),
            ({"PROVISION_DATA_DIR": "{w}/no-such-root"}, "does not exist"),
            ({"PROVISION_DATA_DIR": "{w}/work"}, "not an AEIMS application root"),
        )
    ),
    Case(("dev", "--state-dir", "{w}/a-file", "status"), says="is a file"),
    Case(("dev", "--state-dir", "{w}/a-file", "env"), says="is a file"),
    Case(("dev", "env", "--colour"), says="No such option"),
    Case(("no-such-command",), says="No such command"),
    Case(("--colour",), says="No such option"),
)
JSON_COMMANDS = {"run", "demo", "runs", "data"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files the cases point at; nothing in it may change."""
    w = tmp_path_factory.mktemp("world")
    (w / "a-file").write_text("not a folder\n")
    (w / "work").mkdir()
    shutil.copytree(REPO / "tests" / "fixtures" / "aeims", w / "aeims")
    (w / "latin1.toml").write_bytes("lock_timeout = 3 # café\n".encode("latin-1"))
    (w / "table.toml").write_text("pg_dsn = { host = 'db' }\n")
    (w / "number-path.toml").write_text("data_dir = 42\n")
    (w / "unknown.toml").write_text("colour = 'blue'\n")
    (w / "url-password.toml").write_text(f'pg_dsn = "postgresql://app:{SECRET}@db/x"\n')
    (w / "broken.toml").write_text("lock_timeout = = 3\n")
    (w / "unreadable.toml").write_text("lock_timeout = 3\n")
    (w / "unreadable.toml").chmod(0)
    return w


def fingerprint(root: Path) -> str:
    """Every path, size and content under `root`, as one digest."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode("utf-8", "surrogateescape"))
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def base_env(world: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PROVISION_") and k not in {"USE_DATABASE", "USE_JSON"}
    }
    env.update(
        PYTHONPATH=str(REPO),
        PROVISION_PIPELINE_MODULES="tests.engine_pipelines",
        PROVISION_DATA_DIR=str(world / "aeims"),
        PROVISION_LOCK_TIMEOUT="5",
    )
    return env


def fill(text: str, world: Path) -> str:
    return text.replace("{w}", str(world))


def run_case(case: Case, world: Path, index: int, as_json: bool) -> str | None:
    """Run one case in a real process; None when it behaved, else what went wrong."""
    state = world / "states" / str(index)
    env = {**base_env(world), "PROVISION_STATE_DIR": str(state)}
    env.update({k: fill(v, world) for k, v in case.env.items()})
    env = {k: v for k, v in env.items() if v != ""}
    args = [fill(a, world) for a in case.args] + (["--json"] if as_json else [])
    result = subprocess.run(
        [PROVISION, *args], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
    )
    out, err = result.stdout, result.stderr
    problems = []
    if result.returncode != 2:
        problems.append(f"exit {result.returncode}")
    if "Traceback" in out + err:
        problems.append("a traceback")
    if any(piece in out + err for piece in SECRET_PIECES):
        problems.append("the secret")
    if state.exists():
        problems.append(f"created {state}")
    if as_json:
        try:
            reply = json.loads(out)
            message = reply["msg"] if reply["failed"] and reply["rc"] == 2 else None
        except (ValueError, KeyError, TypeError):
            message = None
        if message is None or err:
            problems.append("not exactly one JSON failure object on stdout")
    else:
        message = err.strip()
        if out or len(err.splitlines()) != 1:
            problems.append("not exactly one line on stderr")
    if case.says and case.says not in (message or ""):
        problems.append(f"does not say {case.says!r}")
    if not problems:
        return None
    return f"{case.label()}{' --json' if as_json else ''}: {', '.join(problems)}\n  {out}{err}"


def run_table(runs: Sequence[tuple[Case, bool]], world: Path) -> list[str]:
    """Run cases in parallel (start-up dominates, so threads waiting on processes suffice)."""
    before = fingerprint(world)
    with ThreadPoolExecutor(WORKERS) as pool:
        found = list(
            pool.map(
                lambda item: run_case(item[1][0], world, item[0], item[1][1]),
                enumerate(runs),
            )
        )
    failures = [f for f in found if f]
    if fingerprint(world) != before:
        failures.append("the world changed: a bad input wrote something")
    return failures


def test_bad_settings_stop_every_command(world: Path) -> None:
    """Each bad setting under four commands, taken in turn so that every command meets about
    a dozen of them (all of them load settings through the same two paths); every other run
    asks for --json where the command has it."""
    per_setting = 4
    runs: list[tuple[Case, bool]] = []
    for index, (env, says) in enumerate(BAD_SETTINGS):
        for k in range(per_setting):
            command = COMMANDS[(index * per_setting + k) % len(COMMANDS)]
            as_json = command[0] in JSON_COMMANDS and len(runs) % 2 == 1
            runs.append((Case(command, env, says), as_json))

    failures = run_table(runs, world)

    assert not failures, f"{len(failures)} of {len(runs)} failed:\n" + "\n".join(failures)


def test_bad_arguments_are_refused(world: Path) -> None:
    runs: list[tuple[Case, bool]] = [(case, False) for case in BAD_ARGUMENTS]
    runs += [(case, True) for case in BAD_ARGUMENTS if case.args[0] in JSON_COMMANDS]

    failures = run_table(runs, world)

    assert not failures, f"{len(failures)} of {len(runs)} failed:\n" + "\n".join(failures)


def test_a_role_without_privileges_is_refused(
    world: Path, fresh_pg_dsn: str, tmp_path: Path
) -> None:
    """The journal cannot be created: exit 2, one line, the password nowhere."""
    import psycopg
    from psycopg import sql

    role = f"weak_{tmp_path.name[-8:].replace('-', '_').lower()}"
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(SECRET)
            )
        )
    try:
        dsn = psycopg.conninfo.make_conninfo(fresh_pg_dsn, user=role, password=SECRET)
        env = {"PROVISION_PG_DSN": dsn}
        runs = [(Case(command, env, "PROVISION_PG_DSN"), False) for command in COMMANDS[:6]]
        runs.append((Case(COMMANDS[0], env, "PROVISION_PG_DSN"), True))
        failures = run_table(runs, world)
    finally:
        with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert not failures, "\n".join(failures)


JSON_TEXT = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
).map(lambda value: json.dumps(value, ensure_ascii=False))


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(st.characters(codec=None)),
        JSON_TEXT,
        st.integers(0, 80).map(lambda depth: "[" * depth + "]" * depth),
        st.sampled_from(["NaN", "-Infinity", "null", '"\\udcff"', "[1e999]", "{}", "1" * 5000]),
    )
)
def test_a_parameter_is_either_clean_json_or_refused(raw: str) -> None:
    """Whatever follows `-p key=`, the pipeline gets a value the journal can store, or exit 2."""
    try:
        params = parse_params((f"key={raw}",))
    except click.BadParameter:
        return
    value = params["key"]
    assert value is not None
    encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
    encoded.encode("utf-8")
    assert encoded.count("[") + encoded.count("{") <= len(raw) or isinstance(value, str)


@contextlib.contextmanager
def in_process(env: dict[str, str]) -> Iterator[io.StringIO]:
    """The command line in this process, with its own environment and stderr."""
    err = io.StringIO()
    with (
        mock.patch.dict(os.environ, env, clear=True),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        yield err


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["show", "resume", "rollback"]), st.text(max_size=120))
def test_any_run_id_is_refused_in_one_line(verb: str, run_id: str) -> None:
    state = Path(f"/tmp/provision-bad-input-{os.getpid()}/state")
    with (
        in_process({"PROVISION_STATE_DIR": str(state)}) as err,
        pytest.raises(SystemExit) as exited,
    ):
        cli_main.main(["runs", verb, "--", run_id])
    assert exited.value.code == 2, err.getvalue()
    assert len(err.getvalue().splitlines()) == 1 and "Traceback" not in err.getvalue()
    assert not state.parent.exists()


def test_an_unexpected_error_is_one_redacted_line_and_exit_70(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"boom in postgresql://app:{SECRET}@db/x\nsecond line")

    monkeypatch.setattr(cli_main.cli, "main", broken)
    monkeypatch.delenv("PROVISION_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exited:
        cli_main.main(["runs", "list"])
    err = capsys.readouterr().err

    assert exited.value.code == cli_main.EXIT_BUG == 70
    assert err.splitlines() == [
        "Error: RuntimeError: boom in postgresql://app:***@db/x second line; "
        "this is a bug, please report it"
    ]

    monkeypatch.setenv("PROVISION_DEBUG", "1")
    with pytest.raises(SystemExit):
        cli_main.main(["runs", "list"])
    assert "Traceback" in capsys.readouterr().err
