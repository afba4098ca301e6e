"""A simulated run written down: summary.json, report.md and plots (matplotlib).

matplotlib comes with the ``sim`` extra (``pip install 'hexamesh[sim]'``; the
dev setup has it); it is imported only here, and only when a report is asked
for, so an agent never loads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hexamesh.simulate.swarm import SwarmSim
from hexamesh.simulate.util import percentile

__all__ = ["ReportError", "write_report"]

WINDOW = 5  # s per latency point on the timeline


class ReportError(RuntimeError):
    pass


def write_report(sim: SwarmSim, summary: dict[str, Any], out: Path) -> list[Path]:
    """Write the report of a finished run into ``out``; returns the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ReportError(
            "plots need matplotlib: pip install 'hexamesh[sim]' (or run without --report)"
        ) from e
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "summary.json", out / "timeline.png", out / "views.png", out / "report.md"]
    written[0].write_text(json.dumps(summary, indent=2) + "\n")

    seconds = sim.seconds
    xs = list(range(len(seconds)))
    faults = [(t - sim.start, what) for t, what in sim.faults]
    fig, (ax_req, ax_lat, ax_nodes) = plt.subplots(3, 1, sharex=True, figsize=(10, 9))
    ax_req.plot(xs, [s.ok for s in seconds], label="completed", color="tab:green")
    ax_req.plot(xs, [s.failed for s in seconds], label="failed", color="tab:red")
    ax_req.plot(xs, [s.failovers for s in seconds], label="failovers", color="tab:orange")
    ax_req.plot(xs, [s.continuations for s in seconds], label="continuations", color="tab:purple")
    ax_req.set_ylabel("requests / s")
    ax_req.legend(loc="upper right")
    windows = range(0, len(seconds), WINDOW)
    p50, p99 = [], []
    for w in windows:
        lat = [x for s in seconds[w : w + WINDOW] for x in s.latencies]
        p50.append(percentile(lat, 0.5))
        p99.append(percentile(lat, 0.99))
    wx = [w + WINDOW / 2 for w in windows]
    ax_lat.plot(wx, [float("nan") if v is None else v for v in p50], label="p50", marker=".")
    ax_lat.plot(wx, [float("nan") if v is None else v for v in p99], label="p99", marker=".")
    ax_lat.set_ylabel(f"latency s ({WINDOW} s windows)")
    ax_lat.legend(loc="upper right")
    ax_nodes.plot(xs, [s.live for s in seconds], label="live nodes", color="tab:blue")
    ax_nodes.plot(xs, [s.servers for s in seconds], label="ready servers", color="tab:cyan")
    ax_nodes.set_ylabel("nodes")
    ax_nodes.set_xlabel("s since the first request")
    ax_load = ax_nodes.twinx()
    ax_load.plot(xs, [s.load for s in seconds], label="mean server load", color="tab:gray")
    ax_load.set_ylim(0, 1.05)
    ax_load.set_ylabel("load")
    ax_nodes.legend(loc="lower left")
    ax_load.legend(loc="lower right")
    for ax in (ax_req, ax_lat, ax_nodes):
        _mark(ax, faults)
    fig.suptitle(_title(summary))
    fig.tight_layout()
    fig.savefig(written[1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 4))
    vx = [t - sim.start for t, _, _ in sim.views]
    ax.plot(vx, [v[1] for v in sim.views], label="dead peers held alive (stale)", marker=".")
    ax.plot(vx, [v[2] for v in sim.views], label="live peers held dead (wrong)", marker=".")
    ax.set_xlabel("s since the first request")
    ax.set_ylabel("(node, peer) pairs in views")
    ax.legend(loc="upper right")
    _mark(ax, faults)
    fig.suptitle("What the nodes' neighbourhood views got wrong")
    fig.tight_layout()
    fig.savefig(written[2], dpi=100)
    plt.close(fig)

    written[3].write_text(_markdown(sim, summary))
    return written


def _mark(ax: Any, faults: list[tuple[float, str]]) -> None:
    for x, _ in faults[:20]:  # churn makes hundreds: the first few show where it starts
        ax.axvline(x, color="black", linestyle=":", linewidth=0.8)


def _title(summary: dict[str, Any]) -> str:
    return (
        f"{summary['nodes']} nodes, {summary['servers_count']} servers, "
        f"{summary['rate']} req/s, seed {summary['seed']}"
    )


def _markdown(sim: SwarmSim, summary: dict[str, Any]) -> str:
    s = sim.s
    lines = [
        "# hexamesh simulate",
        "",
        _title(summary) + f"; {s.minutes} simulated minutes of requests, "
        f"{s.tokens} tokens each; datagram loss {s.loss}; engine profile "
        f"`{sim.profile.name}`.",
        "",
        "## Faults",
        "",
    ]
    if not sim.faults:
        lines.append("None.")
    for t, what in sim.faults[:50]:
        lines.append(f"- t = {t - sim.start:.1f} s: {what}")
    if len(sim.faults) > 50:
        lines.append(f"- ... and {len(sim.faults) - 50} more")
    lines += ["", "## Summary", "", "| figure | value |", "| --- | --- |"]
    for key, value in summary.items():
        lines.append(f"| `{key}` | {value} |")
    lines += [
        "",
        "## Timeline",
        "",
        "![requests, latency and nodes over time](timeline.png)",
        "",
        "Dotted lines: faults. A *failover* moves a request whose server failed "
        "before its first token; a *continuation* moves one that had already "
        "streamed tokens (from the prompt plus those tokens).",
        "",
        "## Views",
        "",
        "![stale and wrong entries in the nodes' views](views.png)",
        "",
        f"Sampled every few seconds over every live node's two-ring view. "
        f"`view_clean_s`: {summary.get('view_clean_s')} s from the first fault "
        "until no view held a dead peer alive or a live one dead.",
        "",
    ]
    return "\n".join(lines)
