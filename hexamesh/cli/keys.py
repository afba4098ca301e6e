"""`hexamesh version` and `hexamesh swarm`: the key, the join token."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hexamesh import __version__
from hexamesh.cli.common import DataDir, _fail, _key_path, app, console, swarm_app
from hexamesh.net.base import parse_addr
from hexamesh.swarmkey import (
    JoinToken,
    SwarmKeyError,
    create_key_file,
    load_key_file,
)


@app.command()
def version() -> None:
    """Print the hexamesh version."""
    console.print(f"hexamesh {__version__}")


@swarm_app.command("init")
def swarm_init(
    data_dir: DataDir = None,
    out: Annotated[
        Path | None, typer.Option(help="Key file (default <data-dir>/swarm.key)")
    ] = None,
) -> None:
    """Create a new swarm key (mode 0600). Every member needs a copy."""
    path = _key_path(data_dir, out)
    try:
        create_key_file(path)
    except SwarmKeyError as e:
        raise _fail(str(e)) from None
    console.print(f"wrote swarm key [bold]{path}[/] (mode 0600)")


@swarm_app.command("invite")
def swarm_invite(
    addr: Annotated[str, typer.Argument(help="HOST:PORT of a member that newcomers can reach")],
    data_dir: DataDir = None,
    key: Annotated[
        Path | None, typer.Option(help="Key file (default <data-dir>/swarm.key)")
    ] = None,
) -> None:
    """Print a join token (seed address + swarm key): a secret, share it carefully."""
    try:
        ring = load_key_file(_key_path(data_dir, key))
        host, port = parse_addr(addr)
    except (SwarmKeyError, ValueError) as e:
        raise _fail(str(e)) from None
    console.print(JoinToken(host, port, ring.primary).encode(), soft_wrap=True)
