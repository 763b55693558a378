#!/usr/bin/python
"""Ansible module: AEIMS's storage migration moved or checked by `provision migrate`."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: migration
short_description: Advance, roll back or validate the AEIMS storage migration (provision tool)
description:
  - Drives C(provision migrate status|advance|rollback|validate --json) on the managed host.
    The migration is one per installation, so run it on one host (C(run_once)).
  - C(advance) and C(rollback) move one phase (or to I(phase)) as a journaled, reversible run
    of the tool. Nothing is run when the migration already is at I(phase).
  - An advance that would pass the validation gate (from C(dual_write_read_json) to
    C(validated) or beyond) runs C(provision migrate validate) first and fails, changing
    nothing, when it finds a mismatch.
  - In check mode the move is only planned (C(--plan)); C(validate) and C(status) only read.
version_added: "0.1.0"
author:
  - AEIMS platform team (@aeims)
options:
  action:
    description:
      - C(status) reports where the migration stands; C(validate) compares JSON and
        PostgreSQL record by record and fails on any mismatch; C(advance) and C(rollback)
        move it.
    type: str
    choices: [status, validate, advance, rollback]
    default: status
  phase:
    description:
      - The phase to reach (C(--to)); default the next one (advance) or the previous one
        (rollback).
    type: str
    choices: [json_only, schema, backfill, dual_write_read_json, validated, dual_write_read_pg,
              pg_only, archived]
  validate_gate:
    description: Validate before an advance that passes the validation gate.
    type: bool
    default: true
  force:
    description:
      - With I(action=rollback) to C(json_only), drop the schema's tables even when they hold data.
    type: bool
    default: false
  lock_timeout:
    description: Seconds to wait for another migration run (the tool's default when unset).
    type: float
  provision_path:
    description: The C(provision) executable (default the one on C(PATH)).
    type: path
  env:
    description:
      - Environment for the tool (C(PROVISION_PG_DSN), C(PGPASSWORD), C(PROVISION_DATA_DIR),
        ...). The values of variables named like secrets (C(*TOKEN*), C(*PASSWORD*),
        C(*SECRET*), C(*DSN*), C(*KEY*)) are masked in every result and log.
    type: dict
    default: {}
notes:
  - Supports check mode and diff mode.
"""

EXAMPLES = r"""
- name: Where the migration stands
  aeims.provision.migration:
    action: status
  register: migration

- name: One phase forward, refused at the gate on any mismatch
  aeims.provision.migration:
    action: advance
  run_once: true

- name: Back to reading JSON
  aeims.provision.migration:
    action: rollback
    phase: dual_write_read_json
  run_once: true
"""

RETURN = r"""
msg:
  description: The tool's message (on failure, what failed and why).
  returned: always
  type: str
rc:
  description: The exit code of the last command run.
  returned: always
  type: int
phase_before:
  description: The migration's phase (stage) before the task.
  returned: always
  type: str
phase_after:
  description: The phase after the task (the one planned in check mode).
  returned: always
  type: str
status:
  description: C(provision migrate status --json) as read before the task.
  returned: always
  type: dict
validation:
  description: C(provision migrate validate --json), when validation ran.
  returned: when validated
  type: dict
run:
  description: The move's JSON answer (C(run_id), C(status), C(steps), ...).
  returned: when a move ran or was planned
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.aeims.provision.plugins.module_utils.provision import (  # noqa: E402
    Provision,
    ProvisionError,
)

STAGES = [
    "json_only",
    "schema",
    "backfill",
    "dual_write_read_json",
    "validated",
    "dual_write_read_pg",
    "pg_only",
    "archived",
]
GATE = STAGES.index("validated")


def target_of(action, stage, phase):
    """The stage a move reaches (None: nowhere to go)."""
    if phase:
        return phase
    index = STAGES.index(stage) + (1 if action == "advance" else -1)
    return STAGES[index] if 0 <= index < len(STAGES) else None


def main():
    module = AnsibleModule(
        argument_spec={
            "action": {
                "type": "str",
                "choices": ["status", "validate", "advance", "rollback"],
                "default": "status",
            },
            "phase": {"type": "str", "choices": STAGES},
            "validate_gate": {"type": "bool", "default": True},
            "force": {"type": "bool", "default": False},
            "lock_timeout": {"type": "float"},
            "provision_path": {"type": "path"},
            "env": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    p = module.params
    tool = Provision(module)
    result = {"changed": False, "rc": 0}
    try:
        status = tool.call("migrate", "status")
        stage = status.get("stage") or "json_only"
        result.update(status=status, phase_before=stage, phase_after=stage)
        action = p["action"]
        if action == "status":
            module.exit_json(msg=f"the migration is at {stage}", **result)
        if action == "validate":
            result["validation"] = tool.call("migrate", "validate", expect=(0, 1))
            result["rc"] = result["validation"]["rc"]
            if result["rc"] != 0:
                module.fail_json(msg=result["validation"].get("msg", "validation failed"), **result)
            module.exit_json(msg=result["validation"].get("msg", "validated"), **result)

        target = target_of(action, stage, p["phase"])
        if target is None or target == stage:
            said = f"the migration is at {stage} already: nothing to {action}"
            module.exit_json(msg=said, **result)
        if (STAGES.index(target) > STAGES.index(stage)) != (action == "advance"):
            module.fail_json(msg=f"cannot {action} from {stage} to {target}", **result)
        crosses_gate = action == "advance" and STAGES.index(stage) < GATE <= STAGES.index(target)
        if crosses_gate and p["validate_gate"]:
            result["validation"] = tool.call("migrate", "validate", expect=(0, 1))
            if result["validation"]["rc"] != 0:
                result["rc"] = result["validation"]["rc"]
                module.fail_json(
                    msg="refusing to pass the validation gate: "
                    + str(result["validation"].get("msg", "validation failed")),
                    **result,
                )
        args = ["migrate", action, "--to", target]
        if action == "rollback" and p["force"]:
            args.append("--force")
        if p["lock_timeout"] is not None:
            args += ["--lock-timeout", str(p["lock_timeout"])]
        if module.check_mode:
            args.append("--plan")
        run = tool.call(*args)
        steps = run.get("steps", [])
        if module.check_mode:
            result["changed"] = any(s.get("status") == "planned" for s in steps)
        else:
            result["changed"] = bool(run.get("changed"))
        result.update(run=run, rc=run["rc"], phase_after=target)
        if module._diff:
            result["diff"] = {
                "before_header": "migration phase",
                "after_header": "migration phase",
                "before": stage + "\n",
                "after": target + "\n",
            }
        module.exit_json(msg=run.get("msg", f"{action} to {target}"), **result)
    except ProvisionError as exc:
        result["rc"] = exc.payload.get("rc", 1)
        if exc.payload.get("steps"):
            result["run"] = exc.payload
        module.fail_json(msg=exc.payload.get("msg") or "provision failed", **result)


if __name__ == "__main__":
    main()
