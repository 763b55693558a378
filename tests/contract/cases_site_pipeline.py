"""Example parameters for the site pipelines, so the harness can list their step classes
(the steps' own cases live beside this file, a module per step family)."""

from __future__ import annotations

from typing import Any

from tests.contract.harness import StepCase

EXAMPLE_PARAMS: dict[str, dict[str, Any]] = {
    "site-create": {
        "domain": "newflirts.aeims.test",
        "name": "New Flirts",
        "type": "customer",
        "template": "default",
        "operators": None,
    },
}

CASES: list[StepCase] = []
