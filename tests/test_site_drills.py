"""The site drills (issue 10, point 6), in real `provision` processes on the real local stack.

Crash: the process is SIGKILLed at every step of a pipeline, once before its apply (the
Change journaled, nothing done) and once inside it (all done, the undo not journaled); then
`runs resume` converges to the finished state (re-running changes nothing) and, on a second
copy of the same situation, `runs rollback` converges to what was there before. After every
kill `nginx -t` passes and a site created before the drill still answers. Scenarios run on
independent domains in a thread pool, sharing one state folder (so they share the host's
nginx reload lock, as real runs do) and each with its own copy of the AEIMS files (so the
residue snapshot compares exactly).

Concurrency: eight creates of one domain give one site and one certificate, and every
process exits 0 or names the lock holder; eight domains created at once all succeed; a
prober asks every earlier site over verified HTTPS throughout.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.drill_pipelines import POINTS
from tests.site_e2e_support import (
    PROVISION,
    REPO,
    SITE_NAME,
    Prober,
    answers_with,
    durable_cert_dir,
    nginx_verdict,
    param_args,
    provision,
    residue,
    run_json,
    site_env,
    site_params,
    still_named,
    world,
)
from tests.site_support import unique_domain

pytestmark = pytest.mark.slow

CREATE_STEPS = ["record", "files", "nginx", "dns", "certificate", "operators", "billing", "health"]
WORKERS = 6
KILL_WAIT = 90.0


@dataclass(frozen=True)
class Drill:
    """A pipeline to crash, what must exist before it runs, and what "finished" means."""

    pipeline: str
    steps: list[str]
    setup: list[str]  # pipelines run first on the same site, with the same parameters
    params: Callable[[str], dict[str, Any]]
    finished: Callable[[dict[str, str], str, dict[str, Any]], None]
    # Where to kill: at every step boundary and inside every step's apply.
    points: tuple[str, ...] = POINTS


def _answers(env: dict[str, str], domain: str, origin: dict[str, Any]) -> None:
    said = answers_with(env, domain, SITE_NAME)
    assert said is None, said


def _gone(env: dict[str, str], domain: str, origin: dict[str, Any]) -> None:
    assert world(env, domain) == origin


DRILLS = {
    "site-create": Drill("site-create", CREATE_STEPS, [], site_params, _answers),
    # The steps of these two are read from their plan on a site set up as the drill sets it
    # up (see _steps_to_drill); the drill is skipped while a pipeline is not registered.
    # Each of their scenarios first creates a site (and undoes it after).
    "site-enable": Drill("site-enable", [], ["site-create"], site_params, _answers),
    "site-destroy": Drill("site-destroy", [], ["site-create"], site_params, _gone),
}


# --------------------------------------------------------------------------------------------
# The shared scene: one state folder, and a site made before the drill that must keep answering
# --------------------------------------------------------------------------------------------


@dataclass
class Scene:
    root: Path
    state: Path
    certs: Path
    bystander: str

    def env(self, name: str) -> dict[str, str]:
        """Each scenario's own AEIMS copy and certificate folder (the residue snapshot compares
        exactly; the rate-limit ledger counts one scenario's certificates), the shared state."""
        return site_env(self.state, self.root / name / "aeims", cert_dir=self.certs / name)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    root = tmp_path_factory.mktemp("drills")
    scene = Scene(root, root / "state", durable_cert_dir("drills"), unique_domain())
    env = scene.env("bystander")
    made = run_json(env, "run", "site-create", *param_args(site_params(scene.bystander)))
    yield scene
    run_json(env, "runs", "rollback", made["run_id"])
    if not still_named(scene.certs):
        shutil.rmtree(scene.certs)


def _steps_to_drill(scene: Scene, drill: Drill) -> list[str] | None:
    """The steps the pipeline changes on a site set up as the drill sets it up, read from its
    plan (a step with nothing to do never reaches its apply); None when it is not built yet."""
    domain = unique_domain()
    env = scene.env(f"{drill.pipeline}-plan")
    setup_runs = [
        run_json(env, "run", name, *param_args(site_params(domain)))["run_id"]
        for name in drill.setup
    ]
    try:
        planned = provision(
            env, "run", drill.pipeline, *param_args(drill.params(domain)), "--plan", "--json"
        )
        if planned.returncode != 0 and "unknown pipeline" in planned.stdout + planned.stderr:
            return None
        assert planned.returncode == 0, planned.stdout + planned.stderr
        steps = json.loads(planned.stdout)["steps"]
        return [s["name"] for s in steps if s["status"] == "planned"]
    finally:
        for setup_run in reversed(setup_runs):
            run_json(env, "runs", "rollback", setup_run)


# --------------------------------------------------------------------------------------------
# One scenario: set up, start the drilled run, kill it at its point, then resume or roll back
# --------------------------------------------------------------------------------------------


def _kill_at_point(env: dict[str, str], work: Path, drill: Drill, domain: str, at: str) -> str:
    """Start the drilled run, SIGKILL it where it paused; its run id."""
    work.mkdir(parents=True)
    params = {
        "pipeline": drill.pipeline,
        "params": drill.params(domain),
        "kill_at": at,
        "work": str(work),
    }
    argv = [PROVISION, "run", "drill", *param_args(params), "--json"]
    with subprocess.Popen(
        argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        marker = work / "paused"
        deadline = time.monotonic() + KILL_WAIT
        while not marker.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out, err = proc.communicate()
                raise AssertionError(f"{at}: never paused (exit {proc.returncode})\n{out}{err}")
            time.sleep(0.02)
        paused = json.loads(marker.read_text())
        assert paused["pid"] == proc.pid, paused
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
    return str(paused["run_id"])


def _after_the_kill(scene: Scene, env: dict[str, str], at: str) -> None:
    """nginx valid, and the site made before the drill still answering."""
    verdict = nginx_verdict(env)
    assert verdict is None, f"after the kill at {at}, nginx -t fails: {verdict}"
    said = answers_with(env, scene.bystander, SITE_NAME)
    assert said is None, f"after the kill at {at}, the bystander site: {said}"


def scenario(scene: Scene, drill: Drill, at: str, outcome: str) -> None:
    domain = unique_domain()
    label = f"{drill.pipeline}-{at.replace(':', '-')}-{outcome}"
    env = scene.env(label)
    origin = world(env, domain)
    setup_runs = [
        run_json(env, "run", name, *param_args(site_params(domain)))["run_id"]
        for name in drill.setup
    ]
    before = world(env, domain) if setup_runs else origin

    run_id = _kill_at_point(env, scene.root / label / "work", drill, domain, at)
    _after_the_kill(scene, env, at)

    if outcome == "resume":
        resumed = run_json(env, "runs", "resume", run_id)
        assert resumed["status"] == "succeeded", resumed
        drill.finished(env, domain, origin)
        again = run_json(env, "run", drill.pipeline, *param_args(drill.params(domain)))
        assert again["changed"] is False, [
            (s["name"], s["status"]) for s in again["steps"] if s["status"] != "ok"
        ]
    # The second copy rolls back the killed run; the first undoes its resumed one, so that
    # both show the journal can take the site back to where the drill found it.
    undone = run_json(env, "runs", "rollback", run_id)
    assert undone["status"] == "rolled_back", undone
    after = world(env, domain)
    assert after == before, f"{label}: residue after the rollback: {residue(before, after)[:10]}"
    for setup_run in reversed(setup_runs):
        run_json(env, "runs", "rollback", setup_run)
    if setup_runs:
        assert world(env, domain) == origin, f"{label}: residue after undoing the setup"


def _run_all(scene: Scene, drill: Drill, steps: list[str], outcome: str) -> None:
    points = drill.points
    cases = [f"{step}:{point}" for step in steps for point in points]
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {at: pool.submit(scenario, scene, drill, at, outcome) for at in cases}
    failures = {at: future.exception() for at, future in futures.items() if future.exception()}
    assert not failures, "\n\n".join(f"[{at}] {str(exc)[:1500]}" for at, exc in failures.items())


@pytest.mark.parametrize("outcome", ["resume", "rollback"])
@pytest.mark.parametrize("pipeline", list(DRILLS))
def test_a_run_killed_anywhere_resumes_or_rolls_back(
    scene: Scene, pipeline: str, outcome: str
) -> None:
    drill = DRILLS[pipeline]
    steps = _steps_to_drill(scene, drill)
    if steps is None:
        pytest.skip(f"no pipeline {pipeline} registered yet")
    if drill.steps:
        assert steps == drill.steps  # every step of a create has something to do
    _run_all(scene, drill, steps, outcome)


# --------------------------------------------------------------------------------------------
# Concurrency
# --------------------------------------------------------------------------------------------


def _creates(
    env: dict[str, str], domains: list[str], *extra: str
) -> list[tuple[int, dict[str, Any]]]:
    """`site create --json` of every domain, all started at once; (exit code, answer) each."""
    procs = [
        subprocess.Popen(
            [PROVISION, "site", "create", "--domain", d, "--name", SITE_NAME, *extra, "--json"],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for d in domains
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert out.strip(), f"exit {proc.returncode}, no JSON answer: {err}"
        done.append((proc.returncode, json.loads(out)))
    return done


def _roll_back_all(env: dict[str, str], run_ids: list[str]) -> None:
    with ThreadPoolExecutor(WORKERS) as pool:
        for undone in pool.map(lambda r: run_json(env, "runs", "rollback", r), run_ids):
            assert undone["status"] == "rolled_back", undone


def test_eight_creates_of_one_domain_make_one_site_and_one_certificate(scene: Scene) -> None:
    domain = unique_domain()
    env = scene.env("same-domain")
    origin = world(env, domain)

    with Prober(env, {scene.bystander: SITE_NAME}).running() as prober:
        results = _creates(env, [domain] * 8, "--lock-timeout", "0")

    codes = sorted(code for code, _ in results)
    made = [answer["run_id"] for code, answer in results if code == 0 and answer["changed"]]
    assert set(codes) <= {0, 1} and len(made) == 1, results
    for code, answer in results:
        if code == 1:
            assert "is locked by run " in answer["msg"] and "(pid " in answer["msg"], answer
    archive = Path(env["PROVISION_CERT_DIR"]) / "archive" / domain
    assert sorted(p.name for p in archive.glob("cert*.pem")) == ["cert1.pem"]
    sites = [s for s in world(env, domain)["aeims"]["sites"] if s.get("domain") == domain]
    assert len(sites) == 1, sites
    assert answers_with(env, domain, SITE_NAME) is None
    assert prober.probes and not prober.bad, prober.bad

    _roll_back_all(env, made)
    assert world(env, domain) == origin


def test_eight_domains_created_at_once_all_answer(scene: Scene) -> None:
    domains = [unique_domain() for _ in range(8)]
    env = scene.env("eight-domains")  # one AEIMS copy: the eight share its files, as on a host
    origin = {d: world(env, d) for d in domains}
    earlier = {scene.bystander: SITE_NAME}

    with Prober(env, earlier).running() as prober:
        results = _creates(env, domains)

    assert [code for code, _ in results] == [0] * 8, [a.get("msg") for _, a in results]
    for domain in domains:
        assert answers_with(env, domain, SITE_NAME) is None
    assert prober.probes and not prober.bad, prober.bad
    assert nginx_verdict(env) is None

    _roll_back_all(env, [answer["run_id"] for _, answer in results])
    # Concurrent rollbacks change the same operators' `domains` maps: none may be lost.
    left = residue(origin, {d: world(env, d) for d in domains})
    assert not left, left[:20]
