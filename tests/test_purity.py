"""Protocol cores are sans-IO: no trio, sockets, clocks or global randomness.

Any module under hexamesh/ that defines a class with both ``handle_timer`` and
``next_timer`` is taken to be a core and checked, so new cores are covered
without editing this list. Pure helper modules are named explicitly.
"""

import ast
from pathlib import Path

import pytest

import hexamesh

PACKAGE = Path(hexamesh.__file__).parent
PURE_MODULES = {
    "hexgrid.py",
    "limits.py",
    "net/base.py",
    "net/sim.py",
    "simulate/engine.py",
    "comb/broadcast.py",
    "comb/cells.py",
    "comb/suspicion.py",
    "dht/lookup.py",
    "dht/routing.py",
    "dht/records.py",
    "placement/score.py",
    "serve/router.py",
    "serve/shun.py",
    "serve/sse.py",
    "serve/deathwatch.py",
    "serve/candidates.py",
    "serve/attempts.py",
}
FORBIDDEN_IMPORTS = {"trio", "socket", "time", "asyncio", "threading", "selectors"}
ALLOWED_RANDOM = {"Random"}  # random.Random(seed) is injected; module functions are not


def is_core(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            names = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
            if {"handle_timer", "next_timer"} <= names:
                return True
    return False


def checked_modules() -> list[Path]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in PURE_MODULES or is_core(ast.parse(path.read_text())):
            out.append(path)
    return out


def violations(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [
                f"import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_IMPORTS
            ]
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in FORBIDDEN_IMPORTS:
                found.append(f"from {node.module} import ...")
            if root == "random":
                found += [
                    f"from random import {a.name}"
                    for a in node.names
                    if a.name not in ALLOWED_RANDOM
                ]
            if node.module == "os":
                found += [f"from os import {a.name}" for a in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "random" and node.attr not in ALLOWED_RANDOM:
                found.append(f"random.{node.attr}")
            if node.value.id == "os" and node.attr in {"urandom", "getrandom"}:
                found.append(f"os.{node.attr}")
    return found


def test_the_known_cores_are_found() -> None:
    names = {p.relative_to(PACKAGE).as_posix() for p in checked_modules()}
    assert {"hexgrid.py", "net/sim.py", "net/rtt.py"} <= names


@pytest.mark.parametrize("path", checked_modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_core_module_is_sans_io(path: Path) -> None:
    assert violations(path) == []


def test_the_checker_catches_violations(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nimport random\nfrom trio import sleep\nx = random.random()\n")
    assert violations(bad) == ["import time", "from trio import ...", "random.random"]
