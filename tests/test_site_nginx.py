"""The nginx step against the stack's real nginx: forward, re-run, rollback, a config nginx
rejects, a reload that does not take, TLS once a certificate exists, and the template's inputs."""

from __future__ import annotations

import shutil
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from provisioner.config import Settings
from provisioner.engine.step import RunContext
from provisioner.fsutil import file_lock
from provisioner.site import nginx as nginx_module
from provisioner.site import nginx_control
from provisioner.site.nginx import (
    NginxError,
    NginxStep,
    VhostState,
    VhostValueError,
    render_vhost,
    vhost_values,
)
from provisioner.site.spec import SiteSpec
from tests.nginx_support import (
    get,
    install_hand_written,
    remove_vhost,
    self_signed,
    site,
    site_folder,
    stack_settings,
    vhost_paths,
)

SECRET = "s3cr3t-value-never-served"


@pytest.fixture
def settings(stack_env: dict[str, str]) -> Settings:
    return stack_settings()


@pytest.fixture
def domains(settings: Settings) -> Iterator[list[str]]:
    """Fresh domains for one test; their vhosts, site folders and certificates removed after."""
    made: list[str] = []
    yield made
    for domain in made:
        remove_vhost(settings, domain)
        shutil.rmtree(settings.sites_root / domain, ignore_errors=True)
        shutil.rmtree(settings.cert_dir / "live" / domain, ignore_errors=True)


@pytest.fixture
def new_site(settings: Settings, domains: list[str]) -> SiteSpec:
    domain = f"n{uuid.uuid4().hex[:10]}.nginx.test"
    domains.append(domain)
    spec = site(domain, "Ocean Breeze")
    site_folder(
        settings,
        spec,
        {
            "config.json": f'{{"token": "{SECRET}"}}',
            "users.json": SECRET,
            ".git/config": SECRET,
            ".env": SECRET,
            "x.php": f"<?php echo '{SECRET}';",
            "auth.php.backup.20240101": SECRET,
            "index.php.bak": SECRET,
            "index.html~": SECRET,
            "page.swp": SECRET,
            "data/sites.json": SECRET,
        },
    )
    return spec


def ctx(settings: Settings) -> RunContext:
    return RunContext(run_id="t", target="t", params={}, settings=settings)


def test_forward_serves_coming_soon_with_headers_and_denies_the_rest(
    settings: Settings, new_site: SiteSpec
) -> None:
    step = NginxStep(new_site, settings)
    assert step.preflight(ctx(settings)) == []
    change = step.check(ctx(settings))
    assert change is not None and "created (coming soon, HTTP only)" in change.summary
    assert change.diff and change.diff.startswith("--- /dev/null")
    step.apply(ctx(settings))

    paths = vhost_paths(settings, new_site.domain)
    assert paths["vhost"]["mode"] == 0o644
    assert paths["enabled"] == {
        "kind": "link",
        "target": str(settings.nginx_vhost_dir / f"{new_site.domain}.conf"),
    }
    for host in new_site.names:
        for path in ("/", "/any/page", "/index.html"):
            status, headers, body = get(settings, host, path)
            assert status == 200, (host, path)
            assert b"Ocean Breeze" in body and b"Coming soon" in body
            assert headers["x-robots-tag"] == "noindex"
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["x-frame-options"] == "SAMEORIGIN"
            assert "referrer-policy" in headers
            assert headers["content-type"].startswith("text/html")
    for path in (
        "/config.json",
        "/users.json",
        "/.git/config",
        "/.env",
        "/x.php",
        "/x.php/extra",
        "/X.PHP",
        "/auth.php.backup.20240101",
        "/index.php.bak",
        "/index.html~",
        "/page.swp",
        "/data/sites.json",
        "/data",
    ):
        status, headers, body = get(settings, new_site.domain, path)
        assert status in (403, 404), path
        assert SECRET.encode() not in body, path
        assert headers["x-content-type-options"] == "nosniff", path

    token = f"tok{uuid.uuid4().hex}"
    challenge = settings.acme_webroot / ".well-known" / "acme-challenge" / token
    challenge.parent.mkdir(parents=True, exist_ok=True)
    challenge.write_text("key-authorization")
    challenge.chmod(0o644)
    try:
        status, _, body = get(settings, new_site.domain, f"/.well-known/acme-challenge/{token}")
        assert (status, body) == (200, b"key-authorization")
    finally:
        challenge.unlink()


def test_rerun_changes_nothing_and_does_not_reload(settings: Settings, new_site: SiteSpec) -> None:
    NginxStep(new_site, settings).apply(ctx(settings))
    vhost = settings.nginx_vhost_dir / f"{new_site.domain}.conf"
    written = vhost.stat().st_mtime_ns
    again = NginxStep(new_site, settings)
    started = time.monotonic()
    assert again.check(ctx(settings)) is None
    assert time.monotonic() - started < 0.2
    again.apply(ctx(settings))
    assert vhost.stat().st_mtime_ns == written


def test_rollback_removes_the_vhost_it_made(settings: Settings, new_site: SiteSpec) -> None:
    step = NginxStep(new_site, settings)
    undo = step.apply(ctx(settings))
    step.rollback(ctx(settings), undo)
    paths = vhost_paths(settings, new_site.domain)
    assert paths == {"vhost": {"kind": "absent"}, "enabled": {"kind": "absent"}, "torn": []}
    status, _, body = get(settings, new_site.domain)
    assert (status, body) == (404, b"no vhost\n")  # the stack's default server again
    step.rollback(ctx(settings), undo)  # twice is harmless
    assert vhost_paths(settings, new_site.domain) == paths


def test_rollback_restores_a_hand_written_vhost_byte_for_byte(
    settings: Settings, new_site: SiteSpec
) -> None:
    install_hand_written(settings, new_site.domain, mode=0o640)
    before = vhost_paths(settings, new_site.domain)
    assert get(settings, new_site.domain)[2] == b"hand-written\n"

    step = NginxStep(new_site, settings)
    change = step.check(ctx(settings))
    assert change is not None and "updated (coming soon, HTTP only)" in change.summary
    undo = step.apply(ctx(settings))
    assert b"Ocean Breeze" in get(settings, new_site.domain)[2]
    assert vhost_paths(settings, new_site.domain)["vhost"]["mode"] == 0o640  # mode kept

    step.rollback(ctx(settings), undo)
    assert vhost_paths(settings, new_site.domain) == before
    assert get(settings, new_site.domain)[2] == b"hand-written\n"


def test_a_vhost_nginx_rejects_restores_the_previous_files_and_others_keep_serving(
    settings: Settings, new_site: SiteSpec, domains: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    neighbour = site(f"b{uuid.uuid4().hex[:10]}.nginx.test", "Neighbour")
    domains.append(neighbour.domain)
    site_folder(settings, neighbour)
    NginxStep(neighbour, settings).apply(ctx(settings))
    install_hand_written(settings, new_site.domain)
    before = vhost_paths(settings, new_site.domain)

    good = render_vhost

    def broken(*args: object, **kwargs: object) -> str:
        return good(*args, **kwargs).replace("server_tokens off;", "no_such_directive on;", 1)  # type: ignore[arg-type]

    monkeypatch.setattr(nginx_module, "render_vhost", broken)
    with pytest.raises(NginxError, match=r"nginx -t rejects .*no_such_directive") as failed:
        NginxStep(new_site, settings).apply(ctx(settings))
    assert "the previous files are back and nginx runs them" in str(failed.value)
    assert vhost_paths(settings, new_site.domain) == before
    assert get(settings, new_site.domain)[2] == b"hand-written\n"
    assert b"Neighbour" in get(settings, neighbour.domain)[2]
    assert nginx_control.Nginx(settings).test() is None


def test_a_name_too_long_for_nginxs_hash_fails_the_test_and_changes_nothing(
    settings: Settings, domains: list[str]
) -> None:
    """A real `nginx -t` failure: a 190-character name overflows the stack's hash buckets."""
    spec = site(f"{'a' * 60}.{'b' * 60}.{uuid.uuid4().hex[:8]}{'c' * 52}.test")
    domains.append(spec.domain)
    site_folder(settings, spec)
    with pytest.raises(NginxError, match="server_names_hash_bucket_size 128") as failed:
        NginxStep(spec, settings).apply(ctx(settings))
    assert "the previous files are back and nginx runs them" in str(failed.value)
    paths = vhost_paths(settings, spec.domain)
    assert paths == {"vhost": {"kind": "absent"}, "enabled": {"kind": "absent"}, "torn": []}
    assert nginx_control.Nginx(settings).test() is None


def test_a_reload_that_does_not_take_is_caught_and_undone(
    settings: Settings, new_site: SiteSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nginx -s reload` exits 0 without reloading (certbot #7555): the marker never answers."""
    wrapper = tmp_path / "nginx-reload-lies"
    wrapper.write_text(
        '#!/bin/sh\ncase " $* " in *" -s reload "*) exit 0 ;; esac\nexec "$@"\n', encoding="utf-8"
    )
    wrapper.chmod(0o755)
    lying = replace(settings, nginx_cmd=f"{wrapper} {settings.nginx_cmd}")
    monkeypatch.setattr(nginx_control, "CONFIRM_SECONDS", 0.5)
    with pytest.raises(NginxError, match=r"still answers 404 'no vhost'.*not live") as failed:
        NginxStep(new_site, lying).apply(ctx(lying))
    assert "the previous files are back" in str(failed.value)
    assert vhost_paths(settings, new_site.domain)["vhost"] == {"kind": "absent"}


def test_tls_once_a_certificate_exists(settings: Settings, new_site: SiteSpec) -> None:
    step = NginxStep(new_site, settings)
    step.apply(ctx(settings))
    assert step.check(ctx(settings)) is None
    bundle = self_signed(settings, new_site.domain)

    change = step.check(ctx(settings))  # the certificate exists now: the vhost lacks TLS
    assert change is not None and "TLS added" in change.summary
    step.apply(ctx(settings))
    status, headers, _ = get(settings, new_site.domain, "/page?q=1")
    port = settings.nginx_https_port
    assert (status, headers["location"]) == (301, f"https://{new_site.domain}:{port}/page?q=1")
    token = f"tok{uuid.uuid4().hex}"
    challenge = settings.acme_webroot / ".well-known" / "acme-challenge" / token
    challenge.parent.mkdir(parents=True, exist_ok=True)
    challenge.write_text("still over http")
    try:
        assert get(settings, new_site.domain, f"/.well-known/acme-challenge/{token}")[0] == 200
    finally:
        challenge.unlink()

    client = httpx.Client(verify=ssl.create_default_context(cafile=str(bundle)))

    def https(host: str, path: str = "/") -> httpx.Response:
        return client.get(
            f"https://127.0.0.1:{port}{path}",
            headers={"Host": host},
            extensions={"sni_hostname": host},
        )

    for host in new_site.names:
        response = https(host)
        assert response.status_code == 200 and "Ocean Breeze" in response.text
        assert response.headers["strict-transport-security"].startswith("max-age=")
        assert response.headers["x-robots-tag"] == "noindex"
        assert response.headers["x-frame-options"] == "SAMEORIGIN"
    config = https(new_site.domain, "/config.json")
    assert config.status_code == 403 and SECRET not in config.text


def test_state_is_a_template_variable_kept_by_later_runs(
    settings: Settings, new_site: SiteSpec
) -> None:
    (settings.sites_root / new_site.domain / "index.html").write_text("<p>Ocean Breeze live</p>")
    (settings.sites_root / new_site.domain / "index.html").chmod(0o644)
    live = NginxStep(new_site, settings, VhostState.LIVE)
    assert "live" in live.check(ctx(settings)).summary  # type: ignore[union-attr]
    live.apply(ctx(settings))
    status, headers, body = get(settings, new_site.domain)
    assert (status, body) == (200, b"<p>Ocean Breeze live</p>")
    assert "x-robots-tag" not in headers
    assert get(settings, new_site.domain, "/x.php")[0] == 403  # no php-fpm: never the source
    assert NginxStep(new_site, settings).check(ctx(settings)) is None  # no state named: kept


def test_a_vhost_written_but_never_reloaded_is_reloaded(
    settings: Settings, new_site: SiteSpec
) -> None:
    """A run killed between the write and the reload: check sees the file is not live."""
    step = NginxStep(new_site, settings)
    change = step.check(ctx(settings))
    assert change is not None
    files = nginx_control.VhostFiles.for_domain(new_site.domain, settings)
    files.write(files.wanted(render_vhost(new_site, settings, VhostState.COMING_SOON, False)))
    change = step.check(ctx(settings))
    assert change is not None and "nginx does not serve it yet" in change.summary
    step.apply(ctx(settings))
    assert step.check(ctx(settings)) is None


def test_reloads_are_serialized_on_the_host(settings: Settings, new_site: SiteSpec) -> None:
    impatient = replace(settings, lock_timeout=0.2)
    held = file_lock(nginx_control.Nginx(settings).reload_lock_path)
    with held, pytest.raises(NginxError, match="another run has been reloading nginx"):
        NginxStep(new_site, impatient).apply(ctx(impatient))
    assert vhost_paths(settings, new_site.domain)["vhost"] == {"kind": "absent"}


def test_two_sites_at_once_both_go_live(
    settings: Settings, new_site: SiteSpec, domains: list[str]
) -> None:
    other = site(f"c{uuid.uuid4().hex[:10]}.nginx.test", "Second")
    domains.append(other.domain)
    site_folder(settings, other)
    errors: list[BaseException] = []

    def run(spec: SiteSpec) -> None:
        try:
            NginxStep(spec, settings).apply(ctx(settings))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(spec,)) for spec in (new_site, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert b"Ocean Breeze" in get(settings, new_site.domain)[2]
    assert b"Second" in get(settings, other.domain)[2]


def test_preflight_names_what_is_missing(settings: Settings, new_site: SiteSpec) -> None:
    missing = replace(settings, nginx_cmd="/nonexistent/nginx")
    [problem] = NginxStep(new_site, missing).preflight(ctx(missing))
    assert "/nonexistent/nginx not found" in problem
    elsewhere = replace(settings, nginx_http_port=1)
    [problem] = NginxStep(new_site, elsewhere).preflight(ctx(elsewhere))
    assert "nothing answers at http://127.0.0.1:1/" in problem


# --------------------------------------------------------------------------------------------
# What reaches the vhost
# --------------------------------------------------------------------------------------------

TEMPLATE_INPUTS = {
    "domain",
    "server_names",
    "listen_http",
    "listen_https",
    "https_port_suffix",
    "docroot",
    "acme_webroot",
    "php_fpm_socket",
    "state",
    "tls",
    "certificate",
    "certificate_key",
}


def test_the_template_receives_only_checked_values(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = site("brand.example", 'Evil"; } server { listen 1; include /etc/passwd; #')
    values = vhost_values(spec, settings, VhostState.COMING_SOON, True)
    assert set(values) == TEMPLATE_INPUTS  # the site's name is not among them
    seen: list[set[str]] = []
    real = nginx_module._environment

    def spy(root: Path):  # type: ignore[no-untyped-def]
        env = real(root)
        template = env.get_template(nginx_module.TEMPLATE)
        render = template.render

        def recording(**kwargs: object) -> str:
            seen.append(set(kwargs))
            return render(**kwargs)

        monkeypatch.setattr(template, "render", recording)
        others = env.get_template
        monkeypatch.setattr(
            env,
            "get_template",
            lambda name, *a: template if name == nginx_module.TEMPLATE else others(name, *a),
        )
        return env

    monkeypatch.setattr(nginx_module, "_environment", spy)
    text = render_vhost(spec, settings, VhostState.COMING_SOON, True)
    assert seen and all(keys == {*TEMPLATE_INPUTS, "marker"} for keys in seen)
    assert "Evil" not in text and "/etc/passwd" not in text


@pytest.mark.parametrize(
    "domain",
    [
        "evil.com;include /etc/passwd",
        "evil.com www.other.com",
        'a"b.com',
        "EVIL.com",
        "evil.com\n}",
        "-bad.com",
        "$host.com",
        "a..com",
    ],
)
def test_a_hostile_domain_never_reaches_the_vhost(settings: Settings, domain: str) -> None:
    """SiteSpec is built by validate.py only; this is the last line behind it."""
    with pytest.raises(VhostValueError):
        render_vhost(site(domain), settings, VhostState.COMING_SOON, False)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sites_root", Path('/srv/a"; include /etc/passwd; "')),
        ("acme_webroot", Path("/srv/${evil}")),
        ("php_fpm_socket", Path("/run/php.sock; }")),
        ("cert_dir", Path("relative/certs")),
        ("sites_root", Path("/srv/new\nline")),
    ],
)
def test_a_setting_nginx_cannot_hold_is_refused(
    settings: Settings, field: str, value: Path
) -> None:
    hostile = replace(settings, **{field: value})
    with pytest.raises(VhostValueError, match=field):
        render_vhost(site("brand.example"), hostile, VhostState.LIVE, True)
    problems = NginxStep(site("brand.example"), hostile).preflight(ctx(hostile))
    assert any(field in problem for problem in problems)


def test_the_listen_setting_takes_addresses_only() -> None:
    from provisioner.config import ConfigError, load_settings

    parsed = load_settings(env={"PROVISION_NGINX_LISTEN": "127.0.0.1, ::1"}).nginx_listen
    assert parsed == ("127.0.0.1", "::1")
    with pytest.raises(ConfigError, match=r"PROVISION_NGINX_LISTEN: '127\.0\.0\.1;' is not an IP"):
        load_settings(env={"PROVISION_NGINX_LISTEN": "127.0.0.1;"})


def test_the_stack_mirrors_debian_layout(stack_env: dict[str, str]) -> None:
    """sites-available + sites-enabled, included by nginx.conf; the vhosts listen where the
    stack's default server does (nginx matches a Host only among servers on one address)."""
    prefix = Path(stack_env["PROVISION_NGINX_PREFIX"])
    assert stack_env["PROVISION_NGINX_VHOST_DIR"] == str(prefix / "sites-available")
    assert stack_env["PROVISION_NGINX_ENABLED_DIR"] == str(prefix / "sites-enabled")
    conf = (prefix / "nginx.conf").read_text()
    assert f'include "{prefix / "sites-enabled"}/*.conf";' in conf
    assert f"listen {stack_env['PROVISION_NGINX_LISTEN']}:" in conf
