"""A site's intended operators, in real processes on the real local stack: `site create` keeps
the operators it linked in the site's record, `add-operators` and `remove-operators` change
that set (and `runs rollback` puts it back), and `site status` holds the links to it: operators
removed on purpose are no drift, an operator unlinked or linked behind the tool's back is, with
a diff. A site whose record keeps no set (made before sets were kept) is still held to the
pool's active operators, until its first add-operators or remove-operators starts one.

Linking an operator found only in the agents file keeps it there: the rollback leaves no copy
of it in data/operators.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from provisioner.config import Settings
from provisioner.site.intended_operators import FIELD
from provisioner.site.operator_links import LinkAction, OperatorLinksStep
from provisioner.site.validate import site_spec
from tests.datalayer_support import FIXTURE_AEIMS, copy_root
from tests.lifecycle_e2e import created, env, json_of, layer_of
from tests.site_e2e_support import provision
from tests.site_support import run_context
from tests.test_site_status import drifted, steps_of

__all__ = ["created", "env"]  # fixtures

ALL_FOUR = ["op_agents_only", "op_jade_001", "op_test_001", "op_zero"]
WITHOUT_JADE = ["op_agents_only", "op_test_001", "op_zero"]


def intended(env: dict[str, str], domain: str) -> Any:
    """The site's intended operators, as the data layer reads its record."""
    with layer_of(env) as layer:
        return (layer.get_site(domain) or {}).get(FIELD)


def linked(env: dict[str, str], domain: str) -> list[str]:
    """The operators actively linked to the site."""
    with layer_of(env) as layer:
        return sorted(
            str(op["id"])
            for op in layer.list("operators")
            if ((op.get("domains") or {}).get(domain) or {}).get("active") is True
        )


def operators(env: dict[str, str], verb: str, domain: str, *refs: str) -> dict[str, Any]:
    """`provision site add-operators|remove-operators --operator ...`, which must succeed."""
    args = [arg for ref in refs for arg in ("--operator", ref)]
    return json_of(env, "site", f"{verb}-operators", "--site", domain, *args, expect=0)


def status_of_operators(env: dict[str, str], domain: str) -> dict[str, Any]:
    payload = json_of(env, "site", "status", "--site", domain, expect=0)
    return steps_of(payload)["operators"]


def test_create_keeps_the_operators_it_linked(env: dict[str, str], created: str) -> None:
    assert intended(env, created) == ALL_FOUR
    assert linked(env, created) == ALL_FOUR


def test_operators_removed_on_purpose_are_not_drift(env: dict[str, str], created: str) -> None:
    removed = operators(env, "remove", created, "jade")

    assert removed["steps"][0]["msg"] == "removed operators: jade (op_jade_001)"
    assert intended(env, created) == WITHOUT_JADE
    assert linked(env, created) == WITHOUT_JADE
    step = status_of_operators(env, created)
    assert step["status"] == "ok" and step["present"] is True, step
    human = provision(env, "site", "status", "--site", created)
    assert human.returncode == 0 and ": converged" in human.stdout, human.stdout


def test_links_changed_behind_the_tools_back_are_drift_with_a_diff(
    env: dict[str, str], created: str
) -> None:
    operators(env, "remove", created, "jade")
    with layer_of(env) as layer:
        layer.remove_operator_site("op_test_001", created)  # an intended operator unlinked
        layer.set_operator_site("op_jade_001", created)  # a link nobody intended

    steps = drifted(env, created)

    assert set(steps) == {"operators"}, steps
    step = steps["operators"]
    assert "-op_jade_001\n" in step["diff"] and "+op_test_001\n" in step["diff"], step["diff"]
    assert " op_zero\n" in step["diff"]
    assert "1 intended operator(s) unlinked: testop1 (op_test_001)" in step["summary"]
    assert "1 link(s) nobody intended: jade (op_jade_001)" in step["summary"]
    assert step["present"] is True  # the other intended operators are still linked
    human = provision(env, "site", "status", "--site", created)
    assert human.returncode == 1 and "✗ Integration: drift:" in human.stdout, human.stdout


def test_rolling_back_add_and_remove_operators_restores_the_set(
    env: dict[str, str], created: str
) -> None:
    removed = operators(env, "remove", created, "jade")
    added = operators(env, "add", created, "op_jade_001")
    assert added["steps"][0]["msg"] == "added operators: jade (op_jade_001)"
    assert intended(env, created) == ALL_FOUR and linked(env, created) == ALL_FOUR

    json_of(env, "runs", "rollback", added["run_id"], expect=0)
    assert intended(env, created) == WITHOUT_JADE
    assert linked(env, created) == WITHOUT_JADE
    assert status_of_operators(env, created)["status"] == "ok"

    json_of(env, "runs", "rollback", removed["run_id"], expect=0)
    assert intended(env, created) == ALL_FOUR and linked(env, created) == ALL_FOUR
    assert status_of_operators(env, created)["status"] == "ok"


def test_a_site_without_a_kept_set_is_held_to_the_pool_until_its_operators_change(
    env: dict[str, str], created: str
) -> None:
    with layer_of(env) as layer:  # as a site made before sets were kept
        site = layer.get_site(created)
        del site[FIELD]
        layer.save("sites", site, site["site_id"])
        layer.remove_operator_site("op_test_001", created)

    steps = drifted(env, created)
    assert set(steps) == {"operators"}, steps
    assert "+op_test_001\n" in steps["operators"]["diff"]
    assert "1 newly linked" in steps["operators"]["summary"]

    operators(env, "remove", created, "op_jade_001")  # starts the set from the links

    assert intended(env, created) == ["op_agents_only", "op_zero"]
    assert status_of_operators(env, created)["status"] == "ok"


def test_rolling_back_a_link_leaves_no_copy_of_an_agents_only_operator(tmp_path: Path) -> None:
    root = copy_root(FIXTURE_AEIMS, tmp_path / "aeims")
    data_file = root / "data" / "operators.json"
    settings = Settings(state_dir=tmp_path / "state", data_dir=root)
    spec = site_spec(
        {"domain": "beta.example.test", "name": "Beta Operators", "type": "operator",
         "template": "operator", "operators": "agnes"}
    )  # fmt: skip
    step = OperatorLinksStep(spec, settings, LinkAction.ADD)
    with run_context(settings) as ctx:
        step.rollback(ctx, step.apply(ctx))

    ids = [op.get("id") for op in json.loads(data_file.read_text())["operators"].values()]
    assert "op_agents_only" not in ids
