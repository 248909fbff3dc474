"""One home per rule: the lists of core/rules.py are not written again anywhere in the package."""

import ast
import pathlib

import pytest

import recon_assets
from recon_assets.core import rules

pytestmark = pytest.mark.unit

PACKAGE = pathlib.Path(recon_assets.__file__).parent
# The simulator speaks the exchange's vocabulary, not the database's; it is exempt.
EXEMPT = {PACKAGE / "core" / "rules.py"} | set((PACKAGE / "simulator").rglob("*.py"))
RULE_LISTS = {name: frozenset(value) for name, value in vars(rules).items()
              if name.isupper() and isinstance(value, (tuple, frozenset)) and len(value) >= 2}


def _string_collections(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2 and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            yield node, frozenset(e.value for e in node.elts)


def test_no_rule_list_is_written_twice():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in EXEMPT:
            continue
        for node, values in _string_collections(ast.parse(path.read_text())):
            for name, rule in RULE_LISTS.items():
                if values == rule:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} repeats rules.{name}")
    assert not found, "import the list from recon_assets.core.rules instead:\n" + "\n".join(found)


def test_the_duplicate_check_sees_a_copy():
    tree = ast.parse('OPEN = ("new", "open", "partially_filled")\nX = ["a", "b"]')
    assert [values for _, values in _string_collections(tree)][0] == RULE_LISTS["OPEN_ORDER_STATUSES"]


def test_the_lists_are_consistent():
    assert set(rules.OPEN_ORDER_STATUSES) < set(rules.ORDER_STATUSES)
    assert set(rules.ACTIONABLE_KINDS) <= set(rules.MISMATCH_KINDS)
    assert set(rules.LIFECYCLE_HANDLERS) < set(rules.CORRECTION_HANDLERS)
    assert rules.OPEN_SLICE_STATUS in rules.SLICE_STATUSES
    assert rules.CYCLE_SUCCEEDED in rules.CYCLE_STATUSES and rules.CYCLE_FAILED in rules.CYCLE_STATUSES
    for name, value in RULE_LISTS.items():
        if isinstance(value, tuple):
            assert len(set(value)) == len(value), f"rules.{name} lists a value twice"
