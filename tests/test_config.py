"""Settings: environment over provision.toml, validated once, secrets never printable."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.config import ConfigError, load_settings, redact_dsn


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "provision.toml"
    toml.write_text('lock_timeout = 12\ndata_dir = "/srv/aeims"\n')

    settings = load_settings({"PROVISION_LOCK_TIMEOUT": "3.5"}, config_file=toml)

    assert settings.lock_timeout == 3.5
    assert settings.data_dir == Path("/srv/aeims")


def test_plan_flags_keep_their_names_and_meaning() -> None:
    settings = load_settings(
        {"USE_DATABASE": "false", "USE_JSON": "true"}, config_file=Path("/nonexistent")
    )

    assert settings.use_database is False and settings.use_json is True
    assert load_settings({}, config_file=Path("/nonexistent")).use_database is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PROVISION_LOCK_TIMEOUT": "soon"}, "PROVISION_LOCK_TIMEOUT='soon' is not a number"),
        ({"PROVISION_LOCK_TIMEOUT": "-1"}, "must not be negative"),
        ({"USE_DATABASE": "maybe"}, "USE_DATABASE='maybe' is not a boolean"),
    ],
)
def test_malformed_values_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env, config_file=Path("/nonexistent"))


def test_a_password_in_the_file_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "provision.toml"
    toml.write_text('pg_dsn = "host=db user=app password=hunter2"\n')

    with pytest.raises(ConfigError, match="keep secrets out of files") as raised:
        load_settings({}, config_file=toml)
    assert "hunter2" not in str(raised.value)


def test_unknown_settings_and_bad_toml_are_errors(tmp_path: Path) -> None:
    toml = tmp_path / "provision.toml"
    toml.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings({}, config_file=toml)
    toml.write_text("lock_timeout = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({}, config_file=toml)


def test_redacted_settings_hide_the_dsn_password() -> None:
    settings = load_settings(
        {"PROVISION_PG_DSN": "host=db user=app password='s3 cret' dbname=x"},
        config_file=Path("/nonexistent"),
    )

    shown = settings.redacted()

    assert "s3 cret" not in str(shown) and "password=***" in shown["pg_dsn"]
    assert redact_dsn("postgresql://app:pw@db/x") == "postgresql://app:***@db/x"
