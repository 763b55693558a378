"""Real PHP writing the data files beside this layer's writers, and what each side lost.

PHP writers (tests/php/writer.php, the SecurityManager protocol: a read under LOCK_SH, a
separate write under LOCK_EX in place) and processes of this layer (DataLayer.save_message,
save_customer, credits updates) write messages.json and customers.json at the same time. The
figures are taken when they are done (before the layer touches the files again) and after the
repair: the layer's next write to each file, or `provision data reconcile`.

`.venv/bin/python -m tests.php_interop` prints the figures of every scenario.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.storage.layer.datalayer import DataLayer
from provisioner.storage.phpjson.recent_writes import health_report

TESTS = Path(__file__).resolve().parent
PHP_WRITER = TESTS / "php" / "writer.php"
FIXTURE_AEIMS = TESTS / "fixtures" / "aeims"
PROVISION = str(Path(sys.executable).parent / "provision")
OWN_CUSTOMERS = 3
KINDS = ("message", "customer", "credits")


def php_binary() -> str | None:
    return shutil.which("php")


@dataclass(frozen=True)
class Scenario:
    name: str
    php_writers: int
    layer_writers: int
    writes_each: int  # per writer, round robin over KINDS
    repair: str  # "touch": the layer's next write to each file; "reconcile": the CLI
    php_pause_us: int = 3000  # the rest of PHP's request between its read and its write


SCENARIOS = (
    Scenario("1 PHP writer, 2 layer writers, repaired by the next write", 1, 2, 60, "touch"),
    Scenario("1 PHP writer, 2 layer writers, repaired by reconcile", 1, 2, 60, "reconcile"),
    Scenario("3 PHP writers, 2 layer writers, repaired by the next write", 3, 2, 60, "touch"),
    Scenario("3 PHP writers, 2 layer writers, repaired by reconcile", 3, 2, 60, "reconcile"),
    # PHP's own stale read-modify-write, with nobody else writing: the application's bug.
    Scenario("3 PHP writers alone (baseline)", 3, 0, 60, "reconcile"),
)


@dataclass
class Side:
    """One side's writes: attempted, acknowledged, lost when the writers were done (`lost_at_end`)
    and after the repair (`lost`)."""

    attempted: int = 0
    acknowledged: int = 0
    lost_at_end: int = 0
    lost: int = 0
    acks: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Figures:
    scenario: Scenario
    php: Side
    layer: Side
    reapplied: int


# --------------------------------------------------------------------------------------------
# The writers
# --------------------------------------------------------------------------------------------


def layer_writer(root: str, name: str, count: int, start: Any) -> list[dict[str, Any]]:
    """A process of this layer: messages, new customers and credits updates, round robin;
    returns the writes it acknowledged."""
    acks: list[dict[str, Any]] = []
    with DataLayer(Path(root)) as layer:
        start.wait(timeout=60)
        for i in range(count):
            kind = KINDS[i % 3]
            if kind == "message":
                content = f"{name} says {i}"
                key = layer.save_message(
                    {
                        "conversation_id": f"conv_{name}",
                        "sender_id": f"cust_{name}_0",
                        "content": content,
                    }
                )
                acks.append({"kind": kind, "id": key, "content": content})
            elif kind == "customer":
                key = f"cust_{name}_new{i}"
                layer.save_customer(new_customer(key, i))
                acks.append({"kind": kind, "id": key, "credits": i})
            else:
                key = f"cust_{name}_{i % OWN_CUSTOMERS}"
                record = layer.get("customers", key)
                assert record is not None, key
                record["billing"] = {**record["billing"], "credits": 1000 + i}
                layer.save_customer(record)
                acks.append({"kind": kind, "id": key, "credits": 1000 + i})
    return acks


def new_customer(key: str, credits: int) -> dict[str, Any]:
    username = key.removeprefix("cust_")
    return {
        "customer_id": key,
        "username": username,
        "email": f"{username}@example.test",
        "site_domain": "alpha.example.test",
        "active": True,
        "billing": {"credits": credits, "total_spent": 0},
    }


def prepare(root: Path, names: list[str]) -> None:
    """Every writer's own customers exist before the race (credits updates need them)."""
    with DataLayer(root) as layer:
        for name in names:
            for n in range(OWN_CUSTOMERS):
                layer.save_customer(new_customer(f"cust_{name}_{n}", 0))


def run_writers(root: Path, scenario: Scenario) -> tuple[Side, Side]:
    php = shutil.which("php")
    assert php is not None, "php-cli is not installed (scripts/bootstrap.sh installs it)"
    php_names = [f"php{n}" for n in range(scenario.php_writers)]
    layer_names = [f"layer{n}" for n in range(scenario.layer_writers)]
    prepare(root, php_names + layer_names)
    ctx = multiprocessing.get_context("spawn")
    php_side, layer_side = Side(), Side()
    errors = []
    with (
        ctx.Manager() as manager,
        ProcessPoolExecutor(max(1, len(layer_names)), mp_context=ctx) as pool,
    ):
        start = manager.Barrier(len(layer_names) + 1)  # PHP starts once the layer is ready
        futures = [
            pool.submit(layer_writer, str(root), name, scenario.writes_each, start)
            for name in layer_names
        ]
        start.wait(timeout=60)
        counts = [str(scenario.writes_each), str(scenario.php_pause_us)]
        php_procs = [
            subprocess.Popen(
                [php, str(PHP_WRITER), str(root), name, *counts],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in php_names
        ]
        for proc in php_procs:
            out, err = proc.communicate(timeout=120)
            if proc.returncode != 0:
                errors.append(f"PHP writer exited {proc.returncode}: {err}")
            php_side.acks += [json.loads(line) for line in out.splitlines() if line.strip()]
        for future in futures:
            layer_side.acks += future.result(timeout=120)
    assert not errors, "\n".join(errors)
    php_side.attempted = scenario.php_writers * scenario.writes_each
    layer_side.attempted = scenario.layer_writers * scenario.writes_each
    php_side.acknowledged = len(php_side.acks)
    layer_side.acknowledged = len(layer_side.acks)
    return php_side, layer_side


# --------------------------------------------------------------------------------------------
# Counting what was lost
# --------------------------------------------------------------------------------------------


def lost_writes(root: Path, acks: list[dict[str, Any]]) -> int:
    """Acknowledged writes whose effect is not in the files: a message or new customer missing
    or changed, or a customer whose credits are not the last value its writer set."""
    messages = json.loads((root / "data/messages.json").read_text())["messages"]
    customers = json.loads((root / "data/customers.json").read_text())["customers"]
    lost = 0
    last_credits: dict[str, int] = {}
    for ack in acks:
        if ack["kind"] == "message":
            found = messages.get(ack["id"]) if isinstance(messages, dict) else None
            lost += found is None or found.get("content") != ack["content"]
        elif ack["kind"] == "customer":
            found = customers.get(ack["id"])
            lost += found is None or found.get("billing", {}).get("credits") != ack["credits"]
        else:
            last_credits[ack["id"]] = ack["credits"]
    for key, credits in last_credits.items():
        found = customers.get(key) or {}
        lost += found.get("billing", {}).get("credits") != credits
    return lost


def repair(root: Path, how: str) -> None:
    """What makes the layer look again: its next write to each file, or the reconcile command."""
    if how == "touch":
        with DataLayer(root) as layer:
            layer.save_message({"conversation_id": "conv_after", "content": "after the race"})
            layer.save_customer(new_customer("cust_after", 1))
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    env["PROVISION_DATA_DIR"] = str(root)
    env["PROVISION_STATE_DIR"] = str(root.parent / "provision-state")
    result = subprocess.run(
        [PROVISION, "data", "reconcile", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def run_scenario(scenario: Scenario, workdir: Path) -> Figures:
    root = workdir / "aeims"
    shutil.copytree(FIXTURE_AEIMS, root)
    php, layer = run_writers(root, scenario)
    php.lost_at_end = lost_writes(root, php.acks)
    layer.lost_at_end = lost_writes(root, layer.acks)
    repair(root, scenario.repair)
    php.lost = lost_writes(root, php.acks)
    layer.lost = lost_writes(root, layer.acks)
    return Figures(scenario, php, layer, health_report(root)["reapplied_writes"])


def table(figures: list[Figures]) -> str:
    head = (
        f"{'scenario':<60}{'side':<7}{'attempted':>10}{'acked':>7}"
        f"{'lost at end':>13}{'lost after repair':>19}"
    )
    lines = [head, "-" * len(head)]
    for f in figures:
        for side_name, side in (("PHP", f.php), ("layer", f.layer)):
            lines.append(
                f"{f.scenario.name:<60}{side_name:<7}{side.attempted:>10}{side.acknowledged:>7}"
                f"{side.lost_at_end:>13}{side.lost:>19}"
            )
        lines.append(f"{'':<60}records the layer wrote again: {f.reapplied}")
    return "\n".join(lines)


def main() -> int:
    import tempfile

    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, scenario in enumerate(SCENARIOS):
            figures.append(run_scenario(scenario, Path(tmp) / str(index)))
    print(table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
