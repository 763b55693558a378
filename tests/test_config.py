"""Settings: environment over provision.toml, checked when loaded, secrets never printable."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from provisioner.config import ConfigError, Settings, load_settings, redact_dsn

NO_FILE = Path("/nonexistent/provision.toml")


def load(env: dict[str, str], tmp_path: Path) -> Settings:
    """Settings from `env` alone, with the state folder in the test's own folder."""
    return load_settings({"PROVISION_STATE_DIR": str(tmp_path / "state"), **env}, NO_FILE)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "provision.toml"
    toml.write_text('lock_timeout = 12\ndata_dir = "/srv/aeims"\n')

    settings = load_settings({"PROVISION_LOCK_TIMEOUT": "3.5"}, config_file=toml)

    assert settings.lock_timeout == 3.5
    assert settings.data_dir == Path("/srv/aeims")


def test_plan_flags_keep_their_names_and_meaning(tmp_path: Path) -> None:
    settings = load({"USE_DATABASE": "false", "USE_JSON": "true"}, tmp_path)

    assert settings.use_database is False and settings.use_json is True
    assert load({}, tmp_path).use_database is None


def test_new_settings_are_read_and_normalised(tmp_path: Path) -> None:
    settings = load(
        {
            "PROVISION_JOURNAL": "Files",
            "PROVISION_HOST_NAME": "web-1.example",
            "PROVISION_STEP_STATEMENT_TIMEOUT": "90",
            "PROVISION_PIPELINE_MODULES": "a.b, c",
            "PROVISION_LOCK_TIMEOUT": "0",
        },
        tmp_path,
    )

    assert settings.journal == "files" and settings.host_name == "web-1.example"
    assert settings.step_statement_timeout == 90.0 and settings.lock_timeout == 0.0
    assert settings.pipeline_modules == ("a.b", "c")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PROVISION_LOCK_TIMEOUT": "soon"}, "PROVISION_LOCK_TIMEOUT='soon' is not a number"),
        ({"PROVISION_LOCK_TIMEOUT": "-1"}, "out of range: use from 0 up to 86400"),
        ({"PROVISION_LOCK_TIMEOUT": "nan"}, "'nan' is not a finite number of seconds"),
        ({"PROVISION_LOCK_TIMEOUT": "1e400"}, "not a finite number"),
        ({"PROVISION_PG_CONNECT_TIMEOUT": "inf"}, "PROVISION_PG_CONNECT_TIMEOUT='inf' is not a"),
        ({"PROVISION_PG_CONNECT_TIMEOUT": "0"}, "use more than 0 up to 300"),
        ({"PROVISION_PG_CONNECT_TIMEOUT": "NaN"}, "not a finite number"),
        ({"PROVISION_BREAKER_RETRY_SECONDS": "nan"}, "BREAKER_RETRY_SECONDS='nan'"),
        ({"PROVISION_PG_STATEMENT_TIMEOUT": "-5"}, "PG_STATEMENT_TIMEOUT='-5' is out of range"),
        ({"PROVISION_STEP_STATEMENT_TIMEOUT": "1e9"}, "up to 86400 seconds"),
        ({"USE_DATABASE": "maybe"}, "USE_DATABASE='maybe' is not a boolean"),
        ({"PROVISION_JOURNAL": "db"}, "PROVISION_JOURNAL='db' is not known; use one of auto"),
        ({"PROVISION_JOURNAL": "postgres"}, "needs PROVISION_PG_DSN"),
        ({"PROVISION_HOST_NAME": "web 1"}, "'web 1' is not a host name"),
        ({"PROVISION_ACME_PROFILE": "Classic"}, "'Classic' is not an ACME profile name"),
        ({"PROVISION_ACME_PROFILE": "p" * 65}, "is not an ACME profile name"),
        ({"PROVISION_ACME_PROFILE": "a@b"}, "use a short token of a-z, 0-9"),
        ({"PROVISION_PIPELINE_MODULES": "my-mod"}, "'my-mod' is not a module name"),
        ({"PROVISION_LOCK_TIMEOUT": "\udcff"}, "is not a number of seconds"),
        ({"PROVISION_STATE_DIR": "\udcffstate"}, "not valid UTF-8"),
    ],
)
def test_malformed_values_are_named(env: dict[str, str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as raised:
        load(env, tmp_path)
    assert "\n" not in str(raised.value)


def test_paths_must_be_folders_or_creatable(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")

    with pytest.raises(ConfigError, match=r"STATE_DIR=.* is a file, not a folder"):
        load({"PROVISION_STATE_DIR": str(a_file)}, tmp_path)
    with pytest.raises(ConfigError, match=f"cannot be created: {a_file} is a file"):
        load({"PROVISION_STATE_DIR": str(a_file / "deeper" / "state")}, tmp_path)
    with pytest.raises(ConfigError, match=r"PROVISION_DATA_DIR=.* is a file, not a folder"):
        load({"PROVISION_DATA_DIR": str(a_file)}, tmp_path)
    settings = load({"PROVISION_STATE_DIR": str(tmp_path / "new" / "state")}, tmp_path)

    assert settings.state_dir == tmp_path / "new" / "state"
    assert not (tmp_path / "new").exists(), "checking a path must not create it"


def test_an_unwritable_state_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.access says yes to root everywhere, so the refusal is simulated here."""
    monkeypatch.setattr("provisioner.config.os.access", lambda path, mode: False)
    (tmp_path / "state").mkdir()

    with pytest.raises(ConfigError, match="is not writable by this user"):
        load({}, tmp_path)
    with pytest.raises(ConfigError, match="cannot be created in"):
        load({"PROVISION_STATE_DIR": str(tmp_path / "missing" / "state")}, tmp_path)


DSN_PASSWORD = "Pw0rdS3cret"


@pytest.mark.parametrize(
    ("dsn", "reason"),
    [
        ("host=db oops", "a word without '='"),
        (f"host=db password='{DSN_PASSWORD}", "a quote that is never closed"),
        ("hots=db", "unknown option hots (did you mean host?)"),
        (f"host=db password={DSN_PASSWORD} {DSN_PASSWORD}", "a word without '='"),
        (f"host=db password=a {DSN_PASSWORD}=x", "an unknown option"),
        (f"postgresql://u:{DSN_PASSWORD}@db/x?hots=1", "unknown option hots"),
        (f"postgresql://u:{DSN_PASSWORD}%zz@db/x", "a bad percent-escape"),
        (f"postgresql://u:{DSN_PASSWORD} x@db/x", "a space inside the URL"),
        ("host=db port=five", "port must be a whole number"),
    ],
)
def test_a_malformed_dsn_is_named_without_its_value(dsn: str, reason: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load({"PROVISION_PG_DSN": dsn}, tmp_path)

    message = str(raised.value)
    assert message.startswith("PROVISION_PG_DSN is not a valid connection string: " + reason)
    assert DSN_PASSWORD not in message and "db" not in message.split(":")[1]


@pytest.mark.parametrize(
    "dsn",
    [
        "host=db user=app password=hunter2",
        "postgresql://app:hunter2@db/x",
        "postgresql://:hunter2@db/x",
        "postgres://db/x?password=hunter2",
        "host=db sslpassword=hunter2",
    ],
)
def test_a_password_in_the_file_is_refused(dsn: str, tmp_path: Path) -> None:
    toml = tmp_path / "provision.toml"
    toml.write_text(f'pg_dsn = "{dsn}"\n')

    with pytest.raises(ConfigError, match="keep secrets out of files") as raised:
        load_settings({}, config_file=toml)
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("colour = 'blue'\n", "unknown setting\\(s\\) 'colour'"),
        ("[pg]\nhost = 'x'\n", "unknown setting\\(s\\) 'pg'"),
        ("lock_timeout = = 3\n", "not valid TOML"),
        ("pg_dsn = { host = 'x' }\n", "pg_dsn must be a string, not a table"),
        ("state_dir = 3\n", "state_dir must be a path \\(a string\\), not a number"),
        ("data_dir = ''\n", "data_dir is empty"),
        ("lock_timeout = true\n", "lock_timeout must be a number of seconds, not a boolean"),
        ("lock_timeout = nan\n", "lock_timeout='nan' is not a finite number"),
        ("lock_timeout = [1]\n", "not an array"),
        ("pipeline_modules = [1]\n", "must be an array of module names, not a number"),
        ('use_json = "sometimes"\n', "use_json='sometimes' is not a boolean"),
        ('host_name = "\\u0000x"\n', "NUL character"),
    ],
)
def test_a_malformed_file_is_named(content: str, message: str, tmp_path: Path) -> None:
    toml = tmp_path / "provision.toml"
    toml.write_text(content)

    with pytest.raises(ConfigError, match=message) as raised:
        load_settings({"PROVISION_STATE_DIR": str(tmp_path)}, config_file=toml)
    assert "\n" not in str(raised.value)


def test_a_file_that_cannot_be_read_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "provision.toml"
    toml.write_bytes(b"lock_timeout = 3\n# \xff\xfe\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_settings({}, config_file=toml)
    with pytest.raises(ConfigError, match="is a folder, not a settings file"):
        load_settings({}, config_file=tmp_path)

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ConfigError, match=r"cannot read .* \(Permission denied\)"):
        load_settings({}, config_file=toml)


def test_a_missing_provision_config_is_an_error_but_a_missing_default_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"PROVISION_STATE_DIR": str(tmp_path / "state")}

    assert load_settings(env).lock_timeout == 30.0
    with pytest.raises(ConfigError, match=r"PROVISION_CONFIG='/nowhere\.toml' does not exist"):
        load_settings({**env, "PROVISION_CONFIG": "/nowhere.toml"})
    (tmp_path / "other.toml").write_text("lock_timeout = 7\n")
    assert load_settings({**env, "PROVISION_CONFIG": "other.toml"}).lock_timeout == 7.0


def test_redacted_settings_hide_the_dsn_password(tmp_path: Path) -> None:
    settings = load({"PROVISION_PG_DSN": "host=db user=app password='s3 cret' dbname=x"}, tmp_path)

    shown = settings.redacted()

    assert "s3 cret" not in str(shown) and "password=***" in shown["pg_dsn"]
    assert redact_dsn("postgresql://app:pw@db/x") == "postgresql://app:***@db/x"


@pytest.mark.parametrize(
    ("dsn", "secret"),
    [
        ("host=db password='Qa1 Qb2\\' Qc3' dbname=x", "Qa1 Qb2\\' Qc3"),
        ("host=db password=Qa1 Qb2 dbname=x", "Qa1 Qb2"),
        ("host=db password=Qa1 Qb2 Qc3=Qd4 port=5", "Qa1 Qb2 Qc3=Qd4"),
        ("host=db password='unterminated dbname=x", "unterminated dbname=x"),
        ("host=db password = spaced", "spaced"),
        ("postgresql://app:pw%40x@db/x", "pw%40x"),
        ("postgresql://:Nouser1@db/x", "Nouser1"),
        ("postgres://app:Short2@db:5432/x?sslmode=require", "Short2"),
        ("postgresql://db/x?sslmode=require&password=Query3", "Query3"),
        ("postgresql://db/x?pass%77ord=Enc4", "Enc4"),
        ("postgresql://app:raw@at@db/x", "raw@at"),
        ("postgresql://app:with space@db/x", "with space"),
        ("host=db sslpassword=Key5", "Key5"),
        ("could not connect to password=Msg6: refused", "Msg6"),
    ],
)
def test_redact_dsn_masks_every_form(dsn: str, secret: str) -> None:
    shown = redact_dsn(dsn)

    for piece in secret.split():
        assert piece not in shown, shown
    assert "***" in shown


def test_redact_dsn_keeps_what_is_not_secret() -> None:
    assert redact_dsn("postgresql://app@db:5432/x") == "postgresql://app@db:5432/x"
    assert (
        redact_dsn("host=db port=5 password=x dbname=y") == "host=db port=5 password=*** dbname=y"
    )


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        st.characters(codec="utf-8", exclude_characters="\x00"),
        min_size=6,
        max_size=30,
    )
)
def test_redact_dsn_hides_any_password_libpq_would_read(password: str) -> None:
    """Whatever the password, as libpq parses it, no part of it is shown, in either form."""
    assume(password.strip() == password and len(password.strip()) >= 6)
    keyword = make_conninfo("", host="db.example", user="app", password=password, dbname="x")
    url = f"postgresql://app:{quote(password, safe='')}@db.example/x"
    for dsn in (keyword, url):
        assert conninfo_to_dict(dsn)["password"] == password
        shown = redact_dsn(dsn)
        assert password not in shown and quote(password, safe="") not in shown, (dsn, shown)
        assert "db.example" in shown


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_state_folder_is_refused_for_real(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o500)
    try:
        with pytest.raises(ConfigError, match="is not writable by this user"):
            load({}, tmp_path)
    finally:
        state.chmod(0o700)
