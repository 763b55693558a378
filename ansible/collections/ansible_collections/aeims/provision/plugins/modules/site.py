#!/usr/bin/python
"""Ansible module: an AEIMS site made, put live, taken down or removed by `provision site`."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: site
short_description: Create, enable, disable or remove an AEIMS site with the provision tool
description:
  - Drives C(provision site create|enable|disable|destroy --json) on the managed host, so every
    change is a planned, locked, journaled and reversible run of the tool's engine.
  - In check mode the tool only plans (C(--plan)), nothing is changed, and C(changed) says
    whether a real run would change something.
  - With C(--diff) each step that changes (or would change) shows its before and after.
  - C(changed) is true only when a step changed something; a failed run fails the task with
    the tool's own message (the run has been rolled back by then).
  - A fleet runs the I(global) steps once per site (C(run_once)) and the I(host) steps on every
    web host; see C(ansible/site.yml).
version_added: "0.1.0"
author:
  - AEIMS platform team (@aeims)
options:
  domain:
    description:
      - The site's domain (an IDN is turned into punycode by the tool), or for an existing
        site its site_id.
    type: str
    required: true
  name:
    description:
      - The site's display name. Required unless I(state=absent).
    type: str
  type:
    description: A customer site or an operator site.
    type: str
    choices: [customer, operator]
    default: customer
  template:
    description: A folder name under the tool's C(templates/site/).
    type: str
    default: default
  state:
    description:
      - C(present) the site exists (created, answering "coming soon" until enabled; an enabled
        or disabled site keeps its state).
      - C(enabled) the site exists and is live; C(disabled) it exists and answers 503 with a
        maintenance page (its certificate kept).
      - C(absent) the site is destroyed everywhere (its folder archived by the tool).
    type: str
    choices: [present, enabled, disabled, absent]
    default: present
  operators:
    description:
      - Operator ids or usernames to link when the site is created (default the pool's active
        operators).
    type: list
    elements: str
  scope:
    description:
      - C(global) runs the steps done once per site (record, DNS, operators, billing, and the
        certificate with DNS-01), C(host) the steps done on every web host (files, nginx, the
        certificate with HTTP-01, health), C(all) both.
    type: str
    choices: [all, global, host]
    default: all
  keep_certificate:
    description: With I(state=absent), remove the certificate's files without revoking it.
    type: bool
    default: false
  lock_timeout:
    description: Seconds to wait for another run on the same site (the tool's default when unset).
    type: float
  provision_path:
    description: The C(provision) executable (default the one on C(PATH)).
    type: path
  env:
    description:
      - Environment for the tool, e.g. C(PROVISION_*) settings and C(PROVISION_BILLING_TOKEN).
      - The values of variables named like secrets (C(*TOKEN*), C(*PASSWORD*), C(*SECRET*),
        C(*DSN*), C(*KEY*)) are masked in every result and log; the rest (paths, ports) is
        shown.
    type: dict
    default: {}
notes:
  - Supports check mode and diff mode.
  - The tool must be installed on the managed host and configured (C(PROVISION_*) settings in
    its environment, from I(env), the task's C(environment), or C(/etc/provision/provision.env)
    loaded by the caller).
"""

EXAMPLES = r"""
- name: Onboard a site (it answers "coming soon")
  aeims.provision.site:
    domain: newflirts.com
    name: New Flirts
    state: present

- name: Put it live, the global steps once for the fleet
  aeims.provision.site:
    domain: newflirts.com
    name: New Flirts
    state: enabled
    scope: global
  run_once: true

- name: Then on every web host
  aeims.provision.site:
    domain: newflirts.com
    name: New Flirts
    state: enabled
    scope: host

- name: Remove it everywhere
  aeims.provision.site:
    domain: newflirts.com
    state: absent
    provision_path: /opt/provision/bin/provision
    env:
      PROVISION_BILLING_TOKEN: "{{ vault_billing_token }}"
"""

RETURN = r"""
msg:
  description: The tool's last message (on failure, what failed and why).
  returned: always
  type: str
rc:
  description: The exit code of the last command run (0 done, 1 a step failed and was rolled
    back, 2 bad input or settings, 3 a rollback failed).
  returned: always
  type: int
site_exists:
  description: Whether the site was in the registry before this task.
  returned: always
  type: bool
steps:
  description: Every step of every run, in order.
  returned: always
  type: list
  elements: dict
  sample:
    - {pipeline: site-create, name: record, scope: global, status: changed, changed: true,
       msg: "site_id newflirts_com created"}
runs:
  description: Each command's JSON answer (C(run_id), C(pipeline), C(status), C(steps), ...).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.aeims.provision.plugins.module_utils.provision import (  # noqa: E402
    Provision,
    ProvisionError,
)

# state -> the lifecycle command run after `site create` has made sure the site exists.
FOLLOW_UP = {"enabled": "enable", "disabled": "disable"}


def site_exists(tool, domain):
    """Whether the registry holds the site (by domain or site_id)."""
    listing = tool.call("site", "list")
    sites = listing.get("sites", listing) if isinstance(listing, dict) else listing
    if not isinstance(sites, list):
        return False
    wanted = {domain.lower(), domain.lower().replace(".", "_")}
    for site in sites:
        if isinstance(site, dict) and (
            str(site.get("domain", "")).lower() in wanted
            or str(site.get("site_id", "")).lower() in wanted
        ):
            return True
    return False


def common_args(params, plan):
    args = ["--scope", params["scope"]]
    if params["lock_timeout"] is not None:
        args += ["--lock-timeout", str(params["lock_timeout"])]
    if plan:
        args.append("--plan")
    return args


def create_args(params, plan):
    args = ["site", "create", "--domain", params["domain"], "--name", params["name"]]
    args += ["--type", params["type"], "--template", params["template"]]
    if params["operators"]:
        args += ["--operators", ",".join(params["operators"])]
    return args + common_args(params, plan)


def commands(params, exists, plan):
    """The commands that bring the site to `state`: argv lists (without `--json`)."""
    state = params["state"]
    if state == "absent":
        if not exists:
            return []
        args = ["site", "destroy", "--site", params["domain"], "--yes"]
        if params["keep_certificate"]:
            args.append("--keep-certificate")
        return [args + common_args(params, plan)]
    found = [create_args(params, plan)]
    if state in FOLLOW_UP:
        follow = ["site", FOLLOW_UP[state], "--site", params["domain"]]
        found.append(follow + common_args(params, plan))
    return found


def step_diffs(payload):
    """Ansible diff entries for the steps that changed (or would change)."""
    entries = []
    for step in payload.get("steps", []):
        diff = step.get("diff")
        if not diff or step.get("status") not in ("changed", "planned"):
            continue
        header = f"{payload.get('pipeline')}: {step.get('name')} ({step.get('msg')})"
        entry = {"before_header": header, "after_header": header}
        entry["before"] = diff.get("before")
        entry["after"] = diff.get("after")
        if diff.get("prepared"):
            entry = {"prepared": f"--- {header}\n{diff['prepared']}"}
        entries.append(entry)
    return entries


def would_change(payload):
    return any(step.get("status") == "planned" for step in payload.get("steps", []))


def main():
    module = AnsibleModule(
        argument_spec={
            "domain": {"type": "str", "required": True},
            "name": {"type": "str"},
            "type": {"type": "str", "choices": ["customer", "operator"], "default": "customer"},
            "template": {"type": "str", "default": "default"},
            "state": {
                "type": "str",
                "choices": ["present", "enabled", "disabled", "absent"],
                "default": "present",
            },
            "operators": {"type": "list", "elements": "str"},
            "scope": {"type": "str", "choices": ["all", "global", "host"], "default": "all"},
            "keep_certificate": {"type": "bool", "default": False},
            "lock_timeout": {"type": "float"},
            "provision_path": {"type": "path"},
            "env": {"type": "dict", "default": {}},
        },
        required_if=[
            ("state", "present", ("name",)),
            ("state", "enabled", ("name",)),
            ("state", "disabled", ("name",)),
        ],
        supports_check_mode=True,
    )
    params = module.params
    plan = module.check_mode
    tool = Provision(module)
    result = {"changed": False, "rc": 0, "steps": [], "runs": [], "msg": ""}
    try:
        exists = site_exists(tool, params["domain"])
        result["site_exists"] = exists
        diffs = []
        for args in commands(params, exists, plan):
            if plan and not exists and args[1] in FOLLOW_UP.values():
                # The site is not made yet, so its lifecycle command cannot be planned.
                result["msg"] = f"would create {params['domain']}, then {args[1]} it"
                continue
            payload = tool.call(*args)
            result["runs"].append(payload)
            result["rc"] = payload.get("rc", 0)
            result["msg"] = result["msg"] or payload.get("msg", "")
            if args[1] not in ("create",):
                result["msg"] = payload.get("msg", result["msg"])
            for step in payload.get("steps", []):
                result["steps"].append({"pipeline": payload.get("pipeline"), **step})
            if plan:
                result["changed"] = result["changed"] or would_change(payload)
            else:
                result["changed"] = result["changed"] or bool(payload.get("changed"))
            diffs.extend(step_diffs(payload))
        if plan and not exists and params["state"] != "absent":
            result["changed"] = True
        if not result["runs"] and params["state"] == "absent":
            result["msg"] = f"no site {params['domain']} in the registry: nothing to remove"
        if module._diff:
            result["diff"] = diffs
    except ProvisionError as exc:
        failed = exc.payload
        if failed.get("steps"):
            result["runs"].append(failed)
            for step in failed["steps"]:
                result["steps"].append({"pipeline": failed.get("pipeline"), **step})
        result.update(rc=failed.get("rc", 1), changed=bool(failed.get("changed")))
        result.pop("msg", None)
        module.fail_json(msg=failed.get("msg") or "provision failed", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
