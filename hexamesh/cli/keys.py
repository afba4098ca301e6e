"""`hexamesh version` and `hexamesh swarm`: the key, the join token."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hexamesh import __version__
from hexamesh.cli.common import DataDir, _fail, _key_path, app, console, err, swarm_app
from hexamesh.config import default_data_dir
from hexamesh.net.base import parse_addr
from hexamesh.operator import (
    OPERATOR_KEY_FILE_NAME,
    OperatorKeyError,
    create_operator_key,
    encode_public,
    load_operator_key,
    trusted_operators,
)
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
    """Create a new swarm key (mode 0600), and an operator key beside it if
    there is none. Every member needs a copy of the swarm key; the operator
    key stays with the operator (its public half travels in invites)."""
    path = _key_path(data_dir, out)
    try:
        create_key_file(path)
    except SwarmKeyError as e:
        raise _fail(str(e)) from None
    console.print(f"wrote swarm key [bold]{path}[/] (mode 0600)")
    _operator_key(path.parent / OPERATOR_KEY_FILE_NAME)


@swarm_app.command("operator-key")
def swarm_operator_key(data_dir: DataDir = None) -> None:
    """Print the public operator key of <data-dir>/operator.key, creating the
    key (mode 0600) if there is none. Agents trust it with --trust-operator,
    or through invites from an agent whose data dir holds it."""
    _operator_key((data_dir or default_data_dir()) / OPERATOR_KEY_FILE_NAME)


def _operator_key(path: Path) -> None:
    try:
        key = load_operator_key(path) if path.exists() else create_operator_key(path)
    except OperatorKeyError as e:
        raise _fail(str(e)) from None
    err.print(f"operator key [bold]{path}[/] (mode 0600); its public key:")
    console.print(encode_public(key.public_key), soft_wrap=True)


@swarm_app.command("invite")
def swarm_invite(
    addr: Annotated[str, typer.Argument(help="HOST:PORT of a member that newcomers can reach")],
    data_dir: DataDir = None,
    key: Annotated[
        Path | None, typer.Option(help="Key file (default <data-dir>/swarm.key)")
    ] = None,
) -> None:
    """Print a join token (seed address, swarm key, the operators' public
    keys): a secret, share it carefully."""
    try:
        ring = load_key_file(_key_path(data_dir, key))
        host, port = parse_addr(addr)
        operators = trusted_operators(data_dir or default_data_dir())
    except (SwarmKeyError, OperatorKeyError, ValueError) as e:
        raise _fail(str(e)) from None
    token = JoinToken(host, port, ring.primary, tuple(sorted(operators)))
    console.print(token.encode(), soft_wrap=True)
