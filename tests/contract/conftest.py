"""The harness asserts on the tests' behalf: let pytest show its comparisons in full."""

import pytest

pytest.register_assert_rewrite("tests.contract.harness", "tests.contract.cases")
