"""The docs that make claims about the code name what backs them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import hexamesh.limits as limits

ROOT = Path(__file__).resolve().parents[1]


def test_every_limit_is_listed_in_the_operator_guide() -> None:
    guide = (ROOT / "docs" / "operator.md").read_text()
    names = [n for n in vars(limits) if n.isupper() and not n.startswith("_")]
    assert names
    missing = [n for n in names if f"| `{n}` |" not in guide]
    assert missing == [], f"limits not in docs/operator.md: {missing}"


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    }
    out |= {
        node.targets[0].id
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id.startswith("Test")
    }
    return out


def test_every_line_of_the_security_doc_names_a_test_that_exists() -> None:
    doc = (ROOT / "docs" / "security.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| ") and "---" not in line]
    claims = [row for row in rows if not row.endswith("| shown by |")]  # not the headers
    assert len(claims) >= 20
    for row in claims:
        named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)", row)
        assert named, f"a claim without a test: {row}"
        for path, test in named:
            assert test in _tests_in(ROOT / path), f"{path}::{test} does not exist ({row})"
