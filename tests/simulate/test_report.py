"""`hexamesh simulate`: the command, its JSON line and its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hexamesh.cli import app
from hexamesh.simulate.report import write_report
from hexamesh.simulate.swarm import Scenario, run_scenario

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


def test_report_has_the_summary_and_plots(tmp_path: Path) -> None:
    summary, sim = run_scenario(Scenario(nodes=37, minutes=0.3, kill=0.2, kill_at=5))
    files = write_report(sim, summary, tmp_path / "out")
    names = {f.name for f in files}
    assert names == {"summary.json", "timeline.png", "views.png", "report.md"}
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    for png in ("timeline.png", "views.png"):
        data = (tmp_path / "out" / png).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
    md = (tmp_path / "out" / "report.md").read_text()
    assert "killed 7 nodes at once" in md  # int(0.2 * 37)
    assert "](timeline.png)" in md and f"| `ok` | {summary['ok']} |" in md


@pytest.mark.parametrize("fault", [[], ["--kill", "0.2", "--kill-at", "5", "--freeze"]])
def test_simulate_command_ends_with_one_json_line(tmp_path: Path, fault: list[str]) -> None:
    result = runner.invoke(
        app,
        [
            "simulate",
            "--nodes",
            "37",
            "--minutes",
            "0.3",
            "--json",
            "--report",
            str(tmp_path),
            *fault,
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    doc = json.loads(lines[-1])
    assert doc["simulation"] == "swarm" and doc["nodes"] == 37 and doc["hung"] == 0
    assert doc["freeze"] is bool(fault)
    assert (tmp_path / "timeline.png").exists()
    if fault:
        assert "froze 7 nodes at once" in (tmp_path / "report.md").read_text()


def test_simulate_refuses_a_bad_scenario() -> None:
    result = runner.invoke(app, ["simulate", "--servers", "0"])
    assert result.exit_code == 2
    assert "servers" in result.output
