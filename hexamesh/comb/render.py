"""Drawing the comb in a terminal: a hex map and a table (``hexamesh peers``).

Cells use doubled coordinates (column ``2q + r``, row ``r``), so a flat text
grid shows the hexagonal layout: every row is offset by half a cell from the
one above. Each cell is two characters wide: ``⬢`` a live node coloured by
load (green below 0.5, yellow below 0.8, red above), ``◉`` the node that
answered, ``✕`` a node it holds dead, ``·`` a hole (a free cell inside the
comb's radius).
"""

from __future__ import annotations

import time

from rich.table import Table
from rich.text import Text

from hexamesh.comb.core import ViewReply
from hexamesh.comb.waggle import Dance
from hexamesh.hexgrid import ORIGIN, Hex, distance, spiral
from hexamesh.identity import short_id

__all__ = ["hex_map", "peer_table", "view_json"]


def _load_style(load: float) -> str:
    return "green" if load < 0.5 else "yellow" if load < 0.8 else "red"


def hex_map(view: ViewReply) -> Text:
    """The cells a view knows, as a hex map; the answering node is ``◉``."""
    me = view.cells[0].node if view.placed and view.cells else None
    cells = {Hex(c.q, c.r): c.node for c in view.cells}
    loads = {d.node: d.load for d in view.dances}
    dead = set(view.dead)
    if not cells:
        return Text("(no cells known yet)", style="dim")
    radius = max(distance(c, ORIGIN) for c in cells)
    grid = {c: cells.get(c) for c in spiral(ORIGIN, radius)}
    cols = [2 * c.q + c.r for c in grid]
    left = min(cols)
    out = Text()
    for row in range(-radius, radius + 1):
        line = Text()
        at = left
        for cell in sorted((c for c in grid if c.r == row), key=lambda c: 2 * c.q + c.r):
            col = 2 * cell.q + cell.r
            line.append(" " * (col - at))
            at = col + 1
            node = grid[cell]
            if node is None:
                line.append("·", style="dim")
            elif node == me:
                line.append("◉", style="bold cyan")
            elif node in dead:
                line.append("✕", style="red")
            else:
                line.append("⬢", style=_load_style(loads.get(node, 0.0)))
        out.append(line)
        out.append("\n")
    out.append("◉ this node  ⬢ live (green/yellow/red = load)  ✕ dead  · hole", style="dim")
    return out


def peer_table(view: ViewReply) -> Table:
    """One row per node the view knows: cell, address, state, load, models."""
    dances: dict[bytes, Dance] = {d.node: d for d in view.dances}
    dead = set(view.dead)
    me = view.cells[0].node if view.placed and view.cells else None
    table = Table(box=None)
    columns = ("node", "cell", "address", "state", "load", "queue", "kv", "tok/s", "gpu", "models")
    for column in columns:
        table.add_column(column)
    for entry in sorted(view.cells, key=lambda c: distance(Hex(c.q, c.r), ORIGIN)):
        d = dances.get(entry.node)
        state = "dead" if entry.node in dead else (d.status if d else "alive")
        name = short_id(entry.node) + (" (this)" if entry.node == me else "")
        table.add_row(
            name,
            f"{entry.q},{entry.r}",
            f"{entry.host}:{entry.port}",
            state,
            f"{d.load:.2f}" if d else "-",
            str(d.queue) if d else "-",
            f"{d.kv:.2f}" if d else "-",
            f"{d.tok_s:.0f}" if d else "-",
            _gpu(d),
            ",".join(d.models) if d else "-",
        )
    return table


def _gpu(d: Dance | None) -> str:
    """GPU memory used/total, "-" where the node reports none (a CPU node)."""
    if d is None or not d.gpu_total:
        return "-"
    return f"{d.gpu_used / 2**30:.1f}/{d.gpu_total / 2**30:.1f} GiB"


def view_json(view: ViewReply) -> dict[str, object]:
    """The view as plain JSON-able data (``hexamesh peers --json``)."""
    dances = {d.node: d for d in view.dances}
    return {
        "at": time.time(),
        "node": view.cells[0].node.hex() if view.placed and view.cells else None,
        "cells": [
            {
                "node": c.node.hex(),
                "cell": f"{c.q},{c.r}",
                "address": f"{c.host}:{c.port}",
                "load": dances[c.node].load if c.node in dances else None,
                "models": list(dances[c.node].models) if c.node in dances else None,
                "gpu_used": dances[c.node].gpu_used if c.node in dances else None,  # bytes
                "gpu_total": dances[c.node].gpu_total if c.node in dances else None,  # 0: none
            }
            for c in view.cells
        ],
        "dead": [n.hex() for n in view.dead],
    }
